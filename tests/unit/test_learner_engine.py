"""The DeepSpeed config follows the batch plan (`learner/engine.py`): one optimizer step per
mini-batch, with DeepSpeed's accumulation steps the plan's."""

from core.config import LearnerConfig
from learner.batch import BatchPlan
from learner.engine import all_gather, any_rank, ds_config, sum_over_ranks


def test_ds_config_takes_batch_sizes_from_the_plan():
    # 32 samples, 2 ranks, 2 updates: 8 samples per rank per update, micro-batches of 4 -> 2
    # accumulation steps; 16 samples per optimizer step over both ranks
    plan = BatchPlan(32, world_size=2, updates=2, micro_batch_size=4)
    cfg = ds_config(plan, LearnerConfig(world_size=2, micro_batch_size=4, zero_stage=2), False)
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 2
    assert cfg["train_batch_size"] == 16
    assert cfg["zero_optimization"] == {"stage": 2} and cfg["bf16"] == {"enabled": False}


def test_ds_config_under_a_token_budget_accumulates_by_hand():
    # the micro-batch count varies, so DeepSpeed is told 1 step and the learner marks boundaries
    plan = BatchPlan(32, world_size=2, updates=2, micro_batch_size=4, micro_batch_tokens=100)
    cfg = ds_config(plan, LearnerConfig(world_size=2, micro_batch_tokens=100), True)
    assert cfg["gradient_accumulation_steps"] == 1
    assert cfg["train_micro_batch_size_per_gpu"] == 8
    assert cfg["bf16"] == {"enabled": True}


def test_collectives_with_one_rank_return_the_local_value():
    import torch

    assert any_rank(True, 1) and not any_rank(False, 1)
    assert sum_over_ranks({"a": 1.5}, 1) == {"a": 1.5}
    share = torch.tensor([1.0, 2.0])
    assert torch.equal(all_gather(share, 1), share)
