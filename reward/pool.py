"""`RewardPool`: N reward actors on Ray; a step's groups are split across them in order.

Guaranteed: `score(groups)` returns one list of scores per group, in the order of `groups`,
whatever the number of actors; groups are split into contiguous chunks whose sizes differ by at
most one, and a group is never split. The constructor waits until every actor has loaded the
reward functions, so a bad config fails there. A dead actor is replaced by `restart_dead`
(`cluster/health.py` decides when and retries the batch). Not guaranteed: balancing by sample
count or cost, only by group count.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ray

from core.config import RewardConfig
from core.errors import ConfigError, RunStopped
from core.pools import replace_dead, split_contiguous
from core.records import Group
from reward.actor import RewardActor
from reward.failures import FAILURES_LOG, append_failures, failure_rate_error, failure_records
from reward.functions import read_sources, source_hashes
from reward.scoring import Score

SOURCES_FILE = "reward_sources.json"
"""File in the run directory with the SHA-256 of each user reward file as the run read it."""

CLOSE_WAIT_S = 2.0
"""How long `shutdown` waits for the actors to close their sandboxes before killing them."""


class RewardFailureRateExceeded(RunStopped):
    """A reward function failed on too many samples of one scoring call."""


class RewardPool:
    """Handles to `cfg.num_actors` `RewardActor`s, named `[<run_id>-]cohort-reward-<i>`."""

    def __init__(
        self,
        cfg: RewardConfig,
        base_dir: str | Path,
        num_cpus: float,
        run_id: str = "",
        resources: dict[str, float] | None = None,
        run_dir: str | Path | None = None,
        sources: dict[str, str] | None = None,
    ):
        """`resources`: extra Ray resources per actor (`cluster.reward_resources`); `run_dir`:
        where the failures log goes (None: no log); `sources`: the user files as
        `read_sources(cfg.functions, base_dir)` gave them (read here when None)."""
        self.cfg = cfg
        self.failures_log = Path(run_dir) / FAILURES_LOG if run_dir else None
        self.calls = 0
        sandbox = {
            "workers": cfg.workers_per_actor,
            "timeout_s": cfg.timeout_s,
            "memory_limit_mb": cfg.memory_limit_mb,
            "cpu_limit_s": cfg.cpu_limit_s,
            "max_processes": cfg.max_processes,
            "isolation": cfg.isolation,
        }
        self.prefix = f"{run_id}-" if run_id else ""
        self.actor_class = ray.remote(num_cpus=num_cpus, resources=resources or {})(RewardActor)
        # User files are read once: restarted actors and workers get these same bytes.
        if sources is None:
            sources = read_sources(cfg.functions, Path(base_dir))
        if run_dir:
            (Path(run_dir) / SOURCES_FILE).write_text(json.dumps(source_hashes(sources), indent=1))
        self.args = (
            [dataclasses.asdict(f) for f in cfg.functions],
            cfg.on_failure,
            cfg.failure_score,
            str(base_dir),
            sandbox,
            sources,
        )
        self.actors = [self._start(i) for i in range(cfg.num_actors)]
        # Waiting here surfaces a bad reward config now, not at the first step.
        try:
            names = ray.get([actor.function_names.remote() for actor in self.actors])
            self.isolation = ray.get(self.actors[0].isolation_layers.remote())
        except Exception as e:
            self.shutdown()
            if isinstance(getattr(e, "cause", None), ConfigError):  # Ray's task error around it
                raise e.cause from None  # the config key and the fix, without Ray's traceback
            raise
        self.function_names: list[str] = names[0]

    def _start(self, i: int):
        return self.actor_class.options(name=f"cohort-reward-{self.prefix}{i}").remote(*self.args)

    def restart_dead(self) -> int:
        """Replace every actor that no longer answers; returns how many were restarted."""
        return replace_dead(self.actors, self._start, lambda a: a.function_names.remote())

    def score(self, groups: list[Group]) -> list[list[Score]]:
        """Scores of `groups[i].samples[j]` at `[i][j]`, the groups scored by the actors in
        parallel; failures logged, and the failure rate checked (see the module docstring)."""
        scores = self.score_only(groups)
        self.account(groups, scores)
        return scores

    def score_only(self, groups: list[Group]) -> list[list[Score]]:
        """`score` without the failures log and the failure-rate check: for a step scored in
        parts as its groups finish, which then calls `account` once on the whole step."""
        return self._score(groups)

    def account(self, groups: list[Group], scores: list[list[Score]]) -> None:
        """Log the failed calls of one scoring call (or one step scored in parts) and raise
        `RewardFailureRateExceeded` if too many failed."""
        self.calls += 1
        if self.failures_log is not None:
            append_failures(self.failures_log, failure_records(groups, scores, self.calls))
        error = failure_rate_error(
            scores,
            self.function_names,
            self.cfg.max_failure_rate,
            self.cfg.failure_rate_min_samples,
        )
        if error:
            where = self.failures_log or "no failures log: the pool was given no run_dir"
            raise RewardFailureRateExceeded(f"{error} Failures log: {where}")

    def _score(self, groups: list[Group]) -> list[list[Score]]:
        if not self.actors:
            raise RuntimeError("RewardPool.score called after shutdown(); build a new pool")
        chunks = split_contiguous(groups, len(self.actors))
        futures = [
            actor.score.remote(chunk)
            for actor, chunk in zip(self.actors, chunks, strict=True)
            if chunk
        ]
        return [scores for chunk_scores in ray.get(futures) for scores in chunk_scores]

    def shutdown(self) -> None:
        """Close the actors' sandboxes (their workers' temp dirs go with them), waiting at most
        `CLOSE_WAIT_S` for a busy actor, then kill the actors; the pool cannot score
        afterwards. An actor killed busy leaves its dirs to the next sandbox on the node
        (`core/scratch.py`)."""
        closing = [actor.close.remote() for actor in self.actors]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=CLOSE_WAIT_S)
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
