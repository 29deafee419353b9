"""From reward scores to the rewards the learner trains on: DAPO's soft overlong punishment and
dynamic sampling's choice of groups (DAPO, arXiv:2503.14476, sec. 3.2 and 3.4).

Guarantees: plain Python on lists (no tensors, no Ray); scores are never modified, shaped
rewards are new lists; `select_groups` always returns exactly the number of groups asked for
when enough were generated, informative groups first in generation order. Not covered: the
generation rounds themselves (the driver loops; this module decides).
"""

from __future__ import annotations

from dataclasses import dataclass


def overlong_penalty(length: int, max_tokens: int, buffer: int, factor: float) -> float:
    """DAPO's soft overlong punishment (eq. 13), scaled by `factor`: 0 up to
    `max_tokens - buffer` tokens, then falling linearly to -factor at `max_tokens`, and
    -factor beyond. `buffer` 0 turns it off."""
    if buffer <= 0:
        return 0.0
    start = max_tokens - buffer
    if length <= start:
        return 0.0
    if length <= max_tokens:
        return factor * (start - length) / buffer
    return -factor


@dataclass
class ShapedBatch:
    """A step's rewards as the learner sees them, nested like the groups ([P][G])."""

    rewards: list[list[float]]
    """Score reward plus the overlong penalty."""
    valid: list[list[bool]]
    """False where the sample's reward failed and `reward.on_failure` is `exclude`."""
    penalties: list[list[float]]
    """The overlong penalty alone (0 when off)."""


def shape_rewards(
    lengths: list[list[int]],  # [P][G] completion tokens
    scores: list[list],  # [P][G] `reward.scoring.Score`
    max_tokens: int,
    overlong_buffer: int,
    overlong_factor: float,
) -> ShapedBatch:
    """Add the overlong penalty to each kept sample's reward; excluded samples stay 0."""
    penalties = [
        [0.0 if s.excluded else overlong_penalty(n, max_tokens, overlong_buffer, overlong_factor)
         for n, s in zip(row_n, row_s, strict=True)]
        for row_n, row_s in zip(lengths, scores, strict=True)
    ]  # fmt: skip
    rewards = [
        [s.reward + p for s, p in zip(row_s, row_p, strict=True)]
        for row_s, row_p in zip(scores, penalties, strict=True)
    ]
    valid = [[not s.excluded for s in row] for row in scores]
    return ShapedBatch(rewards, valid, penalties)


def is_informative(rewards: list[float], valid: list[bool]) -> bool:
    """A group carries a policy-gradient signal: at least two valid samples with different
    rewards. (Zero-variance groups get advantage 0 under every estimator.)"""
    kept = [r for r, v in zip(rewards, valid, strict=True) if v]
    return len(kept) >= 2 and max(kept) > min(kept)


def select_groups(informative: list[bool], wanted: int) -> list[int]:
    """Indices of `wanted` groups: the informative ones in order, then, when there are too few
    after the last generation round, uninformative ones in order to keep the batch full (they
    add no policy gradient, only KL and entropy terms)."""
    chosen = [i for i, ok in enumerate(informative) if ok][:wanted]
    filler = [i for i, ok in enumerate(informative) if not ok]
    return sorted(chosen + filler[: wanted - len(chosen)])
