"""Invariance of the learner to how a batch is split: micro-batch size x accumulation steps, token
budgets (length-sorted micro-batches of uneven sizes and counts, the step boundary set by hand),
1 vs 2 DeepSpeed ranks, log-probabilities through the output head in chunks, and packed rows
(no padding) give the same loss and the same gradient, for every loss aggregation.

Each aggregation divides by token and sequence counts of the whole mini-batch (not of each
micro-batch), so the split cannot change the result; this test checks that on the real
DeepSpeed engine. Gradients are read through plain SGD at lr 1 without clipping: the weight
change of one step is exactly minus the gradient.

One learner per world size runs every split of that size, rebuilt for each split
(`LearnerRanks.rebuild`: the learner a fresh start would be, without starting its processes),
and every case of the split, reset between cases to the split's initial checkpoint with the
case's algorithm settings; one case is repeated after the others to check that a reset learner
computes bitwise what the fresh one did.
"""

import pytest
import ray
import torch

from learner.ranks import LearnerRanks
from tests.conftest import scored
from tests.integration.test_learner import batch, config, params, reset

pytestmark = pytest.mark.integration

REFERENCE = "1 rank x 1 micro-batch of 16"
SPLITS = {
    REFERENCE: ["learner.world_size=1", "learner.micro_batch_size=16"],
    "1 rank x 4 micro-batches of 4": ["learner.world_size=1", "learner.micro_batch_size=4"],
    "2 ranks x 2 micro-batches of 4": ["learner.world_size=2", "learner.micro_batch_size=4"],
    "2 ranks ZeRO-2 x 1 micro-batch of 8": [
        "learner.world_size=2",
        "learner.micro_batch_size=8",
        "learner.zero_stage=2",
    ],
    # Log-probabilities and entropies from the last hidden state, 5 positions at a time, with
    # the head's weight gathered by ZeRO-3 for each chunk (the others run in one chunk).
    "2 ranks ZeRO-3 x 1 micro-batch of 8, head in chunks of 5": [
        "learner.world_size=2",
        "learner.micro_batch_size=8",
        "learner.zero_stage=3",
        "learner.logprob_chunk_tokens=5",
    ],
    # Each micro-batch one packed row of at most 40 real tokens (3-4 samples), no padding.
    "2 ranks ZeRO-2 x packed rows, token budget 40": [
        "learner.world_size=2",
        "learner.micro_batch_tokens=40",
        "learner.pack_sequences=true",
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
AGGREGATIONS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KL_CASES = {
    "KL in the loss": ["algorithm.kl_in=loss"],
    "KL in the reward": ["algorithm.kl_in=reward"],
}
KL_SPLITS = {
    "KL in the loss": [
        REFERENCE,
        "2 ranks x 2 micro-batches of 4",
        "2 ranks x token budget 40",
        "2 ranks ZeRO-3 x 1 micro-batch of 8, head in chunks of 5",
    ],
    "KL in the reward": [REFERENCE, "2 ranks x token budget 40"],
}
CASES = {a: [f"algorithm.loss_aggregation={a}"] for a in AGGREGATIONS} | {
    kl: ["algorithm.loss_aggregation=token-mean", "algorithm.kl_coef=0.1", *overrides]
    for kl, overrides in KL_CASES.items()
}
REPEATED = ("2 ranks x token budget 40", "token-mean")
"""The case run again, after the KL cases, on the learner that ran it first when fresh."""


def case_config(tiny_model: str, split: str, case: str):
    return config(
        tiny_model,
        "learner.optimizer=sgd",
        "learner.lr=1.0",
        "learner.grad_clip=0",
        "algorithm.entropy_coef=0.01",
        "cluster.learner_cpus=0.5",
        *SPLITS[split],
        *CASES[case],
    )


def one_step(learner: LearnerRanks, start_weights: dict[str, torch.Tensor], kl: bool):
    """(metrics, gradient) of one batch from the start; with a KL term, of a second batch,
    which sees a policy that moved away from the reference."""
    groups, rewards, valid = batch(seed=3)
    valid[1][2] = False  # an excluded sample: it must drop out of every split alike
    metrics = learner.train(scored(groups, rewards, valid))
    if kl:
        metrics = learner.train(scored(*batch(seed=4)))
    gradient = {k: start_weights[k] - v for k, v in params(learner).items()}
    return metrics, gradient


@pytest.fixture(scope="module")
def results(ray_local, tiny_model, tmp_path_factory):
    """(split, case) -> (metrics, gradient) of every case each split runs, and (split, case,
    "again") for the repeated case. One learner (of one world size) at a time."""
    out, learner = {}, None
    try:
        for split in sorted(SPLITS, key=world_size):
            cases = [c for c in CASES if split in KL_SPLITS.get(c, SPLITS)]
            for i, case in enumerate(cases + ([REPEATED[1]] if split == REPEATED[0] else [])):
                cfg = case_config(tiny_model, split, case)
                if i == 0:  # the first case of a split runs on a fresh learner
                    if learner is not None and len(learner.ranks) != cfg.learner.world_size:
                        learner.shutdown()
                        learner = None
                    if learner is None:
                        learner = LearnerRanks(cfg, tiny_model)
                    else:
                        learner.rebuild(cfg)
                    start = tmp_path_factory.mktemp("start")
                    learner.save_checkpoint(str(start))
                    start_weights = params(learner)
                else:
                    reset(learner, str(start), cfg.algorithm)
                key = (split, case) if (split, case) not in out else (split, case, "again")
                out[key] = one_step(learner, start_weights, kl=cfg.algorithm.kl_coef > 0)
            out[split, "reference"] = ray.get(
                [rank.__ray_call__.remote(reference_shard) for rank in learner.ranks]
            )
    finally:
        if learner is not None:
            learner.shutdown()
    return out


def world_size(split: str) -> int:
    (size,) = [int(o.partition("=")[2]) for o in SPLITS[split] if "world_size" in o]
    return size


def reference_shard(actor) -> tuple[int, int] | None:
    """Inside a rank: (parameters held, parameters of the whole reference model), or None
    without a reference (its last case had no KL)."""
    if actor.ref_model is None:
        return None
    module = getattr(actor.ref_model, "module", actor.ref_model)
    params_ = list(module.parameters())  # under ZeRO-3 a rank's share is in `ds_tensor`
    held = sum(getattr(p, "ds_tensor", p).numel() for p in params_)
    return held, sum(getattr(p, "ds_numel", p.numel()) for p in params_)


def test_a_reset_learner_repeats_a_case_bitwise(results):
    (m1, g1), (m2, g2) = results[REPEATED], results[(*REPEATED, "again")]
    assert {k: v for k, v in m2.items() if not k.startswith("time/")} == {
        k: v for k, v in m1.items() if not k.startswith("time/")
    }
    differ = [k for k in g1 if not torch.equal(g1[k], g2[k])]
    assert not differ, f"after a reset, these gradients differ from the fresh learner's: {differ}"


def test_each_case_ran_with_its_own_settings(results):
    """A reset that kept the previous case's settings would pass the comparisons below."""
    losses = {results[REFERENCE, a][0]["train/loss"] for a in AGGREGATIONS}
    assert len(losses) == len(AGGREGATIONS), losses


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_loss_and_gradient_do_not_depend_on_the_split(results, aggregation):
    ref_metrics, ref_grad = results[REFERENCE, aggregation]
    assert max(g.abs().max() for g in ref_grad.values()) > 1e-4, "the step moved nothing"
    for name in SPLITS:
        metrics, grad = results[name, aggregation]
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
        if "packed" in name:
            assert metrics["train/padding_frac"] == 0, name


@pytest.mark.parametrize("split", KL_SPLITS["KL in the loss"][1:])
def test_kl_term_is_split_invariant_too(results, split):
    (m1, g1), (m2, g2) = results[REFERENCE, "KL in the loss"], results[split, "KL in the loss"]
    assert m1["train/kl"] > 0
    assert m2["train/kl"] == pytest.approx(m1["train/kl"], rel=1e-4)
    assert m2["train/loss"] == pytest.approx(m1["train/loss"], rel=1e-4)
    for key in g1:
        torch.testing.assert_close(g2[key], g1[key], rtol=1e-3, atol=1e-5)


def test_a_zero3_reference_is_sharded_over_the_ranks(results):
    """Each ZeRO-3 rank holds only its share of the reference; the others a full copy."""
    zero3 = "2 ranks ZeRO-3 x 1 micro-batch of 8, head in chunks of 5"
    (held0, total), (held1, _) = results[zero3, "reference"]
    # halves, each padded by at most one element per parameter tensor
    assert total // 2 <= held0 <= total // 2 + 50 and total // 2 <= held1 <= total // 2 + 50
    (held, total), _ = results["2 ranks x 2 micro-batches of 4", "reference"]
    assert held == total


def test_kl_penalty_is_the_same_under_a_token_budget(results):
    """The per-sample KL sums come back from length-sorted micro-batches to sample order."""
    (m1, g1), (m2, g2) = (
        results[split, "KL in the reward"] for split in KL_SPLITS["KL in the reward"]
    )
    assert m1["train/kl_penalty"] > 0
    assert m2["train/kl_penalty"] == pytest.approx(m1["train/kl_penalty"], rel=1e-4)
    assert m2["train/loss"] == pytest.approx(m1["train/loss"], rel=1e-4)
    for key in g1:
        torch.testing.assert_close(g2[key], g1[key], rtol=1e-3, atol=1e-5)
