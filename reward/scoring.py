"""Scoring samples with the reward functions: the pure logic the reward actors run (no Ray).

Guaranteed: a reward function that raises an `Exception`, returns something that is not a real
number (`bool` counts as 0/1), or returns NaN/inf never stops scoring; it marks that sample
`failed`, its component is NaN and its error is recorded as `"ExceptionType: message"`. Under
`on_failure="exclude"` a failed sample has reward 0.0 and `excluded=True` (the learner drops it
from its group's statistics and the loss); under `"score"` the failed function contributes
`weight * failure_score` and the sample is kept. Not guaranteed: time limits and isolation from
a function that hangs, exhausts memory or exits the process (the sandbox, issue 4).
"""

from __future__ import annotations

import math
import numbers
import statistics
from dataclasses import dataclass, field

from reward.functions import RewardFunction
from rollout.records import Group, Prompt, Sample

ON_FAILURE = ("exclude", "score")


@dataclass
class Score:
    """One sample's reward and how it was made."""

    reward: float
    """Weighted sum of the functions' scores (0.0 when `excluded`)."""
    components: dict[str, float]
    """Each function's raw (unweighted) score by name; NaN where that function failed."""
    failed: bool = False
    """Some function failed on this sample."""
    excluded: bool = False
    """Failed under `on_failure="exclude"`: the learner must leave this sample out."""
    errors: dict[str, str] = field(default_factory=dict)
    """Function name -> `"ExceptionType: message"` for each function that failed."""


def score_sample(
    functions: list[RewardFunction],
    prompt: Prompt,
    sample: Sample,
    on_failure: str,
    failure_score: float,
) -> Score:
    """Score one completion with every function; see the module docstring for failures."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"reward.on_failure={on_failure!r} is not one of {ON_FAILURE}")
    reward, components, errors = 0.0, {}, {}
    for f in functions:
        try:
            value = f.fn(
                sample.text, prompt=prompt.text, answer=prompt.answer, row=prompt.fields, **f.kwargs
            )
            components[f.name] = _checked(value)
            reward += f.weight * components[f.name]
        except Exception as e:  # any error in user code is a per-sample failure
            components[f.name] = math.nan
            errors[f.name] = f"{type(e).__name__}: {e}"
            reward += f.weight * failure_score
    excluded = bool(errors) and on_failure == "exclude"
    return Score(
        reward=0.0 if excluded else reward,
        components=components,
        failed=bool(errors),
        excluded=excluded,
        errors=errors,
    )


def score_groups(
    functions: list[RewardFunction], groups: list[Group], on_failure: str, failure_score: float
) -> list[list[Score]]:
    """`score_sample` for every sample, nested as `groups[i].samples[j]`."""
    return [
        [score_sample(functions, g.prompt, s, on_failure, failure_score) for s in g.samples]
        for g in groups
    ]


def reward_metrics(scores: list[list[Score]], function_names: list[str]) -> dict[str, float]:
    """Step metrics: reward mean and population std over kept samples, each function's mean
    over the samples it scored, and counts of failures and exclusions. NaN where nothing to
    average."""
    flat = [s for group in scores for s in group]
    kept = [s.reward for s in flat if not s.excluded]
    metrics = {"reward/mean": _mean(kept), "reward/std": _pstd(kept)}
    for name in function_names:
        scored = [s.components[name] for s in flat if name not in s.errors]
        metrics[f"reward/{name}/mean"] = _mean(scored)
        metrics[f"reward/{name}/errors"] = float(sum(name in s.errors for s in flat))
    metrics["reward/errors"] = float(sum(s.failed for s in flat))
    metrics["reward/excluded"] = float(sum(s.excluded for s in flat))
    return metrics


def _checked(value: object) -> float:
    """`value` as a finite float, or an error saying what the function returned instead."""
    if not isinstance(value, numbers.Real):
        raise TypeError(f"returned {value!r:.100} ({type(value).__name__}), expected a number")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"returned {result}, expected a finite number")
    return result


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _pstd(values: list[float]) -> float:
    return statistics.pstdev(values) if values else math.nan
