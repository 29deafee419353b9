"""Shared fixtures: a tiny Llama built by the tests, and one Ray cluster for the suite.

What the suite's time is made of, and so how a new test keeps it short: on two cores nearly all
of it is process start-up, third-party imports mostly (measured on a 10-step smoke run joining a
cluster: 53 CPU-seconds in 37 s, of which the vLLM engine 20-25, a learner rank 10-12, the
driver 8-10, the reward actor 1.5; the steps are about a second each). So a test shares
processes wherever that keeps it independent: runs join the suite's cluster (`cohort_command`)
instead of starting a Ray; a module keeps one learner per world size and rebuilds it for other
settings (`LearnerRanks.rebuild`, bitwise a fresh learner) or resets it to a checkpoint; a
module keeps one engine per dtype; fault cases chain in one run and its resumptions. Running
runs side by side does not help here: two smoke runs at once took 71 s against 37 s each alone,
their engines using 66 CPU-seconds against 20-25 each alone (138 in all against 2 x 53).
"""

from __future__ import annotations

import os
from pathlib import Path

# Set before anything imports `datasets` or `huggingface_hub`, which read them once: no test
# reaches for the Hub (a test that patches them later would make real network retries).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _isolate_suite() -> str:
    """Point every place the suite (and the Ray clusters, runs and libraries it starts) would
    write outside its temp dirs into one folder of its own: Ray's sessions and address file
    (TMPDIR), caches (matplotlib, Hugging Face, built models), configs, and Ray's auth token
    (given in the environment, so no ~/.ray/auth_token is written). Two copies of the suite on
    one machine then share nothing but the venv's caches of what is derived from the installed
    code alone (DeepSpeed's compiled ops, inductor's kernels, vLLM's model-class inspection),
    which their writers lock or write atomically. Short, under /tmp:
    Ray's unix sockets live under TMPDIR and their paths must stay under 108 bytes."""
    import atexit
    import getpass
    import secrets
    import sys
    import tempfile

    root = tempfile.mkdtemp(prefix="ct-", dir="/tmp")
    os.environ |= {
        "TMPDIR": root,
        "XDG_CACHE_HOME": f"{root}/cache",
        "XDG_CONFIG_HOME": f"{root}/config",
        "COHORT_CACHE": f"{root}/cache/cohort",
        # DeepSpeed's compiled CPU ops (minutes of compiling) belong to this venv's torch:
        # kept with the venv, shared by suites under torch's build lock.
        "TORCH_EXTENSIONS_DIR": os.path.join(sys.prefix, "torch_extensions"),
        "MPLCONFIGDIR": f"{root}/config/matplotlib",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        # Every Ray the suite starts (`ray start`, the fixture's, the runs') survives a busy
        # machine, as local mode does (cluster/ray_setup.py).
        "RAY_agent_register_timeout_ms": "180000",
        # The suite's Ray cluster wants the token (`shared_ray_address`); Ray reads this when
        # first imported.
        "RAY_AUTH_MODE": "token",
        # The venv's tools first (as `connect_ray` does for a run's workers): one `ninja` builds
        # DeepSpeed's op in TORCH_EXTENSIONS_DIR; another version would rebuild it each switch.
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]),
    }
    tempfile.tempdir = None  # re-read TMPDIR
    # torch's inductor, with which vLLM compiles its CPU sampling kernels, keeps a precompiled
    # C++ header and the compiled kernels in `<TMPDIR>/torchinductor_<user>`: in a new temp dir
    # the suite's first engine spends about 40 s compiling them. Kept with the venv, as the
    # DeepSpeed ops are, and shared by suites under inductor's own file locks.
    inductor = os.path.join(sys.prefix, "torchinductor")
    os.makedirs(inductor, exist_ok=True)
    os.symlink(inductor, os.path.join(root, f"torchinductor_{getpass.getuser()}"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor
    # vLLM inspects a model architecture's class once, in a subprocess that imports vLLM (about
    # 20 s on two cores), and caches the answer keyed by the hash of vLLM's own source file.
    os.environ["VLLM_CACHE_ROOT"] = os.path.join(sys.prefix, "vllm-cache")
    atexit.register(_remove_suite_dir, root)
    return root


def _remove_suite_dir(root: str) -> None:
    """At exit, after every test and cluster has ended: delete the suite's folder, including
    what killed processes left there (their multiprocessing `pymp-*` dirs, vLLM's rendezvous
    files). This process's own `pymp-*` dir is left to multiprocessing's exit handler, which
    fails if it is already gone; the folder itself is then removed after that handler."""
    import multiprocessing
    import multiprocessing.util
    import shutil

    own = multiprocessing.current_process()._config.get("tempdir")  # no public accessor
    for entry in os.scandir(root):
        if entry.is_symlink():  # the venv's inductor cache: the link goes, the cache stays
            os.unlink(entry.path)
        elif entry.path != own:
            shutil.rmtree(entry.path, ignore_errors=True)
    if own and os.path.isdir(own):  # multiprocessing removes it at priority -100, then this
        multiprocessing.util.Finalize(
            None, shutil.rmtree, args=(root,), kwargs={"ignore_errors": True}, exitpriority=-101
        )
    else:
        shutil.rmtree(root, ignore_errors=True)


SUITE_DIR = _isolate_suite()

import pytest  # noqa: E402

from cluster.models import build_tiny_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TIMING_KEYS = ("time/", "engine/", "perf/")
"""Metric prefixes that depend on timing: wall-clock seconds, throughput (`perf/`), and the
engines' share of the work (which engine runs which group depends on which finished first).
Everything else in a metrics row is a function of the config, the seed and the weights."""


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer random Llama with a character tokenizer and chat template (no download)."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    build_tiny_llama(path)
    return str(path)


@pytest.fixture(scope="module")
def ray_local():
    """The suite's Ray cluster (`shared_ray_address`, whose workers import the repository)
    joined by this process for one test module. Leaving it at the module's end ends every actor
    the module started."""
    import ray

    ray.init(address=shared_ray_address())
    yield ray
    ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_shared_ray: dict[str, str] = {}


def shared_ray_address() -> str:
    """The address of the suite's one Ray cluster, started on first use (`ray start --head` on
    loopback, its own temp dir and port, token authentication, the repository on its workers'
    import path, as many CPUs as local mode would give a run) and stopped when the suite exits,
    by its temp dir (`stop_ray_cluster`). Test modules join it (`ray_local`) and runs submit to
    it (`cohort_command`) instead of starting a Ray each: a Ray start and stop costs a run about
    7 s of its 35 on two cores. A run's actors end with its driver, even a SIGKILLed one (Ray
    reaps a dead driver's actors and placement groups), so runs stay independent."""
    if "address" not in _shared_ray:
        import atexit
        import subprocess

        ray, env = ray_cli()
        env |= {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "RAY_worker_niceness": "0",  # as local mode sets it (cluster/ray_setup.py)
        }
        temp_dir = short_temp_dir("shared-")
        port = free_port()
        start = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}"]
        start += [f"--temp-dir={temp_dir}", f"--num-cpus={max(os.cpu_count() or 1, 4)}"]
        start += ["--include-dashboard=false", "--disable-usage-stats"]
        # Ray's fixed default ports would collide with another suite's cluster on the machine.
        start += [f"--ray-client-server-port={free_port()}"]
        start += [f"--dashboard-agent-listen-port={free_port()}"]
        done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        atexit.register(stop_ray_cluster, temp_dir)
        _shared_ray["address"] = f"127.0.0.1:{port}"
    return _shared_ray["address"]


def ray_cli() -> tuple[str, dict[str, str]]:
    """The venv's `ray` executable and an environment for `ray start` / `ray job submit` with
    token authentication (no inherited RAY_ADDRESS; the venv's tools first on PATH, as
    `_isolate_suite` set it)."""
    import shutil
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token"
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray", env


def cohort_command(
    args: list[str], env: dict | None = None, own_ray: bool = False
) -> tuple[list[str], dict]:
    """The real `python -m cluster ...` entry point and its environment: the suite's, joining
    the suite's Ray cluster as a run under `ray job submit` joins its cluster, plus `env`. With
    `own_ray`, the run starts its own local Ray as `cohort train` does on a workstation."""
    import sys

    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if not own_ray:
        full_env["RAY_ADDRESS"] = shared_ray_address()
    return [sys.executable, "-m", "cluster", *args], full_env | (env or {})


def run_cohort(args: list[str], timeout: int = 600, env: dict | None = None, own_ray=False):
    """Run `cohort_command(args, env, own_ray)` from the repository root, output captured."""
    import subprocess

    command, full_env = cohort_command(args, env, own_ray)
    return subprocess.run(
        command, cwd=REPO, env=full_env, timeout=timeout, capture_output=True, text=True
    )


def scored(groups, rewards, valid=None):
    """`ScoredGroup`s of `groups` with the given final rewards and validity [P][G], as the
    reward side hands them to the learner (scores equal to the rewards, no penalties)."""
    from core.records import Score, ScoredGroup

    valid = valid or [[True] * len(row) for row in rewards]
    return [
        ScoredGroup(g, [Score(r, {}, failed=not v, excluded=not v) for r, v in zip(rs, vs)],
                    list(rs), list(vs), [0.0] * len(rs))
        for g, rs, vs in zip(groups, rewards, valid, strict=True)
    ]  # fmt: skip


def short_temp_dir(prefix: str = "r-") -> str:
    """A new folder in `SUITE_DIR` for a test's own Ray cluster (`ray start --temp-dir`): Ray's
    unix sockets live there, and their paths must stay under 108 bytes."""
    import tempfile

    return tempfile.mkdtemp(prefix=prefix, dir=SUITE_DIR)


def stop_ray_cluster(*temp_dirs: str, grace_s: float = 3.0) -> None:
    """Stop the Ray processes of the cluster a test started, found by the `--temp-dir` folders
    in their command lines: SIGTERM, then SIGKILL after `grace_s`. Unlike `ray stop --force`,
    this leaves every other Ray on the machine running (another suite's, a user's). The grace is
    short because the GCS server and a Python monitor of Ray 2.60 ignore SIGTERM (a longer one only
    waits for them); the agents went within 0.5 s and the raylet within 2 s when measured."""
    import shutil

    import psutil

    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}

    def ours() -> list:
        found = {}
        for p in psutil.process_iter(["cmdline"]):
            line = " ".join(p.info["cmdline"] or [])
            if p.pid not in me and any(d in line for d in temp_dirs):
                found[p.pid] = p
        # Ray's agents and workers retitle themselves (`ray::DashboardAgent`), which hides the
        # temp dir: they are the descendants of the processes found.
        for p in list(found.values()):
            try:
                found |= {c.pid: c for c in p.children(recursive=True) if c.pid not in me}
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    procs = ours()
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive + ours():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    for d in temp_dirs:
        shutil.rmtree(d, ignore_errors=True)
