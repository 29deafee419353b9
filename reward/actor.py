"""`RewardActor`: one Ray actor that scores groups in its sandbox of worker processes.

A plain class; the pool makes it an actor with `ray.remote(num_cpus=...)(RewardActor)`, so it can
also be used in-process. Guaranteed: the functions are resolved in the constructor and the
sandbox's workers have loaded them before it returns, so a bad `reward.functions` entry fails
when the actor starts (the pool waits for that) rather than at the first step; every call runs
in a worker under `reward.timeout_s` (`sandbox.py`); scores come back nested like the groups
given, whatever failed. Not guaranteed: balancing calls by cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.config import RewardFunctionConfig, from_dict
from reward.functions import load_reward_functions
from reward.sandbox import Sandbox
from reward.scoring import ON_FAILURE, CallInput, Outcome, Score, combine
from reward.worker import Limits, Task
from rollout.records import Group


class RewardActor:
    """Holds the resolved reward functions and a sandbox, and scores groups of samples."""

    def __init__(
        self,
        function_configs: list[dict[str, Any]],
        on_failure: str,
        failure_score: float,
        base_dir: str,
        sandbox: dict[str, Any] | None = None,
    ):
        """`function_configs` are `dataclasses.asdict(RewardFunctionConfig)` dicts (plain data
        travels to Ray actors without importing config classes on the caller's side).
        `sandbox`: `workers`, `timeout_s` and the `Limits` fields (defaults: 2 workers, 30 s,
        no limits)."""
        if on_failure not in ON_FAILURE:
            raise ValueError(f"reward.on_failure={on_failure!r} is not one of {ON_FAILURE}")
        cfgs = [
            from_dict(RewardFunctionConfig, d, prefix=f"reward.functions[{i}].")
            for i, d in enumerate(function_configs)
        ]
        self.functions = load_reward_functions(cfgs, Path(base_dir))
        self.on_failure = on_failure
        self.failure_score = failure_score
        options = dict(sandbox or {})
        workers, timeout_s = options.pop("workers", 2), options.pop("timeout_s", 30.0)
        self.sandbox = Sandbox(function_configs, base_dir, workers, timeout_s, Limits(**options))

    def node_id(self) -> str:
        """The Ray node this actor runs on (for the placement report)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def function_names(self) -> list[str]:
        """Names of the loaded functions, in config order (also a readiness check)."""
        return [f.name for f in self.functions]

    def score(self, groups: list[Group]) -> list[list[Score]]:
        """Scores of `groups[i].samples[j]` at `[i][j]`: one task per (function, sample), or per
        (function, group) for a batched function."""
        inputs = [[CallInput.of(g.prompt, s) for s in g.samples] for g in groups]
        tasks: list[Task] = []
        where: list[tuple[int, int, int]] = []  # (function, group, first sample) of each task
        for fi, f in enumerate(self.functions):
            for gi, xs in enumerate(inputs):
                if f.batched and xs:
                    tasks.append((len(tasks), fi, xs))
                    where.append((fi, gi, 0))
                else:
                    for si, x in enumerate(xs):
                        tasks.append((len(tasks), fi, [x]))
                        where.append((fi, gi, si))
        outcomes: list[list[list[Outcome | None]]] = [
            [[None] * len(self.functions) for _ in xs] for xs in inputs
        ]
        for (fi, gi, si), results in zip(where, self.sandbox.run(tasks), strict=True):
            for j, outcome in enumerate(results):
                outcomes[gi][si + j][fi] = outcome
        return [[combine(self.functions, o, self.on_failure, self.failure_score) for o in row]
                for row in outcomes]  # fmt: skip

    def workers_replaced(self) -> int:
        """Sandbox workers killed or found dead and replaced since the actor started."""
        return self.sandbox.replaced

    def close(self) -> None:
        """Kill the sandbox's workers."""
        self.sandbox.close()
