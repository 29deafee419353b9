"""Loss pieces against numbers worked out by hand (arithmetic in the comments)."""

import math

import pytest
import torch

from core import choices
from learner.losses import (
    aggregate_loss,
    clipped_policy_loss,
    kl_estimate,
    log_ratio,
    masked_mean,
    sampler_correction,
)

LN2 = math.log(2.0)


def test_masked_mean_ignores_masked_and_empty_rows():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, mask, dim=-1).tolist() == [1.5, 0.0]  # (1 + 2) / 2; empty -> 0
    assert masked_mean(x, mask).item() == 1.5


@pytest.mark.parametrize(
    "estimator, expected",
    [
        ("k1", 0.693147),  # x = log 0.5 - log 0.25 = ln 2
        ("k2", 0.240227),  # x^2 / 2 = 0.480453 / 2
        ("k3", 0.193147),  # e^-x - 1 + x = 0.5 - 1 + 0.693147
    ],
)
def test_kl_estimators(estimator, expected):
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, estimator).item() == pytest.approx(expected, abs=1e-6)
    assert kl_estimate(logp, logp, estimator).item() == 0.0  # equal policies


@pytest.mark.parametrize(
    "ratio, adv, loss, clipped",
    [
        (1.5, 1.0, -1.2, True),  # min(1.5 * 1, 1.2 * 1) = 1.2: clipped, no gradient
        (1.5, -1.0, 1.5, False),  # min(-1.5, -1.2) = -1.5: unclipped (pessimistic side)
        (0.5, 1.0, -0.5, False),  # min(0.5, 0.8) = 0.5
        (0.5, -1.0, 0.8, True),  # min(-0.5, -0.8) = -0.8: clipped
    ],
)
def test_clipped_policy_loss(ratio, adv, loss, clipped):
    lr = torch.full((1, 1), math.log(ratio))
    got_loss, got_clipped = clipped_policy_loss(lr, torch.tensor([adv]), 0.2, 0.2)
    assert got_loss.item() == pytest.approx(loss)
    assert got_clipped.item() is clipped


def test_clip_higher_uses_separate_bounds():
    # ratio 1.25, A = +1: with clip_high 0.28 the bound is 1.28, so 1.25 is not clipped
    lr = torch.full((1, 1), math.log(1.25))
    loss, clipped = clipped_policy_loss(lr, torch.tensor([1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.25) and not clipped.item()


@pytest.mark.parametrize(
    "ratio, adv, loss, clipped",
    [
        (5.0, -1.0, 3.0, True),  # PPO loss max(5, 1.2) = 5 is above the bound -3 * -1 = 3
        (2.0, -1.0, 2.0, False),  # max(2, 1.2) = 2 < 3: unchanged
        (5.0, 1.0, -1.2, True),  # positive advantage: ordinary clip, dual clip not involved
    ],
)
def test_dual_clip(ratio, adv, loss, clipped):
    lr = torch.full((1, 1), math.log(ratio))
    got_loss, got_clipped = clipped_policy_loss(lr, torch.tensor([adv]), 0.2, 0.2, dual_clip=3.0)
    assert got_loss.item() == pytest.approx(loss)
    assert got_clipped.item() is clipped


def test_sequence_ratio_is_the_geometric_mean_with_per_token_gradient():
    logp = torch.tensor([[LN2, 0.0, -5.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # token log-ratios ln 2 and 0 (the third is padding): mean ln 2 / 2 = 0.346574 on every token
    lr = log_ratio(logp, old, mask, "sequence")
    assert lr[0, :2].tolist() == pytest.approx([0.346574, 0.346574], abs=1e-6)
    lr[0, 0].backward()  # each token's value carries only its own log-prob's gradient
    assert logp.grad.tolist() == [[1.0, 0.0, 0.0]]


def test_gspo_loss_has_the_sequence_gradient():
    # GSPO: loss = -s A with s = exp(mean_t log ratio) = exp(ln 2 / 2) = sqrt(2) = 1.414214;
    # d/d logp_t = -A s / |y| = -1.414214 / 2 = -0.707107 on both tokens (A = 1)
    logp = torch.tensor([[LN2, 0.0]], requires_grad=True)
    mask = torch.ones(1, 2)
    lr = log_ratio(logp, torch.zeros(1, 2), mask, "sequence")
    per_token, _ = clipped_policy_loss(lr, torch.tensor([1.0]), 10.0, 10.0)
    aggregate_loss(per_token, mask, "seq-mean-token-mean", 2, 1).backward()
    assert logp.grad[0].tolist() == pytest.approx([-0.707107, -0.707107], abs=1e-6)


def test_token_truncated_importance_weights():
    old = torch.zeros(1, 2)
    sampler = torch.tensor([[-math.log(4.0), LN2]])
    mask = torch.ones(1, 2)
    # w = pi_learner / pi_sampler = [4, 0.5]; truncated at 2 -> [2, 0.5]
    w, stats = sampler_correction(old, sampler, mask, "token_truncate", upper=2.0)
    assert w[0].tolist() == pytest.approx([2.0, 0.5])
    assert stats["tis/truncated_frac"].item() == 0.5  # one of two tokens was above 2
    assert stats["tis/weight_mean"].item() == pytest.approx(1.25)  # (2 + 0.5) / 2


def test_sequence_mask_drops_sequences_outside_the_bounds():
    old = torch.zeros(3, 2)
    ln4 = math.log(4.0)
    sampler = torch.tensor([[-ln4, LN2], [-ln4, -ln4], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # products: 4 * 0.5 = 2 (kept: the bounds are inclusive), 4 * 4 = 16 (masked), empty row 1
    w, stats = sampler_correction(old, sampler, mask, "sequence_mask", upper=2.0, lower=0.5)
    assert w.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert stats["tis/masked_seq_frac"].item() == 0.5  # one of the two non-empty sequences


def test_no_correction_is_all_ones():
    w, stats = sampler_correction(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), "none")
    assert w.tolist() == [[1.0, 1.0]] and stats == {}


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 2.5),  # (1 + 2 + 3 + 4) / 4 tokens
        ("seq-mean-token-mean", 3.0),  # (mean(1, 2, 3) + mean(4)) / 2 = (2 + 4) / 2
        ("seq-mean-token-sum-norm", 1.0),  # (6 + 4) / (2 sequences * 5 tokens)
    ],
)
def test_aggregations(mode, expected):
    assert aggregate_loss(PER_TOKEN, MASK, mode, num_tokens=4, num_seqs=2, norm_tokens=5) == (
        pytest.approx(expected)
    )


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_shares_of_a_split_batch_sum_to_the_whole(mode):
    whole = aggregate_loss(PER_TOKEN, MASK, mode, 4, 2, 5)
    parts = sum(
        aggregate_loss(PER_TOKEN[i : i + 1], MASK[i : i + 1], mode, 4, 2, 5) for i in (0, 1)
    )
    assert parts.item() == pytest.approx(whole.item())


def test_every_configurable_name_is_implemented():
    # the config accepts exactly the names in core/choices.py; none may reach a ValueError here
    x, mask = torch.zeros(2, 3), torch.ones(2, 3)
    for name in choices.KL_ESTIMATORS:
        kl_estimate(x, x, name)
    for name in choices.RATIO_LEVELS:
        log_ratio(x, x, mask, name)
    for name in choices.SAMPLER_CORRECTIONS:
        sampler_correction(x, x, mask, name)
    for name in choices.LOSS_AGGREGATIONS:
        aggregate_loss(x, mask, name, num_tokens=6, num_seqs=2)
    with pytest.raises(ValueError, match="'k4'"):
        kl_estimate(x, x, "k4")
