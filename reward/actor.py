"""`RewardActor`: one Ray actor process that loads the reward functions once and scores groups.

A plain class; the pool makes it an actor with `ray.remote(num_cpus=...)(RewardActor)`, so it can
also be used in-process. Guaranteed: the functions are resolved in the constructor, so a bad
`reward.functions` entry fails when the actor starts (the pool waits for that) rather than at
the first step; scores come back nested like the groups given. Not guaranteed: isolation or a
time limit per sample (see `scoring.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.config import RewardFunctionConfig, from_dict
from reward.functions import load_reward_functions
from reward.scoring import ON_FAILURE, Score, score_groups
from rollout.records import Group


class RewardActor:
    """Holds the resolved reward functions and scores groups of samples with them."""

    def __init__(
        self,
        function_configs: list[dict[str, Any]],
        on_failure: str,
        failure_score: float,
        base_dir: str,
    ):
        """`function_configs` are `dataclasses.asdict(RewardFunctionConfig)` dicts (plain data
        travels to Ray actors without importing config classes on the caller's side)."""
        if on_failure not in ON_FAILURE:
            raise ValueError(f"reward.on_failure={on_failure!r} is not one of {ON_FAILURE}")
        cfgs = [
            from_dict(RewardFunctionConfig, d, prefix=f"reward.functions[{i}].")
            for i, d in enumerate(function_configs)
        ]
        self.functions = load_reward_functions(cfgs, Path(base_dir))
        self.on_failure = on_failure
        self.failure_score = failure_score

    def node_id(self) -> str:
        """The Ray node this actor runs on (for the placement report)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def function_names(self) -> list[str]:
        """Names of the loaded functions, in config order (also a readiness check)."""
        return [f.name for f in self.functions]

    def score(self, groups: list[Group]) -> list[list[Score]]:
        """Scores of `groups[i].samples[j]` at `[i][j]`."""
        return score_groups(self.functions, groups, self.on_failure, self.failure_score)
