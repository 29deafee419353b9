"""Padding and masks: only completion tokens of usable samples reach the loss."""

import torch

from learner.batch import FlatSample, collate


def test_collate_aligns_targets_and_completion_mask():
    a = FlatSample([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], advantage=1.0, valid=True)
    b = FlatSample([7], [8], [-0.5], advantage=-1.0, valid=True)
    mb = collate([a, b], pad_id=0)
    assert mb.input_ids.tolist() == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0]]
    assert mb.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # position t predicts token t + 1
    assert mb.targets.tolist() == [[2, 3, 4, 5], [8, 0, 0, 0]]
    assert mb.mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    assert torch.allclose(mb.sampler_logprobs[0], torch.tensor([0.0, -0.1, -0.2, -0.3]))
    assert mb.advantages.tolist() == [1.0, -1.0]


def test_excluded_sample_has_empty_mask():
    s = FlatSample([1], [2, 3], [0.0, 0.0], advantage=0.0, valid=False)
    assert collate([s], pad_id=0).mask.sum().item() == 0
