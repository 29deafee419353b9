"""Padding and masks: only completion tokens of usable samples reach the loss; how a batch is
cut into micro-batches (fixed size or token budget)."""

import random

import pytest
import torch

from core.records import Group, Prompt, Sample
from learner.batch import BatchPlan, FlatSample, collate, flatten, pack, rank_batch


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


def test_pack_puts_samples_back_to_back_with_the_padded_layouts_loss_tensors():
    a = FlatSample([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], valid=True)
    b = FlatSample([7], [8], [-0.5], valid=True, loss_mask=[0])
    packed, padded = pack([a, b], pad_id=0), collate([a, b], pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 7, 8]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    assert packed.attention_mask is None
    # the position before each target: a's 3 4 5 follow 2 3 4 (row 1-3), b's 8 follows 7 (5)
    assert packed.gather.tolist() == [[1, 2, 3], [5, 0, 0]]
    assert packed.input_ids[0, packed.gather[0] + 1].tolist() == [3, 4, 5]
    for name in ("targets", "mask", "sampler_logprobs", "lengths", "completion_lengths"):
        assert torch.equal(getattr(packed, name), getattr(padded, name)), name
    assert (packed.real_tokens, packed.positions) == (7, 7)  # no padding at all


def test_packed_rows_give_the_same_logprobs_and_gradients_as_padded_ones(tiny_model):
    """Attention stays within each packed sample: the model reads the boundaries from the
    restarting positions (chunked head or full logits alike)."""
    from transformers import AutoModelForCausalLM

    from learner.head import completion_token_stats

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    samples = [
        FlatSample([3, 10, 11, 12, 5, 4], [20, 21, 22], [0.0] * 3, True),
        FlatSample([3, 13, 5, 4], [23], [0.0], True),
        FlatSample([3, 14, 15, 5, 4], [24, 25, 26, 27, 28], [0.0] * 5, True),
    ]

    def stats(mb, chunk):
        inputs = {"input_ids": mb.input_ids, "position_ids": mb.position_ids}
        if mb.attention_mask is not None:
            inputs["attention_mask"] = mb.attention_mask
        logp, ent = completion_token_stats(model, inputs, mb.targets, 0.9, chunk, "grad", mb.gather)
        ((logp + ent) * mb.mask).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return logp * mb.mask, grads

    padded, padded_grads = stats(collate(samples, pad_id=0), 0)
    for chunk in (0, 4):
        packed, packed_grads = stats(pack(samples, pad_id=0), chunk)
        torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)
        for g1, g0 in zip(packed_grads, padded_grads, strict=True):
            torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)


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
                input_ids=mb.input_ids,
                attention_mask=mb.attention_mask,
                position_ids=mb.position_ids,
                logits_to_keep=mb.targets.shape[1] + 1,
            ).logits[:, :-1]
        return token_logprobs(logits, mb.targets)

    both = logprobs([long, short])
    assert torch.allclose(both[0], logprobs([long])[0], atol=1e-5)
    assert torch.allclose(both[1, :1], logprobs([short])[0], atol=1e-5)


def test_flatten_masks_excluded_and_optionally_truncated_samples():
    prompt = Prompt("p", "q", [1, 2])
    group = Group(
        prompt,
        [
            Sample([3], "", [0.0], "stop", 0),
            Sample([4], "", [0.0], "length", 0),
            Sample([5], "", [0.0], "stop", 0),
        ],
    )
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


def test_token_budget_micro_batches_by_hand():
    # 2 ranks x 2 updates x 4 samples; budget 12 tokens = rows x longest row
    plan = BatchPlan(16, world_size=2, updates=2, micro_batch_size=8, micro_batch_tokens=12)
    lengths = [3, 9, 4, 4, 5, 6, 20, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    # update 0, rank 0: 1 (9) alone (2 x 9 > 12), then 2, 3, 0 (3 x 4 = 12): 2 micro-batches;
    # rank 1: 8-11 fit in one (4 x 2), split in halves to match rank 0's 2.
    # update 1, rank 0: 6 (20 > 12, alone), 5 + 4 (2 x 6), 7 (3 x 6 > 12): 3 micro-batches;
    # rank 1: 12-15 (4 x 3) split to [12, 13] [14, 15], then the first of equals again.
    assert plan.micro_batches(0, lengths) == [[1], [2, 3, 0], [6], [5, 4], [7]]
    assert plan.micro_batches(1, lengths) == [[8, 9], [10, 11], [12], [13], [14, 15]]
    assert plan.accumulation_steps == 1  # DeepSpeed divides by 1; the learner marks boundaries


def test_token_budget_zero_gives_the_fixed_slices():
    plan = BatchPlan(16, world_size=2, updates=2, micro_batch_size=2)
    lengths = [random.Random(0).randint(1, 50) for _ in range(16)]
    for rank in range(2):
        expected = [list(range(lo, hi)) for lo, hi in plan.micro_slices(rank)]
        assert plan.micro_batches(rank, lengths) == expected


@pytest.mark.parametrize("seed", range(20))
def test_token_budget_keeps_counts_equal_and_minibatches_intact(seed):
    rng = random.Random(seed)
    world, updates, per_rank_update = rng.choice([1, 2, 3]), rng.choice([1, 2]), rng.randint(1, 9)
    n = world * updates * per_rank_update
    plan = BatchPlan(n, world, updates, micro_batch_size=1, micro_batch_tokens=rng.randint(1, 60))
    lengths = [rng.randint(1, 30) for _ in range(n)]
    per_rank = [plan.micro_batches(r, lengths) for r in range(world)]
    for r, batches in enumerate(per_rank):
        assert sorted(i for b in batches for i in b) == list(
            range(r * plan.share, (r + 1) * plan.share)
        )
        for b in batches:
            assert len({plan.update_of(i) for i in b}) == 1  # never straddles two mini-batches
            assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
            assert len(b) == 1 or len(b) * lengths[b[0]] <= plan.micro_batch_tokens
        # mini-batch k of this rank is exactly its k-th contiguous slice, in some order
        for k in range(updates):
            members = sorted(i for b in batches if plan.update_of(b[0]) == k for i in b)
            start = r * plan.share + k * plan.per_rank_update
            assert members == list(range(start, start + plan.per_rank_update))
    for k in range(updates):
        counts = {sum(plan.update_of(b[0]) == k for b in batches) for batches in per_rank}
        assert len(counts) == 1, f"ranks disagree on mini-batch {k}'s micro-batch count: {counts}"


def test_a_packed_token_budget_counts_real_tokens():
    # the same lengths as above, budget 12 = the sum of a micro-batch's tokens
    plan = BatchPlan(16, 2, 2, micro_batch_size=8, micro_batch_tokens=12, pack=True)
    lengths = [3, 9, 4, 4, 5, 6, 20, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    # update 0, rank 0: 1 (9; + 4 > 12), then 2 + 3 + 0 (4 + 4 + 3); rank 1: 8-11 (8 tokens)
    # in halves to match. Update 1, rank 0: 6 alone (20), 5 + 4 + 7 (6 + 5 + 1); rank 1: 12-15.
    assert plan.micro_batches(0, lengths) == [[1], [2, 3, 0], [6], [5, 4, 7]]
    assert plan.micro_batches(1, lengths) == [[8, 9], [10, 11], [12, 13], [14, 15]]
    data = rank_batch(
        [FlatSample([1], [2] * (n - 1), [0.0] * (n - 1), True) for n in lengths], plan, 0, 0
    )
    assert [mb.input_ids.shape for mb in data.micro] == [(1, 9), (1, 11), (1, 20), (1, 12)]


def test_uneven_micro_batch_size_is_allowed_under_a_token_budget():
    assert BatchPlan(12, world_size=2, updates=2, micro_batch_size=8, micro_batch_tokens=64)


def test_padding_positions_by_hand():
    a = FlatSample([1, 2], [3, 4, 5], [0.0] * 3, valid=True)  # 5 tokens
    b = FlatSample([7], [8], [0.0], valid=True)  # 2 tokens
    together = collate([a, b], pad_id=0)  # 2 rows x 5 columns
    assert (together.real_tokens, together.positions) == (7, 10)  # padding fraction 0.3
    apart = [collate([a], pad_id=0), collate([b], pad_id=0)]
    assert sum(mb.positions for mb in apart) == 7  # one sample per row: no padding


def test_rank_batch_collates_this_ranks_share_and_marks_minibatch_ends():
    # 8 samples, 2 ranks, 2 updates, micro-batches of 2: rank 1 holds samples 4-7, one
    # micro-batch per mini-batch; sample i has i + 1 completion tokens, sample 5 is excluded
    samples = [FlatSample([1], [2] * (i + 1), [0.0] * (i + 1), valid=i != 5) for i in range(8)]
    plan = BatchPlan(8, world_size=2, updates=2, micro_batch_size=2)
    data = rank_batch(samples, plan, rank=1, pad_id=0)
    assert data.micro_indices == [[4, 5], [6, 7]]
    assert [mb.targets.shape for mb in data.micro] == [(2, 6), (2, 8)]
    assert data.loss_tokens == [1, 2, 3, 4, 5, 0, 7, 8]
    # mini-batch 0 = samples 0, 1 (rank 0) and 4, 5 (rank 1): 1 + 2 + 5 + 0 tokens, 3 sequences
    assert data.minibatch_counts(0) == (8.0, 3.0)
    assert data.minibatch_counts(1) == (3.0 + 4.0 + 7.0 + 8.0, 4.0)
    assert [data.ends_minibatch(i) for i in range(2)] == [True, True]
    single = rank_batch(samples, BatchPlan(8, 1, 2, micro_batch_size=2), rank=0, pad_id=0)
    assert [single.ends_minibatch(i) for i in range(4)] == [False, True, False, True]
