"""What the isolation attacks aim at, and the checks the attack modules share.

`Targets` is one set of things an attacker wants, in a directory of the test's own: a file
holding the expected answers and a secret, a file to delete, paths to create, a TCP and a UDP
listener, an abstract unix socket, and two `sleep` processes started with the secret in their
environment (one to kill, one to trace). Each actor under attack gets its own set, so a control
run (isolation off, where the attacks must get through) never touches the confined run's targets.

The secret is also put in this process's environment when this module is imported, before any
test starts a reward worker, so every worker inherits it (the sandbox's forkserver is started by
the first worker of the session and keeps the environment it was started with).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from core.records import Group, Prompt, Sample
from reward.isolation import probe

SECRET_VAR = "COHORT_TEST_SECRET"
SECRET = f"cohort-secret-{uuid.uuid4().hex}"
os.environ[SECRET_VAR] = SECRET

FILES = "landlock (file system)"
TCP = "landlock (tcp)"
SCOPES = "landlock (signals, abstract sockets)"
SECCOMP = "seccomp"
NAMESPACES = "namespaces (pid, network, mount)"
LIMITS = "resource limits"

_NAMES = ("ptrace", "pidfd_open", "pidfd_getfd", "process_vm_readv", "kcmp", "mount", "unshare")
_NAMES += ("setns", "bpf", "perf_event_open", "keyctl", "userfaultfd", "io_uring_setup")
SYSCALLS: dict[str, int] = dict(
    zip(
        _NAMES,
        {
            "x86_64": (101, 434, 438, 310, 312, 165, 272, 308, 321, 298, 250, 323, 425),
            "aarch64": (117, 434, 438, 270, 272, 40, 97, 268, 280, 241, 219, 282, 425),
        }.get(platform.machine(), ()),
    )
)
"""System call numbers of this architecture, for attacks made through `ctypes` (empty where
the architecture is not listed: those attacks skip)."""


@functools.cache
def layers() -> dict[str, str]:
    """`reward.isolation.probe()` of this machine, probed once."""
    return probe()


def can_stop(stoppers: tuple[str, ...]) -> bool:
    """Whether one of `stoppers` (isolation layers, any of which stops an attack) is active;
    an attack that no layer stops (the harness's own design stops it) can always run."""
    return not stoppers or any(layers()[name].startswith("yes") for name in stoppers)


def skip_unless_stoppable(stoppers: tuple[str, ...]) -> pytest.MarkDecorator:
    """Skip a test when none of the layers that would stop its attack is active here."""
    reasons = "; ".join(f"{name}: {layers()[name]}" for name in stoppers)
    return pytest.mark.skipif(not can_stop(stoppers), reason=f"no layer to stop it ({reasons})")


def group(texts: list[str], fields: dict | None = None) -> Group:
    """One prompt with a sample per text."""
    prompt = Prompt(id="train:0", text="q", token_ids=[1], answer="", fields=fields or {})
    return Group(prompt, [Sample([1] * max(1, len(t)), t, [], "stop", 0) for t in texts])


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def environ_of(pid: int) -> bytes:
    """The environment process `pid` was started with, as /proc shows it (b"" if unreadable)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def processes_named(name: str) -> list[int]:
    """Live processes whose name (/proc/<pid>/comm) is `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if alive(pid)]


class Targets:
    """One set of targets in `root` (see the module docstring); `close()` removes them."""

    def __init__(self, root: Path, worker_pid: int = 0):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.worker_pid = worker_pid
        """The reward worker the attacks run under (0 when it does not matter)."""
        self.answers = root / "answers.json"
        self.answers.write_text(json.dumps({"add(20, 22)": 42, "token": SECRET}))
        self.doomed = root / "keep_me.txt"
        self.doomed.write_text("still here")
        self.planted = root / "planted.txt"
        self.linked = root / "planted_through_a_link.txt"
        self.shm = Path("/dev/shm") / f"cohort-adversarial-{uuid.uuid4().hex[:12]}"
        self.marker = f"cohortadv{uuid.uuid4().hex[:6]}"
        """A process name (15 characters at most) for children an attack tries to leave."""
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.abstract_name = f"cohort-adversarial-{uuid.uuid4().hex}"
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind("\0" + self.abstract_name)
        self.abstract.listen()
        for listener in (self.tcp, self.udp, self.abstract):
            listener.setblocking(False)
        self.reached = {"tcp": 0, "udp": 0, "abstract": 0}
        env = {"PATH": os.defpath, SECRET_VAR: SECRET}
        self.victim = subprocess.Popen(["sleep", "600"], env=env)
        self.bystander = subprocess.Popen(["sleep", "600"], env=env)
        self.disk_free = shutil.disk_usage(tempfile.gettempdir()).free
        self.lowest_disk_free = self.disk_free
        self.watching = threading.Event()
        self.watching.set()
        self.disk_watch = threading.Thread(target=self._watch_disk, daemon=True)
        self.disk_watch.start()

    def fields(self, **extra: object) -> dict[str, object]:
        """The values an attack's source is written with (`string.Template` names)."""
        return {
            "secret": SECRET,
            "answers": str(self.answers),
            "doomed": str(self.doomed),
            "planted": str(self.planted),
            "root": str(self.root),
            "linked": str(self.linked),
            "shm": str(self.shm),
            "marker": self.marker,
            "home": str(Path.home()),
            "tcp_port": self.tcp.getsockname()[1],
            "udp_port": self.udp.getsockname()[1],
            "abstract": self.abstract_name,
            "victim_pid": self.victim.pid,
            "bystander_pid": self.bystander.pid,
            "test_pid": os.getpid(),
            "worker_pid": self.worker_pid,
            **{f"sys_{name}": number for name, number in SYSCALLS.items()},
            **extra,
        }

    def tcp_connections(self) -> int:
        """Connections the TCP listener has received so far."""
        return self._count("tcp", lambda: self.tcp.accept()[0].close())

    def udp_datagrams(self) -> int:
        """Datagrams the UDP socket has received so far."""
        return self._count("udp", lambda: self.udp.recvfrom(2**16))

    def abstract_connections(self) -> int:
        """Connections the abstract unix socket has received so far."""
        return self._count("abstract", lambda: self.abstract.accept()[0].close())

    def _count(self, kind: str, receive_one) -> int:
        while True:
            try:
                receive_one()
            except BlockingIOError:
                return self.reached[kind]
            self.reached[kind] += 1

    def _watch_disk(self) -> None:
        # Sampled all along: the harness deletes the code's directory once the call is over.
        while self.watching.is_set():
            free = shutil.disk_usage(tempfile.gettempdir()).free
            self.lowest_disk_free = min(self.lowest_disk_free, free)
            time.sleep(0.02)

    def most_disk_used(self) -> int:
        """The most bytes of the host's temp file system in use at once beyond what was in use
        when these targets were made."""
        return self.disk_free - self.lowest_disk_free

    def close(self) -> None:
        self.watching.clear()
        self.disk_watch.join()
        for process in (self.victim, self.bystander):
            process.kill()
            process.wait()
        for pid in processes_named(self.marker):
            os.kill(pid, signal.SIGKILL)
        for listener in (self.tcp, self.udp, self.abstract):
            listener.close()
        self.shm.unlink(missing_ok=True)
