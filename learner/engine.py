"""One learner rank's DeepSpeed and process-group plumbing, apart from the algorithm.

Building the engine (policy, optimizer, warm-up schedule, DeepSpeed config from the batch
plan), loading the frozen reference model, an optimizer step that changes nothing (for skipping
a non-finite update), and the few collectives the learner needs. Guarantees: the DeepSpeed
config's batch sizes and accumulation steps are the `BatchPlan`'s, so DeepSpeed's step
boundaries are the plan's mini-batches (under a token budget the learner marks them itself);
the collectives return the local value unchanged with one rank; under ZeRO-3 the reference
model is sharded like the policy (below ZeRO-3 each rank holds a full copy; with LoRA there is
none). Not covered: DeepSpeed's offload settings (colocated mode moves the ZeRO states itself,
`LearnerActor.offload_states`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

import torch

from core.config import LearnerConfig, ModelConfig, parse_cores
from learner import lora
from learner.batch import BatchPlan
from learner.deepspeed_import import import_deepspeed


def pin_threads(learner: LearnerConfig, world_size: int) -> None:
    """Pin this process to `learner.cpu_cores` and set torch's CPU threads: `num_threads`, or
    the pinned cores, or the machine's cores shared by the ranks."""
    cores = parse_cores(learner.cpu_cores)
    if cores:
        os.sched_setaffinity(0, cores)
    default = len(cores) or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(learner.num_threads or default)


def init_process_group(addr: str, port: int, rank: int, world_size: int, use_gpu: bool) -> None:
    """Join the ranks' process group (NCCL on GPUs, gloo on CPU), rendezvous at addr:port."""
    deepspeed = import_deepspeed()

    os.environ.update(
        MASTER_ADDR=addr,
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
    )
    backend = "nccl" if use_gpu else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def build_engine(model_path: str, model: ModelConfig, learner: LearnerConfig, plan: BatchPlan):
    """The policy in float32 master weights (with LoRA: the frozen base and its adapters), the
    optimizer over what trains and linear warm-up, in a DeepSpeed engine whose batch sizes are
    `plan`'s."""
    deepspeed = import_deepspeed()
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if model.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        if learner.lora.rank:
            # The frozen embeddings' output has no gradient; checkpointed blocks need one to
            # backpropagate into the adapters.
            policy.enable_input_require_grads()
    policy.config.use_cache = False
    if learner.lora.rank:
        policy = lora.add_adapters(policy, learner.lora)
    lc = learner
    trained = [p for p in policy.parameters() if p.requires_grad]
    if lc.optimizer == "sgd":
        optimizer = torch.optim.SGD(trained, lr=lc.lr, weight_decay=lc.weight_decay)
    else:
        optimizer = torch.optim.AdamW(
            trained, lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay
        )
    warmup = max(1, lc.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup)
    )
    config = ds_config(plan, lc, bf16=model.learner_dtype == "bfloat16")
    engine, *_ = deepspeed.initialize(
        model=policy, optimizer=optimizer, lr_scheduler=scheduler, config=config
    )
    return engine


def ds_config(plan: BatchPlan, learner: LearnerConfig, bf16: bool) -> dict[str, Any]:
    """DeepSpeed's config: one optimizer step per mini-batch of `plan`."""
    return {
        "train_micro_batch_size_per_gpu": plan.per_rank_update // plan.accumulation_steps,
        "gradient_accumulation_steps": plan.accumulation_steps,
        "train_batch_size": plan.per_update,
        "gradient_clipping": learner.grad_clip,
        "zero_optimization": {"stage": learner.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
    }


def load_reference(
    model_path: str, device: torch.device, plan: BatchPlan, learner: LearnerConfig
) -> torch.nn.Module:
    """The frozen reference policy (the initial weights) on `device`, in eval mode. Under
    ZeRO-3 it is sharded over the ranks like the policy (a DeepSpeed engine with the policy's
    config and no optimizer; its forward passes are collective), else a full copy on each
    rank."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    ref.requires_grad_(False)
    ref.config.use_cache = False
    if learner.zero_stage != 3:
        return ref.to(device)
    deepspeed = import_deepspeed()

    engine, *_ = deepspeed.initialize(model=ref, config=ds_config(plan, learner, bf16=False))
    engine.eval()
    return engine


@contextmanager
def no_update(engine):
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


def grad_norm(module: torch.nn.Module) -> float:
    """The global L2 norm of `module`'s gradients (ZeRO stage 0: full gradients on every rank)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def any_rank(flag: bool, world_size: int) -> bool:
    """True when `flag` is set on any rank (all ranks must call)."""
    if world_size == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(values: dict[str, float], world_size: int) -> dict[str, float]:
    """Each value summed over the ranks, in float64 (all ranks must call, with the same keys)."""
    if world_size == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t, strict=True)}


def all_gather(share: torch.Tensor, world_size: int) -> torch.Tensor:
    """Every rank's equal-sized `share`, concatenated in rank order (all ranks must call)."""
    if world_size == 1:
        return share
    import torch.distributed as dist

    parts = [torch.empty_like(share) for _ in range(world_size)]
    dist.all_gather(parts, share)
    return torch.cat(parts)
