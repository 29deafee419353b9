"""Padding and masks: only completion tokens of usable samples reach the loss."""

import torch

from learner.batch import FlatSample, collate


def test_collate_aligns_targets_and_completion_mask():
    a = FlatSample([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], advantage=1.0, valid=True)
    b = FlatSample([7], [8], [-0.5], advantage=-1.0, valid=True)
    mb = collate([a, b], pad_id=0)
    # prompts left-padded to 2 columns, completions right-padded to 3: all start at column 2
    assert mb.input_ids.tolist() == [[1, 2, 3, 4, 5], [0, 7, 8, 0, 0]]
    assert mb.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]
    assert mb.targets.tolist() == [[3, 4, 5], [8, 0, 0]]
    assert mb.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.allclose(mb.sampler_logprobs[0], torch.tensor([-0.1, -0.2, -0.3]))
    assert mb.advantages.tolist() == [1.0, -1.0]


def test_excluded_sample_has_empty_mask():
    s = FlatSample([1], [2, 3], [0.0, 0.0], advantage=0.0, valid=False)
    assert collate([s], pad_id=0).mask.sum().item() == 0


def test_padded_batch_gives_the_same_logprobs_as_one_sequence(tiny_model):
    """Left padding with explicit positions must not change what the model computes."""
    from transformers import AutoModelForCausalLM

    from learner.grpo import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    long = FlatSample([3, 10, 11, 12, 5, 4], [20, 21, 22], [0.0] * 3, 1.0, True)
    short = FlatSample([3, 13, 5, 4], [23], [0.0], 1.0, True)

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
