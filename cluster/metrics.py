"""Step metrics: phase timers, rollout statistics, `metrics.jsonl` and the console line.

Guarantees: one JSON object per line in `metrics.jsonl`, flushed after every step, each with
`step`; keys are stable (see ARCHITECTURE.md "Names that scripts and recipes rely on").
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rollout.records import Group


class PhaseTimer:
    """`with timer("generate"):` adds the phase's wall-clock seconds under `time/generate`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        return {f"time/{k}": v for k, v in self.seconds.items()} | {"time/step": total}


def rollout_metrics(groups: list[Group], scores: list[list[Any]], accuracy_fn: str) -> dict:
    """Length, truncation, zero-variance groups and accuracy of one generated batch."""
    lengths = [len(s.completion_token_ids) for g in groups for s in g.samples]
    truncated = [s.finish_reason == "length" for g in groups for s in g.samples]
    zero_var = [len({row_s.reward for row_s in row if not row_s.excluded}) <= 1 for row in scores]
    out = {
        "rollout/completion_len": sum(lengths) / len(lengths),
        "rollout/completion_len_max": max(lengths),
        "rollout/truncated_frac": sum(truncated) / len(truncated),
        "rollout/zero_std_frac": sum(zero_var) / len(zero_var),
        "rollout/tokens": sum(lengths),
    }
    if accuracy_fn:
        out["accuracy"] = accuracy(scores, accuracy_fn)
    return out


def accuracy(scores: list[list[Any]], accuracy_fn: str) -> float:
    """Fraction of samples whose accuracy function scored 1 (failed calls count as wrong)."""
    values = [s.components.get(accuracy_fn, 0.0) for row in scores for s in row]
    return sum(1.0 for v in values if not math.isnan(v) and v >= 1.0) / len(values)


class MetricsLog:
    """Appends rows to `metrics.jsonl` and prints a one-line summary per step."""

    def __init__(self, path: Path, total_steps: int, console: bool = True):
        self.path, self.total_steps, self.console = path, total_steps, console
        self.file = path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.console:
            print(format_line(row, self.total_steps), flush=True)

    def close(self) -> None:
        self.file.close()


def format_line(row: dict[str, Any], total_steps: int) -> str:
    parts = [f"step {row['step']:>3}/{total_steps}"]
    fields = [
        ("reward/mean", "reward {:.3f}"), ("reward/std", "± {:.3f}"), ("accuracy", "acc {:.3f}"),
        ("eval/accuracy", "EVAL acc {:.3f}"), ("eval/reward", "EVAL reward {:.3f}"),
        ("rollout/completion_len", "len {:.1f}"),
        ("train/kl", "kl {:.4f}"), ("train/clip_frac", "clip {:.3f}"),
        ("train/grad_norm", "gnorm {:.2f}"), ("time/generate", "gen {:.1f}s"),
        ("time/reward", "rew {:.1f}s"), ("time/train", "train {:.1f}s"),
        ("time/push", "push {:.1f}s"), ("time/step", "= {:.1f}s"),
    ]  # fmt: skip
    parts += [fmt.format(row[key]) for key, fmt in fields if key in row]
    return " | ".join(parts)
