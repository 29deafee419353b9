"""The driver's deadlines of a transfer-group push (`nccl` / `ipc` / `gloo`) on real Ray actors:
`VllmTransferTransport.push` against stand-in learner ranks and engines whose transfer is a
call that returns, or one that never answers. The transfer itself, with the sender's own
deadlines, runs in test_gloo_transfer.py."""

import time
from types import SimpleNamespace

import pytest
import ray

from cluster.transport import SEND_GRACE_S, VllmTransferTransport
from core.errors import DeadlineMissed

pytestmark = pytest.mark.integration

DEADLINE_S = 2.0


class StandIn:
    """A learner rank or an engine of the transfer protocol; after `hang(True)` its push calls
    sleep far past the deadline (an actor that stopped answering). Threaded, so a call that
    hangs leaves the actor answering the next test's calls."""

    def __init__(self):
        self.hangs = False

    def hang(self, hangs: bool) -> None:
        self.hangs = hangs

    def init_weight_transfer(self, *args) -> None:
        pass

    def send_weights(self) -> None:
        time.sleep(600 if self.hangs else 0)

    def update_weight_version(self, version: int) -> None:
        time.sleep(600 if self.hangs else 0)


@pytest.fixture(scope="module")
def stand_ins(ray_local):
    """Two learner ranks and two engines, shared by the tests (an actor process start is a
    second or two of CPU)."""
    actor = ray_local.remote(num_cpus=0, max_concurrency=8)(StandIn)
    learner = SimpleNamespace(ranks=[actor.remote() for _ in range(2)])
    rollout = SimpleNamespace(actors=[actor.remote() for _ in range(2)])
    yield learner, rollout
    for a in learner.ranks + rollout.actors:
        ray_local.kill(a)


def push(stand_ins, ranks_hang=(False, False), engines_hang=(False, False)):
    """One push through the transport on the stand-ins, those flagged hanging; returns the
    seconds it took."""
    learner, rollout = stand_ins
    actors = learner.ranks + rollout.actors
    ray.get([a.hang.remote(h) for a, h in zip(actors, ranks_hang + engines_hang, strict=True)])
    transport = VllmTransferTransport("ipc", learner, rollout, tp=1, timeout_s=DEADLINE_S)
    t0 = time.monotonic()
    transport.push(learner, rollout, version=3)
    return time.monotonic() - t0


def test_a_push_that_answers_in_time_returns(stand_ins):
    assert push(stand_ins) < DEADLINE_S


def test_a_learner_rank_that_stops_answering_is_named_with_the_send_phase(stand_ins):
    with pytest.raises(DeadlineMissed) as e:
        push(stand_ins, ranks_hang=(False, True))
    assert (e.value.who, e.value.late, e.value.phase) == ("learner rank", [1], "send")
    # the ranks' own deadlines on the engines fire first; the driver's comes after a grace
    assert DEADLINE_S + SEND_GRACE_S <= e.value.waited_s < DEADLINE_S + SEND_GRACE_S + 5


def test_an_engine_that_stops_answering_is_named_with_the_version_phase(stand_ins):
    with pytest.raises(DeadlineMissed) as e:
        push(stand_ins, engines_hang=(True, False))
    assert (e.value.who, e.value.late, e.value.phase) == ("rollout engine", [0], "version")
