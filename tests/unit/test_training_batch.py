"""`sample_batch`: one stream of groups per step, scored as they finish, and DAPO dynamic
sampling on the stream, with stand-in pools that finish groups newest first (the real pools are
exercised by tests/integration/test_stream.py and the end-to-end tests)."""

import random
import threading
import time

import pytest

from cluster.data import PromptStream
from cluster.metrics import PhaseTimer
from cluster.training_batch import sample_batch
from core.config import load_config
from core.records import Group, Prompt, Sample
from reward.scoring import Score
from rollout.stream import group_seed
from tests.unit.fake_pools import FakeRewardsBase, FakeStreamRollout


def make_group(prompt, n, seed):
    """G completions of 3 tokens ('stop') or, sample 0, 16 ('length'); the seed in the text."""
    return Group(prompt, [Sample([1] * (16 if j == 0 else 3), str(seed), [0.0],
                                 "stop" if j else "length", 0) for j in range(n)])  # fmt: skip


class FakeRewards(FakeRewardsBase):
    """Prompts whose id ends in an even digit: all samples score 1 (no spread); odd: 0, 1, ..."""

    def __init__(self):
        super().__init__()
        self.scored: list[str] = []

    def score_only(self, groups):
        self.scored += [g.prompt.id for g in groups]
        return [
            [Score(1.0 if int(g.prompt.id[-1]) % 2 == 0 else float(j % 2), {})
             for j, _ in enumerate(g.samples)]
            for g in groups
        ]  # fmt: skip


def setup(*overrides):
    cfg = load_config("configs/smoke.yaml", ["rollout.prompts_per_step=4", "rollout.group_size=4",
                                             "learner.micro_batch_size=4", *overrides])  # fmt: skip
    prompts = [Prompt(f"train:{i}", "q", [1]) for i in range(10)]
    return cfg, PromptStream(prompts, seed=0, shuffle=False), FakeStreamRollout(make_group)


def with_jitter(fn, seed):
    """`fn` after a sleep of 0 to 2 ms, drawn from its own seeded generator."""
    rng = random.Random(seed)

    def slow(*args):
        time.sleep(rng.random() / 500)
        return fn(*args)

    return slow


def ids(groups):
    return [g.prompt.id for g in groups]


def test_without_dynamic_sampling_one_stream_keeps_everything_in_prompt_order():
    cfg, stream, rollout = setup()
    rewards = FakeRewards()
    batch = sample_batch(cfg, stream, rollout, rewards, PhaseTimer(), step=3)
    assert len(rollout.streams) == 1 and ids(batch.groups) == [f"train:{i}" for i in range(4)]
    assert batch.metrics["rollout/groups_sampled"] == 4
    assert stream.next_batch(1)[0].id == "train:4"  # the stream moved by what was used
    assert rewards.accounted == [batch.generated_groups]  # failure rate checked once per step
    # group k of step 3 is seeded from (trainer.seed, 3, k), whatever order it finished in
    step_seed = cfg.trainer.seed * 1_000_003 + 3
    assert [g.samples[0].text for g in batch.groups] == [
        str(group_seed(step_seed, k)) for k in range(4)
    ]


def test_dynamic_sampling_generates_until_enough_groups_have_spread():
    cfg, stream, rollout = setup("algorithm.dynamic_sampling=true",
                                 "algorithm.max_generation_rounds=5")  # fmt: skip
    batch = sample_batch(cfg, stream, rollout, FakeRewards(), PhaseTimer())
    # prompts 1, 3, 5, 7 are the first four informative ones: 0..7 were needed, 8.. were not
    assert ids(batch.groups) == ["train:1", "train:3", "train:5", "train:7"]
    assert ids(batch.generated_groups) == [f"train:{i}" for i in range(8)]
    assert batch.metrics["rollout/groups_sampled"] == 8
    assert batch.metrics["rollout/informative_frac"] == 0.5
    assert batch.metrics["rollout/kept_uninformative"] == 0
    assert stream.next_batch(1)[0].id == "train:8"


@pytest.mark.parametrize("in_flight", [1, 3, 20])
def test_dynamic_sampling_batch_does_not_depend_on_how_many_groups_run_at_once(in_flight):
    """Groups finish in a different order with each window, yet the same prompts are used and
    the same groups kept; what ran past the cut is aborted or dropped, and counted. Generation
    and scoring take a random millisecond or two, so groups past the cut are caught both scored
    and still waiting for the scorer."""
    cfg, stream, rollout = setup("algorithm.dynamic_sampling=true",
                                 "algorithm.max_generation_rounds=5",
                                 f"rollout.max_groups_in_flight={in_flight}")  # fmt: skip
    rollout.make_group = with_jitter(rollout.make_group, seed=in_flight)
    rewards = FakeRewards()
    rewards.score_only = with_jitter(rewards.score_only, seed=in_flight + 100)
    batch = sample_batch(cfg, stream, rollout, rewards, PhaseTimer())
    assert ids(batch.groups) == ["train:1", "train:3", "train:5", "train:7"]
    assert ids(batch.generated_groups) == [f"train:{i}" for i in range(8)]
    sent = rollout.streams[0].sent
    assert sent >= 8 and batch.metrics["engine/groups_aborted"] == sent - 8
    assert stream.next_batch(1)[0].id == "train:8"


def test_dynamic_sampling_fills_the_batch_when_the_prompt_budget_is_spent():
    cfg, stream, rollout = setup("algorithm.dynamic_sampling=true",
                                 "algorithm.max_generation_rounds=1")  # fmt: skip
    batch = sample_batch(cfg, stream, rollout, FakeRewards(), PhaseTimer())
    assert rollout.streams[0].sent == 4 and len(batch.groups) == 4
    assert ids(batch.groups) == ["train:0", "train:1", "train:2", "train:3"]
    assert batch.metrics["rollout/kept_uninformative"] == 2


def test_groups_are_scored_while_others_still_generate():
    """The last group is not generated until the reward pool has scored an earlier one."""
    cfg, stream, _ = setup()
    rewards = FakeRewards()
    first_scored = threading.Event()
    original = rewards.score_only

    def score_only(groups):
        out = original(groups)
        first_scored.set()
        return out

    rewards.score_only = score_only

    def slow_last(prompt, n, seed):
        if prompt.id == "train:0":  # finishes last (newest first)
            assert first_scored.wait(10), "no group reached the reward pool during generation"
        return make_group(prompt, n, seed)

    batch = sample_batch(cfg, stream, FakeStreamRollout(slow_last), rewards, PhaseTimer())
    assert len(batch.groups) == 4 and sorted(rewards.scored) == ids(batch.groups)


def test_overlong_penalty_reaches_the_learner_rewards_not_the_scores():
    cfg, stream, rollout = setup("algorithm.overlong_buffer=4", "algorithm.overlong_factor=0.5")
    batch = sample_batch(cfg, stream, rollout, FakeRewards(), PhaseTimer())
    # sample 0 of each group has 16 tokens = max_new_tokens: penalty -0.5; the others 3: none
    for sg in batch.scored:
        assert sg.rewards[0] == sg.scores[0].reward - 0.5
        assert sg.rewards[1:] == [s.reward for s in sg.scores[1:]]
    assert batch.metrics["reward/overlong_penalty"] == -0.5 / 4


def test_dynamic_sampling_filters_on_scores_not_on_the_length_penalty():
    # even prompts: every sample scores 1, but sample 0 is overlong (-0.5): shaped rewards
    # differ, yet the group says nothing about accuracy and must count as uninformative
    cfg, stream, rollout = setup("algorithm.dynamic_sampling=true",
                                 "algorithm.max_generation_rounds=5",
                                 "algorithm.overlong_buffer=4",
                                 "algorithm.overlong_factor=0.5")  # fmt: skip
    batch = sample_batch(cfg, stream, rollout, FakeRewards(), PhaseTimer())
    assert all(int(g.prompt.id[-1]) % 2 for g in batch.groups)
    assert batch.metrics["rollout/informative_frac"] < 1.0
