"""The composed objective (`grpo.policy_loss`) and log-prob helpers, by hand."""

import math

import pytest
import torch

from learner import grpo
from learner.advantages import grpo_advantages

LOGP_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # lengths 2 and 1
ADV = torch.tensor([2.0, -1.0])


def loss_of(logp, **kw):
    old = torch.zeros(2, 3)  # ratio 1 everywhere
    kw.setdefault("num_tokens", 3)
    kw.setdefault("num_seqs", 2)
    return grpo.policy_loss(
        logp, old, old, kw.pop("ref", None), kw.pop("entropy", None), ADV, LOGP_MASK, **kw
    )


def test_token_logprobs_with_temperature():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax -> [0.25, 0.75]
    target = torch.tensor([[1]])
    assert grpo.token_logprobs(logits, target).item() == pytest.approx(math.log(0.75))
    # temperature 2: logits [0, ln(3)/2] -> p = sqrt(3) / (1 + sqrt(3)) = 0.633975
    assert grpo.token_logprobs(logits, target, 2.0).exp().item() == pytest.approx(0.633975)


@pytest.mark.parametrize("entropy", ["value", "grad"])
def test_token_stats_gives_both_from_one_softmax(entropy):
    """softmax([0, ln 3]) = [0.25, 0.75]: log-prob of token 1 is ln 0.75, the entropy
    -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335; only "grad" lets the entropy's gradient through."""
    logits = torch.tensor([[[0.0, math.log(3.0)]]], requires_grad=True)
    logp, ent = grpo.token_stats(logits, torch.tensor([[1]]), 1.0, entropy)
    assert logp.item() == pytest.approx(math.log(0.75))
    assert ent.item() == pytest.approx(0.562335, abs=1e-6)
    assert ent.requires_grad == (entropy == "grad") and logp.requires_grad
    assert grpo.token_stats(logits, torch.tensor([[1]]))[1] is None


def test_entropy_of_uniform_is_log_vocab():
    assert grpo.entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))


def test_grpo_objective_averages_tokens_then_sequences():
    logp = torch.zeros(2, 3, requires_grad=True)
    # surrogate per token = -A: sequence means -2 and +1 -> loss (-2 + 1) / 2 = -0.5
    loss, stats = loss_of(logp, aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-0.5)
    assert stats["clip_frac"].item() == 0.0 and stats["ratio_mean"].item() == 1.0
    # gradient w.r.t. a token of sequence 1: -A / |o_1| / B = -2 / 2 / 2 = -0.5;
    # sequence 2's token: +1 / 1 / 2 = 0.5; masked positions: 0
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5, -0.5, 0.0, 0.5, 0.0, 0.0])


def test_token_mean_weighs_every_token_the_same():
    logp = torch.zeros(2, 3, requires_grad=True)
    # tokens -2, -2, +1: sum -3 over 3 tokens = -1; each token's gradient is -A / 3
    loss, _ = loss_of(logp, aggregation="token-mean")
    assert loss.item() == pytest.approx(-1.0)
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-2 / 3, -2 / 3, 0, 1 / 3, 0, 0])


def test_kl_term_and_entropy_bonus():
    logp = torch.zeros(2, 3, requires_grad=True)
    ref = torch.full((2, 3), math.log(0.5))
    # k3 with p = 0, q = ln 0.5: e^(-0.693147) + 0.693147 - 1 = 0.193147 on every token;
    # adds 0.1 * 0.193147 to both sequence means -> -0.5 + 0.0193147 = -0.4806853
    loss, stats = loss_of(logp, ref=ref, kl_coef=0.1, aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-0.4806853, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(0.193147, abs=1e-6)
    # entropy 2 on every token, coefficient 0.01: -0.5 - 0.02 = -0.52
    loss, _ = loss_of(logp, entropy=torch.full((2, 3), 2.0), entropy_coef=0.01)
    assert loss.item() == pytest.approx(-0.52)


def test_kl_is_left_out_without_a_coefficient():
    logp = torch.zeros(2, 3)
    loss, stats = loss_of(logp, ref=torch.full((2, 3), -1.0), kl_coef=0.0)
    assert loss.item() == pytest.approx(-0.5) and "kl" not in stats


def test_sequence_kl_sums_the_loss_tokens_only():
    logp = torch.zeros(2, 3)
    ref = torch.full((2, 3), math.log(0.5))
    # k1 = log p - log ref = ln 2 per token; sequence 1 has 2 loss tokens, sequence 2 has 1
    got = grpo.sequence_kl(logp, ref, LOGP_MASK, "k1")
    assert got.tolist() == pytest.approx([2 * math.log(2), math.log(2)])


def test_kl_penalty_in_the_reward_by_hand():
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.5]])  # [P=2, G=2]
    kl_sums = torch.tensor([0.2, -0.1, 0.0, 1.0])  # [P * G], group-major
    # r - 0.5 x KL: [1 - 0.1, 0 + 0.05], [0.5 - 0, 0.5 - 0.5]
    got = grpo.kl_penalized_rewards(rewards, kl_sums, 0.5)
    assert got.flatten().tolist() == pytest.approx([0.9, 0.05, 0.5, 0.0])
    # The second group's equal rewards now differ: mean 0.25, sample std sqrt(2 x 0.25^2) =
    # 0.353553, so the sample that drifted from the reference gets -0.25 / 0.353553 = -0.707107.
    advantages = grpo_advantages(got, torch.ones(2, 2), eps=0.0)
    assert advantages[1].tolist() == pytest.approx([0.707107, -0.707107], abs=1e-6)
    assert torch.equal(grpo.kl_penalized_rewards(rewards, kl_sums, 0.0), rewards)
