"""Weights out of the learner: every parameter as one full tensor, for the engines and for disk.

Guarantees: parameters come out in `named_parameters` order under their checkpoint names, and
tied parameters once (under the input embedding's name), as vLLM and Hugging Face expect; a LoRA
learner's come out merged under the base model's names (`learner/lora.py`). Under
ZeRO-3 each parameter is gathered on all ranks in the same order, one at a time (the gather is a
collective: every rank must iterate, and at most one full parameter is held beside the shards).
Not covered: choosing a transport and driving the engines (`cluster/transport.py`, which calls
the learner's `export_weights`, or `init_weight_transfer` and `send_weights`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from core.pools import get_within
from learner import lora
from learner.deepspeed_import import import_deepspeed


def full_parameters(module: torch.nn.Module, zero_stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, full tensor) for every parameter of `module` (the DeepSpeed engine's
    model), LoRA adapters merged; ZeRO-3 parameters are gathered and copied. All ranks must
    iterate under ZeRO-3."""
    deepspeed = import_deepspeed()

    if lora.is_lora(module):
        yield from lora.merged_parameters(module, zero_stage)
        return
    for name, param in module.named_parameters():
        if zero_stage == 3:
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                yield name, param.data.detach().clone()
        else:
            yield name, param.data.detach()


def object_store_buckets(
    module: torch.nn.Module, zero_stage: int, rank: int, dtype: str, bucket_mb: int = 64
) -> list:
    """Put the policy in Ray's object store in buckets of about `bucket_mb` MiB, converted to
    `dtype` (the engines'). All ranks must call it; rank 0 returns the bucket refs, the others
    an empty list."""
    import ray

    torch_dtype = getattr(torch, dtype)
    refs, bucket, size = [], {}, 0
    for name, tensor in full_parameters(module, zero_stage):
        if rank != 0:
            continue
        bucket[name] = tensor.to("cpu", torch_dtype).contiguous()
        size += bucket[name].numel() * bucket[name].element_size()
        if size >= bucket_mb * 2**20:
            refs.append(ray.put(bucket))
            bucket, size = {}, 0
    if bucket:
        refs.append(ray.put(bucket))
    return refs


def object_store_adapter(module: torch.nn.Module, zero_stage: int, rank: int, dtype: str) -> list:
    """Put a LoRA learner's adapters in Ray's object store as one object, (adapter config,
    {name: tensor in `dtype`}) as a PEFT folder holds them (`lora.adapter_files`). All ranks must
    call it; rank 0 returns [ref], the others an empty list."""
    import ray

    config, tensors = lora.adapter_files(module, zero_stage)
    if rank != 0:
        return []
    torch_dtype = getattr(torch, dtype)
    tensors = {k: v.to("cpu", torch_dtype).contiguous() for k, v in tensors.items()}
    return [ray.put((config, tensors))]


def parameter_shapes(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, full shape) of what `full_parameters` yields, in its order, without gathering."""
    if lora.is_lora(module):
        named = ((name, p) for name, p, _ in lora.export_order(module))
    else:
        named = module.named_parameters()
    return [(name, tuple(getattr(p, "ds_shape", p.shape))) for name, p in named]


def save_pretrained(module: torch.nn.Module, zero_stage: int, rank: int, path: str) -> None:
    """Write the policy as a Hugging Face folder, LoRA adapters merged (rank 0 writes; all ranks
    must call)."""
    state = dict(full_parameters(module, zero_stage))
    if rank == 0:
        plain = module.get_base_model() if lora.is_lora(module) else module
        plain.save_pretrained(path, state_dict=state, safe_serialization=True)


def save_adapter(module: torch.nn.Module, zero_stage: int, rank: int, path: str) -> None:
    """Write a LoRA learner's adapters as a PEFT adapter folder (`adapter_config.json`,
    `adapter_model.safetensors`; rank 0 writes, all ranks must call)."""
    state = lora.adapter_state(module, zero_stage)
    if rank == 0:
        module.save_pretrained(path, state_dict=state, safe_serialization=True)


def vllm_weight_sender(
    module: torch.nn.Module,
    zero_stage: int,
    dtype: str,
    backend: str,
    engines: list,
    master: tuple[str, int] | None,
    world_size: int,
    rank: int,
    timeout_s: float,
):
    """vLLM's trainer-side weight-transfer engine over `module`: `nccl`, a NCCL group of
    learner rank 0 and every engine worker (`world_size` in all), rendezvous at `master`;
    `ipc`, CUDA IPC handles of the colocated GPUs; `gloo`, the same protocol as `nccl` over a
    gloo group on CPU (`core/gloo_transfer.py`, collectives bounded by `timeout_s`). Every
    parameter goes out in the engines' `dtype`. vLLM is imported here only: the
    `object_store` path never needs it."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    class ModuleSource(WeightSource):
        """Every parameter in the engines' dtype; ZeRO-3 parameters gathered one at a time
        on all ranks in the same order."""

        def __init__(self):
            self.dtype = getattr(torch, dtype)

        def metadata(self) -> list:
            return [ParamMeta(name, self.dtype, shape) for name, shape in parameter_shapes(module)]

        def __iter__(self):
            for name, tensor in full_parameters(module, zero_stage):
                yield name, tensor.to(self.dtype)

    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        info = NCCLTrainerInitInfo(
            master_address=master[0], master_port=master[1], world_size=world_size, rank=rank
        )
    elif backend == "gloo":
        from core import gloo_transfer

        gloo_transfer.register()
        info = gloo_transfer.GlooTrainerInitInfo(
            master_address=master[0],
            master_port=master[1],
            world_size=world_size,
            timeout_s=timeout_s,
            workers_per_engine=(world_size - 1) // len(engines),
            rank=rank,
        )
    else:
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        info = IPCTrainerInitInfo(rank=rank)
    return WeightTransferTrainerFactory.trainer_init(
        info, client=EngineClient(engines, timeout_s), source=ModuleSource()
    )


INIT_GRACE_S = 10.0
"""How much longer than the push deadline the engines get to join a (re-formed) group."""


class EngineClient:
    """The engines' side of vLLM's weight-transfer protocol as the trainer engine drives it
    (vLLM's `VLLMWeightSyncClient` interface), over Ray, with a deadline on every call: each
    fans out to all engine actors and raises `DeadlineMissed` naming the engines that did not
    answer within `timeout_s`, with the phase (init, start, update, finish), or `ActorDied`
    for one that died. (vLLM's own Ray client waits forever.)"""

    def __init__(self, engines: list, timeout_s: float):
        self.engines, self.timeout_s = engines, timeout_s

    def _all(self, phase: str, method: str, *args, extra_s: float = 0.0) -> None:
        refs = [getattr(e, method).remote(*args) for e in self.engines]
        get_within(refs, self.timeout_s + extra_s, "rollout engine", phase)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        request = WeightTransferInitRequest(init_info=init_info)
        # After a failed push the surviving engines may still wait in its collective until
        # the group's own deadline (5 s past the push's) before they take the new init.
        self._all("init", "init_weight_transfer_engine", request, extra_s=INIT_GRACE_S)

    def shutdown_weight_transfer_engine(self) -> None:
        self._all("shutdown", "shutdown_weight_transfer_engine")

    def start_weight_update(self) -> None:
        self._all("start", "start_weight_update")

    def update_weights(self, update_info) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        self._all("update", "update_weights", WeightTransferUpdateRequest(update_info=update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish", "finish_weight_update")
        if weight_version is not None:
            self._all("version", "update_weight_version", weight_version)
