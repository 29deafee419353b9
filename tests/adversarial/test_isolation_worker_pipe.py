"""A reward function writes to its worker's pipe and to the other descriptors the worker holds.

The sandbox takes from a worker's pipe only JSON replies checked against the schema, so what a
function writes there makes its task a `crash` (the worker is replaced), runs nothing in the
parent, and leaves every later call right. The worker also inherits descriptors from the
multiprocessing forkserver it was forked from (the forkserver's "alive" pipe and the resource
tracker's pipe); what is written to those must not reach other samples or the machine either.
Everything runs under the default isolation (`strict`) through a real `RewardActor` (no Ray).
"""

from __future__ import annotations

import base64
import os
import pickle
import string
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from reward.actor import RewardActor
from reward.scoring import Score
from tests.adversarial.targets import FILES, alive, group, skip_unless_stoppable

REPO = Path(__file__).resolve().parents[2]
SLOW_S = 1.5
"""How long the completion "slow" sleeps: it is still running while another task attacks."""

PIPE = r'''
import base64, json, os, stat, struct, time
from multiprocessing import resource_tracker


def _frame(message):
    """`message` as multiprocessing.Connection frames it."""
    return struct.pack("!i", len(message)) + message


def _to_every_fd(data, sockets_only):
    for fd in range(3, 101):
        try:
            if not sockets_only or stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.write(fd, data)
        except OSError:
            pass


def pipe(completion, **_):
    if completion == "garbage_on_the_reply_pipe":
        _to_every_fd(b"\xff\x00garbage\n" * 64, sockets_only=True)
    elif completion == "garbage_on_every_fd":
        _to_every_fd(b"\xff\x00garbage\n" * 64, sockets_only=False)
    elif completion == "reply_for_another_task":
        outcome = {"value": 1000.0, "components": {}, "seconds": 0.0, "kind": "", "error": "",
                   "traceback": ""}
        reply = {"task": 10**6, "outcomes": [outcome]}
        _to_every_fd(_frame(json.dumps(reply).encode()), sockets_only=True)
    elif completion == "pickle_payload":
        _to_every_fd(_frame(base64.b64decode("$payload")), sockets_only=True)
    elif completion == "register_shared_memory_for_removal":
        line = b"REGISTER:/$shm_name:shared_memory\n"
        os.write(resource_tracker._resource_tracker._fd, line)
    elif completion == "slow":
        time.sleep($slow_s)
    return float(len(completion))
'''


class Boom:
    """Runs a shell command when unpickled."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_pipe_function(directory: Path, unpickled: Path, shm_name: str = "unused") -> None:
    payload = base64.b64encode(pickle.dumps(Boom(f"touch {unpickled}"))).decode()
    source = string.Template(PIPE).substitute(payload=payload, shm_name=shm_name, slow_s=SLOW_S)
    (directory / "pipe.py").write_text(source)


def rewards(scores: list[list[Score]]) -> list[list[float]]:
    return [[s.reward for s in row] for row in scores]


@pytest.fixture
def actor(tmp_path):
    write_pipe_function(tmp_path, tmp_path / "unpickled")
    actor = RewardActor([{"fn": "pipe.py:pipe"}], "exclude", 0.0, str(tmp_path), {"workers": 2})
    yield actor
    actor.close()


def crash_then_right(actor: RewardActor, attack: str) -> Score:
    """Score `attack` alone (it must be a crash), then check that the same actor scores right;
    returns the attack's score."""
    [[bad]] = actor.score([group([attack])])
    assert bad.kinds == {"pipe": "crash"} and bad.reward == 0.0 and bad.excluded
    assert rewards(actor.score([group(["ab", "abc"]), group(["a"])])) == [[2.0, 3.0], [1.0]]
    return bad


def test_garbage_on_the_reply_pipe_is_a_crash_of_that_task(actor):
    crash_then_right(actor, "garbage_on_the_reply_pipe")
    assert actor.sandboxes[0].replaced == 1


def test_a_reply_for_another_task_is_a_crash(actor):
    bad = crash_then_right(actor, "reply_for_another_task")
    assert "malformed reply" in bad.errors["pipe"]


def test_a_pickle_on_the_pipe_is_never_unpickled(actor, tmp_path):
    # The payload is live: unpickled here, it runs its command.
    works = tmp_path / "the_payload_works"
    pickle.loads(pickle.dumps(Boom(f"touch {works}")))
    assert works.exists()
    bad = crash_then_right(actor, "pickle_payload")
    assert "malformed reply" in bad.errors["pipe"]
    time.sleep(0.2)
    assert not (tmp_path / "unpickled").exists()


def test_garbage_on_every_fd_spares_the_samples_running_beside_it(actor):
    # Worker 0 takes "slow"; worker 1 takes the attack while "slow" is still running.
    [[slow, bad, *rest]] = actor.score([group(["slow", "garbage_on_every_fd", "ab"])])
    assert bad.kinds == {"pipe": "crash"}
    assert (slow.kinds, slow.reward, [s.reward for s in rest]) == ({}, 4.0, [2.0])
    assert rewards(actor.score([group(["ab", "abc"]), group(["a"])])) == [[2.0, 3.0], [1.0]]


RUN_ONE_ACTOR = """
import sys
from multiprocessing import resource_tracker

from reward.actor import RewardActor
from tests.adversarial.targets import group

if __name__ == "__main__":
    actor = RewardActor([{"fn": "pipe.py:pipe"}], "exclude", 0.0, sys.argv[1], {"workers": 1})
    [[score]] = actor.score([group([sys.argv[2]])])
    actor.close()
    print(score.reward, resource_tracker._resource_tracker._pid)
"""


@skip_unless_stoppable((FILES,))
def test_a_reward_function_cannot_remove_shared_memory_through_the_resource_tracker(tmp_path):
    shm = Path("/dev/shm") / f"cohort-adversarial-{uuid.uuid4().hex[:12]}"
    shm.write_text("shared memory of another program")
    write_pipe_function(tmp_path, tmp_path / "unpickled", shm_name=shm.name)
    (tmp_path / "run_one_actor.py").write_text(RUN_ONE_ACTOR)
    try:
        # Its own process, so that its resource tracker exits (and cleans up) within the test.
        done = subprocess.run(
            [
                sys.executable,
                str(tmp_path / "run_one_actor.py"),
                str(tmp_path),
                "register_shared_memory_for_removal",
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        reward, tracker = done.stdout.split()
        # The worker closed the inherited tracker pipe: the write fails (an exception, 0.0).
        assert float(reward) == 0.0
        deadline = time.monotonic() + 10
        while alive(int(tracker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(int(tracker))
        assert shm.exists()
    finally:
        shm.unlink(missing_ok=True)
