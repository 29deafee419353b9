"""The learner: one Ray actor per data-parallel rank, each owning a DeepSpeed ZeRO engine.

`LearnerActor.train` is one batch of GRPO: prepare the batch, compute the log-probabilities
that stay fixed during the batch (old policy, reference), compute the advantages (with the KL
penalty in the reward when `algorithm.kl_in` is `reward`), update on each mini-batch, reduce
the metrics. The math is in `learner/grpo.py` (which gives the reading order), the layout and
split of the batch in `learner/batch.py`, weights out in `learner/export.py`, checkpoints in
`learner/checkpoint.py`.

Guarantees: every rank computes the same advantages from the whole batch, then trains on its
own equal, contiguous share (`BatchPlan`); each micro-batch's loss is its exact share of its
mini-batch's loss, computed with token and sequence counts over the whole mini-batch, and is
scaled so that DeepSpeed's gradient accumulation and data-parallel averaging sum the shares:
loss and gradient do not depend on the micro-batch size, the token budget
(`learner.micro_batch_tokens`, whose varying micro-batch counts mark each optimizer step's
boundary by hand) or the number of ranks. An update whose loss or gradient is not finite on any
rank is skipped on all of them. Old log-probabilities are computed once before the first update
when a batch takes several optimizer steps or the KL is a reward penalty (otherwise they equal
the current ones, detached). A reference model is loaded only when `algorithm.kl_coef > 0`, and
never with LoRA (`learner.lora`): the reference is then the policy with its adapters switched off.
Under ZeRO-3 the reference is sharded like the policy (`learner/engine.py`);
`learner.pack_sequences` puts a micro-batch's samples in one row.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from core import faults
from core.config import AlgorithmConfig, LearnerConfig, ModelConfig, RolloutConfig, TrainerConfig
from core.records import ScoredGroup
from learner import checkpoint, export, grpo, head, lora, losses
from learner.advantages import compute_advantages
from learner.batch import (
    BatchPlan,
    FlatSample,
    MicroBatch,
    RankBatch,
    collate,
    flatten,
    rank_batch,
)
from learner.engine import (
    all_gather,
    any_rank,
    build_engine,
    grad_norm,
    init_process_group,
    load_reference,
    no_update,
    pin_threads,
    sum_over_ranks,
)
from learner.flops import FlopModel, device_peak

Logprobs = list[torch.Tensor] | None
"""One [B, C] tensor per micro-batch of this rank, or None when not computed."""


@dataclass
class _Tally:
    """What the update loop adds up on one rank, to be reduced over ranks into metrics."""

    sums: dict[str, float] = field(default_factory=dict)
    """The loss shares, and per-token stats weighted by each micro-batch's loss tokens."""
    grad_norms: list[float] = field(default_factory=list)
    skipped: int = 0
    flops: float = 0.0
    """Model FLOPs of this rank's passes over the batch (`learner/flops.py`)."""

    def add(self, loss: torch.Tensor, stats: dict, mb: MicroBatch, weight: float) -> None:
        # Stats are token means per micro-batch; weighting by tokens makes them batch means.
        sums = self.sums
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        sums["_tokens"] = sums.get("_tokens", 0.0) + weight
        sums["_real"] = sums.get("_real", 0.0) + mb.real_tokens
        sums["_positions"] = sums.get("_positions", 0.0) + mb.positions
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) * weight


class LearnerActor:
    """Wrapped with `ray.remote` by `LearnerRanks`; methods are called on all ranks at once."""

    def __init__(
        self,
        model_path: str,
        rank: int,
        *,
        model: ModelConfig,
        rollout: RolloutConfig,
        learner: LearnerConfig,
        algorithm: AlgorithmConfig,
        trainer: TrainerConfig,
        use_gpu: bool,
    ):
        """The config sections the learner reads: `rollout` for the batch size, the sampling
        temperature and `max_new_tokens`; `trainer` for the seed and fault injection."""
        self.model_path, self.rank = model_path, rank
        self.model, self.rollout, self.learner = model, rollout, learner
        self.algorithm, self.trainer, self.use_gpu = algorithm, trainer, use_gpu
        self.world_size = learner.world_size

    def where(self) -> dict:
        """Where this rank runs, for the placement report: its Ray node, the cores it may use
        and torch's threads."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "cores": sorted(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(),
        }

    def node_address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0's become the process group's rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        import ray

        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group, build the DeepSpeed engine and, when `algorithm.kl_coef` >
        0, load the reference model (all ranks at once)."""
        init_process_group(master_addr, master_port, self.rank, self.world_size, self.use_gpu)
        self._build()

    def rebuild(
        self,
        *,
        rollout: RolloutConfig,
        learner: LearnerConfig,
        algorithm: AlgorithmConfig,
        trainer: TrainerConfig,
    ) -> None:
        """Drop the engine and build a new one from the model's initial weights with these
        settings, in this process and process group: the learner a fresh start with them
        would be (all ranks at once; same world size), without the start's seconds of
        imports. A weight transfer set up for the old engine is ended; injected faults may fire
        again."""
        if learner.world_size != self.world_size:
            raise ValueError(
                f"learner.world_size cannot change from {self.world_size} to "
                f"{learner.world_size} on running ranks: start a new learner."
            )
        if getattr(self, "weight_sender", None) is not None:
            self.weight_sender.shutdown()
            self.weight_sender = None
        for engine in (self.engine, self.ref_model):
            if hasattr(engine, "destroy"):  # a DeepSpeed engine: ZeRO-3's hooks come off
                engine.destroy()
        self.rollout, self.learner = rollout, learner
        self.algorithm, self.trainer = algorithm, trainer
        faults.rearm()
        self._build()

    def _build(self) -> None:
        pin_threads(self.learner, self.world_size)
        torch.manual_seed(self.trainer.seed + self.rank)
        r = self.rollout
        plan = self._plan(r.prompts_per_step * r.group_size)
        self.engine = build_engine(self.model_path, self.model, self.learner, plan)
        self.ref_model = None
        self._load_or_drop_reference()
        pad_id = self.engine.module.config.pad_token_id
        self.pad_id = pad_id if pad_id is not None else 0
        self.optimizer_steps = 0
        self.flop_model = FlopModel.of(self.engine.module)

    def peak_flops(self) -> tuple[float, str]:
        """This rank's device's matmul peak in the learner's dtype (FLOP/s) and where it comes
        from (`learner/flops.py`); on a CPU, measured now with this rank's threads."""
        peak = device_peak(self.engine.device, next(self.engine.module.parameters()).dtype)
        return peak.flops_per_s, peak.source

    def _load_or_drop_reference(self) -> None:
        """Hold a reference model exactly when `algorithm.kl_coef` > 0 and the whole policy
        trains (with LoRA the base model under the adapters is the reference)."""
        if self._has_reference and not self.learner.lora.rank and self.ref_model is None:
            plan = self._plan(self.rollout.prompts_per_step * self.rollout.group_size)
            self.ref_model = load_reference(self.model_path, self.engine.device, plan, self.learner)
        elif not self._has_reference:
            self.ref_model = None

    def set_algorithm(self, algorithm: AlgorithmConfig) -> None:
        """Train with `algorithm` from the next `train` call on, as a learner started with it
        would (the reference model is loaded or dropped with `kl_coef`). Weights and optimizer
        state are left as they are (`load_checkpoint` restores those)."""
        if algorithm.updates_per_batch != self.algorithm.updates_per_batch:
            raise ValueError(
                f"algorithm.updates_per_batch cannot change from "
                f"{self.algorithm.updates_per_batch} to {algorithm.updates_per_batch} on a running "
                "learner: it fixed DeepSpeed's gradient accumulation steps when the engine was "
                "built. Start a new learner with the new value."
            )
        self.algorithm = algorithm
        self._load_or_drop_reference()

    def _plan(self, num_samples: int) -> BatchPlan:
        a, lc = self.algorithm, self.learner
        return BatchPlan(
            num_samples,
            self.world_size,
            a.updates_per_batch,
            lc.micro_batch_size,
            lc.micro_batch_tokens,
            lc.pack_sequences,
        )

    # -----------------------------------------------------------------------------------------
    # Training

    def train(self, batch: list[ScoredGroup], step: int = 0) -> dict[str, float]:
        """One batch of GRPO-family updates (`algorithm.updates_per_batch` optimizer steps) on
        the groups of `batch` with their final rewards; returns metrics over the whole batch
        (all ranks; per-token statistics are token means). `step` is the driver's, for fault
        injection."""
        data = self._prepare(batch)
        started = time.perf_counter()
        old, ref = self._fixed_logprobs(data)
        logprob_s = time.perf_counter() - started
        rewards, metrics = self._rewards(batch, data, old, ref)  # [P, G]
        advantages = self._advantages(rewards, batch)  # [P * G]
        tally = self._update(data, old, ref, advantages, step)
        return metrics | self._reduce_metrics(tally, data, advantages, logprob_s)

    def _prepare(self, batch: list[ScoredGroup]) -> RankBatch:
        """Flatten the groups, plan the split over ranks and mini-batches, and collate this
        rank's micro-batches."""
        groups, valid = [sg.group for sg in batch], [sg.valid for sg in batch]
        samples = flatten(groups, valid, self.algorithm.mask_truncated)  # [P * G]
        plan = self._plan(len(samples))
        configured = self.engine.gradient_accumulation_steps()
        if plan.accumulation_steps != configured:
            # DeepSpeed steps the optimizer every `configured` micro-batches: another count
            # would shift or skip updates without a sound
            raise ValueError(
                f"the learner got {len(samples)} samples, {plan.accumulation_steps} "
                f"micro-batches per rank and update, but DeepSpeed was set up for {configured} "
                "(rollout.prompts_per_step x rollout.group_size samples a batch); send batches "
                "of that size"
            )
        return rank_batch(samples, plan, self.rank, self.pad_id)

    @property
    def _has_reference(self) -> bool:
        return self.algorithm.kl_coef > 0

    @property
    def _kl_in_reward(self) -> bool:
        return self._has_reference and self.algorithm.kl_in == "reward"

    def _fixed_logprobs(self, data: RankBatch) -> tuple[Logprobs, Logprobs]:
        """Log-probabilities that stay fixed during the batch, per micro-batch: the policy's
        before the first update (`old`), needed when the batch takes several optimizer steps or
        the KL is a reward penalty, and the reference model's when there is one."""
        need_old = self.algorithm.updates_per_batch > 1 or self._kl_in_reward
        model = self.engine.module
        old = [self._logprobs(model, mb) for mb in data.micro] if need_old else None
        ref = [self._reference_logprobs(mb) for mb in data.micro] if self._has_reference else None
        return old, ref

    def _reference_logprobs(self, mb: MicroBatch) -> torch.Tensor:  # [B, C]
        with self._reference() as model:
            return self._logprobs(model, mb)

    @contextmanager
    def _reference(self) -> Iterator[torch.nn.Module]:
        """The KL reference: the loaded copy, or with LoRA the policy with its adapters off."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with lora.adapters_off(self.engine.module):
                yield self.engine.module

    def _rewards(
        self, batch: list[ScoredGroup], data: RankBatch, old: Logprobs, ref: Logprobs
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The rewards advantages are computed from, [P, G]: the reward side's final rewards,
        KL-penalised when `algorithm.kl_in` is `reward` (then also the mean penalty metric)."""
        rewards = torch.tensor([sg.rewards for sg in batch], dtype=torch.float32)  # [P, G]
        if not self._kl_in_reward:
            return rewards, {}
        coef = self.algorithm.kl_coef
        kl_sums = self._gather_kl_sums(data, old, ref)  # [P * G]
        penalty = {"train/kl_penalty": float(coef * kl_sums.mean())}
        return grpo.kl_penalized_rewards(rewards, kl_sums, coef), penalty

    def _gather_kl_sums(self, data: RankBatch, old: Logprobs, ref: Logprobs) -> torch.Tensor:
        """Each sample's summed KL(old policy || reference) over its loss tokens, [P * G], for
        the whole batch in flat order: every rank computes its share and the shares are
        all-gathered."""
        est = self.algorithm.kl_estimator
        sums = torch.cat(
            [
                grpo.sequence_kl(o, r, mb.mask.to(o.device), est)
                for mb, o, r in zip(data.micro, old, ref, strict=True)
            ]
        )  # [share] in training order
        order = torch.tensor([i for ids in data.micro_indices for i in ids])  # [share]
        mine = torch.empty_like(sums)
        mine[order - self.rank * len(order)] = sums  # [share] in flat order
        return all_gather(mine, self.world_size).cpu()

    def _advantages(self, rewards: torch.Tensor, batch: list[ScoredGroup]) -> torch.Tensor:
        """One advantage per sample, [P * G] flat (group-major), from rewards [P, G]."""
        a = self.algorithm
        valid = torch.tensor([sg.valid for sg in batch])  # [P, G]
        return compute_advantages(
            a.advantage_estimator, rewards, valid, a.std_eps, a.std_normalization
        ).flatten()

    def _update(
        self,
        data: RankBatch,
        old: Logprobs,
        ref: Logprobs,
        advantages: torch.Tensor,  # [P * G]
        step: int,
    ) -> _Tally:
        """Forward and backward on each of this rank's micro-batches in training order;
        DeepSpeed accumulates their gradients and `_step` ends each mini-batch with one
        optimizer step."""
        # DeepSpeed divides each micro-batch's gradient by its configured accumulation steps
        # and averages ranks; scaling by both makes the sum of the exact shares the mini-batch's
        # gradient.
        scale = data.plan.accumulation_steps * self.world_size
        self.engine.train()
        tally = _Tally()
        # Model FLOPs: a forward and backward per micro-batch, one forward per fixed pass. The
        # backward is two forwards' worth (gradients of the inputs and of the weights), one
        # with LoRA: frozen weights get no gradient (the forward counts the adapters' matmuls,
        # their weight gradients, a few percent, are left out).
        backward = 1 if self.learner.lora.rank else 2
        passes = 1 + backward + (old is not None) + (ref is not None)
        tally.flops = passes * sum(self._forward_flops(mb) for mb in data.micro)
        nonfinite = False
        for i, mb in enumerate(data.micro):
            if self.learner.micro_batch_tokens:  # the count varies per mini-batch: mark its last
                self.engine.set_gradient_accumulation_boundary(data.ends_minibatch(i))
            loss, stats, mask = self._micro_batch_loss(data, i, old, ref, advantages)
            if i == 0:
                loss = self._inject_faults(loss, step)
            self.engine.backward(loss * scale)
            nonfinite |= not bool(torch.isfinite(loss))
            if self._step(nonfinite, tally):
                nonfinite = False  # a new mini-batch starts
            tally.add(loss, stats, mb, float(mask.sum()))
        return tally

    def _forward_flops(self, mb: MicroBatch) -> float:
        """Model FLOPs of one forward pass over the micro-batch's real tokens."""
        return self.flop_model.forward(mb.lengths, mb.completion_lengths)

    def _inject_faults(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """`trainer.fault_injection` on the batch's first micro-batch (core/faults.py):
        `nan_loss` makes the loss NaN; `inf_grad` leaves it finite and makes its gradient
        infinite; with `@rankR:` only on rank R."""

        def due(kind: str) -> bool:
            spec = self.trainer.fault_injection
            everywhere = faults.due(spec, kind, step)
            return faults.due(spec, f"{kind}@rank{self.rank}", step) or everywhere

        if due("nan_loss"):
            loss = loss * float("nan")
        if due("inf_grad"):
            loss.register_hook(lambda grad: torch.full_like(grad, math.inf))
        return loss

    def _micro_batch_loss(
        self, data: RankBatch, i: int, old: Logprobs, ref: Logprobs, advantages: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Micro-batch i's share of its mini-batch's loss (with gradient), its detached stats
        and its loss mask [B, C]."""
        a = self.algorithm
        mb, ids = data.micro[i], data.micro_indices[i]
        num_tokens, num_seqs = data.minibatch_counts(i)
        entropy_kind = "grad" if a.entropy_coef > 0 else "value"
        logp, entropy = self._token_stats(self.engine, mb, self._temperature, entropy_kind)
        mask = mb.mask.to(logp.device)  # [B, C]
        sampler = mb.sampler_logprobs.to(logp.device)  # [B, C]
        old_logp = old[i] if old else logp.detach()  # [B, C]
        loss, stats = grpo.policy_loss(
            logp,
            old_logp,
            sampler,
            ref[i] if ref and a.kl_in == "loss" else None,
            entropy if a.entropy_coef > 0 else None,
            advantages[ids].to(logp.device),
            mask,
            num_tokens=num_tokens,
            num_seqs=num_seqs,
            aggregation=a.loss_aggregation,
            norm_tokens=a.loss_norm_tokens or self.rollout.max_new_tokens,
            clip_low=a.clip_eps_low,
            clip_high=a.clip_eps_high,
            dual_clip=a.dual_clip,
            ratio_level=a.ratio_level,
            kl_coef=a.kl_coef,
            kl_estimator=a.kl_estimator,
            entropy_coef=a.entropy_coef,
            correction=a.sampler_correction,
            correction_upper=a.correction_upper,
            correction_lower=a.correction_lower,
        )
        with torch.no_grad():
            # Sampler/learner mismatch: k1 estimate of KL(vLLM || learner) on sampled tokens.
            stats["mismatch_kl"] = losses.masked_mean(sampler - old_logp, mask)
            stats["entropy"] = losses.masked_mean(entropy.detach(), mask)
        return loss, stats, mask

    def _step(self, nonfinite: bool, tally: _Tally) -> bool:
        """DeepSpeed's step after a micro-batch's backward; returns whether it ended a
        mini-batch. At a mini-batch's end the optimizer updates the weights, unless the loss or
        the gradient is not finite on some rank: stage 0 in fp32 would apply NaN/inf silently,
        so every rank skips the update, and the step call still runs to keep DeepSpeed's
        accumulation bookkeeping. Under ZeRO, DeepSpeed's own overflow check skips an update
        whose gradient norm is not finite (the ranks share that norm); it counts as skipped."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        # ZeRO stages record the pre-clip norm during the step; stage 0 does not, so it is
        # measured before the step (gradients are already averaged over ranks by then).
        zero0 = boundary and not self.learner.zero_stage
        stage0_norm = grad_norm(self.engine.module) if zero0 else 0
        if boundary and any_rank(nonfinite or not math.isfinite(stage0_norm), self.world_size):
            with no_update(self.engine):
                self.engine.step()
            tally.skipped += 1
        else:
            self.engine.step()
            if boundary and not self.engine.was_step_applied():  # ZeRO's overflow check
                tally.skipped += 1
            elif boundary:
                self.optimizer_steps += 1
                recorded = self.engine.get_global_grad_norm()
                tally.grad_norms.append(float(recorded if recorded is not None else stage0_norm))
        return boundary

    def _reduce_metrics(
        self, tally: _Tally, data: RankBatch, advantages: torch.Tensor, logprob_s: float
    ) -> dict[str, float]:
        """The batch's metrics: the tally summed over ranks, token-weighted stats as token
        means."""
        sums = sum_over_ranks(tally.sums | {"_flops": tally.flops}, self.world_size)
        tokens_seen = max(sums.pop("_tokens"), 1.0)
        real = sums.pop("_real")
        metrics = {
            "train/padding_frac": 1.0 - real / sums.pop("_positions"),
            "train/real_tokens": real,
            "train/model_flops": sums.pop("_flops"),
            "train/micro_batches": float(len(data.micro)),
            # Loss shares sum to each mini-batch's loss over micro-batches and ranks.
            "train/loss": sums.pop("loss") / self.algorithm.updates_per_batch,
        }
        metrics |= {f"train/{k}": v / tokens_seen for k, v in sums.items()}
        norms = tally.grad_norms
        return metrics | {
            "train/grad_norm": sum(norms) / len(norms) if norms else math.nan,
            "train/skipped_updates": float(tally.skipped),
            "train/lr": self.engine.get_lr()[0],
            "train/optimizer_steps": self.optimizer_steps,
            "train/advantage_abs_mean": float(advantages.abs().mean()),
            "train/loss_tokens": float(sum(data.loss_tokens)),
            # Learner-side split of the train phase (rank 0's clock): old/reference passes.
            "time/train_logprobs": logprob_s,
        }

    def _token_stats(
        self, model: torch.nn.Module, mb: MicroBatch, temperature: float, entropy: str = "none"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # [B, C] log-probs, [B, C] entropies
        """`head.completion_token_stats` of micro-batch `mb` on this rank's device."""
        device = self.engine.device
        inputs = {"input_ids": mb.input_ids.to(device), "position_ids": mb.position_ids.to(device)}
        if mb.attention_mask is not None:  # padded rows (packed ones have none)
            inputs["attention_mask"] = mb.attention_mask.to(device)
        gather = mb.gather.to(device) if mb.gather is not None else None
        chunk, targets = self.learner.logprob_chunk_tokens, mb.targets.to(device)
        return head.completion_token_stats(
            model, inputs, targets, temperature, chunk, entropy, gather
        )

    def _logprobs(self, model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:  # [B, C]
        with torch.no_grad():
            return self._token_stats(model, mb, self._temperature)[0]

    @property
    def _temperature(self) -> float:
        return self.rollout.temperature

    # -----------------------------------------------------------------------------------------
    # Weights out (learner/export.py)

    def export_weights(self, dtype: str, bucket_mb: int = 64) -> list:
        """Put the policy in Ray's object store in buckets of about `bucket_mb` MiB, converted
        to the engines' dtype. All ranks must call it (ZeRO-3 gathers are collective); rank 0
        returns the bucket refs, the others an empty list."""
        return export.object_store_buckets(
            self.engine.module, self.learner.zero_stage, self.rank, dtype, bucket_mb
        )

    def export_adapter(self, dtype: str) -> list:
        """`learner.lora.push=adapter`: the adapters alone in Ray's object store, converted to
        the engines' dtype (all ranks call; rank 0 returns [ref])."""
        return export.object_store_adapter(
            self.engine.module, self.learner.zero_stage, self.rank, dtype
        )

    def init_weight_transfer(
        self,
        backend: str,
        engines: list,
        master: tuple[str, int] | None,
        world_size: int,
        timeout_s: float,
    ) -> None:
        """`nccl` / `ipc` / `gloo`: join a weight-transfer group with the engines (all ranks
        call it; rank 0 is the sender; see `export.vllm_weight_sender`). Called again after
        engines were restarted: the old group is left first."""
        if getattr(self, "weight_sender", None) is not None:
            self.weight_sender.shutdown()
        self.weight_sender = export.vllm_weight_sender(
            self.engine.module,
            self.learner.zero_stage,
            self.model.rollout_dtype,
            backend,
            engines,
            master,
            world_size,
            self.rank,
            timeout_s,
        )

    def send_weights(self) -> None:
        """Push the current weights through vLLM's weight transfer (all ranks call it)."""
        self.weight_sender.send_weights()

    def save_pretrained(self, path: str) -> None:
        """Write the policy as a Hugging Face folder, LoRA adapters merged (rank 0 writes; all
        ranks must call)."""
        export.save_pretrained(self.engine.module, self.learner.zero_stage, self.rank, path)

    def save_adapter(self, path: str) -> None:
        """Write a LoRA learner's adapters as a PEFT folder (rank 0 writes; all ranks call)."""
        export.save_adapter(self.engine.module, self.learner.zero_stage, self.rank, path)

    def sequence_logprobs(
        self, prompt_ids: list[int], completion_ids: list[int], reference: bool = False
    ) -> list[float]:
        """Log-probabilities of a fixed completion at temperature 1, for parity checks: the
        policy's, or with `reference` the KL reference's (with LoRA the adapters switched off).
        All ranks must call under ZeRO-3."""
        sample = FlatSample(prompt_ids, completion_ids, [0.0] * len(completion_ids), True)
        mb = collate([sample], self.pad_id)
        which = self._reference() if reference else nullcontext(self.engine.module)
        with torch.no_grad(), which as model:
            logp, _ = self._token_stats(model, mb, temperature=1.0)
        return logp[0].tolist()

    def offload_states(self) -> None:
        """Colocated mode: ZeRO states to CPU memory while the engines generate."""
        self.engine.offload_states()

    def reload_states(self) -> None:
        self.engine.reload_states()

    # -----------------------------------------------------------------------------------------
    # Checkpoints (learner/checkpoint.py)

    def save_checkpoint(self, path: str) -> None:
        """DeepSpeed model, optimizer and scheduler state and this rank's RNG states under
        `path` (all ranks must call: ZeRO shards are written by their owners)."""
        checkpoint.save(self.engine, path, self.rank, self.optimizer_steps, self._frozen_base)

    def load_checkpoint(self, path: str) -> None:
        """Restore what `save_checkpoint` wrote."""
        self.optimizer_steps = checkpoint.load(self.engine, path, self.rank, self._frozen_base)

    @property
    def _frozen_base(self) -> bool:
        """With LoRA the base weights never change: checkpoints hold the adapters only."""
        return bool(self.learner.lora.rank)
