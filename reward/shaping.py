"""From reward scores to the rewards the learner trains on, in one place: DAPO's soft overlong
punishment and dynamic sampling's choice of groups (DAPO, arXiv:2503.14476, sec. 3.2 and 3.4).

Guarantees: plain Python on lists (no tensors, no Ray); scores are never modified, shaped
rewards are new lists in `ScoredGroup`s; `select_groups` always returns exactly the number of
groups asked for when enough were generated, informative groups first in generation order. What
needs the policy (a KL penalty in the reward) is the learner's (`learner/grpo.py`). Not covered:
the generation rounds themselves (`cluster/training_batch.py` loops; this module decides).
"""

from __future__ import annotations

from core.records import Group, Score, ScoredGroup


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


def shape(
    groups: list[Group],
    scores: list[list[Score]],  # [P][G]
    max_tokens: int,
    overlong_buffer: int,
    overlong_factor: float,
) -> list[ScoredGroup]:
    """Each group with its scores and the rewards the learner trains on: the score's reward
    plus the overlong penalty for kept samples; excluded samples stay 0 and invalid."""
    out = []
    for g, row in zip(groups, scores, strict=True):
        penalties = [
            0.0
            if s.excluded
            else overlong_penalty(
                len(x.completion_token_ids), max_tokens, overlong_buffer, overlong_factor
            )
            for x, s in zip(g.samples, row, strict=True)
        ]
        rewards = [s.reward + p for s, p in zip(row, penalties, strict=True)]
        out.append(ScoredGroup(g, list(row), rewards, [not s.excluded for s in row], penalties))
    return out


def is_informative(scored: ScoredGroup) -> bool:
    """A group carries a policy-gradient signal: at least two valid samples whose verifier
    scores differ. DAPO filters on the score, not on the length-shaped reward: a group that is
    all wrong (or all right) carries no accuracy signal whatever its lengths. (Zero-spread
    groups get advantage 0 under every estimator.)"""
    kept = [s.reward for s, v in zip(scored.scores, scored.valid, strict=True) if v]
    return len(kept) >= 2 and max(kept) > min(kept)


def select_groups(informative: list[bool], wanted: int) -> list[int]:
    """Indices of `wanted` groups: the informative ones in order, then, when there are too few
    after the last generation round, uninformative ones in order to keep the batch full (they
    add no policy gradient, only KL and entropy terms)."""
    chosen = [i for i, ok in enumerate(informative) if ok][:wanted]
    filler = [i for i, ok in enumerate(informative) if not ok]
    return sorted(chosen + filler[: wanted - len(chosen)])
