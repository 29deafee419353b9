"""A reward function attacks the scores themselves: its own file, and the range of its returns.

A function that rewrites its file and kills its worker must change no later score (workers,
replacements included, run the text read at the start of the run), and under the default
isolation the write itself is denied. Huge returns and huge dicts are `invalid` failures that
leave every reward finite and the metrics small. Real `RewardActor`s, no Ray.
"""

from __future__ import annotations

import math
from pathlib import Path

from core.config import RewardFunctionConfig, from_dict
from reward.actor import RewardActor
from reward.functions import read_sources
from reward.scoring import reward_metrics
from tests.adversarial.targets import FILES, group, skip_unless_stoppable

TAKEOVER = """
import os


def score(completion, **_):
    if completion == "take over":
        try:
            with open({path!r}, "w") as f:
                f.write({replacement!r})
        except OSError:
            return 0.0
        os.kill(os.getpid(), 9)
    return float(len(completion))
"""
REPLACEMENT = "def score(completion, **_):\n    return 1000.0\n"


def takeover_actor(directory: Path, **sandbox) -> RewardActor:
    """An actor over takeover.py, with the file's text read once, as a run reads it."""
    path = directory / "takeover.py"
    path.write_text(TAKEOVER.format(path=str(path), replacement=REPLACEMENT))
    configs = [{"fn": "takeover.py:score"}]
    sources = read_sources(
        [from_dict(RewardFunctionConfig, c, "reward.functions[0].") for c in configs], directory
    )
    options = {"workers": 2, "timeout_s": 10.0} | sandbox
    return RewardActor(configs, "exclude", 0.0, str(directory), options, sources)


def test_a_function_that_rewrites_its_file_changes_no_later_score(tmp_path):
    # Isolation off, so that the write succeeds: the file-reading discipline alone must hold.
    actor = takeover_actor(tmp_path, isolation="off")
    try:
        [[bad]] = actor.score([group(["take over"])])
        assert (tmp_path / "takeover.py").read_text() == REPLACEMENT  # the write happened
        assert bad.kinds == {"score": "crash"}
        for _ in range(3):  # replacement workers included
            scores = actor.score([group(["ab", "abc"]), group(["a", "abcd"])])
            assert [[s.reward for s in row] for row in scores] == [[2.0, 3.0], [1.0, 4.0]]
        assert actor.sandboxes[0].replaced >= 1
    finally:
        actor.close()


@skip_unless_stoppable((FILES,))
def test_under_default_isolation_a_function_cannot_rewrite_its_file(tmp_path):
    actor = takeover_actor(tmp_path)
    original = (tmp_path / "takeover.py").read_text()
    try:
        [[attempt, honest]] = actor.score([group(["take over", "abc"])])
    finally:
        actor.close()
    assert attempt.components == {"score": 0.0} and honest.reward == 3.0
    assert (tmp_path / "takeover.py").read_text() == original


OUT_OF_RANGE = """
def huge(completion, **_):
    return 1e308


def many_parts(completion, **_):
    return {f"part{i}": 1.0 for i in range(200_000)}
"""


def test_out_of_range_returns_are_invalid_and_rewards_stay_finite(tmp_path):
    (tmp_path / "out_of_range.py").write_text(OUT_OF_RANGE)
    configs = [
        {"fn": "out_of_range.py:huge", "weight": 2.0},  # the user default range is [-1e6, 1e6]
        {"fn": "out_of_range.py:many_parts"},
    ]
    wide = [{"fn": "out_of_range.py:huge", "weight": 2.0, "range": [0.0, 1.7e308]}]
    actor = RewardActor(configs, "exclude", 0.0, str(tmp_path), {"workers": 1})
    wide_actor = RewardActor(wide, "score", -1.0, str(tmp_path), {"workers": 1})
    try:
        scores = actor.score([group(["a", "b"])])
        [[in_range]] = wide_actor.score([group(["a"])])
    finally:
        actor.close()
        wide_actor.close()
    for s in scores[0]:
        assert s.kinds == {"huge": "invalid", "many_parts": "invalid"}
        assert s.reward == 0.0 and s.excluded
    # In its declared range, but 2 x 1e308 overflows: the sum is invalid, the reward finite.
    assert in_range.components == {"huge": 1e308} and in_range.kinds == {"reward": "invalid"}
    assert in_range.reward == -1.0  # failure_score under on_failure="score"
    metrics = reward_metrics(scores, ["huge", "many_parts"])
    assert len(metrics) < 100
    assert all(math.isfinite(v) or math.isnan(v) for v in metrics.values())
    assert metrics["reward/many_parts/failures/invalid"] == 2.0
