"""Operating-system isolation for untrusted code: generated programs and user reward functions.

`confine(policy)` is called by a process on itself, single-threaded, before untrusted code runs.
It stacks these layers, each applied where the kernel offers it (`probe()` says which do):

- resource limits: RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE = 0, and
  RLIMIT_NPROC once the process runs as an unprivileged user;
- a parent-death signal and a child subreaper, so no descendant outlives its parent unnoticed;
- for generated code (`Policy.untrusted_code`): new pid, network, mount, IPC and UTS namespaces
  (a user namespace too when not root). The confined process is pid 1 of its pid namespace, so
  when it dies the kernel kills every process in it, `setsid` or not; the network namespace
  has no interface but a down loopback; the writable directory is a private tmpfs of
  `max_disk_mb`. Started as root, it drops to an unprivileged user (`SANDBOX_UID`) where
  that user can read the Python installation, else it stays uid 0 with every capability
  dropped (bounding set included, so no exec regains them). Unless `max_processes` allows
  them, it may start threads but no processes;
- Landlock (the highest ABI the kernel offers): the file system readable only where the
  interpreter and its libraries live (plus `read_paths`), writable only in `write_dir`; no TCP
  bind or connect unless `network`; signals and abstract unix sockets scoped to the sandbox;
- seccomp-bpf with no-new-privileges: ptrace, `process_vm_*`, `pidfd_getfd`, `kcmp`, mounts,
  namespaces, module loading, BPF, perf, keyrings, io_uring and the like fail with EPERM; new
  sockets too unless `network`; for generated code, `fork`/`vfork`/`clone` of a process
  (threads excepted) unless `max_processes` > 0.

Guaranteed: under `level="strict"`, `confine` raises `IsolationUnavailable` naming the missing
layer and how to get it, rather than run generated code without file-system and network
isolation. Not guaranteed: protection from kernel exploits or side channels (timing, cache);
memory across several processes is bounded only by `max_processes` x `memory_mb`. See the threat
model in docs/rewards.md.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

LEVELS = ("strict", "best_effort", "off")
SANDBOX_UID = 65534
"""The unprivileged user (nobody) that generated code runs as when the sandbox starts as root."""

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_THREAD = 0x00010000
_NAMESPACE_FLAGS = (
    _CLONE_NEWNS,
    _CLONE_NEWUTS,
    _CLONE_NEWIPC,
    _CLONE_NEWUSER,
    _CLONE_NEWPID,
    _CLONE_NEWNET,
    _CLONE_NEWCGROUP,
)
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 2, 4, 16384, 1 << 18

DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "vhangup",
    "fanotify_init",
    "lookup_dcookie",
    "uselib",
)
"""System calls that fail with EPERM in every confined process."""


class IsolationUnavailable(RuntimeError):
    """`level="strict"` and a required layer is missing on this machine."""


@dataclass(frozen=True)
class Policy:
    """What a confined process may reach and use."""

    level: str = "strict"
    """`strict` refuses to run generated code without file-system and network isolation;
    `best_effort` applies what the kernel offers; `off` applies only resource limits."""
    untrusted_code: bool = True
    """Generated code (namespaces, privileges dropped), as opposed to a user reward function."""
    read_paths: tuple[str, ...] = ()
    """Readable beyond the interpreter and its libraries (and, for reward functions, the
    import path)."""
    write_dir: str = ""
    """The only writable directory ("" for none)."""
    network: bool = False
    """TCP connect/bind and new sockets allowed."""
    memory_mb: int = 0
    """Address-space limit of each process, in MiB (0 = none)."""
    cpu_s: float = 0.0
    """CPU seconds (0 = none)."""
    max_processes: int = 0
    """Generated code: processes it may start (0 = none; RLIMIT_NPROC bounds them where the
    code runs as a user other than root). Reward functions: processes and threads beyond those
    the user runs (0 = no limit)."""
    max_file_mb: int = 16
    """Largest file it may write (RLIMIT_FSIZE)."""
    max_disk_mb: int = 64
    """Size of the private tmpfs mounted on `write_dir` where namespaces are available."""
    max_open_files: int = 64


def confine(policy: Policy) -> list[str]:
    """Confine this process and its future children; return the names of the active layers.

    May fork (to enter a new pid namespace): only the confined child returns; the parent waits
    for it and exits with its status. Call it single-threaded, before any untrusted code runs.
    Raises `IsolationUnavailable` under `strict` when file-system or network isolation is
    missing (checked before anything is changed).
    """
    if policy.level not in LEVELS:
        raise ValueError(f"reward.isolation={policy.level!r} is not one of {LEVELS}")
    if policy.level == "strict" and policy.untrusted_code:
        missing = missing_for_strict()
        if missing:
            raise IsolationUnavailable(strict_message(missing))
    active: list[str] = []
    _pyseccomp()  # loaded while its library is still readable
    die_with_parent()
    adopt_orphans()
    active.append("parent-death signal and subreaper")
    if policy.level != "off" and policy.untrusted_code:
        if _enter_namespaces(policy):
            active.append("pid/network/mount/ipc namespaces")
            if policy.write_dir:
                active.append(f"private tmpfs of {policy.max_disk_mb} MiB")
            _fork_into_namespace()
        active.append(_drop_privileges())
    _set_limits(policy)
    active.append("resource limits")
    if policy.level == "off":
        return active
    abi = _landlock(policy)
    if abi:
        active.append(f"landlock ABI {abi}")
    if _seccomp(policy):
        active.append("seccomp")
    return active


def preload() -> None:
    """Import what `confine` loads (the Landlock and seccomp bindings and the interpreter's
    build variables, which `sysconfig` reads once), so that a process forked from this one
    confines itself without loading them."""
    if landlock_abi():
        import landlockpy.flags  # noqa: F401  (what `_landlock` imports)
    _pyseccomp()
    sysconfig.get_paths()


def die_with_parent() -> None:
    """Have Linux SIGKILL this process when its parent exits (a no-op elsewhere)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def adopt_orphans() -> None:
    """Make this process a child subreaper: a descendant whose parent exits becomes its child
    (Linux; a no-op elsewhere)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


# -- what the machine offers ------------------------------------------------------------------


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is missing or disabled."""
    try:
        import landlockpy

        return landlockpy.abi_version() if landlockpy.supported() else 0
    except Exception:  # the module is missing, or the system call is unknown
        return 0


def seccomp_available() -> bool:
    """libseccomp loads and the kernel has seccomp filters."""
    if _pyseccomp() is None:
        return False
    status = Path("/proc/self/status")
    return status.is_file() and "Seccomp:" in status.read_text()


def namespaces_available() -> bool:
    """A child can enter new pid/network/mount namespaces (as root, or through a user
    namespace); tried in a forked child so this process is left as it was."""
    if sys.platform != "linux":
        return False
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if _unshare_namespaces() else 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def probe() -> dict[str, str]:
    """Each layer and whether it is active here: `"yes ..."` or `"no: why, how to get it"`."""
    abi = landlock_abi()
    layers = {
        "landlock (file system)": f"yes, ABI {abi}" if abi else "no: " + _HOW["landlock"],
        "landlock (tcp)": "yes" if abi >= 4 else "no: " + _HOW["landlock_net"],
        "landlock (signals, abstract sockets)": "yes" if abi >= 6 else "no: needs ABI 6",
        "seccomp": "yes" if seccomp_available() else "no: " + _HOW["seccomp"],
        "namespaces (pid, network, mount)": "yes"
        if namespaces_available()
        else "no: " + _HOW["namespaces"],
        "unprivileged user": _privilege_note(),
        "resource limits": "yes",
    }
    return layers


def _privilege_note() -> str:
    uid, _ = _target_ids()
    if os.geteuid() != 0:
        return f"yes, uid {uid}, capabilities dropped"
    if uid != 0:
        return f"yes, uid {uid}"
    return (
        f"no: the Python installation is private to root, so generated code runs as root "
        f"with every capability dropped (install Python where uid {SANDBOX_UID} can read it "
        "to run it unprivileged)"
    )


def missing_for_strict() -> list[str]:
    """The layers `strict` requires that this machine lacks: file-system isolation (Landlock)
    and network isolation (Landlock TCP rules or a network namespace)."""
    missing = []
    abi = landlock_abi()
    if not abi:
        missing.append("landlock")
    if abi < 4 and not namespaces_available():
        missing.append("landlock_net")
    return missing


_HOW = {
    "landlock": "Landlock is off or missing; it needs Linux >= 5.13 with `landlock` in the lsm= "
    "boot parameter (and the landlockpy package)",
    "landlock_net": "TCP rules need Linux >= 6.7 (Landlock ABI 4), or user namespaces",
    "seccomp": "libseccomp (Debian: libseccomp2) and a kernel with CONFIG_SECCOMP_FILTER",
    "namespaces": "the kernel refuses new user namespaces (sysctl "
    "user.max_user_namespaces or kernel.unprivileged_userns_clone)",
}


def strict_message(missing: list[str]) -> str:
    """The error `strict` raises for `missing` layers: what, why, and what to do."""
    lines = "; ".join(f"{name}: {_HOW[name]}" for name in missing)
    return (
        f"reward.isolation=strict refuses to run generated code without file-system and network "
        f"isolation, and this machine lacks {', '.join(missing)} ({lines}). Fix the kernel, or "
        "run the graders on a machine that has it, or set reward.isolation=best_effort to run "
        "with the layers that are there (`cohort doctor` lists them)."
    )


# -- the layers ---------------------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if sys.platform == "linux":
        _libc().prctl(option, value, 0, 0, 0)


def _target_ids() -> tuple[int, int]:
    """(uid, gid) the confined code runs as: `SANDBOX_UID` when root can hand over to it."""
    if os.geteuid() == 0 and _installation_readable_by_others():
        return SANDBOX_UID, SANDBOX_UID
    return os.geteuid(), os.getegid()


def _installation_readable_by_others() -> bool:
    """Every directory on the way to the interpreter's libraries can be entered by any user (a
    pyenv under a private /root cannot)."""
    for top in {sys.base_prefix, sys.prefix, sysconfig.get_paths()["purelib"]}:
        path = Path(top).resolve()
        for folder in [path, *path.parents]:
            try:
                if not folder.stat().st_mode & 0o001:
                    return False
            except OSError:
                return False
    return True


def _unshare_namespaces() -> bool:
    """Enter new pid/net/mount/ipc/uts namespaces (through a user namespace when not root)."""
    libc = _libc()
    root = os.geteuid() == 0
    flags = _CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    if libc.unshare(flags if root else flags | _CLONE_NEWUSER) != 0:
        return False
    if not root:  # map only ourselves: in the namespace we keep our own ids
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{outer_uid} {outer_uid} 1")
        Path("/proc/self/gid_map").write_text(f"{outer_gid} {outer_gid} 1")
    # Mounts made from here on stay in this namespace.
    return libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0


def _enter_namespaces(policy: Policy) -> bool:
    uid, gid = _target_ids()
    if not _unshare_namespaces():
        return False
    if policy.write_dir:
        options = f"size={policy.max_disk_mb}m,mode=0700,uid={uid},gid={gid}".encode()
        if os.geteuid() != 0:
            options = f"size={policy.max_disk_mb}m,mode=0700".encode()
        flags = _MS_NOSUID | _MS_NODEV
        if _libc().mount(b"tmpfs", policy.write_dir.encode(), b"tmpfs", flags, options) != 0:
            return False
    return True


def _fork_into_namespace() -> None:
    """Fork so the child is pid 1 of the new pid namespace; the parent waits and exits with the
    child's status (a signal death is reported as 128 + the signal)."""
    pid = os.fork()
    if pid == 0:
        die_with_parent()  # fork clears it
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _drop_privileges() -> str:
    """Run as `_target_ids()` with no capabilities; returns the layer's description."""
    uid, gid = _target_ids()
    if os.geteuid() == 0 and uid != 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # clears every capability
        return f"unprivileged user {uid}"
    _drop_capabilities()
    if os.geteuid() == 0:
        return "root without capabilities (the Python installation is private to root)"
    return f"user {os.geteuid()} without capabilities"


_PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
_CAP_LAST = 63


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]


def _drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable capability sets."""
    libc = _libc()
    for cap in range(_CAP_LAST + 1):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails harmlessly past the last one
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed: cannot drop capabilities")


def _set_limits(policy: Policy) -> None:
    def limit(kind: int, value: int) -> None:
        _, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass

    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_NOFILE, policy.max_open_files)
    limit(resource.RLIMIT_FSIZE, policy.max_file_mb * 2**20)
    if policy.memory_mb:
        limit(resource.RLIMIT_AS, policy.memory_mb * 2**20)
    if policy.cpu_s:
        limit(resource.RLIMIT_CPU, int(policy.cpu_s) + 1)
    if policy.max_processes and os.geteuid() != 0:  # RLIMIT_NPROC does not bind root
        limit(resource.RLIMIT_NPROC, user_tasks(os.geteuid()) + policy.max_processes)


def user_tasks(uid: int) -> int:
    """Processes and threads of `uid` (what RLIMIT_NPROC counts on Linux)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(entry / "task"))
            except OSError:
                continue
    return count


def readable_roots(policy: Policy) -> list[str]:
    """Directories the confined process may read: the interpreter's prefixes and libraries,
    the system's shared libraries, and for reward functions the import path."""
    interpreter_dir = os.path.dirname(os.path.realpath(sys.executable))
    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, interpreter_dir}
    installation = sysconfig.get_paths()
    paths |= {installation[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {"/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/etc/ld.so.cache"}
    if not policy.untrusted_code:
        for entry in filter(None, sys.path):
            paths |= set(_importable(entry, paths))
    paths |= set(policy.read_paths)
    return sorted(p for p in paths if os.path.exists(p))


def _importable(entry: str, installation: set[str]) -> list[str]:
    """What of an import-path entry a reward function may read: all of it inside the Python
    installation; of any other folder (a source checkout, the job's working directory) only
    its packages and modules, so the datasets, configs and runs beside them stay unreadable."""
    real = os.path.realpath(entry)
    if not os.path.isdir(real) or any(
        real == root or real.startswith(root.rstrip("/") + "/") for root in installation
    ):
        return [entry]
    found = []
    for name in os.listdir(real):
        path = os.path.join(real, name)
        if name.endswith(".py") or os.path.isfile(os.path.join(path, "__init__.py")):
            found.append(path)
    return found


def _landlock(policy: Policy) -> int:
    """Apply the Landlock ruleset; the ABI used, or 0 where Landlock is missing."""
    abi = landlock_abi()
    if not abi:
        return 0
    from landlockpy import AccessFS, AccessNet, Ruleset, Scope
    from landlockpy.flags import LATEST_ABI, fs_for_abi

    read_dir = AccessFS.READ_FILE | AccessFS.READ_DIR | AccessFS.EXECUTE
    read_file = AccessFS.READ_FILE | AccessFS.EXECUTE
    # Not handling TCP leaves it allowed: that is how a function granted the network gets it.
    handled_net = AccessNet.NONE if policy.network else None
    scoped = Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL
    with Ruleset(handled_net=handled_net, scoped=scoped) as ruleset:
        for path in readable_roots(policy):
            ruleset.allow_path(path, read_dir if os.path.isdir(path) else read_file)
        for device in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
            if os.path.exists(device):
                ruleset.allow_path(device, AccessFS.READ_FILE | AccessFS.WRITE_FILE)
        if policy.write_dir:
            ruleset.allow_path(policy.write_dir, fs_for_abi(LATEST_ABI))
        ruleset.restrict()
    return abi


def _pyseccomp():
    """The pyseccomp module, or None where libseccomp is missing. Its import looks the library
    up with `ctypes.util.find_library`, which runs `ldconfig` in a subprocess (slow, and denied
    once Landlock is on): the usual sonames are tried first."""
    if "pyseccomp" in sys.modules:
        return sys.modules["pyseccomp"]
    import ctypes.util

    lookup = ctypes.util.find_library
    sonames = {"seccomp": "libseccomp.so.2", "c": "libc.so.6"}
    try:
        for name in sonames.values():
            ctypes.CDLL(name)
        ctypes.util.find_library = lambda name: sonames.get(name) or lookup(name)
    except OSError:
        pass
    try:
        import pyseccomp

        return pyseccomp
    except Exception:  # RuntimeError when libseccomp is missing
        return None
    finally:
        ctypes.util.find_library = lookup


def _seccomp(policy: Policy) -> bool:
    """Load the seccomp filter (no-new-privileges is set by Landlock or here); False where
    libseccomp is missing."""
    sc = _pyseccomp()
    if sc is None:
        return False
    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(deny, name)
        except Exception:  # not a system call on this architecture
            continue
    # clone3 passes its flags in memory, where a filter cannot look: failing it with ENOSYS
    # makes libc fall back to clone, whose namespace flags are checked below.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in _NAMESPACE_FLAGS:
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    if not policy.network:
        f.add_rule(deny, "socket")
    if policy.untrusted_code and not policy.max_processes:
        f.add_rule(deny, "fork")
        f.add_rule(deny, "vfork")
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
    f.load()
    return True
