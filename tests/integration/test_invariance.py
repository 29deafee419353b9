"""Invariance of the learner to how a batch is split: micro-batch size x accumulation steps, token
budgets (length-sorted micro-batches of uneven sizes and counts, the step boundary set by hand)
and 1 vs 2 DeepSpeed ranks give the same loss and the same gradient, for every loss aggregation.

Each aggregation divides by token and sequence counts of the whole mini-batch (not of each
micro-batch), so the split cannot change the result; this test checks that on the real
DeepSpeed engine. Gradients are read through plain SGD at lr 1 without clipping: the weight
change of one step is exactly minus the gradient.
"""

import pytest
import torch

from core.config import load_config
from learner.ranks import LearnerRanks
from tests.conftest import scored
from tests.integration.test_learner import batch, params

pytestmark = pytest.mark.integration

SPLITS = {
    "1 rank x 1 micro-batch of 16": ["learner.world_size=1", "learner.micro_batch_size=16"],
    "1 rank x 4 micro-batches of 4": ["learner.world_size=1", "learner.micro_batch_size=4"],
    "2 ranks x 2 micro-batches of 4": ["learner.world_size=2", "learner.micro_batch_size=4"],
    "2 ranks ZeRO-2 x 1 micro-batch of 8": [
        "learner.world_size=2",
        "learner.micro_batch_size=8",
        "learner.zero_stage=2",
    ],
    # The batch's sequences are 9-14 tokens. Budget 40: 6 micro-batches of 2-3 rows on 1 rank;
    # on 2 ranks, rank 1 needs 4 and rank 0 splits one of its 3 to match.
    "1 rank x token budget 40": ["learner.world_size=1", "learner.micro_batch_tokens=40"],
    "2 ranks x token budget 40": ["learner.world_size=2", "learner.micro_batch_tokens=40"],
    "2 ranks ZeRO-2 x token budget 25": [
        "learner.world_size=2",
        "learner.micro_batch_tokens=25",
        "learner.zero_stage=2",
    ],
}


def one_step(tiny_model, aggregation: str, split: list[str], kl: bool, kl_in: str = "loss"):
    overrides = [
        f"model.path={tiny_model}",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "learner.optimizer=sgd",
        "learner.lr=1.0",
        "learner.grad_clip=0",
        f"algorithm.loss_aggregation={aggregation}",
        "algorithm.entropy_coef=0.01",
        f"algorithm.kl_coef={0.1 if kl else 0}",
        f"algorithm.kl_in={kl_in}",
        "cluster.learner_cpus=0.5",
        *split,
    ]
    cfg = load_config("configs/smoke.yaml", overrides)
    learner = LearnerRanks(cfg, tiny_model)
    before = params(learner)
    groups, rewards, valid = batch(seed=3)
    valid[1][2] = False  # an excluded sample: it must drop out of every split alike
    metrics = learner.train(scored(groups, rewards, valid))
    if kl:  # the second batch sees a policy that moved away from the reference
        metrics = learner.train(scored(*batch(seed=4)))
    gradient = {k: before[k] - v for k, v in params(learner).items()}
    learner.shutdown()
    return metrics, gradient


@pytest.mark.parametrize(
    "aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
def test_loss_and_gradient_do_not_depend_on_the_split(ray_local, tiny_model, aggregation):
    results = {
        name: one_step(tiny_model, aggregation, split, kl=False) for name, split in SPLITS.items()
    }
    (ref_metrics, ref_grad), *_ = results.values()
    assert max(g.abs().max() for g in ref_grad.values()) > 1e-4, "the step moved nothing"
    for name, (metrics, grad) in results.items():
        assert metrics["train/loss"] == pytest.approx(ref_metrics["train/loss"], rel=1e-5), name
        assert metrics["train/grad_norm"] == pytest.approx(
            ref_metrics["train/grad_norm"], rel=1e-4
        ), name
        for key in ref_grad:
            torch.testing.assert_close(
                grad[key],
                ref_grad[key],
                rtol=1e-4,
                atol=1e-6,
                msg=lambda m, k=key, n=name: f"{n}, {k}: {m}",
            )
        if "token budget" in name:  # sorted by length: less padding than in sample order
            assert metrics["train/padding_frac"] < ref_metrics["train/padding_frac"], name


@pytest.mark.parametrize("split", ["2 ranks x 2 micro-batches of 4", "2 ranks x token budget 40"])
def test_kl_term_is_split_invariant_too(ray_local, tiny_model, split):
    splits = [SPLITS["1 rank x 1 micro-batch of 16"], SPLITS[split]]
    (m1, g1), (m2, g2) = (one_step(tiny_model, "token-mean", s, kl=True) for s in splits)
    assert m1["train/kl"] > 0
    assert m2["train/kl"] == pytest.approx(m1["train/kl"], rel=1e-4)
    assert m2["train/loss"] == pytest.approx(m1["train/loss"], rel=1e-4)
    for key in g1:
        torch.testing.assert_close(g2[key], g1[key], rtol=1e-3, atol=1e-5)


def test_kl_penalty_is_the_same_under_a_token_budget(ray_local, tiny_model):
    """The per-sample KL sums come back from length-sorted micro-batches to sample order."""
    splits = [SPLITS["1 rank x 1 micro-batch of 16"], SPLITS["2 ranks x token budget 40"]]
    (m1, g1), (m2, g2) = (
        one_step(tiny_model, "token-mean", s, kl=True, kl_in="reward") for s in splits
    )
    assert m1["train/kl_penalty"] > 0
    assert m2["train/kl_penalty"] == pytest.approx(m1["train/kl_penalty"], rel=1e-4)
    assert m2["train/loss"] == pytest.approx(m1["train/loss"], rel=1e-4)
    for key in g1:
        torch.testing.assert_close(g2[key], g1[key], rtol=1e-3, atol=1e-5)
