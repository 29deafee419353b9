"""GRPO math against numbers worked out by hand (arithmetic in the comments)."""

import math

import pytest
import torch

from learner import grpo


def test_group_advantages_normalise_by_group_mean_and_sample_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    valid = torch.ones(1, 4)
    # mean 0.5; sample std = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.57735; 0.5 / 0.57735 = 0.866025
    adv = grpo.group_advantages(rewards, valid, eps=0.0)
    assert adv.flatten().tolist() == pytest.approx(
        [0.866025, -0.866025, -0.866025, 0.866025], abs=1e-6
    )


def test_group_advantages_are_per_group():
    rewards = torch.tensor([[1.0, 3.0], [10.0, 10.0]])
    # group 1: mean 2, std sqrt((1 + 1) / 1) = 1.41421 -> -+0.707107; group 2: all equal -> 0
    adv = grpo.group_advantages(rewards, torch.ones(2, 2), eps=0.0)
    assert adv.flatten().tolist() == pytest.approx([-0.707107, 0.707107, 0.0, 0.0], abs=1e-6)


def test_group_advantages_skip_invalid_samples():
    rewards = torch.tensor([[1.0, 0.0, 5.0], [2.0, 7.0, 7.0]])
    valid = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # group 1 uses 1 and 0: mean 0.5, std sqrt(0.5) -> +-0.707107, the invalid 5.0 gets 0;
    # group 2 has one valid sample: no baseline, advantage 0.
    adv = grpo.group_advantages(rewards, valid, eps=0.0)
    assert adv.flatten().tolist() == pytest.approx([0.707107, -0.707107, 0, 0, 0, 0], abs=1e-6)


def test_masked_mean_ignores_masked_and_empty_rows():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert grpo.masked_mean(x, mask, dim=-1).tolist() == [1.5, 0.0]  # (1 + 2) / 2; empty -> 0
    assert grpo.masked_mean(x, mask).item() == 1.5


def test_token_logprobs_with_temperature():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax -> [0.25, 0.75]
    target = torch.tensor([[1]])
    assert grpo.token_logprobs(logits, target).item() == pytest.approx(math.log(0.75))
    # temperature 2: logits [0, ln(3)/2] -> p = sqrt(3) / (1 + sqrt(3)) = 0.633975
    assert grpo.token_logprobs(logits, target, 2.0).exp().item() == pytest.approx(0.633975)


def test_entropy_of_uniform_is_log_vocab():
    assert grpo.entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))


def test_k3_kl():
    # p = log 0.5, q = log 0.25: q - p = ln 0.5 = -0.693147; e^(q-p) = 0.5
    # k3 = 0.5 + 0.693147 - 1 = 0.193147; equal policies give 0
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert grpo.k3_kl(logp, ref).item() == pytest.approx(0.193147, abs=1e-6)
    assert grpo.k3_kl(logp, logp).item() == 0.0


@pytest.mark.parametrize(
    "ratio, adv, loss, clipped",
    [
        (1.5, 1.0, -1.2, True),  # min(1.5 * 1, 1.2 * 1) = 1.2: clipped, no gradient
        (1.5, -1.0, 1.5, False),  # min(-1.5, -1.2) = -1.5: unclipped (pessimistic side)
        (0.5, 1.0, -0.5, False),  # min(0.5, 0.8) = 0.5
        (0.5, -1.0, 0.8, True),  # min(-0.5, -0.8) = -0.8: clipped
    ],
)
def test_clipped_surrogate(ratio, adv, loss, clipped):
    old = torch.zeros(1, 1)
    logp = torch.full((1, 1), math.log(ratio))
    got_loss, got_clipped = grpo.clipped_surrogate(logp, old, torch.tensor([adv]), 0.2, 0.2)
    assert got_loss.item() == pytest.approx(loss)
    assert got_clipped.item() is clipped


def test_clip_higher_uses_separate_bounds():
    # ratio 1.25, A = +1: with clip_high 0.28 the bound is 1.28, so 1.25 is not clipped
    logp = torch.full((1, 1), math.log(1.25))
    loss, clipped = grpo.clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.25) and not clipped.item()


def test_grpo_loss_averages_tokens_then_sequences_and_adds_kl():
    logp = torch.zeros(2, 3, requires_grad=True)
    old = torch.zeros(2, 3)  # ratio 1 everywhere
    ref = torch.full((2, 3), math.log(0.5))  # k3 per token = 0.193147 (see test_k3_kl, mirrored)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # lengths 2 and 1
    adv = torch.tensor([2.0, -1.0])
    # surrogate per token = -A: sequence means -2 and +1 -> loss (-2 + 1) / 2 = -0.5
    loss, stats = grpo.grpo_loss(logp, old, None, adv, mask, 0.2, 0.2, kl_coef=0.0)
    assert loss.item() == pytest.approx(-0.5)
    assert stats["clip_frac"].item() == 0.0
    # gradient w.r.t. a token of sequence 1: -A / |o_1| / B = -2 / 2 / 2 = -0.5;
    # sequence 2's token: +1 / 1 / 2 = 0.5; masked positions: 0
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5, -0.5, 0.0, 0.5, 0.0, 0.0])
    # k3 with p = 0, q = ln 0.5: e^(-0.693147) + 0.693147 - 1 = 0.193147 on every token;
    # adds 0.1 * 0.193147 to both sequence means -> -0.5 + 0.0193147 = -0.4806853
    loss, stats = grpo.grpo_loss(logp, old, ref, adv, mask, 0.2, 0.2, kl_coef=0.1)
    assert loss.item() == pytest.approx(-0.4806853, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(0.193147, abs=1e-6)
