"""Faults a run survives or stops on cleanly: NaN losses, dead rollout and reward actors."""

import json

import pytest

from tests.conftest import run_cohort

pytestmark = pytest.mark.slow


def rows_of(out):
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def smoke(tiny_model, out, *extra):
    return run_cohort(["train", "configs/smoke.yaml", f"model.path={tiny_model}",
                       "trainer.steps=4", "trainer.eval_every=0", f"trainer.output_dir={out}",
                       *extra])  # fmt: skip


def test_nonfinite_loss_skips_the_step_and_stops_after_k_in_a_row(tiny_model, tmp_path):
    done = smoke(tiny_model, tmp_path, "trainer.max_nonfinite_steps=2",
                 "trainer.fault_injection=nan_loss@2,nan_loss@3")  # fmt: skip
    # step 2 is skipped and the run goes on; step 3 is the second in a row: stop, exit code 3
    assert done.returncode == 3, done.stderr[-3000:]
    assert "2 steps in a row (the last: step 3) had a non-finite loss" in done.stderr
    rows = {r["step"]: r for r in rows_of(tmp_path)}
    assert sorted(rows) == [1, 2, 3]
    assert rows[1]["train/skipped_updates"] == 0 and rows[1]["train/optimizer_steps"] == 1
    assert rows[2]["train/skipped_updates"] == 1 and rows[2]["train/optimizer_steps"] == 1
    assert rows[3]["faults/nonfinite_steps"] == 2 and rows[3]["train/optimizer_steps"] == 1


def test_dead_rollout_and_reward_actors_are_restarted(tiny_model, tmp_path):
    done = smoke(tiny_model, tmp_path, "trainer.fault_injection=kill_rollout@2,kill_reward@3")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["faults/rollout_restarts"] for r in rows] == [0, 1, 1, 1]
    assert [r["faults/reward_restarts"] for r in rows] == [0, 0, 1, 1]
    assert all(r["train/optimizer_steps"] == r["step"] for r in rows)
    # the restarted engine got the current weights: samples stay consistent with the learner
    assert all(abs(r["train/mismatch_kl"]) < 0.05 for r in rows)


def test_dead_learner_rank_stops_the_run_resumably(tiny_model, tmp_path):
    done = smoke(tiny_model, tmp_path, "trainer.checkpoint_every=1",
                 "trainer.fault_injection=kill_learner@3")  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]
    assert "a learner rank died during step 3" in done.stderr
    assert "trainer.resume=auto" in done.stderr
    resumed = smoke(tiny_model, tmp_path, "trainer.checkpoint_every=1", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in rows_of(tmp_path)] == [1, 2, 3, 4]
