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

from core.pools import get_within
from learner.ranks import LearnerRanks
from rollout.pool import RolloutPool


class WeightTransport(Protocol):
    heals_engines: bool
    """Whether an engine restarted after a missed push deadline can be pushed to again."""

    def push(self, learner: LearnerRanks, rollout: RolloutPool, version: int) -> None:
        """Make every engine hold the learner's current weights, tagged with `version`; raise
        `DeadlineMissed` for actors that do not answer within `cluster.push_timeout_s`."""


class ObjectStoreTransport:
    heals_engines = True

    def __init__(self, dtype: str):
        self.dtype = dtype

    def push(self, learner: LearnerRanks, rollout: RolloutPool, version: int) -> None:
        refs = learner.export_weights(self.dtype)
        rollout.load_weights(refs, version)


class VllmTransferTransport:
    """`nccl` / `ipc`: vLLM's native weight transfer (GPU). The learner ranks stream their
    parameters (ZeRO-3: gathered one at a time) through vLLM's trainer engine; rank 0 sends and
    drives the engines' start / update / finish protocol. A thin layer: the transfer itself is
    vLLM's tested code. A push that misses `cluster.push_timeout_s` is not healed: the
    transfer group was formed at start, and a restarted engine is not in it."""

    heals_engines = False

    def __init__(
        self, backend: str, learner: LearnerRanks, rollout: RolloutPool, tp: int, timeout_s: float
    ):
        import ray

        self.timeout_s = timeout_s
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
        sends = [r.send_weights.remote() for r in learner.ranks]
        get_within(sends, self.timeout_s, "learner rank", "send")
        updates = [a.update_weight_version.remote(version) for a in rollout.actors]
        get_within(updates, self.timeout_s, "rollout engine", "version")


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
    c = cfg.cluster
    return VllmTransferTransport(name, learner, rollout, c.rollout_tp, c.push_timeout_s)
