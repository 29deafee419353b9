"""`RewardActor`: one Ray actor that scores groups in its sandbox of worker processes.

A plain class; the pool makes it an actor with `ray.remote(num_cpus=...)(RewardActor)`, and
`cohort eval` uses it in-process, so training and evaluation score through the same sandbox.
Guaranteed: the functions are resolved in the constructor and the sandbox's workers have loaded
them before it returns, so a bad `reward.functions` entry fails when the actor starts (the pool
waits for that) rather than at the first step; every call runs in a worker under
`reward.timeout_s` (`sandbox.py`); scores come back nested like the groups given, whatever
failed. Functions that need different access (the network, readable paths, or the
code-execution harness) get sandboxes of their own, so a grant to one function is never a grant
to another. Not guaranteed: balancing calls by cost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.config import RewardFunctionConfig, from_dict
from core.errors import ConfigError
from core.records import Group
from reward.functions import load_reward_functions
from reward.isolation import Policy
from reward.sandbox import Sandbox
from reward.scoring import ON_FAILURE, CallInput, Outcome, Score, combine
from reward.worker import Limits, Task


class RewardActor:
    """Holds the resolved reward functions and a sandbox, and scores groups of samples."""

    def __init__(
        self,
        function_configs: list[dict[str, Any]],
        on_failure: str,
        failure_score: float,
        base_dir: str,
        sandbox: dict[str, Any] | None = None,
        sources: dict[str, str] | None = None,
    ):
        """`function_configs` are `dataclasses.asdict(RewardFunctionConfig)` dicts (plain data
        travels to Ray actors without importing config classes on the caller's side).
        `sandbox`: `workers`, `timeout_s`, `isolation` and the `Limits` fields (defaults: 2
        workers, 30 s, strict, no limits). `sources`: the user files' text as read at the start
        of the run (`reward.functions.read_sources`); a file missing there is read now."""
        if on_failure not in ON_FAILURE:
            raise ValueError(f"reward.on_failure={on_failure!r} is not one of {ON_FAILURE}")
        cfgs = [
            from_dict(RewardFunctionConfig, d, prefix=f"reward.functions[{i}].")
            for i, d in enumerate(function_configs)
        ]
        self.config_error: ConfigError | None = None
        self.sandboxes: list[Sandbox] = []
        try:
            self.functions = load_reward_functions(cfgs, Path(base_dir), sources)
        except ConfigError as e:
            # Raised by `function_names`, the pool's readiness check: an error raised by a method
            # reaches the driver as itself, one raised here only as Ray's text.
            self.config_error = e
            return
        self.on_failure = on_failure
        self.failure_score = failure_score
        options = dict(sandbox or {})
        workers, timeout_s = options.pop("workers", 2), options.pop("timeout_s", 30.0)
        isolation = options.pop("isolation", "strict")
        self.route: list[tuple[int, int]] = [(0, 0)] * len(cfgs)
        """Function index -> (sandbox, index of the function in that sandbox)."""
        groups: dict[tuple, list[int]] = {}
        for i, cfg in enumerate(cfgs):
            groups.setdefault(_access(cfg), []).append(i)
        try:
            for (harness, network, read_paths, _), members in groups.items():
                policy = Policy(
                    level="off" if harness else isolation,
                    untrusted_code=False,
                    network=network,
                    read_paths=read_paths,
                )
                configs = [_with_isolation(function_configs[i], isolation) for i in members]
                self.sandboxes.append(
                    Sandbox(
                        configs, base_dir, workers, timeout_s, Limits(**options), sources, policy
                    )
                )
                for j, i in enumerate(members):
                    self.route[i] = (len(self.sandboxes) - 1, j)
        except BaseException:
            self.close()
            raise

    def where(self) -> dict:
        """Where this actor runs, for the placement report: its Ray node and the cores it may
        use."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "cores": sorted(os.sched_getaffinity(0)),
        }

    def function_names(self) -> list[str]:
        """Names of the loaded functions, in config order (also a readiness check, which raises
        the `ConfigError` of a function that could not be loaded)."""
        if self.config_error is not None:
            raise self.config_error
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
        for (fi, gi, si), results in zip(where, self._run(tasks), strict=True):
            for j, outcome in enumerate(results):
                outcomes[gi][si + j][fi] = outcome
        return [
            [combine(self.functions, o, self.on_failure, self.failure_score) for o in row]
            for row in outcomes
        ]

    def _run(self, tasks: list[Task]) -> list[list[Outcome]]:
        """Each task run in the sandbox of its function, in task order."""
        results: list[list[Outcome]] = [[] for _ in tasks]
        for b, sandbox in enumerate(self.sandboxes):
            mine = [t for t in tasks if self.route[t[1]][0] == b]
            local = [(k, self.route[fi][1], xs) for k, (_, fi, xs) in enumerate(mine)]
            for (task_id, _, _), outcome in zip(mine, sandbox.run(local), strict=True):
                results[task_id] = outcome
        return results

    def isolation_layers(self) -> dict[str, list[str]]:
        """Function name -> the isolation layers active in its sandbox's workers."""
        return {
            f.name: self.sandboxes[self.route[i][0]].layers for i, f in enumerate(self.functions)
        }

    def close(self) -> None:
        """Kill the sandboxes' workers."""
        for sandbox in self.sandboxes:
            sandbox.close()
        self.sandboxes = []


CODE_HARNESSES = ("code_tests",)
"""Built-ins that run generated code in confined programs of their own (`code_runner.py`); their
workers run only our harness and the dataset's tests, so they get resource limits alone."""


def _access(cfg: RewardFunctionConfig) -> tuple[bool, bool, tuple[str, ...], tuple[str, ...]]:
    """What a function's sandbox must allow: (code harness, network, readable paths,
    environment variables)."""
    paths = tuple(sorted(str(Path(p).expanduser().resolve()) for p in cfg.read_paths))
    return cfg.name in CODE_HARNESSES, cfg.network, paths, tuple(sorted(cfg.env))


def _with_isolation(function_config: dict[str, Any], isolation: str) -> dict[str, Any]:
    """A code harness's config with `reward.isolation` passed to it (its own kwarg wins)."""
    if function_config.get("name") not in CODE_HARNESSES:
        return function_config
    kwargs = {"isolation": isolation} | dict(function_config.get("kwargs") or {})
    return function_config | {"kwargs": kwargs}
