"""The learner: one Ray actor per data-parallel rank, each owning a DeepSpeed ZeRO engine.

Guarantees: every rank computes the same advantages from the whole batch, then trains on its
own equal, contiguous share (`BatchPlan`); each micro-batch's loss is its exact share of its
mini-batch's loss, computed with token and sequence counts over the whole mini-batch, and is
scaled so that DeepSpeed's gradient accumulation and data-parallel averaging sum the shares:
loss and gradient do not depend on the micro-batch size, the token budget
(`learner.micro_batch_tokens`, whose varying micro-batch counts mark each optimizer step's
boundary by hand) or the number of ranks. Old
log-probabilities are computed once before the first update when a batch takes several
optimizer steps or the KL is a reward penalty (otherwise they equal the current ones,
detached). A reference model is loaded only when `algorithm.kl_coef > 0`. Not covered: ZeRO-3
for the reference model (it is a full copy on every rank), sequence packing (several sequences
in one row; sorting by length under a token budget only reduces padding).
"""

from __future__ import annotations

import math
import os
import socket
import time
from contextlib import contextmanager
from typing import Any

import torch

from core import faults
from core.config import Config, parse_cores
from core.records import ScoredGroup
from learner import grpo, losses
from learner.advantages import compute_advantages
from learner.batch import BatchPlan, FlatSample, MicroBatch, collate, flatten


def _zero_source_class():
    """`WeightSource` over the DeepSpeed module (defined lazily: vLLM is imported only by the GPU
    transports)."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class ZeroSource(WeightSource):
        """Every parameter in the engines' dtype; ZeRO-3 parameters gathered one at a time on
        all ranks in the same order (the gather is a collective)."""

        def __init__(self, actor: LearnerActor):
            self.actor = actor
            self.dtype = getattr(torch, actor.cfg.model.rollout_dtype)

        def metadata(self) -> list:
            return [
                ParamMeta(name, self.dtype, tuple(getattr(p, "ds_shape", p.shape)))
                for name, p in self.actor.engine.module.named_parameters()
            ]

        def __iter__(self):
            for name, tensor in self.actor._full_parameters():
                yield name, tensor.to(self.dtype)

    return ZeroSource


@contextmanager
def _no_update(engine):
    """Within the block, DeepSpeed's step leaves the weights, the optimizer moments and the
    learning-rate schedule as they are (gradients are still zeroed)."""
    targets = [engine.optimizer] + ([engine.lr_scheduler] if engine.lr_scheduler else [])
    saved = [(obj, vars(obj).get("step")) for obj in targets]
    for obj in targets:
        obj.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for obj, old in saved:
            if old is None:
                del obj.step
            else:
                obj.step = old


class LearnerActor:
    """Wrapped with `ray.remote` by `LearnerGroup`; methods are called on all ranks at once."""

    def __init__(self, cfg: Config, model_path: str, rank: int):
        self.cfg, self.model_path, self.rank = cfg, model_path, rank
        self.world_size = cfg.learner.world_size

    def node_id(self) -> str:
        """The Ray node this actor runs on (for the placement report)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def node_address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's become the process group's rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        import ray

        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        import deepspeed
        from transformers import AutoModelForCausalLM

        cfg = self.cfg
        cores = parse_cores(cfg.learner.cpu_cores)
        if cores:
            os.sched_setaffinity(0, cores)
        default = len(cores) or max(1, (os.cpu_count() or 1) // self.world_size)
        threads = cfg.learner.num_threads or default
        torch.set_num_threads(threads)
        torch.manual_seed(cfg.trainer.seed + self.rank)
        os.environ.update(
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
        )  # fmt: skip
        backend = "nccl" if cfg.cluster.use_gpu else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)

        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        lc = cfg.learner
        if lc.optimizer == "sgd":
            optimizer = torch.optim.SGD(model.parameters(), lr=lc.lr, weight_decay=lc.weight_decay)
        else:
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay
            )
        warmup = max(1, lc.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup)
        )
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self._ds_config()
        )
        self.ref_model = None
        if cfg.algorithm.kl_coef > 0:
            self.ref_model = AutoModelForCausalLM.from_pretrained(
                self.model_path, dtype=torch.float32
            ).eval()
            self.ref_model.requires_grad_(False)
            self.ref_model.to(self.engine.device)
        tok_cfg = model.config
        self.pad_id = tok_cfg.pad_token_id if tok_cfg.pad_token_id is not None else 0
        self.optimizer_steps = 0

    def _ds_config(self) -> dict[str, Any]:
        lc, r, a = self.cfg.learner, self.cfg.rollout, self.cfg.algorithm
        plan = BatchPlan(
            r.prompts_per_step * r.group_size, self.world_size, a.updates_per_batch,
            lc.micro_batch_size, lc.micro_batch_tokens,
        )  # fmt: skip
        return {
            "train_micro_batch_size_per_gpu": plan.per_rank_update // plan.accumulation_steps,
            "gradient_accumulation_steps": plan.accumulation_steps,
            "train_batch_size": plan.per_update,
            "gradient_clipping": lc.grad_clip,
            "zero_optimization": {"stage": lc.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": self.cfg.model.learner_dtype == "bfloat16"},
            "steps_per_print": 10**9,
        }

    # -----------------------------------------------------------------------------------------
    # Training

    def _logits(self, model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
        """Logits predicting the completion columns only: the head and the softmax over the
        vocabulary are not computed for prompt positions."""
        device = self.engine.device
        out = model(
            input_ids=mb.input_ids.to(device),
            attention_mask=mb.attention_mask.to(device),
            position_ids=mb.position_ids.to(device),
            logits_to_keep=mb.targets.shape[1] + 1,
        )
        return out.logits[:, :-1]  # [B, C, V]: the column before each completion token

    def _logprobs(self, model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
        with torch.no_grad():
            logits = self._logits(model, mb)
            return grpo.token_logprobs(logits, mb.targets.to(logits.device), self._temperature)

    @property
    def _temperature(self) -> float:
        return self.cfg.rollout.temperature

    def train(self, batch: list[ScoredGroup], step: int = 0) -> dict[str, float]:
        """One batch of GRPO-family updates (`algorithm.updates_per_batch` optimizer steps) on
        the groups of `batch` with their final rewards; returns metrics over the whole batch
        (all ranks; per-token statistics are token means)."""
        groups = [sg.group for sg in batch]
        rewards = [sg.rewards for sg in batch]  # [P][G]
        valid = [sg.valid for sg in batch]  # [P][G]
        a, lc = self.cfg.algorithm, self.cfg.learner
        flat = flatten(groups, valid, a.mask_truncated)
        plan = BatchPlan(len(flat), self.world_size, a.updates_per_batch, lc.micro_batch_size,
                         lc.micro_batch_tokens)  # fmt: skip
        lengths = [len(s.prompt_ids) + len(s.completion_ids) for s in flat]
        micro_ids = plan.micro_batches(self.rank, lengths)
        micro = [collate([flat[i] for i in ids], self.pad_id) for ids in micro_ids]
        model = self.engine.module
        kl_reward = self.ref_model is not None and a.kl_in == "reward"
        need_old = a.updates_per_batch > 1 or kl_reward
        t0 = time.perf_counter()
        old = [self._logprobs(model, mb) for mb in micro] if need_old else None
        ref = [self._logprobs(self.ref_model, mb) for mb in micro] if self.ref_model else None
        logprob_s = time.perf_counter() - t0

        rewards_t = torch.tensor(rewards, dtype=torch.float32)  # [P, G]
        metrics: dict[str, float] = {}
        if kl_reward:
            kl_sums = self._gather_kl_sums(micro, micro_ids, old, ref)  # [P * G]
            rewards_t = rewards_t - a.kl_coef * kl_sums.view_as(rewards_t)
            metrics["train/kl_penalty"] = float(a.kl_coef * kl_sums.mean())
        advantages = compute_advantages(
            a.advantage_estimator, rewards_t, torch.tensor(valid), a.std_eps, a.std_normalization
        ).flatten()  # [P * G]
        tokens = [len(s.completion_ids) if s.valid else 0 for s in flat]
        norm_tokens = a.loss_norm_tokens or self.cfg.rollout.max_new_tokens
        # DeepSpeed divides each micro-batch's gradient by its configured accumulation steps
        # and averages ranks; scaling by both makes the sum of the exact shares the mini-batch's
        # gradient.
        scale = plan.accumulation_steps * self.world_size

        self.engine.train()
        sums: dict[str, float] = {}
        grad_norms: list[float] = []
        nonfinite, skipped = False, 0
        inject_nan = faults.due(self.cfg.trainer.fault_injection, "nan_loss", step)
        updates = [plan.update_of(ids[0]) for ids in micro_ids] + [-1]  # mini-batch of each
        for i, (mb, ids) in enumerate(zip(micro, micro_ids, strict=True)):
            num_tokens, num_seqs = plan.minibatch_counts(tokens, ids[0])
            if lc.micro_batch_tokens:  # the count varies per mini-batch: mark its last one
                self.engine.set_gradient_accumulation_boundary(updates[i] != updates[i + 1])
            logits = self._logits(self.engine, mb)
            targets, mask = mb.targets.to(logits.device), mb.mask.to(logits.device)
            logp = grpo.token_logprobs(logits, targets, self._temperature)  # [B, C]
            entropy = grpo.entropy_from_logits(
                logits if a.entropy_coef > 0 else logits.detach(), self._temperature
            )  # [B, C]
            old_logp = old[i] if old else logp.detach()
            loss, stats = grpo.policy_loss(
                logp, old_logp, mb.sampler_logprobs.to(logits.device),
                ref[i] if ref and a.kl_in == "loss" else None,
                entropy if a.entropy_coef > 0 else None, advantages[ids].to(logits.device), mask,
                num_tokens=num_tokens, num_seqs=num_seqs, aggregation=a.loss_aggregation,
                norm_tokens=norm_tokens, clip_low=a.clip_eps_low, clip_high=a.clip_eps_high,
                dual_clip=a.dual_clip, ratio_level=a.ratio_level, kl_coef=a.kl_coef,
                kl_estimator=a.kl_estimator, entropy_coef=a.entropy_coef,
                correction=a.sampler_correction, correction_upper=a.correction_upper,
                correction_lower=a.correction_lower,
            )  # fmt: skip
            if inject_nan and i == 0:
                loss = loss * float("nan")
            self.engine.backward(loss * scale)
            nonfinite |= not bool(torch.isfinite(loss))
            boundary = self.engine.is_gradient_accumulation_boundary()
            # ZeRO stages record the pre-clip norm during the step; stage 0 does not, so it is
            # measured before the step (gradients are already averaged over ranks by then).
            stage0_norm = self._grad_norm() if boundary and not self.cfg.learner.zero_stage else 0
            if boundary and self._any_rank(nonfinite or not math.isfinite(stage0_norm)):
                # Skip the update: DeepSpeed would apply NaN/inf silently (fp32 has no overflow
                # check). The step call still runs to keep its accumulation bookkeeping.
                with _no_update(self.engine):
                    self.engine.step()
                skipped += 1
            else:
                self.engine.step()
                if boundary:
                    self.optimizer_steps += 1
                    recorded = self.engine.get_global_grad_norm()
                    grad_norms.append(float(recorded if recorded is not None else stage0_norm))
            if boundary:
                nonfinite = False
            with torch.no_grad():
                # Sampler/learner mismatch: k1 estimate of KL(vLLM || learner) on sampled tokens.
                sampler = mb.sampler_logprobs.to(logits.device)
                stats["mismatch_kl"] = losses.masked_mean(sampler - old_logp, mask)
                stats["entropy"] = losses.masked_mean(entropy.detach(), mask)
            # Stats are token means per micro-batch; weighting by tokens makes them batch means.
            weight = float(mask.sum())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            sums["_tokens"] = sums.get("_tokens", 0.0) + weight
            sums["_real"] = sums.get("_real", 0.0) + mb.real_tokens
            sums["_positions"] = sums.get("_positions", 0.0) + mb.positions
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v) * weight
        sums = self._sum_over_ranks(sums)
        tokens_seen = max(sums.pop("_tokens"), 1.0)
        metrics["train/padding_frac"] = 1.0 - sums.pop("_real") / sums.pop("_positions")
        metrics["train/micro_batches"] = float(len(micro))
        # Loss shares sum to each mini-batch's loss over micro-batches and ranks.
        metrics["train/loss"] = sums.pop("loss") / a.updates_per_batch
        metrics |= {f"train/{k}": v / tokens_seen for k, v in sums.items()}
        metrics["train/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        metrics["train/skipped_updates"] = float(skipped)
        metrics["train/lr"] = self.engine.get_lr()[0]
        metrics["train/optimizer_steps"] = self.optimizer_steps
        metrics["train/advantage_abs_mean"] = float(advantages.abs().mean())
        metrics["train/loss_tokens"] = float(sum(tokens))
        # Learner-side split of the train phase (rank 0's clock): old/reference forward passes.
        metrics["time/train_logprobs"] = logprob_s
        return metrics

    def _gather_kl_sums(self, micro, micro_ids, old, ref) -> torch.Tensor:  # [P * G]
        """Each sample's summed per-token KL(old policy || reference) over its loss tokens,
        for the whole batch in flat order: every rank computes its share and the shares are
        all-gathered."""
        est = self.cfg.algorithm.kl_estimator
        sums = torch.cat(
            [(losses.kl_estimate(o, r, est) * mb.mask).sum(-1) for mb, o, r in zip(micro, old, ref)]
        )  # [share] in training order
        order = torch.tensor([i for ids in micro_ids for i in ids])  # [share] flat indices
        mine = torch.empty_like(sums)
        mine[order - self.rank * len(order)] = sums  # [share] in flat order
        if self.world_size == 1:
            return mine
        import torch.distributed as dist

        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(parts, mine)
        return torch.cat(parts)

    def _any_rank(self, flag: bool) -> bool:
        """True when `flag` is set on any rank (all ranks must call)."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([float(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _grad_norm(self) -> float:
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def _sum_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) for k, v in zip(keys, t)}

    # -----------------------------------------------------------------------------------------
    # Weights out

    def _full_parameters(self):
        """(checkpoint name, full tensor) for every parameter; ZeRO-3 gathers one at a time.
        Tied parameters appear once (under the input embedding's name), as vLLM expects."""
        import deepspeed

        for name, param in self.engine.module.named_parameters():
            if self.cfg.learner.zero_stage == 3:
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    yield name, param.data.detach().clone()
            else:
                yield name, param.data.detach()

    def export_weights(self, dtype: str, bucket_mb: int = 64) -> list:
        """Put the policy in Ray's object store in buckets of about `bucket_mb` MiB, converted
        to the engines' dtype. All ranks must call it (ZeRO-3 gathers are collective); rank 0
        returns the bucket refs, the others an empty list."""
        import ray

        torch_dtype = getattr(torch, dtype)
        refs, bucket, size = [], {}, 0
        for name, tensor in self._full_parameters():
            if self.rank != 0:
                continue
            bucket[name] = tensor.to("cpu", torch_dtype).contiguous()
            size += bucket[name].numel() * bucket[name].element_size()
            if size >= bucket_mb * 2**20:
                refs.append(ray.put(bucket))
                bucket, size = {}, 0
        if bucket:
            refs.append(ray.put(bucket))
        return refs

    def init_weight_transfer(
        self, backend: str, engines: list, master: tuple[str, int] | None, world_size: int
    ) -> None:
        """GPU transports: join vLLM's weight transfer with the engines (`nccl`: a NCCL group of
        learner rank 0 and every engine worker, rendezvous at `master`; `ipc`: CUDA IPC handles
        of the colocated GPUs). All ranks call it; rank 0 is the sender."""
        from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        if backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            info = NCCLTrainerInitInfo(master_address=master[0], master_port=master[1],
                                       world_size=world_size, rank=self.rank)  # fmt: skip
        else:
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            info = IPCTrainerInitInfo(rank=self.rank)
        self.weight_sender = WeightTransferTrainerFactory.trainer_init(
            info, client=RayVLLMWeightSyncClient(engines), source=_zero_source_class()(self)
        )

    def offload_states(self) -> None:
        """Colocated mode: ZeRO states to CPU memory while the engines generate."""
        self.engine.offload_states()

    def reload_states(self) -> None:
        self.engine.reload_states()

    def send_weights(self) -> None:
        """Push the current weights through vLLM's weight transfer (all ranks call it)."""
        self.weight_sender.send_weights()

    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Learner log-probabilities of a fixed completion (temperature 1), for parity checks."""
        sample = FlatSample(prompt_ids, completion_ids, [0.0] * len(completion_ids), True)
        mb = collate([sample], self.pad_id)
        with torch.no_grad():
            logits = self._logits(self.engine.module, mb)
            logp = grpo.token_logprobs(logits, mb.targets.to(logits.device))
        return logp[0].tolist()

    # -----------------------------------------------------------------------------------------
    # Checkpoints

    def save_checkpoint(self, path: str) -> None:
        """DeepSpeed model, optimizer and scheduler state (all ranks must call: ZeRO shards are
        written by their owners) and this rank's RNG states, under `path`."""
        import random

        import numpy as np

        self.engine.save_checkpoint(
            path, tag="deepspeed", client_state={"optimizer_steps": self.optimizer_steps}
        )
        _, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
        rng = {
            "python": random.getstate(),
            "numpy": (torch.from_numpy(np_keys.astype("int64")), np_pos, np_gauss, np_cached),
            "torch": torch.get_rng_state(),
        }
        torch.save(rng, os.path.join(path, f"rng_rank{self.rank}.pt"))

    def load_checkpoint(self, path: str) -> None:
        """Restore what `save_checkpoint` wrote. RNG states are read with `weights_only=True`;
        DeepSpeed reads its own files (only resume from checkpoints you wrote)."""
        import random

        import numpy as np

        _, client = self.engine.load_checkpoint(
            path, tag="deepspeed", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if client is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {path}/deepspeed")
        self.optimizer_steps = client["optimizer_steps"]
        rng = torch.load(os.path.join(path, f"rng_rank{self.rank}.pt"), weights_only=True)
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))
        keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype("uint32"), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])

    def save_pretrained(self, path: str) -> None:
        """Write the policy as a Hugging Face folder (rank 0 writes; all ranks must call)."""
        state = dict(self._full_parameters())
        if self.rank == 0:
            self.engine.module.save_pretrained(path, state_dict=state, safe_serialization=True)
