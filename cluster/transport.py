"""Weight push: how a new policy gets from the learner ranks into every rollout engine.

One `WeightTransport` interface; the driver calls `push(learner, rollout, version)` after each
optimizer step and never sees the mechanism. `object_store` works on any topology: learner rank
0 puts the full weights in Ray's object store in buckets (ZeRO-3 parameters gathered one at a
time), and each engine pulls the buckets one by one into vLLM's in-place reload, so the driver
never holds a copy. `nccl`, `ipc` and `gloo` hand the transfer to a weight-transfer engine in
vLLM's factory (`VllmTransferTransport`): vLLM's own for `nccl` and `ipc` (GPUs), Cohort's for
`gloo` (`core/gloo_transfer.py`, CPU), which runs the same protocol through the same code here,
in the learner and in the engines, so CPU tests cover what a GPU cluster runs apart from the
copy itself.
"""

from __future__ import annotations

from typing import Protocol

from core.pools import get_within
from learner.ranks import LearnerRanks
from rollout.pool import RolloutPool


class WeightTransport(Protocol):
    def push(self, learner: LearnerRanks, rollout: RolloutPool, version: int) -> None:
        """Make every engine hold the learner's current weights, tagged with `version`; raise
        `DeadlineMissed` for actors that do not answer within `cluster.push_timeout_s`,
        `ActorDied` for one that died."""

    def rejoin(self, learner: LearnerRanks, rollout: RolloutPool) -> None:
        """After engines were restarted: make the new ones reachable by the next push."""


class ObjectStoreTransport:
    def __init__(self, dtype: str):
        self.dtype = dtype

    def push(self, learner: LearnerRanks, rollout: RolloutPool, version: int) -> None:
        refs = learner.export_weights(self.dtype)
        rollout.load_weights(refs, version)

    def rejoin(self, learner: LearnerRanks, rollout: RolloutPool) -> None:
        pass  # every push reaches whichever engines the pool holds


class AdapterTransport:
    """`learner.lora.push=adapter`: the LoRA adapters alone (a few percent of the weights) through
    Ray's object store; each engine serves them on its unchanged base as a vLLM LoRA request
    (`RolloutActor.load_adapter`). A restarted engine gets them with the healing push."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def push(self, learner: LearnerRanks, rollout: RolloutPool, version: int) -> None:
        [ref] = learner.export_adapter(self.dtype)
        rollout.load_adapter(ref, version)

    def rejoin(self, learner: LearnerRanks, rollout: RolloutPool) -> None:
        pass  # every push reaches whichever engines the pool holds


SEND_GRACE_S = 15.0
"""How much longer than `cluster.push_timeout_s` the driver waits for the ranks' send or join:
the sender's own deadlines (on each engine call, the engines' join at most 10 s later, and on
each `gloo` collective) fire first and name the engine and the phase."""


class VllmTransferTransport:
    """`nccl` / `ipc` / `gloo`: a weight-transfer engine in vLLM's factory. The learner ranks
    stream their parameters (ZeRO-3: gathered one at a time) through the trainer-side engine;
    rank 0 sends and drives the engines' init / start / update / finish protocol, each call
    with the push deadline (`learner/export.py`'s `EngineClient`). After engines are restarted
    the whole transfer group is formed again (`rejoin`), so a failed push heals as with
    `object_store`."""

    def __init__(
        self, backend: str, learner: LearnerRanks, rollout: RolloutPool, tp: int, timeout_s: float
    ):
        self.backend, self.tp, self.timeout_s = backend, tp, timeout_s
        self.rejoin(learner, rollout)

    def rejoin(self, learner: LearnerRanks, rollout: RolloutPool) -> None:
        """Form the transfer group of learner rank 0 and every engine's workers (all ranks
        join: each builds its trainer-side engine), rendezvous at a fresh port."""
        import ray

        master = None
        if self.backend in ("nccl", "gloo"):
            master = ray.get(learner.ranks[0].node_address.remote())
        world_size = 1 + len(rollout.actors) * self.tp
        joins = [
            r.init_weight_transfer.remote(
                self.backend, rollout.actors, master, world_size, self.timeout_s
            )
            for r in learner.ranks
        ]
        get_within(joins, self.timeout_s + SEND_GRACE_S, "learner rank", "init")

    def push(self, learner: LearnerRanks, rollout: RolloutPool, version: int) -> None:
        sends = [r.send_weights.remote() for r in learner.ranks]
        get_within(sends, self.timeout_s + SEND_GRACE_S, "learner rank", "send")
        updates = [a.update_weight_version.remote(version) for a in rollout.actors]
        get_within(updates, self.timeout_s, "rollout engine", "version")


def resolve_transport(cfg) -> str:
    """The transport `cluster.weight_transport` means on this config: `adapter` when a LoRA
    learner pushes its adapters alone; else `auto` is `ipc` when colocated on GPUs, `nccl` on
    GPUs, `object_store` otherwise."""
    c = cfg.cluster
    if cfg.learner.lora.rank and cfg.learner.lora.push == "adapter":
        return "adapter"
    if c.weight_transport != "auto":
        return c.weight_transport
    if not c.use_gpu:
        return "object_store"
    return "ipc" if c.colocate else "nccl"


def make_transport(cfg, learner: LearnerRanks, rollout: RolloutPool) -> WeightTransport:
    name = resolve_transport(cfg)
    if name == "object_store":
        return ObjectStoreTransport(cfg.model.rollout_dtype)
    if name == "adapter":
        return AdapterTransport(cfg.model.rollout_dtype)
    c = cfg.cluster
    return VllmTransferTransport(name, learner, rollout, c.rollout_tp, c.push_timeout_s)
