"""Bringing up Ray: start a local instance, or join a running cluster.

Guarantees: local mode starts a new Ray instance (even when a `ray start` cluster runs on the
machine) with at least the logical CPUs the config's actors reserve
(phases alternate in sync mode, so logical CPUs may exceed physical cores), the dashboard on
127.0.0.1 only, token authentication when `secure_local_defaults` ran before ray was imported
(the CLI does; RAY_AUTH_MODE set by the user wins), and the repository on every worker's
import path, actors at the daemons' priority (nice 0, not Ray's default 15), and the Python
environment's own tools first on the workers' PATH (one `ninja` for DeepSpeed's ops). Cluster mode
(`cluster.address`, `RAY_ADDRESS`, or running under `ray job submit`) joins the existing
cluster and relies on the job's `--working-dir` to ship the code.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from core.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]


def required_cpus(cfg: Config) -> float:
    c = cfg.cluster
    return (
        c.rollout_engines * c.rollout_cpus
        + cfg.learner.world_size * c.learner_cpus
        + cfg.reward.num_actors * c.reward_cpus
    )


def secure_local_defaults(cfg: Config) -> None:
    """In local mode, turn on Ray token authentication (unless RAY_AUTH_MODE is set). Ray reads
    it when first imported, so call this before anything imports ray (the CLI does)."""
    if not (cfg.cluster.address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def connect_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    num_cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, math.ceil(required_cpus(cfg)), 4)
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    # Ray runs its workers at nice 15, below its own daemons: on a few cores the engine and the
    # learner would yield the CPU to the dashboard, agent and raylet whenever those wake up.
    # The raylet reads this when it starts.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # The raylet dies if the dashboard agent has not written its ports within Ray's default
    # timeout, which a busy few-core machine exceeds (the agent imports for ~10 s alone).
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    # DeepSpeed compiles its CPU communication op with the first `ninja` on PATH, into one
    # folder per user; a ninja of another version takes that build for stale and compiles it
    # again (a minute on two cores), so runs with and without the venv activated would
    # alternate. The workers inherit this: the environment's own ninja first.
    bin_dir = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join(filter(None, [bin_dir, os.environ.get("PATH")]))
    # The dashboard listens on loopback only; with `secure_local_defaults` every endpoint also
    # wants the token Ray writes to ~/.ray/auth_token.
    ray.init(
        address="local",  # a new instance, even when a `ray start` cluster runs on this machine
        num_cpus=num_cpus,
        include_dashboard=cfg.cluster.dashboard,
        dashboard_host="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        log_to_driver=True,
    )
