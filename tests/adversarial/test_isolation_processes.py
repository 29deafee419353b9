"""Generated code starts processes, signals, traces, and exhausts resources through `code_tests`.

One attack per test case; how attacks are built, run (with a control run without isolation)
and judged is in code_attacks.py. Those that would spoil the others if they got through (killing
every process, the harness worker, a fork bomb) run alone after the rest. A case skips, naming
the layers, when none of the layers that would stop it is active here
(`reward.isolation.probe()`).
"""

from __future__ import annotations

import string
import time
import uuid

import pytest

from reward.code_exec import code_tests, set_policy
from reward.isolation import Policy, missing_for_strict, strict_message
from tests.adversarial.code_attacks import (
    DEADLINE_S,
    MARGIN_S,
    PER_TEST_S,
    ROWS,
    Attack,
    Runs,
    assert_stopped,
    attack_param,
    attack_runs,
    breach,
)
from tests.adversarial.targets import (
    FILES,
    LIMITS,
    NAMESPACES,
    SCOPES,
    SECCOMP,
    alive,
    processes_named,
    skip_unless_stoppable,
)

pytestmark = pytest.mark.skipif(
    bool(missing_for_strict()), reason=strict_message(missing_for_strict() or ["landlock"])
)

SETSID_CHILD = """
import ctypes, os, time
try:
    child = os.fork()
except OSError:
    child = -1
if child == 0:
    os.setsid()
    ctypes.CDLL(None).prctl(15, b"$marker", 0, 0, 0)  # PR_SET_NAME: found by it afterwards
    time.sleep(120)
    os._exit(0)
a, b = map(int, input().split())
print(a + b if child > 0 else -1)
"""

FLOOD_STDOUT = """
import sys
a, b = map(int, input().split())
print(a + b, flush=True)
chunk = "x" * 2**16
while True:
    sys.stdout.write(chunk)
"""

IGNORE_THE_ALARM = """
import signal
signal.signal(signal.SIGALRM, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})


def add(a, b):
    while True:
        pass
"""

ATTACKS = [
    # Processes
    Attack(
        "start_a_process",
        breach("""
        import subprocess
        return subprocess.run([sys.executable, "-c", "pass"], timeout=5).returncode == 0
    """),
        (SECCOMP,),
        control=True,
    ),
    Attack(
        "setsid_child_holds_stdout",
        SETSID_CHILD,
        (SECCOMP, NAMESPACES),
        control=True,
        row="cases",
        unharmed=lambda t: not processes_named(t.marker),
    ),
    Attack(
        "signal_every_process",
        breach("os.kill(-1, 0)\nreturn True"),
        (NAMESPACES, SCOPES),
        control=True,
    ),
    Attack(
        "kill_a_process_by_pid",
        breach("os.kill($victim_pid, signal.SIGKILL)\nreturn True"),
        (NAMESPACES, SCOPES),
        control=True,
        unharmed=lambda t: alive(t.victim.pid),
    ),
    Attack(
        "kill_every_process",
        breach("os.kill(-1, signal.SIGKILL)\nreturn True"),
        (NAMESPACES, SCOPES),
        spoils_others=True,
        unharmed=lambda t: all(map(alive, (t.worker_pid, t.victim.pid, t.bystander.pid))),
    ),
    Attack(
        "kill_the_harness_worker",
        breach("os.kill($worker_pid, signal.SIGKILL)\nreturn True"),
        (NAMESPACES, SCOPES),
        spoils_others=True,
        unharmed=lambda t: alive(t.worker_pid),
    ),
    Attack(
        "fork_bomb",
        breach("""
        import time
        children = 0
        for _ in range(200):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
        return children == 200
    """),
        (SECCOMP,),
        spoils_others=True,
    ),
    # Other processes' memory and descriptors
    Attack(
        "ptrace_a_process",
        breach("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        seize = [ctypes.c_long(x) for x in (0x4206, $bystander_pid, 0, 0)]  # PTRACE_SEIZE
        return libc.syscall($sys_ptrace, *seize) == 0
    """),
        (SECCOMP, NAMESPACES, FILES),
        control=True,
    ),
    Attack(
        "take_a_file_descriptor_of_the_worker",
        breach("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = libc.syscall($sys_pidfd_open, ctypes.c_long($worker_pid), ctypes.c_long(0))
        args = [ctypes.c_long(x) for x in (pidfd, 0, 0)]
        return pidfd >= 0 and libc.syscall($sys_pidfd_getfd, *args) >= 0
    """),
        (SECCOMP, NAMESPACES, FILES),
        control=True,
    ),
    # Resources
    Attack(
        "memory_in_threads",
        breach("""
        import threading
        blocks = []
        def grab():
            try:
                blocks.append(bytearray(200 * 2**20))
            except MemoryError:
                pass
        threads = [threading.Thread(target=grab) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return len(blocks) == 4
    """),
        (LIMITS,),
    ),
    Attack(
        "memory_in_children",
        breach("""
        import time
        children = []
        for _ in range(3):
            child = os.fork()
            if child == 0:
                block = bytearray(256 * 2**20)
                time.sleep(0.3)
                os._exit(0)
            children.append(child)
        return all(os.waitstatus_to_exitcode(os.waitpid(c, 0)[1]) == 0 for c in children)
    """),
        (SECCOMP,),
    ),
    Attack(
        "fill_the_disk",
        breach("""
        written = 0
        for i in range(64):
            with open(f"fill{i}", "wb") as f:
                for _ in range(16):
                    written += f.write(bytes(2**20))
        return written >= 2**30
    """),
        (NAMESPACES,),
        unharmed=lambda t: t.most_disk_used() < 2**29,
    ),
    Attack("flood_stdout", FLOOD_STDOUT, (), row="cases"),
    Attack("busy_loop", "def add(a, b):\n    while True:\n        pass\n", ()),
    Attack("ignore_the_alarm_and_loop", IGNORE_THE_ALARM, ()),
]

DENIED_SYSCALLS = {
    # name: arguments that fail with an errno other than EPERM (or succeed) without the filter
    "ptrace": (0x4206, -5, 0, 0),
    "pidfd_getfd": (-1, 0, 0),
    "process_vm_readv": (-5, 0, 1, 0, 1, 0),
    "kcmp": (-5, -5, 0, 0, 0),
    "unshare": (0,),
    "setns": (-1, 0),
    "bpf": (-1, 0, 0),
    "perf_event_open": (0, 0, -1, -1, 0),
    "keyctl": (-1, 0, 0, 0, 0),
    "userfaultfd": (-1,),
    "io_uring_setup": (0, 0),
}


def eperm_probe(name: str) -> str:
    """A completion whose `add` is right only if system call `name` failed with EPERM."""
    args = ", ".join(f"ctypes.c_long({a})" for a in DENIED_SYSCALLS[name])
    return (
        "import ctypes, errno\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"RESULT = libc.syscall($sys_{name}, {args})\n"
        "ERRNO = ctypes.get_errno()\n\n\n"
        "def add(a, b):\n"
        "    return a + b if RESULT == -1 and ERRNO == errno.EPERM else -1\n"
    )


PROBES = [
    Attack(f"eperm_{name}", eperm_probe(name), (SECCOMP,), control=True) for name in DENIED_SYSCALLS
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with attack_runs(tmp_path_factory, ATTACKS + PROBES) as runs:
        yield runs


@pytest.mark.parametrize("attack", [attack_param(a) for a in ATTACKS])
def test_generated_code_attack_is_stopped(attack: Attack, runs: Runs):
    assert_stopped(attack, runs)


@pytest.mark.parametrize("probe", [attack_param(p) for p in PROBES])
def test_denied_system_call_fails_with_eperm(probe: Attack, runs: Runs):
    # Here the completion is right only when the call failed with EPERM; without the filter the
    # same call fails otherwise (or succeeds), so the control scores 0.
    _, confined = runs.confined[probe.name]
    _, unconfined = runs.control[probe.name]
    assert confined.components == {"code_tests": 1.0}
    assert unconfined.components == {"code_tests": 0.0}


@skip_unless_stoppable((NAMESPACES,))
def test_a_setsid_child_dies_with_the_program_when_processes_are_allowed():
    # code_tests has no kwarg for `max_processes`; a process sets its runners' policy with
    # `set_policy`. Here this process does, and runs code_tests itself.
    marker = f"cohortadv{uuid.uuid4().hex[:6]}"
    program = string.Template(SETSID_CHILD).substitute(marker=marker)
    set_policy(Policy(max_processes=4))
    try:
        started = time.monotonic()
        score = code_tests(program, prompt="", answer="", row=ROWS["cases"], per_test_s=PER_TEST_S)
        seconds = time.monotonic() - started
    finally:
        set_policy(Policy())
    assert score == 1.0  # the child was started and held stdout while the program exited
    assert seconds < DEADLINE_S + MARGIN_S
    assert processes_named(marker) == []  # its pid namespace ended with the program


def test_the_worker_survives_and_later_calls_score_right(runs: Runs):
    assert runs.later.components == {"code_tests": 1.0} and not runs.later.failed
    assert runs.workers_after == runs.workers_before and runs.replaced == 0
    assert alive(runs.workers_before[0])
