"""Metric sinks read back offline: TensorBoard event files, a W&B offline run, an MLflow store;
the console shows a bar on a terminal and plain lines otherwise."""

import json
import math

import pytest

from cluster.metrics import MetricsLog, format_short, progress_mode
from core.config import load_config

ROWS = [
    {"step": 0, "eval/accuracy": 0.25, "time/eval": 1.0},
    {"step": 1, "reward/mean": 0.5, "accuracy": 0.4, "time/step": 2.0, "push/checksum": "ab"},
    {"step": 2, "reward/mean": 0.75, "accuracy": 0.6, "time/step": 1.5, "train/kl": math.nan},
]


def run_log(tmp_path, *overrides):
    cfg = load_config("configs/smoke.yaml", ["logging.progress=lines", *overrides])
    log = MetricsLog.for_run(tmp_path, cfg)
    for row in ROWS:
        log.write(row)
    log.close()
    return cfg


def test_metrics_jsonl_and_plain_lines(tmp_path, capsys):
    run_log(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[1]["push/checksum"] == "ab"
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].startswith("step   1/6 | reward 0.500")


def test_progress_bar_when_asked(tmp_path, capsys):
    log = MetricsLog(tmp_path / "m.jsonl", total_steps=2, progress="bar")
    for row in ROWS:
        log.write(row)
    log.close()
    out = capsys.readouterr().out
    assert "2/2" in out and "reward 0.750 | acc 0.600 | 1.5s/step" in out
    assert "EVAL acc 0.250" in out  # evaluation rows stay in the scroll-back
    assert progress_mode("auto") == "lines"  # pytest's captured stdout is not a terminal
    assert format_short(ROWS[1]) == "reward 0.500 | acc 0.400 | 2.0s/step"


def test_tensorboard_events_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_log(tmp_path, "logging.tensorboard=true")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(0, 0.25)]
    assert "push/checksum" not in acc.Tags()["scalars"]


def wandb_records(data: bytes):
    """Payloads of a `.wandb` file: a 7-byte `:W&B` header, then LevelDB log records (32 KiB
    blocks; each record: crc32, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield parts
            parts = b""


def test_wandb_offline_run_has_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_log(tmp_path, "logging.wandb={project: cohort-test, mode: offline}")
    import wandb

    # Once, under the whole suite's load, the file read right after `finish` held no history
    # records yet; W&B's teardown waits for its service process to write everything and exit.
    wandb.teardown()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (data,) = run_dir.glob("*.wandb")
    from wandb.proto import wandb_internal_pb2

    history, config = [], ""
    for raw in wandb_records(data.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.history.item})  # fmt: skip
        elif record.WhichOneof("record_type") == "run":
            config += str(record.run.config)
    rewards = [(h["_step"], h["reward/mean"]) for h in history if "reward/mean" in h]
    assert rewards == [(1, 0.5), (2, 0.75)]
    assert "digit_fraction" in config  # the resolved config went with the run


def test_mlflow_run_read_back(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_log(tmp_path, f"logging.mlflow={{tracking_uri: '{uri}', experiment: exp}}")
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    history = client.get_metric_history(run.info.run_id, "reward/mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]
    assert run.data.params["rollout.group_size"] == "8" and run.info.status == "FINISHED"


def test_missing_library_names_the_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="logging.wandb needs the wandb package: pip install"):
        run_log(tmp_path, "logging.wandb={project: x}")
