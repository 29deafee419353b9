"""Padding and masks: only completion tokens of usable samples reach the loss."""

import pytest
import torch

from learner.batch import BatchPlan, FlatSample, collate, flatten
from rollout.records import Group, Prompt, Sample


def test_collate_aligns_targets_and_completion_mask():
    a = FlatSample([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], valid=True)
    b = FlatSample([7], [8], [-0.5], valid=True)
    mb = collate([a, b], pad_id=0)
    # prompts left-padded to 2 columns, completions right-padded to 3: all start at column 2
    assert mb.input_ids.tolist() == [[1, 2, 3, 4, 5], [0, 7, 8, 0, 0]]
    assert mb.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]
    assert mb.targets.tolist() == [[3, 4, 5], [8, 0, 0]]
    assert mb.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.allclose(mb.sampler_logprobs[0], torch.tensor([-0.1, -0.2, -0.3]))


def test_excluded_sample_has_empty_mask():
    s = FlatSample([1], [2, 3], [0.0, 0.0], valid=False)
    assert collate([s], pad_id=0).mask.sum().item() == 0


def test_padded_batch_gives_the_same_logprobs_as_one_sequence(tiny_model):
    """Left padding with explicit positions must not change what the model computes."""
    from transformers import AutoModelForCausalLM

    from learner.grpo import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    long = FlatSample([3, 10, 11, 12, 5, 4], [20, 21, 22], [0.0] * 3, True)
    short = FlatSample([3, 13, 5, 4], [23], [0.0], True)

    def logprobs(samples):
        mb = collate(samples, pad_id=0)
        with torch.no_grad():
            logits = model(
                input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                position_ids=mb.position_ids, logits_to_keep=mb.targets.shape[1] + 1,
            ).logits[:, :-1]  # fmt: skip
        return token_logprobs(logits, mb.targets)

    both = logprobs([long, short])
    assert torch.allclose(both[0], logprobs([long])[0], atol=1e-5)
    assert torch.allclose(both[1, :1], logprobs([short])[0], atol=1e-5)


def test_flatten_masks_excluded_and_optionally_truncated_samples():
    prompt = Prompt("p", "q", [1, 2])
    group = Group(prompt, [Sample([3], "", [0.0], "stop", 0), Sample([4], "", [0.0], "length", 0),
                           Sample([5], "", [0.0], "stop", 0)])  # fmt: skip
    valid = [[True, True, False]]
    assert [s.valid for s in flatten([group], valid)] == [True, True, False]
    assert [s.valid for s in flatten([group], valid, mask_truncated=True)] == [True, False, False]


def test_batch_plan_slices_and_minibatch_counts():
    # 16 samples, 2 ranks, 2 updates, micro-batches of 2: each rank holds 8, each update takes
    # 4 of them per rank = 2 micro-batches (accumulation steps) per rank
    plan = BatchPlan(16, world_size=2, updates=2, micro_batch_size=2)
    assert (plan.share, plan.per_update, plan.accumulation_steps) == (8, 8, 2)
    assert plan.micro_slices(1) == [(8, 10), (10, 12), (12, 14), (14, 16)]
    tokens = list(range(16))  # sample i has i loss tokens (sample 0 has none)
    # mini-batch 0 = samples 0-3 of rank 0 and 8-11 of rank 1: 0+1+2+3+8+9+10+11 = 44 tokens,
    # 7 sequences with any token; mini-batch 1 = 4-7 and 12-15: 22 + 54 = 76 tokens, 8 sequences
    assert plan.minibatch_counts(tokens, 2) == (44.0, 7.0)
    assert plan.minibatch_counts(tokens, 10) == (44.0, 7.0)
    assert plan.minibatch_counts(tokens, 13) == (76.0, 8.0)


def test_batch_plan_rejects_uneven_splits():
    with pytest.raises(ValueError, match="do not split"):
        BatchPlan(12, world_size=2, updates=2, micro_batch_size=2)
