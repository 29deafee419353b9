"""One step's training batch: generate, score, shape rewards, and (DAPO dynamic sampling) keep
generating until enough groups carry a learning signal.

Guarantees: the returned batch always has exactly `rollout.prompts_per_step` groups; without
dynamic sampling it is one generation round, the same as generate-then-score; with it, at most
`algorithm.max_generation_rounds` rounds, informative groups first (see `reward/shaping.py`).
Reward metrics are computed over every generated sample, so `reward/mean` stays an unbiased
measure of the policy whether or not groups were dropped. Not covered: overlapping rounds with
training (`cluster/overlap.py` runs a whole batch ahead instead).
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.data import PromptStream
from cluster.metrics import PhaseTimer
from core.config import Config
from core.records import Group, Score, ScoredGroup
from reward.shaping import is_informative, select_groups, shape


@dataclass
class TrainingBatch:
    scored: list[ScoredGroup]
    """The groups to train on ([P]) with their scores and final rewards."""
    generated: list[ScoredGroup]
    """Every group generated this step, kept or not (for metrics)."""
    metrics: dict[str, float]
    """Generation rounds, dynamic sampling and overlong statistics."""

    @property
    def groups(self) -> list[Group]:
        return [sg.group for sg in self.scored]

    @property
    def generated_groups(self) -> list[Group]:
        return [sg.group for sg in self.generated]

    @property
    def generated_scores(self) -> list[list[Score]]:
        return [sg.scores for sg in self.generated]


def sample_batch(
    cfg: Config, stream: PromptStream, rollout, rewards, timer: PhaseTimer, step: int = 0
) -> TrainingBatch:
    """Generate and score `prompts_per_step` groups, more rounds with dynamic sampling. Each
    round's sampling is seeded from (trainer.seed, step, round)."""
    a, r = cfg.algorithm, cfg.rollout
    rounds = a.max_generation_rounds if a.dynamic_sampling else 1
    generated: list[ScoredGroup] = []
    done_rounds = 0
    while done_rounds < rounds:
        done_rounds += 1
        prompts = stream.next_batch(r.prompts_per_step)
        with timer("generate"):
            seed = cfg.trainer.seed * 1_000_003 + step * 101 + done_rounds
            groups = rollout.generate(prompts, n=r.group_size, seed=seed)
        with timer("reward"):
            scores = rewards.score(groups)
        generated += shape(groups, scores, r.max_new_tokens, a.overlong_buffer, a.overlong_factor)
        informative = [is_informative(sg) for sg in generated]
        if not a.dynamic_sampling or sum(informative) >= r.prompts_per_step:
            break
    kept = generated
    metrics = {"rollout/generation_rounds": float(done_rounds)}
    if a.dynamic_sampling:
        keep = select_groups(informative, r.prompts_per_step)
        kept = [generated[i] for i in keep]
        metrics["rollout/informative_frac"] = sum(informative) / len(informative)
        metrics["rollout/kept_uninformative"] = float(sum(not informative[i] for i in keep))
    if a.overlong_buffer:
        flat = [p for sg in kept for p in sg.penalties]
        metrics["reward/overlong_penalty"] = sum(flat) / len(flat)
    return TrainingBatch(scored=kept, generated=generated, metrics=metrics)
