"""Advantage estimators against numbers worked out by hand (arithmetic in the comments)."""

import pytest
import torch

from core import choices
from learner.advantages import ADVANTAGE_ESTIMATORS, compute_advantages, grpo_advantages


def adv(estimator, rewards, valid=None, **kw):
    rewards = torch.tensor(rewards)
    valid = torch.ones_like(rewards) if valid is None else torch.tensor(valid)
    return compute_advantages(estimator, rewards, valid, eps=0.0, **kw).flatten().tolist()


def test_grpo_normalises_by_group_mean_and_sample_std():
    # mean 0.5; sample std = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.57735; 0.5 / 0.57735 = 0.866025
    assert adv("grpo", [[1.0, 0.0, 0.0, 1.0]]) == pytest.approx(
        [0.866025, -0.866025, -0.866025, 0.866025], abs=1e-6
    )


def test_grpo_is_per_group_and_zero_for_equal_rewards():
    # group 1: mean 2, std sqrt((1 + 1) / 1) = 1.41421 -> -+0.707107; group 2: all equal -> 0
    assert adv("grpo", [[1.0, 3.0], [10.0, 10.0]]) == pytest.approx(
        [-0.707107, 0.707107, 0.0, 0.0], abs=1e-6
    )


def test_grpo_skips_invalid_samples():
    # group 1 uses 1 and 0: mean 0.5, std sqrt(0.5) -> +-0.707107, the invalid 5.0 gets 0;
    # group 2 has one valid sample: no baseline, advantage 0.
    got = adv("grpo", [[1.0, 0.0, 5.0], [2.0, 7.0, 7.0]], [[1, 1, 0], [1, 0, 0]])
    assert got == pytest.approx([0.707107, -0.707107, 0, 0, 0, 0], abs=1e-6)


def test_grpo_batch_std():
    # centred by group means 0.5 and 3: [0.5, -0.5, 0, 0]; batch rewards [1, 0, 3, 3] have mean
    # 1.75, squared deviations 0.5625 + 3.0625 + 1.5625 + 1.5625 = 6.75, / 3 = 2.25, std 1.5
    got = adv("grpo", [[1.0, 0.0], [3.0, 3.0]], std_normalization="batch")
    assert got == pytest.approx([0.333333, -0.333333, 0.0, 0.0], abs=1e-6)


def test_grpo_without_std_equals_dr_grpo():
    # r - group mean: 1 - 0.5 = 0.5, 0 - 0.5 = -0.5
    expected = [0.5, -0.5, -0.5, 0.5]
    assert adv("grpo", [[1.0, 0.0, 0.0, 1.0]], std_normalization="none") == expected
    assert adv("dr_grpo", [[1.0, 0.0, 0.0, 1.0]]) == expected


def test_rloo_leave_one_out_baseline():
    # sample 0: 1 - mean(0, 0, 1) = 1 - 1/3 = 0.666667; sample 1: 0 - mean(1, 0, 1) = -0.666667
    assert adv("rloo", [[1.0, 0.0, 0.0, 1.0]]) == pytest.approx(
        [0.666667, -0.666667, -0.666667, 0.666667], abs=1e-6
    )
    # two valid samples: 1 - 0 = 1 and 0 - 1 = -1; the invalid one gets 0
    assert adv("rloo", [[1.0, 0.0, 5.0]], [[1, 1, 0]]) == pytest.approx([1.0, -1.0, 0.0])


def test_reinforce_pp_baseline_whitens_over_the_batch():
    # centred: [0.5, -0.5], [0, 0], [1, -1]; batch mean 0; sample std over 6 samples:
    # (0.25 + 0.25 + 0 + 0 + 1 + 1) / 5 = 0.5 -> 0.707107
    got = adv("reinforce_pp_baseline", [[1.0, 0.0], [3.0, 3.0], [2.0, 0.0]])
    assert got == pytest.approx([0.707107, -0.707107, 0, 0, 1.414214, -1.414214], abs=1e-6)


def test_table_implements_every_configurable_estimator_and_rejects_unknown_names():
    # the config accepts exactly the names in core/choices.py: each must have its function
    assert tuple(ADVANTAGE_ESTIMATORS) == choices.ADVANTAGE_ESTIMATORS
    for name in choices.STD_NORMALIZATIONS:
        grpo_advantages(torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), std_normalization=name)
    with pytest.raises(ValueError, match="advantage estimator 'ppo'"):
        adv("ppo", [[1.0, 0.0]])
    with pytest.raises(ValueError, match="std_normalization"):
        grpo_advantages(torch.zeros(1, 2), torch.ones(1, 2), std_normalization="rank")


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("value", [0.1, 1 / 3, 0.7, -0.45, 1e-3])
def test_equal_fractional_rewards_give_exactly_zero(estimator, value):
    # float32 mean of equal fractional rewards is off by an ulp (8 x 0.1 sums to 0.80000001);
    # without an exact spread check the group std is ~1e-8 and every advantage ~ +-0.01 to 0.1.
    rewards = torch.full((2, 8), value, dtype=torch.float32)
    rewards[1, 3] = value + 0.5  # a group with spread beside it still gets its advantages
    valid = torch.ones_like(rewards)
    out = compute_advantages(estimator, rewards, valid, eps=1e-6)
    assert torch.equal(out[0], torch.zeros(8))
    assert out[1].abs().max() > 0.1


def test_an_all_truncated_group_under_a_fractional_overlong_factor_gets_zero():
    # every sample of the group shaped to the same -0.3 penalty: no signal, exactly 0
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0]]) - 0.3
    assert torch.equal(grpo_advantages(rewards, torch.ones_like(rewards)), torch.zeros(1, 4))
