"""DAPO reward shaping and group selection, by hand."""

import pytest

from core.records import Group, Prompt, Sample, Score, ScoredGroup
from reward.shaping import is_informative, overlong_penalty, select_groups, shape


def group(lengths: list[int]) -> Group:
    prompt = Prompt(id="train:0", text="q", token_ids=[1])
    return Group(prompt, [Sample([7] * n, "", [0.0] * n, "length", 0) for n in lengths])


def scored(rewards: list[float], valid: list[bool]) -> ScoredGroup:
    scores = [Score(r, {}, failed=not v, excluded=not v) for r, v in zip(rewards, valid)]
    return ScoredGroup(group([1] * len(rewards)), scores, rewards, valid, [0.0] * len(rewards))


@pytest.mark.parametrize(
    "length, expected",
    [
        (12, 0.0),  # max 16, buffer 4: no penalty up to 16 - 4 = 12 tokens
        (13, -0.125),  # (12 - 13) / 4 = -0.25, times factor 0.5
        (16, -0.5),  # (12 - 16) / 4 = -1, times 0.5
        (20, -0.5),  # beyond the limit: -factor
    ],
)
def test_overlong_penalty(length, expected):
    assert overlong_penalty(length, max_tokens=16, buffer=4, factor=0.5) == expected


def test_overlong_penalty_off_without_buffer():
    assert overlong_penalty(16, max_tokens=16, buffer=0, factor=1.0) == 0.0


def test_shape_rewards_adds_penalty_to_kept_samples_only():
    scores = [[Score(1.0, {}), Score(0.0, {}, failed=True, excluded=True)]]
    [shaped] = shape([group([16, 16])], scores, max_tokens=16, overlong_buffer=4,
                     overlong_factor=1.0)  # fmt: skip
    assert shaped.rewards == [0.0, 0.0]  # 1 - 1 for the first; the excluded stays 0
    assert shaped.valid == [True, False]
    assert shaped.penalties == [-1.0, 0.0]
    assert shaped.scores == scores[0]  # the scores themselves are untouched


def test_is_informative_needs_two_valid_different_rewards():
    assert is_informative(scored([1.0, 0.0], [True, True]))
    assert not is_informative(scored([1.0, 1.0], [True, True]))
    assert not is_informative(scored([1.0, 0.0], [True, False]))


def test_select_groups_prefers_informative_and_fills_in_order():
    assert select_groups([False, True, True, False, True], 2) == [1, 2]
    # only one informative group: filled with the first uninformative ones, order kept
    assert select_groups([False, True, False, False], 3) == [0, 1, 2]
