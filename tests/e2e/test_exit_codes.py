"""`cohort train`'s exit codes for bad input and a stopped run, each with a message that says
what was wrong, where, and what to do: 2 for a malformed dataset row (the file and the row
named), 3 when a reward function fails on more than `reward.max_failure_rate` of a scoring
call's samples (the failures are logged with their tracebacks). The data is read before Ray
starts, so a bad row is reported in seconds."""

import json

import pytest

from tests.conftest import run_cohort

pytestmark = pytest.mark.slow


def smoke(tiny_model, out, *extra):
    return run_cohort(
        [
            "train",
            "configs/smoke.yaml",
            f"model.path={tiny_model}",
            "trainer.steps=1",
            "trainer.eval_every=0",
            f"trainer.output_dir={out}",
            *extra,
        ]
    )


def test_a_malformed_data_row_exits_2_naming_file_and_row(tiny_model, tmp_path):
    rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]
    lines = [json.dumps(r) for r in rows]
    lines[2] = lines[2][:-6]  # row 3 cut short: not valid JSON
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    done = smoke(tiny_model, tmp_path / "runs", f"data.train={{path: {data}}}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"cohort: {data}, row 3: not valid JSON" in done.stderr
    assert "data.on_bad_row=skip" in done.stderr  # what to do besides fixing the row
    assert "Traceback" not in done.stderr
    assert "Ray" not in done.stdout + done.stderr  # reported before Ray starts


def test_a_failing_reward_function_exits_3_with_the_failures_logged(tiny_model, tmp_path):
    (tmp_path / "picky.py").write_text(
        "def picky(completion, **_):\n"
        "    if not completion.isdigit():\n"
        "        raise ValueError('the completion is not a number')\n"
        "    return 1.0\n"
    )
    functions = json.dumps([{"fn": f"{tmp_path / 'picky.py'}:picky"}])
    done = smoke(
        tiny_model,
        tmp_path / "runs",
        f"reward.functions={functions}",
        "reward.max_failure_rate=0.5",
        "reward.failure_rate_min_samples=16",
    )
    assert done.returncode == 3, done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    log = run / "reward_failures.jsonl"
    failures = [json.loads(x) for x in log.read_text().splitlines()]
    # the first scoring call (step 1's 64 samples) stops the run; each failure is logged
    assert 32 < len(failures) <= 64
    assert {(f["function"], f["kind"], f["call"]) for f in failures} == {("picky", "exception", 1)}
    assert all("ValueError: the completion is not a number" in f["traceback"] for f in failures)
    message = done.stderr
    assert (
        f"cohort: run stopped: reward function `picky` failed on {len(failures)} of 64" in message
    )
    assert "> reward.max_failure_rate=0.5" in message
    assert f"({len(failures)}x): exception: ValueError: the completion is not a number" in message
    assert "Fix the function" in message and "raise reward.max_failure_rate" in message
    assert f"Failures log: {log}" in message
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text()
