"""The GRPO-family math in the order of the paper, and the map of where each step lives.

GRPO (DeepSeekMath, arXiv:2402.03300, sec. 4.1), as the learner applies it to one batch:

1. Log-probabilities of the sampled tokens under the policy, the old policy and the reference
   model, at the sampling temperature: `token_logprobs` (and `entropy_from_logits`), here.
2. Rewards: the reward side's final rewards (`reward/shaping.py`, `ScoredGroup.rewards`); with
   `algorithm.kl_in: reward`, minus the KL to the reference: `sequence_kl` and
   `kl_penalized_rewards`, here.
3. Group-relative advantages, one per sample: `learner/advantages.py`.
4. The per-token loss: importance ratio, clipped surrogate, sampler correction, KL to the
   reference (eq. 4) and entropy bonus, aggregated into the micro-batch's share of the
   mini-batch loss: `policy_loss`, here, from the pieces in `learner/losses.py`.

`policy_loss` covers GRPO (eq. 3), Dr. GRPO, DAPO and GSPO: they differ only in the advantage
estimator, the ratio level, the clip bounds and the loss aggregation, all passed in.
Guarantees: pure tensor functions (no Ray, DeepSpeed or config imports); masked positions never
contribute; the returned loss is the micro-batch's exact share of the mini-batch loss (see
`losses.aggregate_loss`). Not covered: how the batch is laid out and split into micro-batches
and ranks (`learner/batch.py`), and the optimizer step (`learner/actor.py`).

Shapes: P prompts, G samples each, B = sequences in a micro-batch, T = completion positions,
V = vocabulary.
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


def log_softmax(
    logits: torch.Tensor,  # [..., V]
    temperature: float = 1.0,
) -> torch.Tensor:  # [..., V] in float32
    """log softmax(logits / temperature) over the vocabulary."""
    logits = logits.float()
    if temperature != 1.0:  # dividing by 1 is exact, and would copy the whole [..., V] tensor
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


def token_logprobs(
    logits: torch.Tensor,  # [B, T, V] logits predicting targets
    targets: torch.Tensor,  # [B, T] token ids
    temperature: float = 1.0,
) -> torch.Tensor:  # [B, T]
    """log pi(target | prefix) under softmax(logits / temperature): the distribution vLLM
    samples from when `rollout.top_p` is 1. Its `processed_logprobs` are also after top-p, so
    with top-p < 1 the two differ on the tail (`train/mismatch_kl` reports it, and
    `algorithm.sampler_correction` corrects for it)."""
    return token_stats(logits, targets, temperature)[0]


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position: [B, T, V] -> [B, T]."""
    return entropy_from_logprobs(log_softmax(logits, temperature))


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of each distribution given as log-probabilities: [..., V] -> [...]."""
    return -(logp.exp() * logp).sum(-1)


def token_stats(
    logits: torch.Tensor,  # [B, T, V] logits predicting targets
    targets: torch.Tensor,  # [B, T] token ids
    temperature: float = 1.0,
    entropy: str = "none",  # "none", "value" (no gradient) or "grad"
) -> tuple[torch.Tensor, torch.Tensor | None]:  # [B, T] log-probs, [B, T] entropies or None
    """`token_logprobs` and, unless `entropy` is "none", `entropy_from_logits`, from one
    log-softmax of the logits (the vocabulary-wide passes are the costly part)."""
    logp = log_softmax(logits, temperature)  # [B, T, V]
    chosen = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    if entropy == "none":
        return chosen, None
    return chosen, entropy_from_logprobs(logp.detach() if entropy == "value" else logp)


def sequence_kl(
    logp: torch.Tensor,  # [B, T] policy the samples are attributed to (the old policy)
    ref_logp: torch.Tensor,  # [B, T] reference policy
    mask: torch.Tensor,  # [B, T] 1 on completion tokens that enter the loss
    estimator: str,
) -> torch.Tensor:  # [B]
    """Each sequence's KL(pi || pi_ref), the per-token estimate (`losses.kl_estimate`) summed
    over its loss tokens."""
    return (kl_estimate(logp, ref_logp, estimator) * mask).sum(-1)


def kl_penalized_rewards(
    rewards: torch.Tensor,  # [P, G] final rewards from the reward side
    kl_sums: torch.Tensor,  # [P * G] each sample's `sequence_kl`, group-major
    kl_coef: float,
) -> torch.Tensor:  # [P, G]
    """The KL penalty in the reward, as PPO for language models applies it (DeepSeekMath sec.
    4.1.1: r - beta log(pi / pi_ref) per token, with the outcome reward on the last):
    r_i - kl_coef x the summed KL of sample i. GRPO itself puts the KL in the loss instead
    (`policy_loss`'s `ref_logp`); `algorithm.kl_in` chooses."""
    return rewards - kl_coef * kl_sums.view_as(rewards)


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
