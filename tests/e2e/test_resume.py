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

The fault cases are chained: one run is killed twice, each resumed process meeting the next
faults (a process start costs half a minute, a step a second); `trainer.fault_injection` may
differ between a run and its resumption, as any config key may. The second process meets a
failed checkpoint and then a torn one, so it resumes past both. The one_step_off run is killed
during training and resumed on a real full disk. Every kill ends every actor with the driver,
so a kill in generation differs from one in training only in the driver's position: training
is the one_step_off run's. Not covered: a real full disk with two learner ranks (see
test_one_step_off_run_on_a_full_disk_resumes_exactly).
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
# The faults of each process, and the step of the checkpoint the next process resumes from.
FAULTS = [
    ("kill@push:4", 3),  # weights half pushed: the engines get the checkpoint's on resume
    # Checkpoint 4 fails (a full disk: its files removed, 3 stays the latest); checkpoint 5 is
    # torn (the learner state written, the manifest not: unusable). Step 3's still resumes.
    ("disk_full@checkpoint:4,kill@checkpoint:5", 3),
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


@pytest.mark.timeout(4 * RUN_TIMEOUT_S)  # the shared run (if not done yet) and three processes
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
        if "disk_full" in fault:
            assert "checkpoint of step 4 FAILED" in done.stdout
            assert not (run_dir / "checkpoints" / ".tmp-step_000004").exists()
        if "kill@checkpoint" in fault:
            assert (run_dir / "checkpoints" / ".tmp-step_000005" / "learner").is_dir()
            assert latest(run_dir) == "step_000003"
    done = cohort(tiny_model, tmp_path, *config, "trainer.resume=auto")
    run = run_in(tmp_path, done)
    assert f"(step {FAULTS[-1][1]})" in done.stdout
    assert_same_run(run, grpo_run)
    assert latest(run.dir) == f"step_{STEPS:06d}"


def dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture
def small_filesystem(tmp_path, one_step_off_run):
    """A tmpfs with room for the shared one_step_off run's files, its final policy and one
    checkpoint, not two (a checkpoint, weights and Adam moments, is about 3x the policy), or
    None where no tmpfs can be mounted."""
    run_dir = one_step_off_run.dir
    checkpoint = dir_size(run_dir / "checkpoints" / latest(run_dir))
    policy = dir_size(run_dir / "policy")
    others = sum(p.stat().st_size for p in run_dir.iterdir() if p.is_file())
    size = checkpoint + policy * 3 // 2 + others
    assert size - checkpoint - others < checkpoint, "a second checkpoint would fit"
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        print(f"cannot mount a tmpfs here ({made.stderr.strip()}): the full disk is not tested")
        yield None
        return
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.timeout(3 * RUN_TIMEOUT_S)
def test_one_step_off_run_on_a_full_disk_resumes_exactly(
    tiny_model, tmp_path, small_filesystem, one_step_off_run
):
    """On a disk with room for one checkpoint, every checkpoint after step 1's fails and is
    cleaned up, and the run goes on. Killed in step 3, it resumes from step 1's checkpoint,
    which in one_step_off mode holds step 2's batch, generated ahead by the initial policy: the
    resumed run trains on that batch, not on a regenerated one, and ends as the uninterrupted
    run did, so neither the failed checkpoints nor the kill changed anything. With one learner
    rank: with two, a write that fails on one rank only leaves the other in DeepSpeed's save
    barrier, and the next step's all-reduce never completes. Where no tmpfs can be mounted the
    run uses an ordinary folder and resumes from step 2 (resuming after a failed checkpoint with
    two ranks is the chained test's `disk_full` case)."""
    full = small_filesystem is not None
    out = (small_filesystem or tmp_path) / "runs"
    killed = cohort(tiny_model, out, *ONE_STEP_OFF, "trainer.fault_injection=kill@train:3")
    assert_killed(killed, "kill@train:3")
    (run_dir,) = out.iterdir()
    resumed_from = 1 if full else 2
    if full:
        assert "checkpoint of step 2 FAILED" in killed.stdout, killed.stdout[-3000:]
        assert latest(run_dir) == "step_000001"
        assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the failed write is gone
    pending = run_dir / "checkpoints" / f"step_{resumed_from:06d}" / "pending_batch.json"
    assert pending.is_file()
    resumed = cohort(tiny_model, out, *ONE_STEP_OFF, "trainer.resume=auto")
    run = run_in(out, resumed)
    assert f"(step {resumed_from})" in resumed.stdout
    if full:
        assert "checkpoint of step 10 FAILED" in resumed.stdout
        assert latest(run.dir) == "step_000001"
    assert [r["rollout/staleness_mean"] for r in run.rows[1:]] == [0.0] + [1.0] * (STEPS - 1)
    assert_same_run(run, one_step_off_run)
