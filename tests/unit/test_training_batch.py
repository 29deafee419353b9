"""`sample_batch`: generation rounds of DAPO dynamic sampling, with stand-in pools (the real
pools are exercised by the end-to-end tests)."""

from cluster.data import PromptStream
from cluster.metrics import PhaseTimer
from cluster.training_batch import sample_batch
from core.config import load_config
from core.records import Group, Prompt, Sample
from reward.scoring import Score


class FakeRollout:
    """Each prompt's group: G completions of 3 tokens ('stop') or 16 ('length')."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, n, seed=None):
        self.calls += 1
        return [
            Group(p, [Sample([1] * (16 if j == 0 else 3), p.id, [0.0], "stop" if j else "length",
                             0) for j in range(n)])
            for p in prompts
        ]  # fmt: skip


class FakeRewards:
    """Prompts whose id ends in an even digit: all samples score 1 (no spread); odd: 0, 1, ..."""

    def score(self, groups):
        return [
            [Score(1.0 if int(g.prompt.id[-1]) % 2 == 0 else float(j % 2), {})
             for j, _ in enumerate(g.samples)]
            for g in groups
        ]  # fmt: skip


def setup(*overrides):
    cfg = load_config("configs/smoke.yaml", ["rollout.prompts_per_step=4", "rollout.group_size=4",
                                             "learner.micro_batch_size=4", *overrides])  # fmt: skip
    prompts = [Prompt(f"train:{i}", "q", [1]) for i in range(10)]
    return cfg, PromptStream(prompts, seed=0), FakeRollout()


def test_without_dynamic_sampling_one_round_keeps_everything():
    cfg, stream, rollout = setup()
    batch = sample_batch(cfg, stream, rollout, FakeRewards(), PhaseTimer())
    assert rollout.calls == 1 and len(batch.groups) == 4
    assert batch.metrics["rollout/generation_rounds"] == 1.0


def test_dynamic_sampling_generates_until_enough_groups_have_spread():
    cfg, stream, rollout = setup("algorithm.dynamic_sampling=true",
                                 "algorithm.max_generation_rounds=5")  # fmt: skip
    batch = sample_batch(cfg, stream, rollout, FakeRewards(), PhaseTimer())
    odd = [g for g in batch.generated_groups if int(g.prompt.id[-1]) % 2]
    # half the prompts are informative, so 4 informative groups need at least 2 rounds
    assert rollout.calls == batch.metrics["rollout/generation_rounds"] >= 2
    assert len(odd) >= 4 and len(batch.groups) == 4
    assert all(int(g.prompt.id[-1]) % 2 for g in batch.groups)  # only informative groups kept
    assert batch.metrics["rollout/kept_uninformative"] == 0
    assert len(batch.scored) == 4


def test_dynamic_sampling_fills_the_batch_after_the_last_round():
    cfg, stream, rollout = setup("algorithm.dynamic_sampling=true",
                                 "algorithm.max_generation_rounds=1")  # fmt: skip
    batch = sample_batch(cfg, stream, rollout, FakeRewards(), PhaseTimer())
    informative = sum(int(g.prompt.id[-1]) % 2 for g in batch.groups)
    assert rollout.calls == 1 and len(batch.groups) == 4
    assert batch.metrics["rollout/kept_uninformative"] == 4 - informative


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
