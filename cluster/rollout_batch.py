"""One step's training batch: generate, score, shape rewards, and (DAPO dynamic sampling) keep
generating until enough groups carry a learning signal.

Guarantees: the returned batch always has exactly `rollout.prompts_per_step` groups; without
dynamic sampling it is one generation round, the same as generate-then-score; with it, at most
`algorithm.max_generation_rounds` rounds, informative groups first (see `learner/shaping.py`).
Reward metrics are computed over every generated sample, so `reward/mean` stays an unbiased
measure of the policy whether or not groups were dropped. Not covered: overlapping rounds with
training (the speed issue).
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.data import PromptStream
from cluster.metrics import PhaseTimer
from core.config import Config
from core.records import Group
from learner.shaping import ShapedBatch, is_informative, select_groups, shape_rewards
from reward.scoring import Score


@dataclass
class TrainingBatch:
    groups: list[Group]
    """The groups to train on ([P])."""
    shaped: ShapedBatch
    """Their rewards and validity as the learner takes them."""
    generated_groups: list[Group]
    """Every group generated this step, kept or not (for metrics)."""
    generated_scores: list[list[Score]]
    """Their scores."""
    metrics: dict[str, float]
    """Generation rounds, dynamic sampling and overlong statistics."""


def sample_batch(
    cfg: Config, stream: PromptStream, rollout, rewards, timer: PhaseTimer, step: int = 0
) -> TrainingBatch:
    """Generate and score `prompts_per_step` groups, more rounds with dynamic sampling. Each
    round's sampling is seeded from (trainer.seed, step, round)."""
    a, r = cfg.algorithm, cfg.rollout
    rounds = a.max_generation_rounds if a.dynamic_sampling else 1
    groups: list[Group] = []
    scores: list[list[Score]] = []
    done_rounds = 0
    while done_rounds < rounds:
        done_rounds += 1
        prompts = stream.next_batch(r.prompts_per_step)
        with timer("generate"):
            seed = cfg.trainer.seed * 1_000_003 + step * 101 + done_rounds
            new_groups = rollout.generate(prompts, n=r.group_size, seed=seed)
        with timer("reward"):
            scores += rewards.score(new_groups)
        groups += new_groups
        shaped = shape(cfg, groups, scores)
        # DAPO filters on the verifier's score, not on the length-shaped reward: a group that is
        # all wrong (or all right) carries no accuracy signal whatever its lengths.
        informative = [is_informative([s.reward for s in row], valid)
                       for row, valid in zip(scores, shaped.valid)]  # fmt: skip
        if not a.dynamic_sampling or sum(informative) >= r.prompts_per_step:
            break
    keep = select_groups(informative, r.prompts_per_step) if a.dynamic_sampling else None
    if keep is not None:
        shaped = ShapedBatch(*([getattr(shaped, f)[i] for i in keep] for f in
                               ("rewards", "valid", "penalties")))  # fmt: skip
    metrics = {"rollout/generation_rounds": float(done_rounds)}
    if a.dynamic_sampling:
        metrics["rollout/informative_frac"] = sum(informative) / len(informative)
        metrics["rollout/kept_uninformative"] = float(sum(not informative[i] for i in keep))
    if a.overlong_buffer:
        flat = [p for row in shaped.penalties for p in row]
        metrics["reward/overlong_penalty"] = sum(flat) / len(flat)
    return TrainingBatch(
        groups=[groups[i] for i in keep] if keep is not None else groups,
        shaped=shaped,
        generated_groups=groups,
        generated_scores=scores,
        metrics=metrics,
    )


def shape(cfg: Config, groups: list[Group], scores: list[list[Score]]) -> ShapedBatch:
    """The learner's rewards for `groups`: scores plus the overlong penalty when configured."""
    lengths = [[len(s.completion_token_ids) for s in g.samples] for g in groups]
    a = cfg.algorithm
    return shape_rewards(
        lengths, scores, cfg.rollout.max_new_tokens, a.overlong_buffer, a.overlong_factor
    )
