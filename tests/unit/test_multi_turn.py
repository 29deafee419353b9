"""Multi-turn trajectories without engines: `rollout/turns.py` fed turns by hand, the reply
tokens of the chat template, and how each way a trajectory ends is recorded."""

import time

import pytest
from transformers import AutoTokenizer

from core.records import Group, GroupRequest, Prompt, Sample, Sampling
from environments.base import Step
from rollout.stream import group_seed
from rollout.turns import Conversations, Limits, ReplyRenderer


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def render(tokenizer):
    return ReplyRenderer(tokenizer, None, {tokenizer.eos_token_id})


class Reveal:
    """Replies `code <answer>` to the first turn and `again` to the second; done at the third."""

    def reset(self, prompt, row):
        self.answer, self.turn = row["answer"], 0

    def step(self, action):
        self.turn += 1
        text = {1: f"code {self.answer}", 2: "again"}.get(self.turn)
        return Step([{"role": "user", "content": text}]) if text else Step(done=True)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def turn(tokenizer, text: str, end: bool = True, version: int = 0) -> Sample:
    """A model turn as the engine returns it: its ids (with the end token), made-up log-probs."""
    out = ids(tokenizer, text) + [tokenizer.eos_token_id] * end
    return Sample(out, text, [-0.5] * len(out), "stop" if end else "length", version)


def drain(conv: Conversations) -> tuple[list, list]:
    """Every next-turn request and finished group once the environment steps are done."""
    requests, finished = [], []
    deadline = time.monotonic() + 10
    while conv.busy and time.monotonic() < deadline:
        conv.wait(0.1)
        r, f = conv.poll()
        requests += r
        finished += f
    assert not conv.busy
    return sorted(requests, key=lambda r: r[0].key), finished


LIMITS = Limits(4, 200, 5.0)


def start(tokenizer, env=Reveal, limits=LIMITS, n=2, seed=100):
    conv = Conversations(env, render_of(tokenizer), limits, group_seed, record=True)
    prompt = Prompt("train:0", "code?", ids(tokenizer, "<|user|>code?<|end|><|assistant|>"), "7")
    conv.sent(GroupRequest(0, prompt, Sampling(n, 1.0, 1.0, 8), seed))
    return conv, prompt


def render_of(tokenizer):
    return ReplyRenderer(tokenizer, None, {tokenizer.eos_token_id})


def test_reply_tokens_are_the_templates_rendering_after_a_turn(tokenizer, render):
    reply = render([{"role": "user", "content": "code 7"}])
    assert reply == ids(tokenizer, "<|user|>code 7<|end|><|assistant|>")
    assert render.end_of_turn == tokenizer.eos_token_id


def test_a_three_turn_trajectory_is_the_exact_ids_of_each_turn_and_reply(tokenizer, render):
    conv, prompt = start(tokenizer)
    t1 = [turn(tokenizer, "hi"), turn(tokenizer, "yo")]
    conv.add(0, Group(prompt, t1), engine=1)
    requests, finished = drain(conv)
    assert not finished and [r.key for r, _ in requests] == [(0, 0, 1), (0, 1, 1)]
    for j, (req, engine) in enumerate(requests):
        reply = render([{"role": "user", "content": "code 7"}])
        assert engine == 1  # the engine that holds the prefix
        assert req.prompt.token_ids == prompt.token_ids + t1[j].completion_token_ids + reply
        assert req.sampling == Sampling(1, 1.0, 1.0, 8) and req.seed == group_seed(100 + j, 1)
    t2 = {j: turn(tokenizer, f"a{j}") for j in range(2)}
    for j, (req, _) in enumerate(requests):
        conv.add(req.key, Group(req.prompt, [t2[j]]), engine=1)
    requests, finished = drain(conv)
    t3 = {j: turn(tokenizer, "7") for j in range(2)}
    for j, (req, _) in enumerate(requests):
        conv.add(req.key, Group(req.prompt, [t3[j]]), engine=0)
    _, finished = drain(conv)
    [(key, group)] = finished
    assert key == 0 and group.prompt is prompt
    again = render([{"role": "user", "content": "again"}])
    for j, s in enumerate(group.samples):
        r1 = render([{"role": "user", "content": "code 7"}])
        parts = [t1[j].completion_token_ids, r1, t2[j].completion_token_ids, again]
        parts.append(t3[j].completion_token_ids)
        assert s.completion_token_ids == [t for p in parts for t in p]
        assert s.loss_mask == [m for p, m in zip(parts, [1, 0, 1, 0, 1]) for _ in p]
        assert s.logprobs == [-0.5 if m else 0.0 for m in s.loss_mask]
        assert s.turns == 3 and s.finish_reason == "stop" and s.text == "7"
        assert [m["role"] for m in s.messages] == ["assistant", "user"] * 2 + ["assistant"]
    # What the engine was sent each turn is the trajectory's ids up to that turn.
    sample = group.samples[0]
    sent = [(p, out) for key, j, p, out in conv.log if (key, j) == (0, 0)]
    assert len(sent) == 3
    for p, out in sent:
        start_ = len(p) - len(prompt.token_ids)
        assert p == prompt.token_ids + sample.completion_token_ids[:start_]
        assert sample.completion_token_ids[start_ : start_ + len(out)] == out


def test_a_turn_cut_at_max_new_tokens_is_closed_and_answered(tokenizer, render):
    conv, prompt = start(tokenizer, n=1)
    cut = turn(tokenizer, "abcdefgh", end=False)
    conv.add(0, Group(prompt, [cut]), engine=0)
    [(req, _)], _ = drain(conv)
    reply = render([{"role": "user", "content": "code 7"}])
    closing = [tokenizer.eos_token_id]
    assert req.prompt.token_ids == prompt.token_ids + cut.completion_token_ids + closing + reply


@pytest.mark.parametrize(
    ("limits", "finish", "turns"),
    [(Limits(1, 200, 5.0), "max_turns", 1), (Limits(4, 19, 5.0), "length", 1)],
)
def test_limits_end_trajectories(tokenizer, limits, finish, turns):
    calls = []

    class Counting(Reveal):
        def step(self, action):
            calls.append(action)
            return super().step(action)

    conv, prompt = start(tokenizer, env=Counting, limits=limits, n=1)
    conv.add(0, Group(prompt, [turn(tokenizer, "hi")]), engine=0)
    _, [(_, group)] = drain(conv)
    [s] = group.samples
    assert (s.finish_reason, s.turns) == (finish, turns)
    assert sum(s.loss_mask) == len(s.completion_token_ids) == 3  # no reply was added
    assert calls == ["hi"]  # the environment sees the last turn too


def test_an_environment_that_raises_or_hangs_ends_its_trajectory_and_is_recorded(tokenizer):
    class Broken(Reveal):
        def step(self, action):
            if action == "slow":
                time.sleep(2)
            raise RuntimeError("no such room")

    conv, prompt = start(tokenizer, env=Broken, limits=Limits(4, 200, 0.5))
    conv.add(0, Group(prompt, [turn(tokenizer, "hi"), turn(tokenizer, "slow")]), engine=0)
    _, [(_, group)] = drain(conv)
    crash, timeout = (s.tool_calls for s in group.samples)
    assert crash == [
        {
            "name": "environment",
            "input": "hi",
            "outcome": "crash",
            "error": "RuntimeError: no such room",
        }
    ]
    assert timeout[0]["outcome"] == "timeout" and timeout[0]["input"] == "slow"
    assert all(s.finish_reason == "stop" and s.turns == 1 for s in group.samples)


def test_a_single_turn_trajectory_trains_on_every_token(tokenizer):
    class Done(Reveal):
        def step(self, action):
            return Step(done=True)

    conv, prompt = start(tokenizer, env=Done, n=1)
    conv.add(0, Group(prompt, [turn(tokenizer, "42")]), engine=0)
    _, [(_, group)] = drain(conv)
    [s] = group.samples
    assert s.loss_mask == [1, 1, 1] and s.turns == 1 and s.messages[0]["content"] == "42"


def test_step_rewards_add_up_and_each_environment_is_closed_once_when_its_trajectory_ends(
    tokenizer,
):
    closed = []

    class Scored(Reveal):
        def step(self, action):
            step = super().step(action)
            step.reward = 0.25 * self.turn if action != "none" else None
            return step

        def close(self):
            closed.append(self.turn)

    conv, prompt = start(tokenizer, env=Scored)
    conv.add(0, Group(prompt, [turn(tokenizer, "hi"), turn(tokenizer, "none")]), engine=0)
    requests, _ = drain(conv)
    assert closed == []  # both trajectories go on
    for req, _ in requests:
        conv.add(req.key, Group(req.prompt, [turn(tokenizer, "no end", end=False)]), engine=0)
    requests, _ = drain(conv)
    for req, _ in requests:
        conv.add(req.key, Group(req.prompt, [turn(tokenizer, "7")]), engine=0)
    _, [(_, group)] = drain(conv)
    # Steps 1-3 gave 0.25 + 0.5 + 0.75; the other trajectory's first step gave none.
    assert [s.env_reward for s in group.samples] == [1.5, 1.25]
    assert sorted(closed) == [3, 3]


def test_an_environment_whose_close_fails_is_recorded_not_raised(tokenizer):
    class Leaky(Reveal):
        def close(self):
            raise OSError("socket already closed")

    conv, prompt = start(tokenizer, env=Leaky, limits=Limits(1, 200, 5.0), n=1)
    conv.add(0, Group(prompt, [turn(tokenizer, "hi")]), engine=0)
    _, [(_, group)] = drain(conv)
    [s] = group.samples
    assert s.env_reward is None and s.finish_reason == "max_turns"
    assert s.tool_calls == [
        {
            "name": "environment",
            "input": "",
            "outcome": "crash",
            "error": "closing it failed: OSError: socket already closed",
        }
    ]
