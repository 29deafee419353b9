"""`gloo`: vLLM's weight-transfer protocol over a gloo process group, for CPU clusters.

The two halves of one wire protocol, registered in vLLM's weight-transfer factories under
`cohort_gloo` (`register`): the trainer side runs on learner rank 0 (the sender, group rank 0)
and drives the engines through the learner's `EngineClient` (vLLM's client interface, with
deadlines); the worker side runs inside
every engine's worker (group ranks 1..). The learner and the engines drive them exactly as they
drive vLLM's `nccl` engines (`learner/export.py`, `cluster/transport.py`, the rollout actor's
protocol methods), so on CPU the tests run the code a GPU cluster runs, with only the copy
swapped: a gloo broadcast of each parameter's bytes instead of a NCCL one.

Guarantees: parameters go out one at a time in `WeightSource` order, each checked against the
metadata the engines were sent (name, dtype, shape), and arrive through vLLM's layerwise reload
(the same load path as `object_store`). Every collective has a deadline (the push's
`timeout_s` + `GROUP_GRACE_S`): a peer that stops answering makes the others raise instead of
wait, and before broadcasting the sender names any engine that did not enter the push. The
group is its own TCP store and gloo group, outside any default process group, so it coexists
with the learner ranks' group and vLLM's own. Not covered: packing several parameters per
broadcast (one per parameter is enough at the model sizes CPU training reaches).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import ClassVar

import torch
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from core.errors import DeadlineMissed

BACKEND = "cohort_gloo"
"""The factories' key (not plain `gloo`, which vLLM may one day claim for its own engine)."""

GROUP_GRACE_S = 5.0
"""The group's collectives wait this much longer than the push deadline: the sender's check
that every engine entered the push fires first and names the one that did not."""


def open_group(address: str, port: int, rank: int, world_size: int, timeout_s: float):
    """This process's handles on the transfer group, (store, group): rank 0 hosts the TCP
    store. Joining and every collective wait at most `timeout_s` + `GROUP_GRACE_S`."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s + GROUP_GRACE_S)
    store = dist.TCPStore(
        address, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False
    )
    group = dist.ProcessGroupGloo(
        dist.PrefixStore("cohort-weights", store), rank, world_size, timeout
    )
    return store, group


def broadcast(group, tensor: torch.Tensor) -> None:
    """Broadcast `tensor`'s bytes from group rank 0, in place (any dtype: gloo sees bytes)."""
    import torch.distributed as dist

    options = dist.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([tensor.view(-1).view(torch.uint8)], options).wait()


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """What an engine worker needs to join: the sender's store, the group size, its own rank
    (`rank_offset` + the worker's rank within its engine) and the collectives' deadline."""

    master_address: str
    master_port: int
    world_size: int
    rank_offset: int
    timeout_s: float


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """One push: its number, and every parameter's name, dtype name and shape, in sending
    order."""

    push: int
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


class GlooWorkerEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Engine side: receive each parameter into a fresh CPU tensor and load it through vLLM's
    layerwise reload (started and finished around the push, as vLLM's NCCL engine does)."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.store = self.group = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        self.rank = rank = init_info.rank_offset + self.parallel_config.rank
        self.store, self.group = open_group(
            init_info.master_address,
            init_info.master_port,
            rank,
            init_info.world_size,
            init_info.timeout_s,
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict) -> None:
        # the base class synchronises the accelerator afterwards, which fails without one
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialised: call init first")
        self.store.set(entered_key(update_info.push, self.rank), "1")

        def received() -> Iterator[tuple[str, torch.Tensor]]:
            for name, dtype_name, shape in zip(
                update_info.names, update_info.dtype_names, update_info.shapes, strict=True
            ):
                tensor = torch.empty(shape, dtype=getattr(torch, dtype_name))
                broadcast(self.group, tensor)
                yield name, tensor

        self.model.load_weights(received())

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        self.store = self.group = None


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """Trainer side: where rank 0 hosts the group's store, how many ranks it has (1 sender +
    every engine's workers, `workers_per_engine` each) and the push deadline."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int
    timeout_s: float
    workers_per_engine: int = 1


class GlooTrainerEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Trainer side. Every learner rank iterates the source (under ZeRO-3 each parameter's
    gather is a collective of the learner ranks); only rank 0 joins the transfer group,
    broadcasts, and drives the engines' start / update / finish."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(
        self, *, client, source: WeightSource, is_sender: bool, info: GlooTrainerInitInfo
    ) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.info = info
        self.store = self.group = None
        self.pushes = 0

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
        if source is None:
            raise ValueError("the gloo weight transfer needs a WeightSource")
        engine = cls(
            client=client,
            source=source,
            is_sender=init_info.is_sender,
            info=init_info,
        )
        if not engine.is_sender:
            return engine
        worker_info = GlooInitInfo(
            master_address=init_info.master_address,
            master_port=init_info.master_port,
            world_size=init_info.world_size,
            rank_offset=1,
            timeout_s=init_info.timeout_s,
        )
        # the engines block in their half of the rendezvous: run it beside ours
        with ThreadPoolExecutor(max_workers=1) as pool:
            joined = pool.submit(client.init_weight_transfer_engine, asdict(worker_info))
            engine.store, engine.group = open_group(
                init_info.master_address,
                init_info.master_port,
                0,
                init_info.world_size,
                init_info.timeout_s,
            )
            joined.result()
        return engine

    def send_weights(self) -> None:
        meta = self.source.metadata()
        params = checked(self.source, meta)
        if not self.is_sender:
            for _ in params:  # stay in the learner ranks' gathers
                pass
            return
        self.pushes += 1
        update = GlooUpdateInfo(
            push=self.pushes,
            names=[m.name for m in meta],
            dtype_names=[str(m.dtype).removeprefix("torch.") for m in meta],
            shapes=[list(m.shape) for m in meta],
        )
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            self.client.start_weight_update()
            received = pool.submit(self.client.update_weights, asdict(update))
            self.wait_for_engines(update.push)
            for _, tensor in params:
                broadcast(self.group, tensor.contiguous())
            received.result()
        except BaseException:
            # the other learner ranks gather every parameter with this one: finish the
            # gathers so the learner stays usable, and raise without waiting for the engines
            # (a failed push leaves them in a collective until its deadline)
            for _ in params:
                pass
            raise
        finally:
            pool.shutdown(wait=False)
        self.client.finish_weight_update()

    def wait_for_engines(self, push: int) -> None:
        """Until every engine worker entered this push's receive, at most the deadline; raise
        `DeadlineMissed` naming the engines that did not (their peers then wait in the first
        broadcast until the group's own deadline, and fail there)."""
        t0 = time.monotonic()
        missing = list(range(1, self.info.world_size))
        while missing:
            missing = [r for r in missing if not self.store.check([entered_key(push, r)])]
            if missing and time.monotonic() - t0 > self.info.timeout_s:
                late = sorted({(r - 1) // self.info.workers_per_engine for r in missing})
                raise DeadlineMissed("rollout engine", late, "update", time.monotonic() - t0)
            time.sleep(0.01 if missing else 0)

    def shutdown(self) -> None:
        self.store = self.group = None


def checked(source: WeightSource, meta: list[ParamMeta]) -> Iterator[tuple[str, torch.Tensor]]:
    """The source's parameters, each checked against the metadata the engines size their
    receive buffers from: a mismatch would load garbage or leave the engines waiting."""
    count = 0
    for (name, tensor), want in zip(source, meta, strict=True):
        got = (name, tensor.dtype, tuple(tensor.shape))
        if got != (want.name, want.dtype, tuple(want.shape)):
            raise ValueError(
                f"weight source disagrees with its metadata at parameter {count}: declared "
                f"{want.name} {want.dtype} {tuple(want.shape)}, got {name} {tensor.dtype} "
                f"{tuple(tensor.shape)}"
            )
        count += 1
        yield name, tensor


def entered_key(push: int, rank: int) -> str:
    """The store key an engine worker sets when it enters push `push`'s receive."""
    return f"entered/{push}/{rank}"


def register() -> None:
    """Add both halves to vLLM's weight-transfer factories (once per process)."""
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    for factory, engine in (
        (WeightTransferEngineFactory, GlooWorkerEngine),
        (WeightTransferTrainerFactory, GlooTrainerEngine),
    ):
        try:
            factory.register_engine(BACKEND, engine)
        except ValueError:  # registered already in this process
            pass
