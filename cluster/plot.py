"""`cohort plot RUN`: training curves from a run's `metrics.jsonl` as one PNG.

Panels: reward (mean ± std, and held-out reward), accuracy (training samples and held-out
greedy), completion length, KL (to the reference and between vLLM and the learner), clip
fraction, and seconds per phase. A panel whose metrics the run did not log says so. Guarantees:
drawn with matplotlib's Agg backend (no display needed). Not covered: comparing several runs in
one figure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

PANELS = [
    ("reward", [("reward/mean", "train (mean)"), ("eval/reward", "eval (greedy)")]),
    ("accuracy", [("accuracy", "train samples"), ("eval/accuracy", "eval (greedy)")]),
    (
        "completion length (tokens)",
        [("rollout/completion_len", "train mean"), ("eval/completion_len", "eval mean")],
    ),
    ("KL", [("train/kl", "policy || reference"), ("train/mismatch_kl", "vLLM vs learner")]),
    ("clip fraction", [("train/clip_frac", "clipped tokens")]),
    (
        "seconds per phase",
        [
            ("time/generate", "generate"),
            ("time/reward", "reward"),
            ("time/train", "train"),
            ("time/push", "push"),
            ("time/eval", "eval"),
            ("time/step", "whole step"),
        ],
    ),
]


def read_metrics(path: Path) -> list[dict]:
    """The rows of a `metrics.jsonl` (a torn last line from a killed run is ignored)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    points = [(s, v) for s, v in points if math.isfinite(v)]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draw `run_dir/metrics.jsonl` into `out` (default `<run_dir>/plots/curves.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} does not exist: give a run folder (runs/<exp>/<id>)")
    rows = read_metrics(metrics)
    if not rows:
        raise ValueError(f"{metrics} has no rows yet")
    out = out or run_dir / "plots" / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    for ax, (title, keys) in zip(axes.flat, PANELS):
        drawn = 0
        for key, label in keys:
            steps, values = series(rows, key)
            if not steps:
                continue
            style = "o-" if len(steps) < 30 or key.startswith("eval/") else "-"
            ax.plot(steps, values, style, markersize=3, label=label)
            drawn += 1
            if key == "reward/mean":
                _, std = series(rows, "reward/std")
                if len(std) == len(values):
                    low = [v - s for v, s in zip(values, std)]
                    high = [v + s for v, s in zip(values, std)]
                    ax.fill_between(steps, low, high, alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(
                0.5,
                0.5,
                "not logged by this run",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="gray",
            )
    fig.suptitle(f"{run_dir} ({max(r['step'] for r in rows)} steps)")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
