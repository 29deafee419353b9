"""RewardPool on a real local Ray with sandboxed actors: failures logged, the failure-rate stop."""

import json

import pytest

from core.config import RewardConfig, RewardFunctionConfig
from core.errors import RunStopped
from core.records import Group, Prompt, Sample
from reward.pool import RewardFailureRateExceeded, RewardPool

pytestmark = pytest.mark.integration


def group(answer: str, texts: list[str]) -> Group:
    prompt = Prompt(id=f"train:{answer}", text="q", token_ids=[1], answer=answer)
    return Group(prompt, [Sample([], t, [], "stop", 0) for t in texts])


def test_pool_logs_failures_and_stops_above_the_failure_rate(ray_local, tmp_path):
    (tmp_path / "moody.py").write_text(
        "import os\n"
        "def moody(completion, **_):\n"
        "    if completion == 'crash':\n"
        "        os._exit(3)\n"
        "    if completion == 'err':\n"
        "        raise RuntimeError('cannot score this')\n"
        "    return 0.5\n"
    )
    cfg = RewardConfig(
        functions=[RewardFunctionConfig(name="math_answer"),
                   RewardFunctionConfig(fn="moody.py:moody")],
        num_actors=2, workers_per_actor=1, timeout_s=2.0, max_failure_rate=0.5,
        failure_rate_min_samples=4,
    )  # fmt: skip
    pool = RewardPool(cfg, base_dir=tmp_path, num_cpus=0.5, run_id="fail", run_dir=tmp_path)
    try:
        # One crash in six samples: recorded, not a stop; the other rewards are exact.
        groups = [group("1", ["1", "crash", "2"]), group("2", ["2", "x", "\\boxed{2}"])]
        scores = pool.score(groups)
        assert [[s.reward for s in row] for row in scores] == [[1.5, 0.0, 0.5], [1.5, 0.5, 1.5]]
        assert scores[0][1].kinds == {"moody": "crash"} and scores[0][1].excluded
        [record] = [json.loads(x) for x in (tmp_path / "reward_failures.jsonl").open()]
        assert (record["function"], record["kind"], record["call"]) == ("moody", "crash", 1)
        assert (record["prompt_id"], record["sample"]) == ("train:1", 1)
        assert record["completion"] == "crash" and "exited with status 3" in record["error"]
        # Four of five fail: the run stops, naming the function and its most common error.
        with pytest.raises(RewardFailureRateExceeded) as stop:
            pool.score([group("3", ["err", "err", "err", "3", "crash"])])
        message = str(stop.value)
        assert isinstance(stop.value, RunStopped)
        assert "`moody` failed on 4 of 5 samples" in message
        assert "(3x): exception: RuntimeError: cannot score this" in message
        assert str(tmp_path / "reward_failures.jsonl") in message
        assert len((tmp_path / "reward_failures.jsonl").read_text().splitlines()) == 5
        # The pool still serves.
        assert [s.reward for s in pool.score([group("4", ["4"])])[0]] == [1.5]
    finally:
        pool.shutdown()
