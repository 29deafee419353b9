"""The weight push's deadline without Ray: `get_within` (threads stand in for remote calls) and
`Health`'s healing (a fake transport that misses the deadline once or twice)."""

import pickle
import threading
import time
from concurrent import futures

import pytest

from cluster import health as health_module
from cluster.health import Health
from core.config import load_config
from core.errors import ActorDied, DeadlineMissed, RunStopped
from core.pools import get_within


def thread_wait(refs, num_returns, timeout):
    when = futures.FIRST_COMPLETED if num_returns == 1 else futures.ALL_COMPLETED
    done, pending = futures.wait(refs, timeout=timeout, return_when=when)
    return list(done), list(pending)


def thread_get(refs):
    return [f.result() for f in refs]


def test_get_within_names_the_calls_that_missed_the_deadline():
    release = threading.Event()
    with futures.ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(lambda: "a"), pool.submit(release.wait), pool.submit(lambda: "c")]
        t0 = time.monotonic()
        with pytest.raises(DeadlineMissed) as e:
            get_within(calls, 0.3, "rollout engine", "load", wait=thread_wait, get=thread_get)
        waited = time.monotonic() - t0
        release.set()
    assert e.value.late == [1] and e.value.phase == "load" and e.value.who == "rollout engine"
    assert 0.3 <= e.value.waited_s <= waited < 2.0  # the deadline, not the call, ends the wait
    assert str(e.value).startswith("rollout engine 1: no answer in phase `load` after 0.")


def test_get_within_returns_the_results_and_raises_a_call_s_own_error():
    with futures.ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(lambda: 1), pool.submit(lambda: 2)]
        assert get_within(calls, 5, "learner rank", "export", thread_wait, thread_get) == [1, 2]

        def dies():
            raise ConnectionError("actor died")

        calls = [pool.submit(lambda: 1), pool.submit(dies)]
        with pytest.raises(ConnectionError, match="actor died"):  # not a DeadlineMissed
            get_within(calls, 5, "learner rank", "export", thread_wait, thread_get)


def test_get_within_ends_at_once_when_an_actor_dies_and_names_it():
    import ray.exceptions

    release = threading.Event()

    def dies():
        raise ray.exceptions.RayActorError()

    with futures.ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(release.wait), pool.submit(dies), pool.submit(lambda: 3)]
        t0 = time.monotonic()
        with pytest.raises(ActorDied) as e:
            get_within(calls, 30, "learner rank", "send", thread_wait, thread_get)
        waited = time.monotonic() - t0
        release.set()
    assert (e.value.who, e.value.late, e.value.phase) == ("learner rank", [1], "send")
    assert waited < 5  # not the 30 s deadline: rank 0 still runs


def test_get_within_passes_a_fault_raised_inside_a_call_through():
    """The sender's own deadline on an engine fires inside learner rank 0: the driver sees the
    engine, not "learner rank 0"."""

    def sender():
        raise DeadlineMissed("rollout engine", [1], "update", 4.0)

    with futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(DeadlineMissed) as e:
            get_within([pool.submit(sender)], 30, "learner rank", "send", thread_wait, thread_get)
    assert (e.value.who, e.value.late, e.value.phase) == ("rollout engine", [1], "update")


class FakePool:
    """Engines 0..n-1; `restart_dead` replaces the killed ones, as `RolloutPool` does."""

    def __init__(self, n: int):
        self.actors = list(range(n))
        self.killed: list[int] = []
        self.restarted: list[int] = []

    def restart_dead(self) -> int:
        dead = [a for a in self.killed if a not in self.restarted]
        self.restarted += dead
        return len(dead)


class MissingTransport:
    """A push that misses the deadline (engines `late`, phase `phase`) `misses` times."""

    def __init__(self, misses: int, who="rollout engine", late=(0,), phase="load"):
        self.misses, self.who, self.late, self.phase = misses, who, list(late), phase
        self.pushes: list[int] = []
        self.calls: list[str] = []

    def push(self, learner, rollout, version):
        self.pushes.append(version)
        self.calls.append(f"push {version}")
        if len(self.pushes) <= self.misses:
            raise DeadlineMissed(self.who, self.late, self.phase, 5.02)

    def rejoin(self, learner, rollout):
        self.calls.append(f"rejoin {rollout.restarted}")


def health_with(transport, monkeypatch, engines=2):
    cfg = load_config("configs/smoke.yaml", ["cluster.push_timeout_s=5"])
    pool = FakePool(engines)
    monkeypatch.setattr(health_module.ray, "kill", lambda actor: pool.killed.append(actor))
    h = Health(cfg, pool, rewards=None, learner=object(), transport=transport)
    h.step = 4
    return h, pool


def test_an_engine_that_misses_the_deadline_is_restarted_and_pushed_again(monkeypatch, capsys):
    transport = MissingTransport(misses=1, late=[1])
    h, pool = health_with(transport, monkeypatch)
    h.push(4)
    assert pool.killed == [1] and pool.restarted == [1]  # the late engine, not the other one
    assert transport.pushes == [4, 4]  # pushed again, same version
    assert h.restarts["rollout"] == 1 and h.metrics()["faults/rollout_restarts"] == 1.0
    assert h.weights_version == 4
    out = capsys.readouterr().out
    assert "weight push of step 4: rollout engine 1: no answer in phase `load` after 5.0 s" in out


def test_a_second_miss_stops_the_run_resumably(monkeypatch):
    transport = MissingTransport(misses=2)
    h, _ = health_with(transport, monkeypatch)
    with pytest.raises(RunStopped) as e:
        h.push(4)
    assert transport.pushes == [4, 4] and h.restarts["rollout"] == 1
    assert h.weights_version == 0  # the engines do not hold version 4
    message = str(e.value)
    assert "missed its deadline again, after a restart: rollout engine 0" in message
    assert "phase `load` after 5.0 s (cluster.push_timeout_s=5)" in message
    assert "raise cluster.push_timeout_s" in message
    assert "read the log of rollout engine 0" in message
    assert "trainer.resume=auto" in message


def test_a_learner_rank_that_misses_the_deadline_stops_the_run_at_once(monkeypatch):
    transport = MissingTransport(misses=1, who="learner rank", late=[1], phase="export")
    h, pool = health_with(transport, monkeypatch)
    with pytest.raises(RunStopped, match="learner rank 1: no answer in phase `export`"):
        h.push(4)
    assert transport.pushes == [4] and h.restarts["rollout"] == 0 and pool.killed == []


def test_a_transfer_group_is_formed_again_after_the_restart_before_the_next_push(monkeypatch):
    """`nccl` / `ipc` / `gloo`: the restarted engine must join the group before it is pushed to."""
    transport = MissingTransport(misses=1, late=[1], phase="update")
    h, pool = health_with(transport, monkeypatch)
    h.push(4)
    assert transport.calls == ["push 4", "rejoin [1]", "push 4"]


def test_push_faults_cross_actor_boundaries_intact():
    """A sender raises `DeadlineMissed` inside learner rank 0 and Ray pickles it to the
    driver, which must still see the engine's index and the phase."""
    e = pickle.loads(pickle.dumps(DeadlineMissed("rollout engine", [1], "update", 4.2)))
    assert (e.who, e.late, e.phase, round(e.waited_s, 1)) == ("rollout engine", [1], "update", 4.2)
    d = pickle.loads(pickle.dumps(ActorDied("learner rank", [1], "send", "exited")))
    assert (d.who, d.late, d.phase, d.reason) == ("learner rank", [1], "send", "exited")
    assert str(d) == "learner rank 1 died in phase `send` (exited)"
