"""Bringing up Ray: start a local instance, or join a running cluster.

Guarantees: local mode starts Ray with at least the logical CPUs the config's actors reserve
(phases alternate in sync mode, so logical CPUs may exceed physical cores), no dashboard, and
the repository on every worker's import path. Cluster mode (`cluster.address`, `RAY_ADDRESS`,
or running under `ray job submit`) joins the existing cluster and relies on the job's
`--working-dir` to ship the code.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import ray

from cluster.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]


def required_cpus(cfg: Config) -> float:
    c = cfg.cluster
    return (
        c.rollout_engines * c.rollout_cpus
        + cfg.learner.world_size * c.learner_cpus
        + cfg.reward.num_actors * c.reward_cpus
    )


def connect_ray(cfg: Config) -> None:
    if ray.is_initialized():
        return
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    num_cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, math.ceil(required_cpus(cfg)), 4)
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        log_to_driver=True,
    )
