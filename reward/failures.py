"""Failed reward calls: the failures log (JSONL) and the failure-rate stop.

Guaranteed: `failure_records` gives one record per failed (function, sample) with the function,
kind, error, traceback and the call's whole input; `append_failures` appends them to a JSONL
file, one object per line, flushed before it returns. `failure_rate_error` names the function
with the highest failure rate above the limit, its failure count and its most common error.
Not guaranteed: the log's size is not bounded (each record holds a prompt and a completion).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from core.records import Group
from reward.scoring import Score

FAILURES_LOG = "reward_failures.jsonl"
"""File name of the failures log in the run directory."""


def failure_records(groups: list[Group], scores: list[list[Score]], call: int) -> list[dict]:
    """One record per failed function call on a sample; `call` numbers the pool's scoring
    calls (the n-th `RewardPool.score` of the run, from 1)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    records = []
    for g, row in zip(groups, scores, strict=True):
        for j, (sample, s) in enumerate(zip(g.samples, row, strict=True)):
            for name, error in s.errors.items():
                records.append(
                    {
                        "time": now,
                        "call": call,
                        "function": name,
                        "kind": s.kinds.get(name, "exception"),
                        "error": error,
                        "traceback": s.tracebacks.get(name, ""),
                        "prompt_id": g.prompt.id,
                        "sample": j,
                        "prompt": g.prompt.text,
                        "answer": g.prompt.answer,
                        "row": g.prompt.fields,
                        "completion": sample.text,
                        "finish_reason": sample.finish_reason,
                    }
                )
    return records


def append_failures(path: Path, records: list[dict[str, Any]]) -> None:
    """Append `records` to the JSONL file at `path` (values JSON cannot hold become strings)."""
    if not records:
        return
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, default=str) + "\n")


def failure_rate_error(
    scores: list[list[Score]], function_names: list[str], max_rate: float, min_samples: int
) -> str | None:
    """Why the run must stop, when some function failed on more than `max_rate` of the samples
    (checked from `min_samples` samples on); None when all is well."""
    flat = [s for row in scores for s in row]
    if len(flat) < min_samples or max_rate >= 1:
        return None
    worst = max(function_names, key=lambda n: sum(n in s.errors for s in flat), default=None)
    failed = [s for s in flat if worst in s.errors]
    if worst is None or len(failed) <= max_rate * len(flat):
        return None
    ((error, count),) = Counter(
        f"{s.kinds.get(worst, 'exception')}: {s.errors[worst]}" for s in failed
    ).most_common(1)
    return (
        f"reward function `{worst}` failed on {len(failed)} of {len(flat)} samples in one "
        f"scoring call ({len(failed) / len(flat):.0%} > reward.max_failure_rate={max_rate:g}); "
        f"most common error ({count}x): {error:.500}. Fix the function (tracebacks and inputs "
        "are in the failures log) or raise reward.max_failure_rate / reward.timeout_s."
    )
