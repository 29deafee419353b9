"""Weight push: how a new policy gets from the learner ranks into every rollout engine.

One `WeightTransport` interface; the driver calls `push(learner, rollout, version)` after each
optimizer step and never sees the mechanism. `object_store` works on any topology: learner rank
0 puts the full weights in Ray's object store in buckets (ZeRO-3 parameters gathered one at a
time), and each engine pulls the buckets one by one into vLLM's in-place reload, so the driver
never holds a copy. Not covered yet: the GPU transports (vLLM's native NCCL and IPC weight
transfer), which plug in behind the same interface (scale-out issue).
"""

from __future__ import annotations

from typing import Protocol

from learner.group import LearnerGroup
from rollout.pool import RolloutPool


class WeightTransport(Protocol):
    def push(self, learner: LearnerGroup, rollout: RolloutPool, version: int) -> None:
        """Make every engine hold the learner's current weights, tagged with `version`."""


class ObjectStoreTransport:
    def __init__(self, dtype: str):
        self.dtype = dtype

    def push(self, learner: LearnerGroup, rollout: RolloutPool, version: int) -> None:
        refs = learner.export_weights(self.dtype)
        rollout.load_weights(refs, version)


def make_transport(name: str, rollout_dtype: str) -> WeightTransport:
    """`auto` picks the best transport available; on CPU that is `object_store`."""
    if name in ("auto", "object_store"):
        return ObjectStoreTransport(rollout_dtype)
    raise ValueError(f"cluster.weight_transport={name!r} is not available; use object_store")
