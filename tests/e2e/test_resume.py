"""Exact resume: a run killed (SIGKILL to the driver) during generation, training, the weight
push or the writing of a checkpoint, or whose checkpoint hits a full disk, is resumed with
`trainer.resume=auto` and ends with the same metrics rows (all but wall-clock times) and the
same final weights, bit for bit, as a run that was never interrupted. The uninterrupted runs
are the learning test's (conftest.py): the GRPO preset with two ZeRO-1 learner ranks, as the
large recipes run, and the one_step_off run with one rank.

Why bitwise is possible on CPU: each step's sampling is seeded from (seed, step) in the engine,
the data position and every rank's RNG states are in the checkpoint, DeepSpeed restores the
fp32 weights and Adam moments (each rank its shard) exactly, and torch's CPU kernels are
deterministic for a fixed thread count.

The fault cases are chained: one run is killed four times, each resumed process meeting the
next fault (a process start costs a minute, a step a second); `trainer.fault_injection` may
differ between a run and its resumption, as any config key may. Not covered: a real full disk
with two learner ranks (see test_full_disk_keeps_the_previous_checkpoint).
"""

import json
import signal
import subprocess

import pytest

from tests.e2e.conftest import (
    GRPO,
    ONE_STEP_OFF,
    RUN_TIMEOUT_S,
    STEPS,
    cohort,
    preset_overrides,
    run_in,
)

pytestmark = pytest.mark.slow
# Each fault, and the step of the checkpoint the next process resumes from.
FAULTS = [
    ("kill@train:3", 2),
    ("kill@push:4", 3),  # weights half pushed: the engines get the checkpoint's on resume
    ("kill@checkpoint:5", 4),  # learner state of step 5 written, manifest not: unusable
    ("disk_full@checkpoint:6,kill@generate:7", 5),  # checkpoint 6 failed, 5 still resumes
]


def latest(run_dir) -> str:
    return json.loads((run_dir / "checkpoints" / "latest").read_text())["checkpoint"]


def assert_killed(done: subprocess.CompletedProcess, fault: str) -> None:
    """The driver died of the SIGKILL `fault` injects, where it says."""
    assert done.returncode == -signal.SIGKILL, done.stdout[-3000:]
    kill = fault.rpartition("kill@")[2]
    phase, _, step = kill.partition(":")
    assert f"SIGKILL to the driver during {phase} of step {step}" in done.stdout, kill


def assert_same_run(run, reference) -> None:
    """`run` ended with `reference`'s metrics rows and final weights, bit for bit."""
    assert [r["step"] for r in run.rows] == list(range(STEPS + 1))
    assert run.exact_rows == reference.exact_rows
    weights, want = run.weights(), reference.weights()
    assert weights.keys() == want.keys()
    assert all((weights[k] == want[k]).all() for k in weights), "weights differ"


@pytest.mark.timeout(6 * RUN_TIMEOUT_S)  # the shared run (if not done yet) and five processes
def test_killed_run_resumes_exactly(tiny_model, tmp_path, grpo_run):
    """The GRPO run, killed at each of FAULTS in turn and resumed each time, ends as the
    uninterrupted one did."""
    config = (*preset_overrides("grpo"), *GRPO)
    for i, (fault, _) in enumerate(FAULTS):
        resume = ["trainer.resume=auto"] if i else []
        done = cohort(tiny_model, tmp_path, *config, *resume, f"trainer.fault_injection={fault}")
        if i:  # "resuming from ... (step N)"
            assert f"(step {FAULTS[i - 1][1]})" in done.stdout, done.stdout[-3000:]
        assert_killed(done, fault)
        (run_dir,) = tmp_path.iterdir()
        if fault.startswith("kill@checkpoint"):
            assert (run_dir / "checkpoints" / ".tmp-step_000005" / "learner").is_dir()
            assert latest(run_dir) == "step_000004"
        if "disk_full" in fault:
            assert "checkpoint of step 6 FAILED" in done.stdout
            assert latest(run_dir) == "step_000005"
    done = cohort(tiny_model, tmp_path, *config, "trainer.resume=auto")
    run = run_in(tmp_path, done)
    assert f"(step {FAULTS[-1][1]})" in done.stdout
    assert_same_run(run, grpo_run)
    assert latest(run.dir) == f"step_{STEPS:06d}"


@pytest.mark.timeout(3 * RUN_TIMEOUT_S)
def test_one_step_off_run_resumes_exactly(tiny_model, tmp_path, one_step_off_run):
    """In one_step_off mode the checkpoint of step 2 holds step 3's batch, generated ahead by
    the step-1 policy; the resumed run trains on that batch, not on a regenerated one."""
    killed = cohort(tiny_model, tmp_path, *ONE_STEP_OFF, "trainer.fault_injection=kill@train:3")
    assert_killed(killed, "kill@train:3")
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "checkpoints" / "step_000002" / "pending_batch.json").is_file()
    resumed = cohort(tiny_model, tmp_path, *ONE_STEP_OFF, "trainer.resume=auto")
    run = run_in(tmp_path, resumed)
    assert "(step 2)" in resumed.stdout
    assert [r["rollout/staleness_mean"] for r in run.rows[1:]] == [0.0] + [1.0] * (STEPS - 1)
    assert_same_run(run, one_step_off_run)


@pytest.fixture
def small_filesystem(tmp_path, one_step_off_run):
    """A tmpfs with room for one checkpoint of the shared one_step_off run, not two (its size
    comes from that run's last checkpoint, about 4 MiB)."""
    run_dir = one_step_off_run.dir
    checkpoint = run_dir / "checkpoints" / latest(run_dir)
    size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
    others = sum(p.stat().st_size for p in run_dir.iterdir() if p.is_file())
    mount = tmp_path / "small"
    mount.mkdir()
    options = f"size={size * 3 // 2 + others}"
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        reason = f"cannot mount a tmpfs here ({made.stderr.strip()})"
        pytest.skip(f"{reason}; the injected ENOSPC case above covers the logic")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.timeout(2 * RUN_TIMEOUT_S)
def test_full_disk_keeps_the_previous_checkpoint(tiny_model, small_filesystem, one_step_off_run):
    """On a real full disk every checkpoint after the first fails and is cleaned up, and the run
    goes on with the same metrics (resuming after a failed checkpoint is the chained test's
    `disk_full` case). With one learner rank: with two, a write that fails on one rank only
    leaves the other in DeepSpeed's save barrier, and the next step's all-reduce never
    completes."""
    out = small_filesystem / "runs"
    config = (*ONE_STEP_OFF, "trainer.save_final=false")
    first = cohort(tiny_model, out, *config)
    run = run_in(out, first)
    assert "checkpoint of step 2 FAILED" in first.stdout
    assert latest(run.dir) == "step_000001"
    assert not list((run.dir / "checkpoints").glob(".tmp-*"))  # the failed write was cleaned up
    assert run.exact_rows == one_step_off_run.exact_rows  # failed checkpoints change nothing
