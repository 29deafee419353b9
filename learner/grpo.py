"""The GRPO math as pure tensor functions (DeepSeekMath, arXiv:2402.03300, section 4.1).

Guarantees: no Ray, DeepSpeed or config imports; every function takes tensors and returns
tensors, with shapes in comments; masked positions never contribute to a sum, a mean or a
gradient. Not covered here: how a batch is split across micro-batches and ranks (the learner
keeps every micro-batch the same size so that the mean of micro-batch means is the batch mean).

Shapes: B = sequences in a micro-batch, T = positions (completion tokens are masked in),
P = prompts, G = samples per prompt, V = vocabulary.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1; an all-masked row gives 0, not NaN."""
    mask = mask.to(x.dtype)
    total = (x * mask).sum() if dim is None else (x * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def group_advantages(
    rewards: torch.Tensor,  # [P, G]
    valid: torch.Tensor,  # [P, G] 1 = use this sample, 0 = its reward failed
    eps: float = 1e-6,
) -> torch.Tensor:  # [P, G]
    """A_i = (r_i - mean(r)) / (std(r) + eps) within each prompt's group (GRPO outcome
    supervision, eq. in section 4.1.2). Mean and std are taken over the group's valid samples;
    std is the sample std (Bessel-corrected, as `torch.std` in TRL and veRL). Invalid samples,
    groups with fewer than two valid samples, and groups whose rewards are all equal get
    advantage 0: they carry no learning signal."""
    valid = valid.to(rewards.dtype)
    count = valid.sum(dim=1, keepdim=True)  # [P, 1]
    mean = (rewards * valid).sum(dim=1, keepdim=True) / count.clamp(min=1)  # [P, 1]
    sq_dev = ((rewards - mean) * valid) ** 2  # [P, G]
    std = (sq_dev.sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # [P, 1]
    signal = (count > 1) & (std > 0)  # [P, 1]
    scaled = (rewards - mean) / torch.where(signal, std + eps, 1.0)  # [P, G]
    return torch.where(signal, scaled, 0.0) * valid  # [P, G]


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


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate k3 = exp(q - p) - (q - p) - 1 with p = log pi,
    q = log pi_ref: unbiased, always >= 0 (Schulman, "Approximating KL divergence", 2020;
    GRPO eq. 4). Shapes [B, T] -> [B, T]."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def clipped_surrogate(
    logp: torch.Tensor,  # [B, T] current policy
    old_logp: torch.Tensor,  # [B, T] policy that generated the batch (detached)
    advantages: torch.Tensor,  # [B] one advantage per sequence
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # loss [B, T], clipped [B, T] (bool)
    """PPO's clipped objective per token, as a loss to minimise:
    -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), ratio = pi / pi_old.
    `clipped` marks tokens where the clipped term was the smaller one (no gradient flows)."""
    ratio = torch.exp(logp - old_logp)  # [B, T]
    adv = advantages.unsqueeze(-1)  # [B, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def grpo_loss(
    logp: torch.Tensor,  # [B, T]
    old_logp: torch.Tensor,  # [B, T]
    ref_logp: torch.Tensor | None,  # [B, T] or None when kl_coef == 0
    advantages: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, T] 1 on completion tokens of valid samples
    clip_low: float,
    clip_high: float,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO objective (eq. 3) as a loss: per-token clipped surrogate plus kl_coef * k3 KL,
    averaged over each sequence's tokens, then over sequences (1/G sum_i 1/|o_i| sum_t)."""
    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, clip_low, clip_high)
    stats = {"clip_frac": masked_mean(clipped.float(), mask).detach()}
    if ref_logp is not None and kl_coef > 0:
        kl = k3_kl(logp, ref_logp)  # [B, T]
        per_token = per_token + kl_coef * kl
        stats["kl"] = masked_mean(kl, mask).detach()
    per_seq = masked_mean(per_token, mask, dim=-1)  # [B]
    loss = per_seq.mean()
    return loss, stats
