"""A user reward function attacks the machine, one attack per test case.

`hostile.py` dispatches on the completion: completion "<attack>" runs `attack_<attack>()` and
scores 1.0 if it got through, 0.0 if it was stopped (an exception counts as stopped); any other
completion scores its length. All attacks go through a real `RewardActor` (no Ray) under the
default isolation (`strict`), in one call, and again with `isolation: off` as a control, where
each must get through: proof that the attack works and that the sandbox is what stops it. Side
effects are checked directly. A case skips, naming the layers, when none of the layers that
would stop it is active here (`reward.isolation.probe()`).

Attacks on the worker's pipe are in test_isolation_worker_pipe.py.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path

import pytest

from reward.actor import RewardActor
from reward.scoring import Score
from tests.adversarial.targets import (
    FILES,
    SCOPES,
    SECCOMP,
    SECRET,
    SECRET_VAR,
    SYSCALLS,
    TCP,
    Targets,
    alive,
    environ_of,
    group,
    skip_unless_stoppable,
)

HOSTILE = r'''
import json, os, signal, socket

T = json.loads($targets)


def hostile(completion, **_):
    attack = globals().get("attack_" + completion)
    if attack is None:
        return float(len(completion))
    try:
        return 1.0 if attack() is True else 0.0
    except Exception:
        return 0.0


def granted(completion, **_):
    """Configured with `env: [$secret_var]`."""
    return 1.0 if os.environ.get("$secret_var") == T["secret"] else 0.0


def networked(completion, **_):
    """Configured with `network: true`."""
    with socket.create_connection(("127.0.0.1", T["tcp_port"]), timeout=2):
        return 1.0


def attack_read_etc_passwd():
    return "root:" in open("/etc/passwd").read()


def attack_read_the_expected_answers():
    return T["secret"] in open(T["answers"]).read()


def attack_list_the_home_directory():
    return isinstance(os.listdir(T["home"]), list)


def attack_write_a_file_outside():
    with open(T["planted"], "w") as f:
        f.write("planted by a reward function")
    return True


def attack_delete_a_file_outside():
    os.remove(T["doomed"])
    return True


def attack_secret_in_the_environment():
    return T["secret"] in repr(dict(os.environ))


def attack_secret_in_proc_environ():
    for pid in ("self", os.getppid(), T["bystander_pid"]):
        try:
            if T["secret"].encode() in open(f"/proc/{pid}/environ", "rb").read():
                return True
        except OSError:
            pass
    return False


def attack_tcp_connect_to_a_listener():
    with socket.create_connection(("127.0.0.1", T["tcp_port"]), timeout=1):
        return True


def attack_udp_send():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(T["secret"].encode(), ("127.0.0.1", T["udp_port"]))
    return True


def attack_connect_to_an_abstract_unix_socket():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect("\0" + T["abstract"])
    return True


def attack_kill_a_process_by_pid():
    os.kill(T["victim_pid"], signal.SIGKILL)
    return True


def attack_signal_the_test_process():
    os.kill(T["test_pid"], 0)
    return True


def attack_ptrace_a_process():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    seize = [ctypes.c_long(x) for x in (0x4206, T["bystander_pid"], 0, 0)]  # PTRACE_SEIZE
    return libc.syscall(T["sys_ptrace"], *seize) == 0


def attack_take_a_file_descriptor_of_a_process():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(T["sys_pidfd_open"], ctypes.c_long(T["bystander_pid"]), ctypes.c_long(0))
    args = [ctypes.c_long(x) for x in (pidfd, 0, 0)]
    return pidfd >= 0 and libc.syscall(T["sys_pidfd_getfd"], *args) >= 0
'''

ATTACKS = {
    # name: (the layers that stop it, any one of them; whether the side effect it is after did
    # not happen, checked on the targets)
    "read_etc_passwd": ((FILES,), None),
    "read_the_expected_answers": ((FILES,), None),
    "list_the_home_directory": ((FILES,), None),
    "write_a_file_outside": ((FILES,), lambda t: not t.planted.exists()),
    "delete_a_file_outside": ((FILES,), lambda t: t.doomed.exists()),
    "secret_in_proc_environ": ((FILES,), None),
    "tcp_connect_to_a_listener": ((SECCOMP, TCP), lambda t: t.tcp_connections() == 0),
    "udp_send": ((SECCOMP,), lambda t: t.udp_datagrams() == 0),
    "connect_to_an_abstract_unix_socket": (
        (SECCOMP, SCOPES),
        lambda t: t.abstract_connections() == 0,
    ),
    "kill_a_process_by_pid": ((SCOPES,), lambda t: alive(t.victim.pid)),
    "signal_the_test_process": ((SCOPES,), None),
    "ptrace_a_process": ((SECCOMP, FILES), None),
    "take_a_file_descriptor_of_a_process": ((SECCOMP, FILES), None),
}


def write_hostile(directory: Path, targets: Targets) -> None:
    fields = json.dumps(targets.fields())
    source = string.Template(HOSTILE).substitute(targets=repr(fields), secret_var=SECRET_VAR)
    (directory / "hostile.py").write_text(source)


@dataclass
class World:
    """A hostile function's targets, its actor, and the score of every attack."""

    targets: Targets
    actor: RewardActor
    scores: dict[str, Score]


def build_world(directory: Path, **sandbox) -> World:
    targets = Targets(directory / "targets")
    write_hostile(directory, targets)
    options = {"workers": 1, "timeout_s": 10.0} | sandbox
    actor = RewardActor([{"fn": "hostile.py:hostile"}], "exclude", 0.0, str(directory), options)
    names = [*ATTACKS, "secret_in_the_environment"]
    [row] = actor.score([group(names)])
    return World(targets, actor, dict(zip(names, row, strict=True)))


@pytest.fixture(scope="module")
def confined(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("confined"))
    yield world
    world.actor.close()
    world.targets.close()


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("control"), isolation="off")
    yield world
    world.actor.close()
    world.targets.close()


def attack_param(name: str):
    stoppers, _ = ATTACKS[name]
    marks = [skip_unless_stoppable(stoppers)]
    if name in ("ptrace_a_process", "take_a_file_descriptor_of_a_process"):
        marks.append(pytest.mark.skipif(not SYSCALLS, reason="no system call numbers here"))
    return pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", [attack_param(n) for n in ATTACKS])
def test_reward_function_attack_is_stopped(name: str, confined: World, control: World):
    _, unharmed = ATTACKS[name]
    attacked = confined.scores[name]
    assert attacked.components == {"hostile": 0.0} and not attacked.failed, attacked.errors
    assert control.scores[name].components == {"hostile": 1.0}, "it works without isolation"
    if unharmed:
        assert unharmed(confined.targets)
        assert not unharmed(control.targets)


def test_reward_function_does_not_see_the_runs_environment(confined: World):
    assert confined.scores["secret_in_the_environment"].components == {"hostile": 0.0}
    # The secret is there to keep out (this process has it, and a function granted it by `env`
    # sees it), yet not even the environment the worker started with holds it: the forkserver
    # the workers come from starts with a clean one.
    assert os.environ[SECRET_VAR] == SECRET
    [worker] = [w.process.pid for w in confined.actor.sandboxes[0].workers]
    assert SECRET.encode() not in environ_of(worker)
    configs = [{"fn": "hostile.py:granted", "env": [SECRET_VAR]}, {"fn": "hostile.py:hostile"}]
    directory = confined.targets.root.parent
    actor = RewardActor(configs, "exclude", 0.0, str(directory), {"workers": 1})
    try:
        [[score]] = actor.score([group(["secret_in_the_environment"])])
    finally:
        actor.close()
    assert score.components == {"granted": 1.0, "hostile": 0.0}


@skip_unless_stoppable((SECCOMP, TCP))
def test_only_the_function_granted_the_network_reaches_it(tmp_path):
    targets = Targets(tmp_path / "targets")
    write_hostile(tmp_path, targets)
    configs = [{"fn": "hostile.py:hostile"}, {"fn": "hostile.py:networked", "network": True}]
    actor = RewardActor(configs, "exclude", 0.0, str(tmp_path), {"workers": 1})
    try:
        [[score]] = actor.score([group(["tcp_connect_to_a_listener"])])
        assert len(actor.sandboxes) == 2  # a grant to one function is never a grant to another
    finally:
        actor.close()
        connections = targets.tcp_connections()
        targets.close()
    assert score.components == {"hostile": 0.0, "networked": 1.0}
    assert connections == 1
