"""Step metrics: phase timers, rollout statistics, `metrics.jsonl`, sinks and the console.

Guarantees: one JSON object per line in `metrics.jsonl`, flushed after every step, each with
`step`; keys are stable (see ARCHITECTURE.md "Names that scripts and recipes rely on"). The
same rows go to the sinks of `cluster/loggers.py`. The console shows a progress bar when stdout
is a terminal and one plain line per step otherwise (`logging.progress`).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.loggers import numeric
from core.records import Group, Sample


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
    """Length, truncation, zero-variance groups and accuracy of one generated batch. Lengths
    count the tokens the model generated (a multi-turn trajectory's replies left out)."""
    lengths = [generated_tokens(s) for g in groups for s in g.samples]
    truncated = [s.finish_reason == "length" for g in groups for s in g.samples]
    zero_var = [len({row_s.reward for row_s in row if not row_s.excluded}) <= 1 for row in scores]
    out = {
        "rollout/completion_len": sum(lengths) / len(lengths),
        "rollout/completion_len_max": max(lengths),
        "rollout/completion_len_min": min(lengths),
        "rollout/completion_len_std": statistics.pstdev(lengths),
        "rollout/truncated_frac": sum(truncated) / len(truncated),
        "rollout/zero_std_frac": sum(zero_var) / len(zero_var),
        "rollout/tokens": sum(lengths),
    }
    if accuracy_fn:
        out["accuracy"] = accuracy(scores, accuracy_fn)
    return out


def generated_tokens(sample: Sample) -> int:
    """Completion tokens the model wrote (all of them for a single turn)."""
    return sum(sample.loss_mask) if sample.loss_mask else len(sample.completion_token_ids)


def perf_metrics(row: dict[str, Any], peak_flops_per_s: float) -> dict[str, float]:
    """Throughput of a step row's phases: tokens per second of generation (tokens sampled) and
    of the learner (real tokens trained), and the learner's model FLOPs utilisation (its model
    FLOPs over the train phase, against the calibrated or tabled peak of its devices)."""
    out = {}
    if row.get("time/generate"):
        out["perf/generate_tokens_per_s"] = row["rollout/tokens"] / row["time/generate"]
    if row.get("time/train"):
        out["perf/learner_tokens_per_s"] = row["train/real_tokens"] / row["time/train"]
        out["perf/mfu"] = row["train/model_flops"] / (row["time/train"] * peak_flops_per_s)
    return out


def accuracy(scores: list[list[Any]], accuracy_fn: str) -> float:
    """Fraction of samples whose accuracy function scored 1 (failed calls count as wrong)."""
    values = [s.components.get(accuracy_fn, 0.0) for row in scores for s in row]
    return sum(1.0 for v in values if not math.isnan(v) and v >= 1.0) / len(values)


class MetricsLog:
    """Appends rows to `metrics.jsonl`, forwards them to the configured sinks (TensorBoard,
    W&B, MLflow) and shows progress: a tqdm bar on a terminal, one plain line per step
    otherwise (logs, `ray job submit`)."""

    def __init__(
        self,
        path: Path,
        total_steps: int,
        console: bool = True,
        progress: str = "lines",
        sinks: list | None = None,
    ):
        self.path, self.total_steps, self.console = path, total_steps, console
        self.sinks = sinks or []
        self.file = path.open("a")
        self.bar = None
        if console and progress_mode(progress) == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stdout)

    @classmethod
    def for_run(cls, run_dir: Path, cfg) -> MetricsLog:
        """The run's log as `cfg.logging` asks: `<run_dir>/metrics.jsonl` always."""
        from cluster.loggers import open_sinks

        log = cfg.logging
        return cls(
            run_dir / "metrics.jsonl",
            cfg.trainer.steps,
            log.console,
            log.progress,
            open_sinks(cfg, run_dir),
        )

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        values = numeric(row)
        for sink in self.sinks:
            sink.log(values, row["step"])
        if self.bar is not None:
            self.bar.update(row["step"] - self.bar.n)
            self.bar.set_postfix_str(format_short(row), refresh=True)
            if any(k.startswith("eval/") for k in row):
                self.bar.write(format_line(row, self.total_steps))
        elif self.console:
            print(format_line(row, self.total_steps), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for sink in self.sinks:
            sink.close()
        self.file.close()


def progress_mode(progress: str) -> str:
    """`logging.progress` resolved: `auto` is a bar when stdout is a terminal."""
    if progress == "auto":
        return "bar" if sys.stdout.isatty() else "lines"
    return progress


def format_short(row: dict[str, Any]) -> str:
    """The progress bar's postfix: reward, accuracy and seconds per step."""
    fields = [
        ("reward/mean", "reward {:.3f}"),
        ("accuracy", "acc {:.3f}"),
        ("eval/accuracy", "eval acc {:.3f}"),
        ("time/step", "{:.1f}s/step"),
    ]
    return " | ".join(fmt.format(row[key]) for key, fmt in fields if key in row)


def format_line(row: dict[str, Any], total_steps: int) -> str:
    parts = [f"step {row['step']:>3}/{total_steps}"]
    fields = [
        ("reward/mean", "reward {:.3f}"),
        ("reward/std", "± {:.3f}"),
        ("accuracy", "acc {:.3f}"),
        ("eval/accuracy", "EVAL acc {:.3f}"),
        ("eval/reward", "EVAL reward {:.3f}"),
        ("rollout/completion_len", "len {:.1f}"),
        ("train/kl", "kl {:.4f}"),
        ("train/clip_frac", "clip {:.3f}"),
        ("train/grad_norm", "gnorm {:.2f}"),
        ("time/generate", "gen {:.1f}s"),
        ("time/reward", "rew {:.1f}s"),
        ("time/train", "train {:.1f}s"),
        ("time/push", "push {:.1f}s"),
        ("time/step", "= {:.1f}s"),
    ]
    parts += [fmt.format(row[key]) for key, fmt in fields if key in row]
    return " | ".join(parts)
