"""The vectorised objective and estimators against a slow, obviously correct implementation
that loops over samples and tokens (as veRL tests its fast paths), on random batches with
ragged lengths and fully masked rows, and over random splits into micro-batches."""

import itertools
import math
import random

import pytest
import torch

from learner import grpo
from learner.advantages import compute_advantages


def reference_loss(logp, old, sampler, ref, entropy, adv, lengths, o):
    """The objective written out token by token with Python scalars (autograd still flows)."""
    rows = []
    for b, n in enumerate(lengths):
        seq_log_ratio = sum(logp[b, t] - old[b, t] for t in range(n)) / n if n else 0.0
        seq_log_w = sum(float(old[b, t] - sampler[b, t]) for t in range(n))
        row = []
        for t in range(n):
            if o["ratio_level"] == "sequence":
                # value of the sequence ratio, gradient of this token's log-prob (GSPO-token)
                x = seq_log_ratio.detach() + logp[b, t] - logp[b, t].detach()
            else:
                x = logp[b, t] - old[b, t]
            ratio, a = torch.exp(x), float(adv[b])
            clipped_ratio = torch.clamp(ratio, 1 - o["clip_low"], 1 + o["clip_high"])
            loss = torch.maximum(-ratio * a, -clipped_ratio * a)
            if o["dual_clip"] and a < 0:
                loss = torch.minimum(loss, torch.tensor(-o["dual_clip"] * a))
            if o["correction"] == "token_truncate":
                loss = loss * min(math.exp(float(old[b, t] - sampler[b, t])), o["upper"])
            elif o["correction"] == "sequence_mask":
                inside = math.log(o["lower"]) <= seq_log_w <= math.log(o["upper"])
                loss = loss * float(inside)
            if o["kl_coef"]:
                d = logp[b, t] - ref[b, t]
                kl = {"k1": d, "k2": d**2 / 2, "k3": torch.exp(-d) - 1 + d}[o["kl_estimator"]]
                loss = loss + o["kl_coef"] * kl
            loss = loss - o["entropy_coef"] * entropy[b, t]
            row.append(loss)
        rows.append(row)
    tokens = [x for row in rows for x in row]
    seqs = [row for row in rows if row]
    if o["aggregation"] == "token-mean":
        return sum(tokens) / len(tokens)
    if o["aggregation"] == "seq-mean-token-mean":
        return sum(sum(row) / len(row) for row in seqs) / len(seqs)
    return sum(tokens) / (len(seqs) * o["norm_tokens"])


def random_batch(seed, batch=6, width=5):
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    lengths = [rng.randint(0, width) for _ in range(batch)]
    lengths[0], lengths[1] = 0, width  # always a fully masked row and a full one
    mask = torch.tensor([[float(t < n) for t in range(width)] for n in lengths])
    logp = -3 * torch.rand(batch, width, generator=g)
    old = logp + 0.3 * torch.randn(batch, width, generator=g)  # ratios on both sides of clips
    sampler = old + 0.3 * torch.randn(batch, width, generator=g)
    ref = logp + 0.5 * torch.randn(batch, width, generator=g)
    entropy = 2 * torch.rand(batch, width, generator=g)
    adv = torch.randn(batch, generator=g)
    return lengths, mask, logp, old, sampler, ref, entropy, adv


OPTIONS = [
    dict(
        aggregation=agg,
        ratio_level=level,
        correction=corr,
        kl_estimator=kl,
        dual_clip=dual,
        clip_low=0.2,
        clip_high=0.28,
        kl_coef=0.05,
        entropy_coef=0.01,
        upper=2.0,
        lower=0.5,
        norm_tokens=7,
    )
    for agg, level, corr, kl, dual in itertools.product(
        ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"],
        ["token", "sequence"],
        ["none", "token_truncate", "sequence_mask"],
        ["k1", "k2", "k3"],
        [0.0, 3.0],
    )
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("o", OPTIONS, ids=lambda o: "-".join(str(v) for v in list(o.values())[:5]))
def test_vectorised_objective_matches_reference_on_any_micro_batch_split(o, seed):
    lengths, mask, logp, old, sampler, ref, entropy, adv = random_batch(seed)
    logp_ref = logp.clone().requires_grad_(True)
    expected = reference_loss(logp_ref, old, sampler, ref, entropy, adv, lengths, o)
    expected.backward()

    logp_fast = logp.clone().requires_grad_(True)
    counts = dict(num_tokens=float(mask.sum()), num_seqs=float((mask.sum(-1) > 0).sum()))
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(lengths)), 2))  # three ragged micro-batches
    total = 0.0
    for lo, hi in zip([0, *cuts], [*cuts, len(lengths)]):
        share, _ = grpo.policy_loss(
            logp_fast[lo:hi],
            old[lo:hi],
            sampler[lo:hi],
            ref[lo:hi],
            entropy[lo:hi],
            adv[lo:hi],
            mask[lo:hi],
            aggregation=o["aggregation"],
            norm_tokens=o["norm_tokens"],
            clip_low=o["clip_low"],
            clip_high=o["clip_high"],
            dual_clip=o["dual_clip"],
            ratio_level=o["ratio_level"],
            kl_coef=o["kl_coef"],
            kl_estimator=o["kl_estimator"],
            entropy_coef=o["entropy_coef"],
            correction=o["correction"],
            correction_upper=o["upper"],
            correction_lower=o["lower"],
            **counts,
        )
        share.backward()
        total += share.item()
    assert total == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(logp_fast.grad, logp_ref.grad, rtol=1e-5, atol=1e-6)
    assert logp_fast.grad[0].abs().sum() == 0  # the fully masked row gets no gradient


def reference_advantages(estimator, rewards, valid, norm):
    """Per-sample loops over each group (and the batch) with Python floats."""
    groups = [[r for r, v in zip(rs, vs) if v] for rs, vs in zip(rewards, valid)]

    def sample_std(xs):
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0

    batch_std = sample_std([r for g in groups for r in g])
    out = []
    for rs, vs, kept in zip(rewards, valid, groups):
        row = []
        for r, v in zip(rs, vs):
            if not v or len(kept) < 2:
                row.append(0.0)
                continue
            mean = sum(kept) / len(kept)
            if estimator == "rloo":
                row.append(r - (sum(kept) - r) / (len(kept) - 1))
            elif estimator == "grpo" and norm == "group":
                std = sample_std(kept)
                row.append((r - mean) / (std + 1e-6) if std > 0 else 0.0)
            elif estimator == "grpo" and norm == "batch":
                row.append((r - mean) / (batch_std + 1e-6) if sample_std(kept) > 0 else 0.0)
            else:
                row.append(r - mean)
        out.append(row)
    if estimator == "reinforce_pp_baseline":
        flat = [a for row, vs in zip(out, valid) for a, v in zip(row, vs) if v]
        m, s = sum(flat) / len(flat), sample_std(flat)
        out = [
            [(a - m) / (s + 1e-6) if v else 0.0 for a, v in zip(row, vs)]
            for row, vs in zip(out, valid)
        ]
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "estimator, norm",
    [
        ("grpo", "group"),
        ("grpo", "batch"),
        ("grpo", "none"),
        ("dr_grpo", "group"),
        ("rloo", "group"),
        ("reinforce_pp_baseline", "group"),
    ],
)
def test_vectorised_estimators_match_reference(estimator, norm, seed):
    rng = random.Random(seed)
    rewards = [[float(rng.choice([0, 0.5, 1])) for _ in range(4)] for _ in range(6)]
    valid = [[rng.random() > 0.2 for _ in range(4)] for _ in range(6)]
    rewards[0] = [1.0] * 4  # always one zero-variance group
    valid[0] = [True] * 4
    got = compute_advantages(estimator, torch.tensor(rewards), torch.tensor(valid), 1e-6, norm)
    want = reference_advantages(estimator, rewards, valid, norm)
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-6)
