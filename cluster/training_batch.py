"""One step's training batch: a stream of groups from the engines, each scored and shaped as it
finishes, and (DAPO dynamic sampling) more prompts until enough groups carry a learning signal.

Guarantees: the returned batch always has exactly `rollout.prompts_per_step` groups. Without
dynamic sampling they are the next prompts_per_step prompts. With it, prompts keep going out
(at most `max_generation_rounds` * prompts_per_step) until, in prompt order, the first k groups
hold prompts_per_step informative ones; the groups still running are then aborted, and only
those first k count as generated, so the batch and the data position do not depend on which
group finished first. Group k of step s is seeded from (trainer.seed, s, k): a step's samples
are a function of the seed and the weights, however the engines shared the work. The reward
pool scores groups while others still generate; the failure rate is checked once over the
step's generated groups. Reward metrics are computed over every generated sample, so
`reward/mean` stays an unbiased measure of the policy whether or not groups were dropped.
Not covered: overlapping steps (`cluster/overlap.py` runs a whole batch ahead instead).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from itertools import islice

from cluster.data import PromptStream
from cluster.metrics import PhaseTimer
from core.config import Config
from core.records import Group, Score, ScoredGroup
from reward.shaping import is_informative, select_groups, shape
from rollout.stream import group_seed


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
    """Generate and score `prompts_per_step` groups (more with dynamic sampling), scoring
    each group while the others generate. Adds `time/generate` (first request to last group),
    `time/reward` (the reward pool's busy time) and `time/reward_exposed` (scoring after the
    last group, not hidden behind generation) to `timer`."""
    a, r = cfg.algorithm, cfg.rollout
    wanted = r.prompts_per_step
    budget = wanted * (a.max_generation_rounds if a.dynamic_sampling else 1)
    step_seed = cfg.trainer.seed * 1_000_003 + step
    groups = rollout.stream(
        islice(stream.upcoming(), budget),
        rollout.sampling(r.group_size),
        seed_of=lambda key: group_seed(step_seed, key),
        max_in_flight=r.max_groups_in_flight or wanted,
    )
    scorer = Scorer(rewards)
    shaped: dict[int, ScoredGroup] = {}

    def collect(results) -> int | None:
        for key, group, scores in results:
            [shaped[key]] = shape(
                [group], [scores], r.max_new_tokens, a.overlong_buffer, a.overlong_factor
            )
        return enough_informative(shaped, wanted) if a.dynamic_sampling else None

    t0 = time.perf_counter()
    cut = None
    received = 0
    try:
        for key, group in groups:
            received += 1
            scorer.put(key, group)
            cut = collect(scorer.ready())
            if cut is not None:
                break
    finally:
        groups.close()  # aborts what still runs (dynamic sampling has enough)
    t_generated = time.perf_counter()
    cut = collect(scorer.finish(above=cut))
    timer.seconds["generate"] = t_generated - t0
    timer.seconds["reward"] = scorer.busy_s
    timer.seconds["reward_exposed"] = time.perf_counter() - t_generated

    used = len(shaped) if cut is None else cut + 1
    generated = [shaped[k] for k in range(used)]
    stream.advance(used)
    rewards.account([sg.group for sg in generated], [sg.scores for sg in generated])
    kept = generated
    metrics = groups.metrics() | {"rollout/groups_sampled": float(used)}
    # finished after the cut, whether or not the scorer got to them before it was told the cut
    metrics["engine/groups_aborted"] += received - used
    if a.dynamic_sampling:
        informative = [is_informative(sg) for sg in generated]
        keep = select_groups(informative, wanted)
        kept = [generated[i] for i in keep]
        metrics["rollout/informative_frac"] = sum(informative) / len(informative)
        metrics["rollout/kept_uninformative"] = float(sum(not informative[i] for i in keep))
    if a.overlong_buffer:
        flat = [p for sg in kept for p in sg.penalties]
        metrics["reward/overlong_penalty"] = sum(flat) / len(flat)
    return TrainingBatch(scored=kept, generated=generated, metrics=metrics)


def enough_informative(shaped: dict[int, ScoredGroup], wanted: int) -> int | None:
    """The smallest k such that groups 0..k are all scored and `wanted` of them are
    informative; None if there is none yet."""
    informative = 0
    for key in range(len(shaped)):
        if key not in shaped:
            return None
        informative += is_informative(shaped[key])
        if informative >= wanted:
            return key
    return None


class Scorer:
    """Scores groups in a background thread as they are `put`, several at a time when they
    arrive while the reward pool is busy."""

    def __init__(self, rewards):
        self.rewards = rewards
        self.todo: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.busy_s = 0.0
        self.error: BaseException | None = None
        self.above: int | None = None
        self.thread = threading.Thread(target=self._loop, name="cohort-score", daemon=True)
        self.thread.start()

    def put(self, key: int, group: Group) -> None:
        self.todo.put((key, group))

    def ready(self) -> list[tuple[int, Group, list[Score]]]:
        """The groups scored since the last call (raises what the scoring raised)."""
        if self.error:
            raise self.error
        out = []
        while not self.done.empty():
            out.append(self.done.get())
        return out

    def finish(self, above: int | None = None) -> list[tuple[int, Group, list[Score]]]:
        """Wait for the groups put so far (skipping keys above `above`) and return the rest
        of the results."""
        self.above = above
        self.todo.put(None)
        self.thread.join()
        return self.ready()

    def _loop(self) -> None:
        stop = False
        while not stop:
            items = [self.todo.get()]
            while not self.todo.empty():
                items.append(self.todo.get())
            stop = items[-1] is None
            items = [it for it in items if it is not None]
            if self.above is not None:
                items = [it for it in items if it[0] <= self.above]
            if not items or self.error:
                continue
            t0 = time.perf_counter()
            try:
                scores = self.rewards.score_only([g for _, g in items])
            except BaseException as e:  # re-raised in the driver's thread
                self.error = e
                continue
            finally:
                self.busy_s += time.perf_counter() - t0
            for (key, group), row in zip(items, scores):
                self.done.put((key, group, row))
