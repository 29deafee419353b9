"""The GRPO-family objective, put together from the pieces in `advantages.py` and `losses.py`.

One function, `policy_loss`, covers GRPO (DeepSeekMath, arXiv:2402.03300, eq. 3), Dr. GRPO,
DAPO and GSPO: they differ only in the advantage estimator, the ratio level, the clip bounds and
the loss aggregation, all passed in. Guarantees: pure tensor functions (no Ray, DeepSpeed or
config imports); masked positions never contribute; the returned loss is the micro-batch's
exact share of the mini-batch loss (see `losses.aggregate_loss`). Not covered: how the batch is
split into micro-batches and ranks (`learner/actor.py`).

Shapes: B = sequences in a micro-batch, T = completion positions, V = vocabulary.
"""

from __future__ import annotations

import torch

from learner.losses import (
    aggregate_loss,
    clipped_policy_loss,
    kl_estimate,
    log_ratio,
    masked_mean,
    sampler_correction,
)


def token_logprobs(
    logits: torch.Tensor,  # [B, T, V] logits predicting targets
    targets: torch.Tensor,  # [B, T] token ids
    temperature: float = 1.0,
) -> torch.Tensor:  # [B, T]
    """log pi(target | prefix) under the sampling distribution softmax(logits / temperature),
    the same distribution vLLM sampled from (its `processed_logprobs`)."""
    logits = logits.float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position: [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def policy_loss(
    logp: torch.Tensor,  # [B, T] current policy, with gradient
    old_logp: torch.Tensor,  # [B, T] policy before this batch's first update (detached)
    sampler_logp: torch.Tensor,  # [B, T] vLLM's log-probs of the sampled tokens
    ref_logp: torch.Tensor | None,  # [B, T] reference policy, or None when KL is not a loss
    entropy: torch.Tensor | None,  # [B, T] with gradient when entropy_coef > 0, else None
    advantages: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, T] 1 on completion tokens that enter the loss
    *,
    num_tokens: float,  # masked-in tokens in the whole mini-batch (all micro-batches, ranks)
    num_seqs: float,  # sequences with any masked-in token in the whole mini-batch
    aggregation: str = "seq-mean-token-mean",
    norm_tokens: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 0.0,
    ratio_level: str = "token",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy_coef: float = 0.0,
    correction: str = "none",
    correction_upper: float = 2.0,
    correction_lower: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per token: clipped surrogate x sampler-correction weight + kl_coef x KL(pi || ref)
    - entropy_coef x entropy, then aggregated. Returns the loss share and detached stats."""
    ratio_log = log_ratio(logp, old_logp, mask, ratio_level)  # [B, T]
    pg, clipped = clipped_policy_loss(ratio_log, advantages, clip_low, clip_high, dual_clip)
    weights, stats = sampler_correction(
        old_logp, sampler_logp, mask, correction, correction_upper, correction_lower
    )  # [B, T]
    per_token = pg * weights  # [B, T]
    stats["clip_frac"] = masked_mean(clipped.float(), mask)
    stats["ratio_mean"] = masked_mean(torch.exp(ratio_log.detach()), mask)
    if ref_logp is not None and kl_coef > 0:
        kl = kl_estimate(logp, ref_logp, kl_estimator)  # [B, T]
        per_token = per_token + kl_coef * kl
        stats["kl"] = masked_mean(kl.detach(), mask)
    if entropy is not None and entropy_coef > 0:
        per_token = per_token - entropy_coef * entropy
    loss = aggregate_loss(per_token, mask, aggregation, num_tokens, num_seqs, norm_tokens)
    return loss, {k: v.detach() for k, v in stats.items()}
