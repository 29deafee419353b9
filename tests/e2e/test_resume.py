"""Exact resume: a run killed (SIGKILL to the driver) during generation, during training or in
the middle of writing a checkpoint, or whose checkpoint hits a full disk, is resumed with
`trainer.resume=auto` and ends with the same metrics rows (all but wall-clock times) and the
same final weights, bit for bit, as a run that was never interrupted.

Why bitwise is possible on CPU: each step's sampling is seeded from (seed, step) in the engine,
the data position and every rank's RNG states are in the checkpoint, DeepSpeed restores the
fp32 weights and Adam moments exactly, and torch's CPU kernels are deterministic for a fixed
thread count.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO

pytestmark = pytest.mark.slow
STEPS = 4


def cohort(tiny_model, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run the real entry point in its own session; after it ends (or is killed) every process
    it left behind (Ray's) is killed with its process group."""
    args = ["train", "configs/smoke.yaml", f"model.path={tiny_model}", f"trainer.steps={STEPS}",
            "trainer.checkpoint_every=1", "trainer.eval_every=2", "trainer.save_final=true",
            f"trainer.output_dir={out}", *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "cluster", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    out_text, _ = proc.communicate(timeout=600)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_text, "")


def result(out: Path):
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]
    return rows, load_file(run / "policy" / "model.safetensors"), run


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    done = cohort(tiny_model, out)
    assert done.returncode == 0, done.stdout[-3000:]
    return result(out)


ONE_STEP_OFF = ("trainer.mode=one_step_off", "algorithm.sampler_correction=token_truncate")


def test_one_step_off_run_resumes_exactly(tiny_model, tmp_path):
    """In one_step_off mode the checkpoint of step 2 holds step 3's batch, generated ahead by
    the step-1 policy; the resumed run trains on that batch, not on a regenerated one."""
    done = cohort(tiny_model, tmp_path / "whole", *ONE_STEP_OFF)
    assert done.returncode == 0, done.stdout[-3000:]
    killed = cohort(tiny_model, tmp_path / "killed", *ONE_STEP_OFF,
                    "trainer.fault_injection=kill@train:3")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    (run,) = (tmp_path / "killed").iterdir()
    assert (run / "checkpoints" / "step_000002" / "pending_batch.json").is_file()
    resumed = cohort(tiny_model, tmp_path / "killed", *ONE_STEP_OFF, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    rows, weights, _ = result(tmp_path / "killed")
    want_rows, want_weights, _ = result(tmp_path / "whole")
    assert [r["rollout/staleness_mean"] for r in rows[1:]] == [0.0] + [1.0] * (STEPS - 1)
    assert rows == want_rows
    assert all((weights[k] == want_weights[k]).all() for k in weights), "weights differ"


@pytest.mark.parametrize(
    "fault, resumed_from",
    [
        ("kill@generate:3", 2),
        ("kill@train:3", 2),
        ("kill@push:3", 2),  # weights half pushed: the engines get the checkpoint's on resume
        ("kill@checkpoint:2", 1),  # learner state of step 2 written, manifest not: unusable
        ("disk_full@checkpoint:2,kill@generate:3", 1),  # checkpoint 2 failed, 1 still resumes
    ],
)
def test_killed_run_resumes_exactly(tiny_model, tmp_path, uninterrupted, fault, resumed_from):
    killed = cohort(tiny_model, tmp_path, f"trainer.fault_injection={fault}")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    if "disk_full" in fault:
        assert "checkpoint of step 2 FAILED" in killed.stdout
    resumed = cohort(tiny_model, tmp_path, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"(step {resumed_from})" in resumed.stdout  # "resuming from ... (step N)"
    rows, weights, run = result(tmp_path)
    want_rows, want_weights, _ = uninterrupted
    assert [r["step"] for r in rows] == list(range(STEPS + 1))
    assert rows == want_rows
    assert weights.keys() == want_weights.keys()
    assert all((weights[k] == want_weights[k]).all() for k in weights), "weights differ"
    assert (run / "checkpoints" / "latest").is_file()


@pytest.fixture
def small_filesystem(tmp_path):
    """A 6 MiB tmpfs: room for one checkpoint of the tiny model (about 4 MiB), not two."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}); the injected ENOSPC "
                    "case above covers the logic")  # fmt: skip
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_keeps_the_previous_checkpoint(tiny_model, small_filesystem, uninterrupted):
    out = small_filesystem / "runs"
    first = cohort(tiny_model, out, "trainer.save_final=false")
    assert first.returncode == 0, first.stdout[-3000:]
    assert "checkpoint of step 2 FAILED" in first.stdout
    (run,) = list(out.iterdir())
    latest = json.loads((run / "checkpoints" / "latest").read_text())["checkpoint"]
    assert latest == "step_000001"
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the failed write was cleaned up
    resumed = cohort(tiny_model, out, "trainer.save_final=false", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "(step 1)" in resumed.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]
    assert rows == uninterrupted[0]
