"""Weight push: how a new policy gets from the learner ranks into every rollout engine.

One `WeightTransport` interface; the driver calls `push(learner, rollout, version)` after each
optimizer step and never sees the mechanism. `object_store` works on any topology: learner rank
0 puts the full weights in Ray's object store in buckets (ZeRO-3 parameters gathered one at a
time), and each engine pulls the buckets one by one into vLLM's in-place reload, so the driver
never holds a copy. `nccl` and `ipc` hand the transfer to vLLM's own weight-transfer engines
(`VllmTransferTransport`); they need GPUs and have not been run on CPU-only machines.
"""

from __future__ import annotations

from typing import Protocol

from learner.ranks import LearnerRanks
from rollout.pool import RolloutPool


class WeightTransport(Protocol):
    def push(self, learner: LearnerRanks, rollout: RolloutPool, version: int) -> None:
        """Make every engine hold the learner's current weights, tagged with `version`."""


class ObjectStoreTransport:
    def __init__(self, dtype: str):
        self.dtype = dtype

    def push(self, learner: LearnerRanks, rollout: RolloutPool, version: int) -> None:
        refs = learner.export_weights(self.dtype)
        rollout.load_weights(refs, version)


class VllmTransferTransport:
    """`nccl` / `ipc`: vLLM's native weight transfer (GPU). The learner ranks stream their
    parameters (ZeRO-3: gathered one at a time) through vLLM's trainer engine; rank 0 sends and
    drives the engines' start / update / finish protocol. A thin layer: the transfer itself is
    vLLM's tested code."""

    def __init__(self, backend: str, learner: LearnerRanks, rollout: RolloutPool, tp: int):
        import ray

        master = None
        if backend == "nccl":
            master = ray.get(learner.ranks[0].node_address.remote())
        world_size = 1 + len(rollout.actors) * tp
        ray.get(
            [
                r.init_weight_transfer.remote(backend, rollout.actors, master, world_size)
                for r in learner.ranks
            ]
        )

    def push(self, learner: LearnerRanks, rollout: RolloutPool, version: int) -> None:
        import ray

        ray.get([r.send_weights.remote() for r in learner.ranks])
        ray.get([a.update_weight_version.remote(version) for a in rollout.actors])


def resolve_transport(cfg) -> str:
    """The transport `cluster.weight_transport` means on this config: `auto` is `ipc` when
    colocated on GPUs, `nccl` on GPUs, `object_store` otherwise."""
    c = cfg.cluster
    if c.weight_transport != "auto":
        return c.weight_transport
    if not c.use_gpu:
        return "object_store"
    return "ipc" if c.colocate else "nccl"


def make_transport(cfg, learner: LearnerRanks, rollout: RolloutPool) -> WeightTransport:
    name = resolve_transport(cfg)
    if name == "object_store":
        return ObjectStoreTransport(cfg.model.rollout_dtype)
    return VllmTransferTransport(name, learner, rollout, cfg.cluster.rollout_tp)
