"""The zygote of `code_tests`: a clean, pre-imported process that forks one runner per program.

Starting `python -I` and importing what a runner needs (`code_runner`, `reward.isolation` and
the Landlock and seccomp bindings) takes about 100 ms; forking a process that has done so takes
about 1 ms. So each process that calls `code_tests` starts one zygote (`spawn` does, on first
use and after the zygote died): `python -I -c BOOT ROOT SOCKET_FD`, exec'd (none of the caller's
memory) with `ENV` as its environment and /dev/null as stdin, stdout and stderr. It imports
those modules, then answers spawn requests on a unix socket: a directory and four descriptors
(stdin, stdout, requests pipe, replies pipe). For each it forks a child that forks the runner
and exits, so the runner is reparented to the caller, which `spawn` has made a child subreaper:
the caller waits for the runner, reads its exit status from the kernel and kills its process
group as it would a child of its own (`code_exec.RunnerProcess`). The runner starts its own
session in that directory, takes the descriptors as its stdin, stdout, requests and replies
pipes (stderr stays /dev/null), closes every other one, and runs `code_runner.main`, which reads
its spec from the requests pipe and confines itself before any code of the completion runs.

Guaranteed: the zygote receives directory names and descriptors only, never code, tests,
expected values or outputs (it reads none of the descriptors), so no runner inherits any; it
runs no code of a completion itself. It dies with the process that started it (SIGKILL on the
parent's death) and when that process closes its socket. Every wait of `spawn` ends by its
deadline; a zygote that does not answer in time is killed (the next call starts another).
Not guaranteed: anything on other systems than Linux (the subreaper is Linux's). The caller
stays a child subreaper (the sandbox worker already is one, through `confine`): any orphaned
descendant becomes its child, and only runners' process groups are reaped
(`code_exec.RunnerProcess.close`). Runners of one zygote share its hash seed and the modules it
imported (each its own copy).
"""

from __future__ import annotations

import gc
import os
import resource
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The directory that holds the `reward` package, put first on the zygote's sys.path."""
ENV = {"PATH": os.defpath, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
"""The runners' environment. BLAS thread pools would reserve more address space than a
runner's `memory_mb` allows."""
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from reward.code_zygote import main; main()"
)
_READY = b"ready"


# -- in the zygote ------------------------------------------------------------------------------


def main() -> None:
    """Entry point of the zygote process (see the module docstring); in each runner, it goes on
    as the runner's main, whose exceptions and `sys.exit` end the runner as they would end
    `python -c`."""
    from reward import code_runner, isolation

    isolation.die_with_parent()
    # The caller's CPU limit bounds its own calls; the zygote forks for as long as it lives, and
    # each runner sets its own limit (`Policy.cpu_s`).
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    isolation.preload()
    # What is imported now lives as long as every runner: leaving it out of garbage collection
    # spares each runner copying most of its pages (a collection writes to every object).
    gc.freeze()
    requests, replies = _serve(socket.socket(fileno=int(sys.argv[1])))
    code_runner.main(requests, replies)


def _serve(sock: socket.socket) -> tuple[int, int]:
    """Answer spawn requests until the socket closes, then exit. Returns only in a runner:
    its (requests, replies) descriptors."""
    sock.send(_READY)
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 4096, 4)
        if not message:
            os._exit(0)
        pid = _fork_runner(sock, os.fsdecode(message), fds) if len(fds) == 4 else -1
        if pid == 0:
            return fds[2], fds[3]
        for fd in fds:
            os.close(fd)
        sock.send(b"%d" % pid)


def _fork_runner(sock: socket.socket, cwd: str, fds: list[int]) -> int:
    """Fork a runner through a middle process that exits, so that this process's parent adopts
    it: its pid (-1 on failure), or 0 in the runner."""
    report_r, report_w = os.pipe()
    try:
        middle = os.fork()
    except OSError:
        middle = -1
    if middle == 0:  # forks the runner, reports its pid and exits, all within this block
        try:
            runner = os.fork()
        except BaseException:
            os._exit(1)
        if runner == 0:
            try:
                os.close(report_r)
                os.close(report_w)
                _become_runner(sock, cwd, fds)
            except BaseException:
                os._exit(127)
            return 0
        try:
            os.write(report_w, b"%d" % runner)
        finally:
            os._exit(0)
    os.close(report_w)
    try:
        if middle < 0:
            return -1
        os.waitpid(middle, 0)  # once it is gone, the runner is our parent's child
        report = os.read(report_r, 32)
        return int(report) if report.isdigit() else -1
    finally:
        os.close(report_r)


def _become_runner(sock: socket.socket, cwd: str, fds: list[int]) -> None:
    """Own session, `cwd`, stdin and stdout from `fds`, no descriptor but 0-2 and the pipes."""
    stdin, stdout, requests, replies = fds
    sock.close()
    os.setsid()
    os.chdir(cwd)
    os.dup2(stdin, 0)
    os.dup2(stdout, 1)
    low, high = sorted((requests, replies))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, max(os.sysconf("SC_OPEN_MAX"), high + 1))


# -- in the caller --------------------------------------------------------------------------------

_lock = threading.Lock()
_zygote: _Zygote | None = None


def spawn(cwd: str, fds: tuple[int, int, int, int], deadline: float) -> int:
    """The pid of a new runner, a child of this process, started in `cwd` with `fds` (stdin,
    stdout, requests, replies; the caller closes its copies). A zygote found dead is replaced,
    once. Raises RuntimeError when the zygote cannot start, cannot fork, or does not answer by
    `deadline` (time.monotonic)."""
    if not _lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
        raise RuntimeError("timed out waiting for another thread's runner to start")
    try:
        try:
            return _spawn_once(cwd, fds, deadline)
        except _ZygoteGone:
            return _spawn_once(cwd, fds, deadline)
    finally:
        _lock.release()


def _spawn_once(cwd: str, fds: tuple[int, int, int, int], deadline: float) -> int:
    global _zygote
    if _zygote is None or not _zygote.alive():
        if _zygote is not None:
            _zygote.close()
        _zygote = None
        _zygote = _Zygote(deadline)
    try:
        return _zygote.spawn(cwd, fds, deadline)
    except BaseException:
        _zygote.close()
        _zygote = None
        raise


class _ZygoteGone(RuntimeError):
    """The zygote exited (killed, out of memory) before it answered."""


class _Zygote:
    """A zygote process and this process's end of its socket."""

    def __init__(self, deadline: float):
        from reward.isolation import adopt_orphans

        adopt_orphans()  # a runner, once its parent exits, becomes our child
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.owner = os.getpid()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, ROOT, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                env=ENV,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        try:
            if self._receive(deadline) != _READY:
                raise OSError("it exited while starting")
        except OSError as e:
            self.close()
            raise RuntimeError(
                f"the code runners' zygote did not start ({e}); run `{sys.executable} -I -c "
                f"'import reward.code_zygote, reward.code_runner'` in {ROOT} to see why"
            ) from None

    def alive(self) -> bool:
        """Started by this process (not inherited through a fork) and still running."""
        return self.owner == os.getpid() and self.process.poll() is None

    def spawn(self, cwd: str, fds: tuple[int, int, int, int], deadline: float) -> int:
        try:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            socket.send_fds(self.sock, [os.fsencode(cwd)], list(fds))
            reply = self._receive(deadline)
        except (BrokenPipeError, ConnectionResetError):
            reply = b""
        except OSError as e:  # TimeoutError included
            raise RuntimeError(f"the code runners' zygote did not answer ({e})") from None
        if not reply:
            raise _ZygoteGone("the code runners' zygote exited")
        if not reply.isdigit():
            raise RuntimeError(f"the code runners' zygote could not fork a runner ({reply!r})")
        pid = int(reply)
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            raise RuntimeError(
                f"the runner (pid {pid}) was not adopted by this process (code_tests needs Linux)"
            ) from None
        return pid

    def close(self) -> None:
        """Kill the zygote and reap it (its runners live on)."""
        self.sock.close()
        if self.owner == os.getpid():
            self.process.kill()
            try:
                self.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass

    def _receive(self, deadline: float) -> bytes:
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        return self.sock.recv(64)
