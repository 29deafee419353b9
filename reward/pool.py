"""`RewardPool`: N reward actors on Ray; a step's groups are split across them in order.

Guaranteed: `score(groups)` returns one list of scores per group, in the order of `groups`,
whatever the number of actors; groups are split into contiguous chunks whose sizes differ by at
most one, and a group is never split. The constructor waits until every actor has loaded the
reward functions, so a bad config fails there. Not guaranteed: recovery from a dead actor (the
error propagates from `ray.get`); balancing by sample count or cost, only by group count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ray

from cluster.config import RewardConfig
from cluster.sharding import split_contiguous
from reward.actor import RewardActor
from reward.scoring import Score
from rollout.records import Group


class RewardPool:
    """Handles to `cfg.num_actors` `RewardActor`s, named `[<run_id>-]cohort-reward-<i>`."""

    def __init__(self, cfg: RewardConfig, base_dir: str | Path, num_cpus: float, run_id: str = ""):
        prefix = f"{run_id}-" if run_id else ""
        actor_class = ray.remote(num_cpus=num_cpus)(RewardActor)
        function_configs = [dataclasses.asdict(f) for f in cfg.functions]
        self.actors = [
            actor_class.options(name=f"{prefix}cohort-reward-{i}").remote(
                function_configs, cfg.on_failure, cfg.failure_score, str(base_dir)
            )
            for i in range(cfg.num_actors)
        ]
        # Waiting here surfaces a bad reward config now, not at the first step.
        try:
            names = ray.get([actor.function_names.remote() for actor in self.actors])
        except Exception:
            self.shutdown()
            raise
        self.function_names: list[str] = names[0]

    def score(self, groups: list[Group]) -> list[list[Score]]:
        """Scores of `groups[i].samples[j]` at `[i][j]`, the groups scored by the actors in
        parallel."""
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
        """Kill the actors; the pool cannot score afterwards."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
