"""Log-probabilities and entropies through the output head in chunks equal those of the full
logits, values and gradients, for every chunk size and entropy mode."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from learner import grpo
from learner.head import chunked_token_stats, completion_token_stats, head_of


def full_stats(hidden, head, targets, temperature):
    logits = head(hidden)  # [B, C, V]
    return grpo.token_logprobs(logits, targets, temperature), grpo.entropy_from_logits(
        logits, temperature
    )


@pytest.mark.parametrize("chunk", [1, 5, 7, 24, 100])
@pytest.mark.parametrize("entropy", ["none", "value", "grad"])
def test_chunks_equal_the_full_logits_in_values_and_gradients(chunk, entropy):
    torch.manual_seed(0)
    b, c, h, v = 3, 8, 16, 50
    hidden = torch.randn(b, c, h, requires_grad=True)
    head = torch.nn.Linear(h, v, bias=False)
    targets = torch.randint(0, v, (b, c))
    weights = torch.randn(b, c)  # an arbitrary loss of both outputs

    logp, ent = full_stats(hidden, head, targets, 0.7)
    expected = (logp * weights).sum() + (ent.sum() if entropy == "grad" else 0)
    expected.backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    got_logp, got_ent = chunked_token_stats(hidden, head, targets, 0.7, chunk, entropy)
    loss = (got_logp * weights).sum() + (got_ent.sum() if entropy == "grad" else 0)
    loss.backward()
    torch.testing.assert_close(got_logp, logp, rtol=0, atol=1e-6)
    if entropy == "none":
        assert got_ent is None
    else:
        torch.testing.assert_close(got_ent, ent, rtol=0, atol=1e-6)
        assert got_ent.requires_grad == (entropy == "grad")
    torch.testing.assert_close(hidden.grad, grads[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, grads[1], rtol=0, atol=1e-6)


def test_without_gradients_nothing_is_kept_for_backward():
    hidden, head = torch.randn(2, 4, 8), torch.nn.Linear(8, 20)
    with torch.no_grad():
        logp, ent = chunked_token_stats(hidden, head, torch.zeros(2, 4, dtype=torch.long), 1, 3)
    assert logp.shape == (2, 4) and not logp.requires_grad and ent is None


def test_only_models_whose_logits_are_the_plain_head_are_chunked(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    decoder, head = head_of(model)
    assert decoder is model.get_decoder() and head is model.get_output_embeddings()
    model.config.model_type = "gemma2"  # soft-caps its logits after the head
    assert head_of(model) is None


@pytest.mark.parametrize("entropy", ["value", "grad"])
def test_a_model_gives_the_same_stats_with_and_without_chunks(tiny_model, entropy):
    """The learner's function: the last hidden state of the model's own forward, through the
    head in chunks, equals the completion columns' full logits."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": torch.arange(12).expand(2, 12),
    }
    targets = ids[:, 5:]  # 7 completion columns
    results = []
    for chunk in (0, 3):
        logp, ent = completion_token_stats(model, inputs, targets, 0.8, chunk, entropy)
        (logp.sum() + ent.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        results.append((logp.detach(), ent.detach(), grads))
    (logp0, ent0, grads0), (logp1, ent1, grads1) = results
    full = model(**inputs).logits[:, 4:-1]  # the column before each target
    torch.testing.assert_close(logp0, grpo.token_logprobs(full, targets, 0.8))
    torch.testing.assert_close(logp1, logp0, rtol=0, atol=1e-6)
    torch.testing.assert_close(ent1, ent0, rtol=0, atol=1e-6)
    for g0, g1 in zip(grads0, grads1, strict=True):
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)
