"""The learner trains only on what the model generated: through the tiny Llama and the GRPO
loss with every term on (clipped surrogate, KL to a reference, entropy bonus, sampler
correction), the gradient at every position that predicts an environment token is exactly
zero, and a one-turn trajectory's loss is the single-turn loss."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from learner import grpo
from learner.batch import FlatSample, collate

PAD = 0
PROMPT = [3, 10, 11, 5, 4]
# turn 1 (3 tokens), reply (4 tokens), turn 2 (2 tokens)
COMPLETION = [12, 13, 5, 3, 20, 5, 4, 14, 5]
LOSS_MASK = [1, 1, 1, 0, 0, 0, 0, 1, 1]


@pytest.fixture(scope="module")
def model(tiny_model):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def loss_and_logits(model, samples: list[FlatSample], advantages: list[float]):
    """The learner's per-micro-batch loss (`LearnerActor._micro_batch_loss`'s terms) and the
    logits it was computed from (with their gradient retained)."""
    mb = collate(samples, PAD)
    out = model(
        input_ids=mb.input_ids,
        attention_mask=mb.attention_mask,
        position_ids=mb.position_ids,
        logits_to_keep=mb.targets.shape[1] + 1,
    )
    logits = out.logits[:, :-1]  # [B, C, V]
    logits.retain_grad()
    logp = grpo.token_logprobs(logits, mb.targets, 0.7)
    entropy = grpo.entropy_from_logits(logits, 0.7)
    old = logp.detach() + 0.05  # ratios away from 1, some clipped
    ref = logp.detach() - 0.3
    loss, _ = grpo.policy_loss(
        logp,
        old,
        mb.sampler_logprobs,
        ref,
        entropy,
        torch.tensor(advantages),
        mb.mask,
        num_tokens=float(mb.mask.sum()),
        num_seqs=float((mb.mask.sum(-1) > 0).sum()),
        kl_coef=0.1,
        entropy_coef=0.01,
        correction="token_truncate",
    )
    loss.backward()
    return loss, logits, mb


def test_environment_tokens_get_exactly_zero_gradient(model):
    multi = FlatSample(PROMPT, COMPLETION, [-1.0] * len(COMPLETION), True, LOSS_MASK)
    single = FlatSample(PROMPT[:3], [12, 13], [-1.0, -1.0], True)
    model.zero_grad()
    loss, logits, mb = loss_and_logits(model, [multi, single], [1.0, -1.0])
    grad = logits.grad[0]  # [C, V] of the multi-turn row
    for t, m in enumerate(LOSS_MASK):
        if m:
            assert grad[t].abs().sum() > 0, f"generated token {t} got no gradient"
        else:
            assert torch.equal(grad[t], torch.zeros_like(grad[t])), f"reply token {t}"
    assert mb.mask[0].tolist() == LOSS_MASK
    # The reply tokens still condition what follows: the model's weights get gradient through
    # turn 2, which attends to them.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_one_turn_is_the_single_turn_loss(model):
    ids = COMPLETION[:3]
    model.zero_grad()
    one_turn, _, _ = loss_and_logits(
        model, [FlatSample(PROMPT, ids, [-1.0] * 3, True, [1] * 3)], [1.0]
    )
    first = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    single, _, _ = loss_and_logits(model, [FlatSample(PROMPT, ids, [-1.0] * 3, True)], [1.0])
    assert one_turn.item() == single.item()
    assert all(torch.equal(a, p.grad) for a, p in zip(first, model.parameters()))


def test_loss_tokens_count_generated_tokens_only():
    assert FlatSample(PROMPT, COMPLETION, [0.0] * 9, True, LOSS_MASK).loss_tokens == 5
    assert FlatSample(PROMPT, COMPLETION, [0.0] * 9, False, LOSS_MASK).loss_tokens == 0
    assert FlatSample(PROMPT, COMPLETION, [0.0] * 9, True).loss_tokens == 9
