"""The DeepSpeed learner on its own: what one `train` call does to the weights and metrics.

Batches are built by hand (random completions of a tiny Llama), so no engine is needed.
"""

import random

import pytest
import torch

from core.config import load_config
from core.records import Group, Prompt, Sample
from learner.ranks import LearnerRanks
from tests.conftest import scored

pytestmark = pytest.mark.integration


def batch(prompts: int = 4, group: int = 4, seed: int = 0):
    """Random groups with 0/1 rewards: (groups, rewards [P][G], valid [P][G])."""
    rng = random.Random(seed)
    groups, rewards = [], []
    for p in range(prompts):
        prompt = Prompt(f"p{p}", "q", [3] + [rng.randrange(6, 52) for _ in range(5)] + [5, 4])
        samples = []
        for _ in range(group):
            ids = [rng.randrange(6, 52) for _ in range(rng.randint(1, 6))]
            samples.append(Sample(ids, "", [-3.9] * len(ids), "stop", 0))
        groups.append(Group(prompt, samples))
        rewards.append([float(rng.random() < 0.5) for _ in samples])
    return groups, rewards, [[True] * group for _ in range(prompts)]


def params(learner: LearnerRanks) -> dict[str, torch.Tensor]:
    import ray

    refs = learner.export_weights("float32")
    return {k: v.clone() for ref in refs for k, v in ray.get(ref).items()}


def test_step_changes_every_parameter_and_reports_metrics(ray_local, tiny_model):
    overrides = [
        f"model.path={tiny_model}",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "learner.micro_batch_size=4",
        "learner.lr=1e-3",
    ]
    cfg = load_config("configs/smoke.yaml", overrides)
    learner = LearnerRanks(cfg, tiny_model)
    before = params(learner)
    metrics = learner.train(scored(*batch()))
    after = params(learner)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters a step did not change: {unchanged}"
    assert metrics["train/optimizer_steps"] == 1
    assert metrics["train/grad_norm"] > 0 and metrics["train/lr"] == pytest.approx(1e-3)
    assert metrics["train/clip_frac"] == 0.0  # one update: ratio is exactly 1
    assert "train/kl" not in metrics  # kl_coef 0: no reference model
    learner.shutdown()


def test_several_updates_and_kl_to_reference(ray_local, tiny_model):
    overrides = [
        f"model.path={tiny_model}",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "learner.micro_batch_size=4",
        "learner.lr=1e-2",
        "algorithm.updates_per_batch=2",
        "algorithm.kl_coef=0.1",
    ]
    cfg = load_config("configs/smoke.yaml", overrides)
    learner = LearnerRanks(cfg, tiny_model)
    first = learner.train(scored(*batch(seed=0)))
    # Two mini-batches: two optimizer steps. The second runs on moved weights, so the ratio
    # departs from 1 and the policy departs from the reference.
    assert first["train/optimizer_steps"] == 2
    assert first["train/kl"] > 0
    assert first["train/ratio_mean"] != 1.0  # old log-probs were taken before the first update
    second = learner.train(scored(*batch(seed=0)))  # the same batch again, from further away
    assert second["train/optimizer_steps"] == 4
    assert second["train/kl"] > first["train/kl"]
    learner.shutdown()


def test_kl_as_reward_penalty_and_sampler_correction(ray_local, tiny_model):
    overrides = [
        f"model.path={tiny_model}",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "learner.micro_batch_size=4",
        "learner.lr=1e-2",
        "algorithm.kl_coef=0.1",
        "algorithm.kl_in=reward",
        "algorithm.kl_estimator=k1",
        "algorithm.sampler_correction=token_truncate",
        "algorithm.correction_upper=2",
    ]
    cfg = load_config("configs/smoke.yaml", overrides)
    learner = LearnerRanks(cfg, tiny_model)
    first = learner.train(scored(*batch(seed=0)))
    # Before any step the policy is the reference: no penalty, and no KL term in the loss.
    assert first["train/kl_penalty"] == pytest.approx(0.0, abs=1e-6)
    assert "train/kl" not in first
    # The batch's sampler log-probs are a flat -3.9, far below the learner's on its favoured
    # tokens, so some weights pi_learner / pi_sampler exceed 2 and are truncated.
    assert 0 < first["train/tis/truncated_frac"] < 1
    assert first["train/tis/weight_mean"] <= 2.0
    second = learner.train(scored(*batch(seed=1)))
    assert second["train/kl_penalty"] != 0.0  # the policy moved away from the reference
    learner.shutdown()


def test_nonfinite_step_leaves_weights_and_optimizer_alone(ray_local, tiny_model):
    # one micro-batch per update (every micro-batch is a step boundary)
    overrides = [
        f"model.path={tiny_model}",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "learner.micro_batch_size=16",
        "learner.lr=1e-2",
        "trainer.fault_injection=nan_loss@1",
    ]
    cfg = load_config("configs/smoke.yaml", overrides)
    learner = LearnerRanks(cfg, tiny_model)
    before = params(learner)
    skipped = learner.train(scored(*batch(seed=0)), 1)
    assert skipped["train/skipped_updates"] == 1 and skipped["train/optimizer_steps"] == 0
    after = params(learner)
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step moved weights"
    normal = learner.train(scored(*batch(seed=0)), 2)
    assert normal["train/skipped_updates"] == 0 and normal["train/optimizer_steps"] == 1
    assert all(torch.isfinite(v).all() for v in params(learner).values())
    learner.shutdown()
