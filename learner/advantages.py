"""Advantage estimators: one scalar advantage per sample from the rewards of its group (step 3
of the objective; `learner/grpo.py` gives the whole reading order).

Guarantees: pure tensor functions (no Ray, DeepSpeed or config imports); every estimator takes
rewards and a validity mask of shape [P, G] (P prompts, G samples each) and returns [P, G];
invalid samples (a failed reward) get advantage 0 and never enter a mean or a std; a group with
fewer than two valid samples has no baseline and gets 0; a group whose valid rewards are all
equal gets exactly 0 from every estimator (before batch whitening). `ADVANTAGE_ESTIMATORS` maps
each name of `algorithm.advantage_estimator` (`core/choices.py`) to its function. Not covered:
per-token advantages (outcome rewards only); the KL penalty in the reward, which is subtracted
from the rewards before they get here (`grpo.kl_penalized_rewards`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.choices import STD_NORMALIZATIONS


def _group_stats(rewards: torch.Tensor, valid: torch.Tensor):
    """Per-group valid count [P, 1], mean [P, 1], sample std [P, 1] (Bessel-corrected) and
    whether the group has a learning signal [P, 1]: two or more valid samples whose rewards
    differ. The spread is decided exactly (max > min): the float mean of equal fractional
    rewards (0.1, 1/3) is off by an ulp, which would give the group a std of about 1e-8 and
    every sample the same-signed advantage."""
    count = valid.sum(dim=1, keepdim=True)  # [P, 1]
    mean = (rewards * valid).sum(dim=1, keepdim=True) / count.clamp(min=1)  # [P, 1]
    sq_dev = ((rewards - mean) * valid) ** 2  # [P, G]
    std = (sq_dev.sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # [P, 1]
    kept = valid > 0  # [P, G]
    high = torch.where(kept, rewards, -torch.inf).amax(dim=1, keepdim=True)  # [P, 1]
    low = torch.where(kept, rewards, torch.inf).amin(dim=1, keepdim=True)  # [P, 1]
    signal = (count > 1) & (high > low)  # [P, 1]
    return count, mean, std, signal


def _sample_std(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sample std (Bessel-corrected) of `values` where `valid` is 1, as a 0-dim tensor."""
    n = valid.sum()
    mean = (values * valid).sum() / n.clamp(min=1)
    return (((values - mean) * valid) ** 2).sum().div((n - 1).clamp(min=1)).sqrt()


def grpo_advantages(
    rewards: torch.Tensor,  # [P, G]
    valid: torch.Tensor,  # [P, G] 1 = use this sample, 0 = its reward failed
    eps: float = 1e-6,
    std_normalization: str = "group",
) -> torch.Tensor:  # [P, G]
    """GRPO outcome supervision (DeepSeekMath, arXiv:2402.03300, sec. 4.1.2):
    A_i = (r_i - mean(r_group)) / (std + eps), with std the sample std of the group's rewards
    (`group`, the paper), of the whole batch's rewards (`batch`, as TRL's scale_rewards="batch";
    Hu et al. argue it is less biased than the group std), or no division at all (`none`,
    Dr. GRPO). A group whose valid rewards are all equal gets exactly 0."""
    if std_normalization not in STD_NORMALIZATIONS:
        raise ValueError(f"std_normalization={std_normalization!r}: use {STD_NORMALIZATIONS}")
    valid = valid.to(rewards.dtype)
    _, mean, group_std, signal = _group_stats(rewards, valid)
    centered = torch.where(signal, rewards - mean, 0.0) * valid  # [P, G]
    if std_normalization == "group":
        return centered / torch.where(signal, group_std + eps, 1.0)
    if std_normalization == "batch":
        return centered / (_sample_std(rewards, valid) + eps)
    return centered


def dr_grpo_advantages(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (Liu et al., "Understanding R1-Zero-Like Training", arXiv:2503.20783):
    A_i = r_i - mean(r_group), no std division (it up-weights near-uniform groups)."""
    return grpo_advantages(rewards, valid, std_normalization="none")


def rloo_advantages(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al., arXiv:2402.14740): the baseline of sample i is the mean of the
    other samples of its group, A_i = r_i - (sum_j r_j - r_i) / (n - 1) = n / (n - 1) *
    (r_i - mean), with n the group's valid samples."""
    valid = valid.to(rewards.dtype)
    count, mean, _, signal = _group_stats(rewards, valid)  # [P, 1]
    scale = count / (count - 1).clamp(min=1)  # [P, 1]
    return torch.where(signal, scale * (rewards - mean), 0.0) * valid  # [P, G]


def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor, valid: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """REINFORCE++-baseline (Hu, arXiv:2501.03262): subtract the group mean, then whiten over
    the batch: A = (a - mean(a)) / (std(a) + eps) with a = r - mean(r_group), mean and sample
    std over the batch's valid samples. veRL whitens over tokens (each sample weighted by its
    length); Cohort whitens over samples. Groups with fewer than two valid samples enter the
    whitening with a = 0."""
    valid_f = valid.to(rewards.dtype)
    centered = dr_grpo_advantages(rewards, valid_f)  # [P, G]
    n = valid_f.sum().clamp(min=1)
    batch_mean = (centered * valid_f).sum() / n
    return (centered - batch_mean) / (_sample_std(centered, valid_f) + eps) * valid_f


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,
}


def compute_advantages(
    estimator: str,
    rewards: torch.Tensor,  # [P, G]
    valid: torch.Tensor,  # [P, G]
    eps: float = 1e-6,
    std_normalization: str = "group",
) -> torch.Tensor:  # [P, G]
    """Dispatch on `algorithm.advantage_estimator`; `std_normalization` applies to `grpo`."""
    if estimator == "grpo":
        return grpo_advantages(rewards, valid, eps, std_normalization)
    if estimator == "reinforce_pp_baseline":
        return reinforce_pp_baseline_advantages(rewards, valid, eps)
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"advantage estimator {estimator!r}: use {list(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[estimator](rewards, valid)
