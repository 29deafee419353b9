"""Metric sinks beyond `metrics.jsonl`: TensorBoard, Weights & Biases and MLflow.

Guarantees: each sink is opened only when its `logging.*` key is set, receives every metrics row
with its step (numeric values only; booleans as 0/1; strings such as checksums are left to
`metrics.jsonl`) and is closed with the run. The resolved config goes to W&B's run config and
to MLflow's run parameters. A missing library fails at start with the `pip install` to run.
Not covered: artifacts (checkpoints, the exported model) are not uploaded; resuming a run opens
a new W&B/MLflow run rather than continuing the old one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from core.config import Config, to_dict


class MetricSink(Protocol):
    """Where a metrics row goes besides `metrics.jsonl`."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def numeric(row: dict[str, Any]) -> dict[str, float]:
    """The row's numeric metrics as floats, without `step`."""
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}


def _require(module: str, package: str, key: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{key} needs the {package} package: pip install {package}") from e


class TensorBoardSink:
    """Event files in `<run dir>/tensorboard/` (`tensorboard --logdir runs/`)."""

    def __init__(self, run_dir: Path):
        _require("tensorboard", "tensorboard", "logging.tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run; `logging.wandb` holds `wandb.init` arguments (`mode: offline` works without
    network: `wandb sync <run dir>/wandb/offline-run-*` uploads it later)."""

    def __init__(self, cfg: Config, run_dir: Path):
        wandb = _require("wandb", "wandb", "logging.wandb")
        options = {"project": cfg.experiment, "name": run_dir.name, "dir": str(run_dir)}
        self.run = wandb.init(**(options | cfg.logging.wandb), config=to_dict(cfg))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    """An MLflow run in experiment `logging.mlflow.experiment` (default: `experiment`)."""

    def __init__(self, cfg: Config, run_dir: Path):
        mlflow = _require("mlflow", "mlflow", "logging.mlflow")
        options = dict(cfg.logging.mlflow)
        self.client = mlflow.MlflowClient(tracking_uri=options.get("tracking_uri"))
        name = options.get("experiment", cfg.experiment)
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in _flat(to_dict(cfg)).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.set_tag(self.run_id, "run_dir", str(run_dir.resolve()))
        self.metric = mlflow.entities.Metric

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        rows = [self.metric(k, v, now, step) for k, v in metrics.items() if math.isfinite(v)]
        for i in range(0, len(rows), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=rows[i : i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def open_sinks(cfg: Config, run_dir: Path) -> list[MetricSink]:
    """The sinks `cfg.logging` asks for, opened for this run."""
    sinks: list[MetricSink] = []
    if cfg.logging.tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    if cfg.logging.wandb:
        sinks.append(WandbSink(cfg, run_dir))
    if cfg.logging.mlflow:
        sinks.append(MlflowSink(cfg, run_dir))
    return sinks
