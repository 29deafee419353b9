"""A rollout engine that stops answering in the middle of a weight push (`hang_rollout@2`: it
receives the first bucket, then sleeps an hour) is caught by `cluster.push_timeout_s`, named
with the phase, killed, restarted and pushed to again; the run completes every step, and the
restarted engine samples the learner's current weights."""

import json
import re

import pytest

from tests.conftest import run_cohort

pytestmark = pytest.mark.slow

DEADLINE_S = 5
MISMATCH_TOL = 1e-6  # as in test_faults.py: float32 engine and learner agree to ~1e-8


@pytest.mark.timeout(480)  # without the deadline the run would hang for an hour: fail instead
def test_an_engine_that_hangs_mid_push_is_restarted_and_the_run_completes(tiny_model, tmp_path):
    done = run_cohort(
        [
            "train",
            "configs/smoke.yaml",
            f"model.path={tiny_model}",
            "trainer.steps=3",
            "trainer.eval_every=0",
            f"trainer.output_dir={tmp_path}",
            f"cluster.push_timeout_s={DEADLINE_S}",
            "trainer.fault_injection=hang_rollout@2",
        ],
        timeout=420,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fault injection: rollout engine 0 hangs in step 2's push" in done.stdout
    found = re.search(
        r"weight push of step 2: rollout engine 0: no answer in phase `load` after ([\d.]+) s; "
        r"restarting it, pushing again",
        done.stdout,
    )
    assert found, done.stdout[-3000:]
    detected_s = float(found.group(1))

    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["faults/rollout_restarts"] for r in rows] == [0, 1, 1]
    # the restarted engine was pushed the current weights: samples match the learner's policy
    assert all(abs(r["train/mismatch_kl"]) < MISMATCH_TOL for r in rows), rows
    push_s = rows[1]["time/push"]  # deadline + the engine's restart + the second push
    print(
        f"detected after {detected_s:.1f} s (deadline {DEADLINE_S} s); step 2's push {push_s:.1f} s"
    )
    assert DEADLINE_S <= detected_s < DEADLINE_S + 10
    assert push_s < DEADLINE_S + 180  # generous: a vLLM engine restart on a busy CPU
