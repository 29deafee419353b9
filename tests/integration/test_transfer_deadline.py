"""The driver's deadlines of a transfer-group push (`nccl` / `ipc` / `gloo`) on real Ray actors:
`VllmTransferTransport.push` against stand-in learner ranks and engines whose transfer is a
call that returns, or one that never answers. The transfer itself, with the sender's own
deadlines, runs in test_gloo_transfer.py."""

import time
from types import SimpleNamespace

import pytest

from cluster.transport import SEND_GRACE_S, VllmTransferTransport
from core.errors import DeadlineMissed

pytestmark = pytest.mark.integration

DEADLINE_S = 2.0


class StandIn:
    """A learner rank or an engine of the transfer protocol; `hang` makes its push call sleep
    far past the deadline (an actor that stopped answering)."""

    def __init__(self, hang: bool = False):
        self.hang = hang

    def init_weight_transfer(self, *args) -> None:
        pass

    def send_weights(self) -> None:
        time.sleep(600 if self.hang else 0)

    def update_weight_version(self, version: int) -> None:
        time.sleep(600 if self.hang else 0)


def push(ray, ranks_hang=(False, False), engines_hang=(False, False)):
    """One push through the transport on stand-ins; returns the seconds it took."""
    actor = ray.remote(num_cpus=0)(StandIn)
    learner = SimpleNamespace(ranks=[actor.remote(h) for h in ranks_hang])
    rollout = SimpleNamespace(actors=[actor.remote(h) for h in engines_hang])
    transport = VllmTransferTransport("ipc", learner, rollout, tp=1, timeout_s=DEADLINE_S)
    t0 = time.monotonic()
    try:
        transport.push(learner, rollout, version=3)
    finally:
        for a in learner.ranks + rollout.actors:
            ray.kill(a)
    return time.monotonic() - t0


def test_a_push_that_answers_in_time_returns(ray_local):
    assert push(ray_local) < DEADLINE_S


def test_a_learner_rank_that_stops_answering_is_named_with_the_send_phase(ray_local):
    with pytest.raises(DeadlineMissed) as e:
        push(ray_local, ranks_hang=(False, True))
    assert (e.value.who, e.value.late, e.value.phase) == ("learner rank", [1], "send")
    # the ranks' own deadlines on the engines fire first; the driver's comes after a grace
    assert DEADLINE_S + SEND_GRACE_S <= e.value.waited_s < DEADLINE_S + SEND_GRACE_S + 5


def test_an_engine_that_stops_answering_is_named_with_the_version_phase(ray_local):
    with pytest.raises(DeadlineMissed) as e:
        push(ray_local, engines_hang=(True, False))
    assert (e.value.who, e.value.late, e.value.phase) == ("rollout engine", [0], "version")
