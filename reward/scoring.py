"""Scoring samples with the reward functions: the pure logic the sandbox workers run (no Ray).

One reward call is one function on one sample (or on one group, for a batched function); its
result is an `Outcome`, and a sample's outcomes are combined into a `Score` by `combine`.
Guaranteed: a call that raises (`kind="exception"`), returns something that is not a real number
or a dict of at most `MAX_PARTS` of them (`bool` counts as 0/1), or returns NaN/inf or a score
outside the function's declared range (`"invalid"`) never stops scoring, and every reward that
leaves `combine` is finite;
the sandbox adds `"timeout"` and `"crash"` (`reward/sandbox.py`). Any failed call marks its
sample `failed`, its component is NaN, and its error is recorded as `"ExceptionType: message"`
with the kind and traceback. Under `on_failure="exclude"` a failed sample has reward 0.0 and
`excluded=True` (the learner drops it from its group's statistics and the loss); under `"score"`
the failed function contributes `weight * failure_score` and the sample is kept.
`score_sample` / `score_groups` run the calls in this process with no time limit or isolation
(evaluation and tests); training runs them in the sandbox.
"""

from __future__ import annotations

import math
import numbers
import re
import statistics
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.choices import REWARD_ON_FAILURE
from core.records import Group, Prompt, Sample, Score
from reward.functions import OPTIONAL_INPUTS, RewardFunction

ON_FAILURE = REWARD_ON_FAILURE
KINDS = ("exception", "timeout", "crash", "invalid")
"""Failure kinds, as counted in `reward/<fn>/failures/<kind>`."""
MAX_PARTS = 64
"""Most named parts a function may return in a dict (each becomes a metric)."""
_PART_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass
class CallInput:
    """What a reward call sees of one sample: plain data, cheap to send to a worker."""

    completion: str
    prompt: str
    answer: str
    row: dict[str, Any]
    num_tokens: int
    finish_reason: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    env_reward: float | None = None

    @classmethod
    def of(cls, prompt: Prompt, sample: Sample) -> CallInput:
        return cls(
            sample.text,
            prompt.text,
            prompt.answer,
            prompt.fields,
            len(sample.completion_token_ids),
            sample.finish_reason,
            sample.messages,
            sample.env_reward,
        )


@dataclass
class Outcome:
    """One function's result on one sample: a score, or a failure of some kind."""

    value: float = math.nan
    components: dict[str, float] = field(default_factory=dict)
    """Named parts when the function returned a dict (`value` is their sum)."""
    seconds: float = 0.0
    kind: str = ""
    """Empty on success, else one of `KINDS`."""
    error: str = ""
    traceback: str = ""

    @classmethod
    def failure(cls, kind: str, error: str, tb: str = "", seconds: float = 0.0) -> Outcome:
        return cls(kind=kind, error=error, traceback=tb or error, seconds=seconds)


def checked(
    value: object, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> tuple[float, dict[str, float]]:
    """A function's return value as (score, named components): a real number, or a non-empty
    dict of at most `MAX_PARTS` real numbers (keys of letters, digits, `_.-`) summed into the
    score; the score must lie in `bounds`. Raises TypeError / ValueError otherwise."""
    if isinstance(value, dict):
        if not value or len(value) > MAX_PARTS:
            raise ValueError(f"returned a dict of {len(value)} parts, expected 1 to {MAX_PARTS}")
        bad = [k for k in value if not isinstance(k, str) or not _PART_NAME.fullmatch(k)]
        if bad:
            raise TypeError(
                f"returned a dict with key {bad[0]!r:.80}, expected names of "
                "letters, digits, '_', '.' or '-' (at most 64)"
            )
        parts = {k: _finite(v, f"[{k!r}]") for k, v in value.items()}
        score = math.fsum(parts.values())
    else:
        score, parts = _finite(value, ""), {}
    low, high = bounds
    if not low <= score <= high:
        raise ValueError(
            f"returned {score:g}, outside the function's range [{low:g}, {high:g}] "
            "(reward.functions[i].range)"
        )
    return score, parts


def _finite(value: object, where: str) -> float:
    if not isinstance(value, numbers.Real):
        raise TypeError(
            f"returned{where} {value!r:.100} ({type(value).__name__}), expected a number"
        )
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"returned{where} {result}, expected a finite number")
    return result


def call_function(f: RewardFunction, x: CallInput) -> Outcome:
    """Call a per-sample function on `x` in this process, catching every `Exception`."""
    extra = {name: getattr(x, name) for name in f.inputs}
    t0 = time.perf_counter()
    try:
        value = f.fn(x.completion, prompt=x.prompt, answer=x.answer, row=x.row, **extra, **f.kwargs)
    except Exception as e:  # any error in user code is a per-sample failure
        return _raised(e, time.perf_counter() - t0)
    return _judged(value, time.perf_counter() - t0, f.range)


def call_batched(f: RewardFunction, xs: list[CallInput]) -> list[Outcome]:
    """Call a batched function once on all of `xs`; it returns one value per input, where an
    `Exception` instance marks that input failed. A call that raises or returns a list of the
    wrong length fails every input."""
    extra = {OPTIONAL_INPUTS[name]: [getattr(x, name) for x in xs] for name in f.inputs}
    t0 = time.perf_counter()
    try:
        values = f.fn(
            [x.completion for x in xs],
            prompts=[x.prompt for x in xs],
            answers=[x.answer for x in xs],
            rows=[x.row for x in xs],
            **extra,
            **f.kwargs,
        )
    except Exception as e:
        return [_raised(e, (time.perf_counter() - t0) / len(xs))] * len(xs)
    seconds = (time.perf_counter() - t0) / len(xs)
    if not isinstance(values, (list, tuple)) or len(values) != len(xs):
        error = (
            f"TypeError: batched function returned {values!r:.100}, expected a list of "
            f"{len(xs)} values"
        )
        return [Outcome.failure("invalid", error, seconds=seconds)] * len(xs)
    return [
        _raised(v, seconds) if isinstance(v, Exception) else _judged(v, seconds, f.range)
        for v in values
    ]


def _raised(e: BaseException, seconds: float) -> Outcome:
    tb = "".join(traceback.format_exception(e))
    return Outcome.failure("exception", f"{type(e).__name__}: {e}", tb, seconds)


def _judged(value: object, seconds: float, bounds: tuple[float, float]) -> Outcome:
    try:
        score, parts = checked(value, bounds)
    except (TypeError, ValueError) as e:
        return Outcome.failure("invalid", f"{type(e).__name__}: {e}", seconds=seconds)
    return Outcome(score, parts, seconds)


def combine(
    functions: list[RewardFunction], outcomes: list[Outcome], on_failure: str, failure_score: float
) -> Score:
    """One sample's `Score` from its outcomes, one per function in order."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"reward.on_failure={on_failure!r} is not one of {ON_FAILURE}")
    s = Score(reward=0.0, components={})
    for f, o in zip(functions, outcomes, strict=True):
        s.seconds[f.name] = o.seconds
        if o.kind:
            s.components[f.name] = math.nan
            s.errors[f.name], s.kinds[f.name], s.tracebacks[f.name] = o.error, o.kind, o.traceback
            s.reward += f.weight * failure_score
        else:
            s.components[f.name] = o.value
            s.components |= {f"{f.name}/{k}": v for k, v in o.components.items()}
            s.reward += f.weight * o.value
    if not math.isfinite(s.reward):  # in-range scores times large weights can still overflow
        s.errors["reward"] = f"ValueError: the weighted sum of the scores is {s.reward}"
        s.kinds["reward"] = "invalid"
        s.tracebacks["reward"] = s.errors["reward"]
        s.reward = failure_score if on_failure == "score" else 0.0
    s.failed = bool(s.errors)
    s.excluded = s.failed and on_failure == "exclude"
    if s.excluded:
        s.reward = 0.0
    return s


def score_sample(
    functions: list[RewardFunction],
    prompt: Prompt,
    sample: Sample,
    on_failure: str,
    failure_score: float,
) -> Score:
    """Score one completion with every function, in this process (a batched function gets a
    batch of one)."""
    x = CallInput.of(prompt, sample)
    outcomes = [call_batched(f, [x])[0] if f.batched else call_function(f, x) for f in functions]
    return combine(functions, outcomes, on_failure, failure_score)


def score_groups(
    functions: list[RewardFunction], groups: list[Group], on_failure: str, failure_score: float
) -> list[list[Score]]:
    """`score_sample` for every sample, nested as `groups[i].samples[j]`."""
    return [
        [score_sample(functions, g.prompt, s, on_failure, failure_score) for s in g.samples]
        for g in groups
    ]


def reward_metrics(scores: list[list[Score]], function_names: list[str]) -> dict[str, float]:
    """Step metrics: reward mean and population std over kept samples; per function its mean
    over the samples it scored, the mean of each named component, its failures (all kinds in
    `errors`, and by kind) and its summed call seconds; totals of failed and excluded samples.
    NaN where there is nothing to average."""
    flat = [s for group in scores for s in group]
    kept = [s.reward for s in flat if not s.excluded]
    metrics = {"reward/mean": _mean(kept), "reward/std": _pstd(kept)}
    for name in function_names:
        ok = [s for s in flat if name not in s.errors]
        metrics[f"reward/{name}/mean"] = _mean([s.components[name] for s in ok])
        parts = sorted({k for s in ok for k in s.components if k.startswith(name + "/")})
        for part in parts:
            metrics[f"reward/{part}/mean"] = _mean(
                [s.components[part] for s in ok if part in s.components]
            )
        metrics[f"reward/{name}/errors"] = float(len(flat) - len(ok))
        kinds = Counter(s.kinds.get(name, "exception") for s in flat if name in s.errors)
        for kind in KINDS:
            metrics[f"reward/{name}/failures/{kind}"] = float(kinds[kind])
        metrics[f"time/reward/{name}"] = math.fsum(s.seconds.get(name, 0.0) for s in flat)
    metrics["reward/errors"] = float(sum(s.failed for s in flat))
    metrics["reward/excluded"] = float(sum(s.excluded for s in flat))
    metrics["reward/failure_rate"] = metrics["reward/errors"] / len(flat) if flat else math.nan
    return metrics


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _pstd(values: list[float]) -> float:
    return statistics.pstdev(values) if values else math.nan
