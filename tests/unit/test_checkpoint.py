"""Checkpoint files: atomic commit, `latest`, pruning, corrupt checkpoints, resume lookup."""

import json

import pytest

from cluster import checkpoint
from core import faults


def write(run, step, payload=b"weights", keep=2):
    tmp = checkpoint.begin(run, step)
    (tmp / "learner").mkdir()
    (tmp / "learner" / "model.pt").write_bytes(payload)
    return checkpoint.commit(run, tmp, step, {"step": step}, keep)


def test_commit_names_latest_and_keeps_the_newest(tmp_path):
    for step in (1, 2, 3):
        write(tmp_path, step)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_000002", "step_000003"]
    assert json.loads((root / "latest").read_text()) == {"checkpoint": "step_000003"}
    assert checkpoint.latest_valid(tmp_path) == root / "step_000003"
    assert checkpoint.read_driver_state(root / "step_000003") == {"step": 3}


def test_an_unfinished_write_is_invisible(tmp_path):
    write(tmp_path, 1)
    tmp = checkpoint.begin(tmp_path, 2)  # killed before commit
    (tmp / "half.pt").write_bytes(b"x")
    assert checkpoint.latest_valid(tmp_path).name == "step_000001"


def test_a_corrupt_checkpoint_is_skipped_with_a_message(tmp_path, capsys):
    write(tmp_path, 1)
    newest = write(tmp_path, 2)
    (newest / "learner" / "model.pt").write_bytes(b"trunc")  # size no longer matches
    assert checkpoint.latest_valid(tmp_path).name == "step_000001"
    assert "step_000002 skipped" in capsys.readouterr().out
    (newest / "MANIFEST.json").unlink()
    assert "MANIFEST.json is missing" in checkpoint.problem(newest)


def test_failed_write_leaves_the_previous_latest(tmp_path):
    write(tmp_path, 1)
    tmp = checkpoint.begin(tmp_path, 2)
    checkpoint.abort(tmp)
    assert not tmp.exists()
    assert checkpoint.latest_valid(tmp_path).name == "step_000001"


def test_find_resume_point(tmp_path):
    assert checkpoint.find_resume_point(tmp_path, "never") is None
    assert checkpoint.find_resume_point(tmp_path, "auto") is None  # no run yet: start afresh
    run = tmp_path / "20260101-000000"
    ckpt = write(run, 4)
    assert checkpoint.find_resume_point(tmp_path, "auto") == ckpt
    assert checkpoint.find_resume_point(tmp_path, str(run)) == ckpt
    assert checkpoint.find_resume_point(tmp_path, str(ckpt)) == ckpt
    with pytest.raises(ValueError, match="no complete checkpoint"):
        checkpoint.find_resume_point(tmp_path, str(tmp_path / "elsewhere"))


def test_truncate_jsonl_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 1, 2, 3)))
    checkpoint.truncate_jsonl(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1, 2]


def test_fault_specs():
    assert faults.parse("kill@train:3, nan_loss@2,nan_loss@4") == {
        "kill@train": {3},
        "nan_loss": {2, 4},
    }
    assert faults.due("nan_loss@2", "nan_loss", 2) and not faults.due("nan_loss@2", "nan_loss", 2)
    assert not faults.due("", "nan_loss", 2)
    with pytest.raises(ValueError, match="KIND@"):
        faults.parse("kill@train")
