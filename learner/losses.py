"""Policy-gradient loss pieces: importance ratios, clipping, KL estimators, sampler correction
and loss aggregation, as pure tensor functions.

Guarantees: no Ray, DeepSpeed or config imports; shapes in comments (B sequences, T completion
positions); masked positions never reach a sum, a mean or a gradient; `aggregate_loss` returns
each micro-batch's exact share of the mini-batch loss, so summing shares over micro-batches and
ranks gives the same loss and gradient whatever the split. The valid names of each option are
the tables in `core/choices.py`, which the config's types are built from. Not covered: putting
the pieces together (`grpo.policy_loss`; `learner/grpo.py` also gives the reading order of the
whole objective) and where the global token and sequence counts come from (the learner computes
them from the whole batch, which every rank holds: `batch.RankBatch.minibatch_counts`).
"""

from __future__ import annotations

import math

import torch

from core.choices import KL_ESTIMATORS, LOSS_AGGREGATIONS, RATIO_LEVELS, SAMPLER_CORRECTIONS

_MAX_LOG_RATIO = 20.0  # exp(20) ~ 5e8: keeps a wild ratio finite; clipping removes it anyway


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1; an all-masked row gives 0, not NaN."""
    mask = mask.to(x.dtype)
    total = (x * mask).sum() if dim is None else (x * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled token's log-probabilities
    (Schulman, "Approximating KL divergence", 2020), with x = log pi - log pi_ref:
    k1 = x (unbiased, can be negative), k2 = x^2 / 2 (biased, low variance),
    k3 = e^-x - 1 + x (unbiased, always >= 0; GRPO eq. 4). Shapes [B, T] -> [B, T]."""
    x = logp - ref_logp  # [B, T]
    if estimator == "k1":
        return x
    if estimator == "k2":
        return 0.5 * x**2
    if estimator == "k3":
        return torch.exp(-x) - 1 + x
    raise ValueError(f"KL estimator {estimator!r}: use one of {KL_ESTIMATORS}")


def log_ratio(
    logp: torch.Tensor,  # [B, T] current policy
    old_logp: torch.Tensor,  # [B, T] the policy the batch is attributed to (detached)
    mask: torch.Tensor,  # [B, T]
    level: str = "token",
) -> torch.Tensor:  # [B, T]
    """log(pi / pi_old) per token (`token`, PPO/GRPO), or GSPO's sequence ratio
    (Zheng et al., arXiv:2507.18071, eq. 7 and the GSPO-token form, eq. 13):
    log s_i = mean_t (log pi - log pi_old) over the sequence's tokens, given to every token
    with the gradient of that token's own log pi, so that the seq-mean-token-mean loss has
    exactly GSPO's gradient s_i * A_i * mean_t grad log pi."""
    token = logp - old_logp  # [B, T]
    if level == "token":
        return token.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    if level != "sequence":
        raise ValueError(f"ratio level {level!r}: use one of {RATIO_LEVELS}")
    seq = masked_mean(token, mask, dim=-1).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # [B]
    return seq.detach().unsqueeze(-1) + logp - logp.detach()  # [B, T], value log s_i


def clipped_policy_loss(
    log_ratio: torch.Tensor,  # [B, T]
    advantages: torch.Tensor,  # [B]
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # loss [B, T], clipped [B, T] (bool)
    """PPO's clipped objective per token, as a loss: -min(r A, clip(r, 1 - clip_low,
    1 + clip_high) A), r = exp(log_ratio). Separate bounds are DAPO's clip-higher
    (arXiv:2503.14476). `dual_clip` = c > 1 also bounds the loss of a negative advantage at
    -c A (Ye et al., arXiv:1912.09729), so a huge ratio on a bad token cannot dominate.
    `clipped` marks tokens whose loss was cut by a bound (no gradient flows through them)."""
    ratio = torch.exp(log_ratio)  # [B, T]
    adv = advantages.unsqueeze(-1)  # [B, 1]
    unclipped_loss = -ratio * adv
    clipped_loss = -torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    loss = torch.maximum(unclipped_loss, clipped_loss)  # [B, T]
    clipped = clipped_loss > unclipped_loss
    if dual_clip > 0:
        bound = -dual_clip * adv  # [B, 1], > 0 where A < 0
        dual = (adv < 0) & (loss > bound)
        loss = torch.where(dual, bound.expand_as(loss), loss)
        clipped = clipped | dual
    return loss, clipped


def sampler_correction(
    old_logp: torch.Tensor,  # [B, T] learner's log-probs of the sampled tokens
    sampler_logp: torch.Tensor,  # [B, T] vLLM's log-probs of the same tokens
    mask: torch.Tensor,  # [B, T]
    mode: str,
    upper: float = 2.0,
    lower: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # weights [B, T] (no gradient), stats
    """Importance weights w = pi_learner / pi_sampler for the gap between the engine that
    sampled and the learner that trains (Yao et al., "Your efficient RL framework secretly
    brings you off-policy RL training", 2025). `token_truncate`: w_t = min(w_t, upper) per token
    (TIS). `sequence_mask`: the sequence's ratio prod_t w_t is kept as weight 1 when it lies in
    [lower, upper] and the whole sequence is masked (weight 0) otherwise. `none`: all ones."""
    log_w = (old_logp - sampler_logp).detach() * mask  # [B, T]
    mask_f = mask.to(log_w.dtype)
    if mode == "none":
        return torch.ones_like(log_w), {}
    if mode == "token_truncate":
        w = torch.exp(log_w.clamp(max=_MAX_LOG_RATIO))  # [B, T]
        stats = {
            "tis/weight_mean": masked_mean(w.clamp(max=upper), mask),
            "tis/truncated_frac": masked_mean((w > upper).to(w.dtype), mask),
        }
        return w.clamp(max=upper) * mask_f, stats
    if mode == "sequence_mask":
        seq_log_w = log_w.sum(-1)  # [B]
        keep = (seq_log_w >= math.log(lower)) & (seq_log_w <= math.log(upper))  # [B]
        has_tokens = mask_f.sum(-1) > 0
        stats = {
            "tis/masked_seq_frac": ((~keep) & has_tokens).to(log_w.dtype).sum()
            / has_tokens.sum().clamp(min=1)
        }
        return keep.to(log_w.dtype).unsqueeze(-1) * mask_f, stats
    raise ValueError(f"sampler correction {mode!r}: use one of {SAMPLER_CORRECTIONS}")


def aggregate_loss(
    per_token: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T]
    mode: str,
    num_tokens: float,
    num_seqs: float,
    norm_tokens: float = 1.0,
) -> torch.Tensor:  # scalar
    """This micro-batch's share of the mini-batch loss. `num_tokens` and `num_seqs` count the
    masked-in tokens and the sequences that have any, over the WHOLE mini-batch (every
    micro-batch on every rank), so the shares sum to:
    - `token-mean`: sum of all tokens' losses / all tokens (DAPO; every token weighs the same);
    - `seq-mean-token-mean`: mean over sequences of each sequence's token mean (GRPO eq. 3);
    - `seq-mean-token-sum-norm`: sum of all tokens' losses / (sequences * norm_tokens), a
      constant normaliser instead of each sequence's length (Dr. GRPO)."""
    mask = mask.to(per_token.dtype)
    if mode == "token-mean":
        return (per_token * mask).sum() / max(num_tokens, 1.0)
    if mode == "seq-mean-token-mean":
        return masked_mean(per_token, mask, dim=-1).sum() / max(num_seqs, 1.0)
    if mode == "seq-mean-token-sum-norm":
        return (per_token * mask).sum() / (max(num_seqs, 1.0) * norm_tokens)
    raise ValueError(f"loss aggregation {mode!r}: use one of {LOSS_AGGREGATIONS}")
