"""The stream of groups on real vLLM engines (two, on a tiny Llama, shared by the module):
dispatch by tokens in flight, groups out as they finish, aborts, and samples that depend only
on each group's seed and the weights, not on which engine ran the group or what ran beside it
(what keeps a resumed run bitwise equal to an uninterrupted one under dynamic dispatch)."""

import os
from pathlib import Path

import pytest
import ray
from transformers import AutoTokenizer

from cluster.multi_turn import start_python_tool
from core.config import EnvironmentConfig, load_config
from core.records import Prompt
from environments.base import Step
from environments.loading import environment_factory
from environments.tools import call_tool, python, set_python_runner
from learner.batch import collate, flatten
from rollout.pool import RolloutPool
from rollout.stream import group_seed
from rollout.turns import Conversations, Limits, ReplyRenderer
from tests.integration.conftest import serve_guess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engines(ray_local, tiny_model):
    cfg = load_config(
        "configs/smoke.yaml",
        [f"model.path={tiny_model}", "cluster.rollout_engines=2", "cluster.rollout_cpus=0.5"],
    )
    pool = RolloutPool(cfg, tiny_model, "stream")
    yield pool
    pool.shutdown()


def prompts(n: int, long_first: bool = False) -> list[Prompt]:
    """Short arithmetic-like prompts over the tiny model's character vocabulary; the first one
    60 tokens long with `long_first`."""
    out = [Prompt(f"p:{i}", "", [3 + (i * 7 + j) % 40 for j in range(6)]) for i in range(n)]
    if long_first:
        out[0] = Prompt("p:long", "", [3 + j % 40 for j in range(60)])
    return out


def samples_of(groups) -> list:
    """Everything a sample carries that the learner uses: tokens, log-probs, finish reason."""
    return [
        [(s.completion_token_ids, s.logprobs, s.finish_reason) for s in g.samples] for g in groups
    ]


def test_a_long_request_sends_the_next_ones_to_the_other_engine(engines):
    """Cost of a group = prompt tokens + n * max_tokens: 60 + 2 * 16 = 92 for the long one,
    6 + 32 = 38 for the others, so engine 1 takes groups until it holds more than engine 0.
    A dispatch by count would alternate."""
    stream = engines.stream(prompts(5, long_first=True), engines.sampling(2), max_in_flight=0)
    list(stream)
    assert stream.engine_of == {0: 0, 1: 1, 2: 1, 3: 1, 4: 0}


def test_groups_come_out_while_others_still_run(engines):
    stream = engines.stream(prompts(16), engines.sampling(4, max_tokens=16))
    in_flight_at_each_yield = [len(stream.owner) for _ in stream]
    assert len(in_flight_at_each_yield) == 16
    assert in_flight_at_each_yield[0] > 0, "the first group came out only after the last"
    m = stream.metrics()
    assert m["engine/0/tokens"] > 0 and m["engine/1/tokens"] > 0
    assert 0 < m["engine/0/busy_frac"] <= 1 and m["engine/groups_aborted"] == 0


def test_samples_depend_on_the_seed_not_on_the_dispatch(engines):
    """The same seeded groups, all at once over two engines, one at a time, and in reverse
    order: equal tokens and log-probabilities, bit for bit."""
    ps = prompts(8)
    sampling = engines.sampling(4, temperature=1.0, max_tokens=16)

    def run(order, max_in_flight):
        stream = engines.stream(
            [ps[i] for i in order], sampling, lambda k: group_seed(5, order[k]), max_in_flight
        )
        by_prompt = {order[k]: g for k, g in stream}
        return [by_prompt[i] for i in range(len(ps))], stream.engine_of

    together, where = run(list(range(8)), 0)
    alone, _ = run(list(range(8)), 1)
    backwards, where_back = run(list(range(7, -1, -1)), 0)
    assert samples_of(together) == samples_of(alone) == samples_of(backwards)
    assert {where[i] for i in range(8)} == {0, 1}  # both engines took part
    assert any(where[i] != where_back[7 - i] for i in range(8)), "same placement both times"
    different = run(list(range(8)), 0)[0]
    assert samples_of(different) == samples_of(together)
    other_seed = engines.stream(ps, sampling, lambda k: group_seed(6, k))
    assert samples_of([g for _, g in sorted(other_seed)]) != samples_of(together)


def test_closing_a_stream_aborts_what_runs_and_leaves_the_engines_idle(engines):
    sampling = engines.sampling(4, max_tokens=16)
    stream = engines.stream(prompts(12), sampling, max_in_flight=8)
    first = next(iter(stream))
    stream.close()
    assert first[1].samples and stream.metrics()["engine/groups_aborted"] > 0
    held = ray.get([a.run.remote([], [], 0.0) for a in engines.actors])
    assert [r.load for r in held] == [0, 0]  # nothing left in either engine
    # and the engines serve the next stream completely
    assert len(engines.generate(prompts(4), n=2, seed=1)) == 4


class ThreeTurns:
    """Replies `code <answer>`, then `again`, and is done after the third turn."""

    def reset(self, prompt, row):
        self.answer, self.turn = row["answer"], 0

    def step(self, action):
        self.turn += 1
        replies = {1: f"code {self.answer}", 2: "again"}
        if self.turn in replies:
            return Step([{"role": "user", "content": replies[self.turn]}])
        return Step(done=True)


def test_a_three_turn_trajectory_trains_on_the_ids_the_engine_saw_and_produced(engines, tiny_model):
    """Each turn's request is the trajectory's ids so far (prompt, earlier turns, replies) and
    its output is the next span; the engine's own log-probabilities of the whole trajectory,
    scored afterwards, equal the sampled ones at every generated token (the context it sampled
    from is the training sequence, never a decode-and-encode of it); each later turn ran on the
    engine of the group's first turn (its prefix cached there); seeded trajectories repeat."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    render = ReplyRenderer(tokenizer, None, {tokenizer.eos_token_id})
    made: list[Conversations] = []

    def conversations():
        made.append(Conversations(ThreeTurns, render, Limits(3, 256, 5.0), group_seed, True))
        return made[-1]

    prompt = Prompt(
        "p:0", "code?", tokenizer("<|user|>code?<|end|><|assistant|>")["input_ids"], "7"
    )
    engines.conversations = conversations
    try:
        sampling = engines.sampling(3, temperature=1.0, max_tokens=12)
        stream = engines.stream([prompt, prompt], sampling, lambda k: group_seed(9, k))
        groups = dict(stream)
        again = dict(engines.stream([prompt, prompt], sampling, lambda k: group_seed(9, k)))
    finally:
        engines.conversations = None
    assert samples_of(groups[k] for k in (0, 1)) == samples_of(again[k] for k in (0, 1))
    log = made[0].log
    for key, group in groups.items():
        for j, s in enumerate(group.samples):
            assert s.turns == 3 and s.finish_reason in ("stop", "length"), s.finish_reason
            turns = [(p, out) for k, jj, p, out in log if (k, jj) == (key, j)]
            assert len(turns) == 3
            generated = []
            for p, out in turns:
                start = len(p) - len(prompt.token_ids)
                assert p == prompt.token_ids + s.completion_token_ids[:start]
                assert s.completion_token_ids[start : start + len(out)] == out
                generated += range(start, start + len(out))
            assert [i for i, m in enumerate(s.loss_mask) if m] == generated
            # The engine scores the trajectory as it sampled it (temperature 1, float32).
            [scored, _] = engines.sequence_logprobs(prompt.token_ids, s.completion_token_ids)
            for i in generated:
                assert abs(scored[i] - s.logprobs[i]) < 1e-4, (key, j, i)
            row = collate(flatten([group], [[True] * 3])[j : j + 1], 0)
            assert row.input_ids[0].tolist() == prompt.token_ids + s.completion_token_ids
            assert row.mask[0].tolist() == s.loss_mask
        later = [k for k in stream.engine_of if isinstance(k, tuple) and k[0] == key]
        assert len(later) == 6 and {stream.engine_of[k] for k in later} == {stream.engine_of[key]}


def test_an_openenv_server_answers_trajectories_on_the_engines(engines, tiny_model, guess_file):
    """Trajectories on the real engines against OpenEnv's server: each one its own session
    (six at once), the observation's text in the context the next turn is sampled from, the
    steps' rewards summed into `env_reward`, every session closed when its trajectory ends."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    render = ReplyRenderer(tokenizer, None, {tokenizer.eos_token_id})
    ids = tokenizer("<|user|>guess?<|end|><|assistant|>")["input_ids"]
    prompt = Prompt("p:0", "guess?", ids, "7", fields={"target": "7"})
    with serve_guess(guess_file, sessions=6) as url:
        kwargs = {"base_url": url, "action_field": "guess", "reset_fields": ["target"]}
        make_env = environment_factory(
            EnvironmentConfig(name="openenv", kwargs=kwargs), None, Path()
        )
        limits = Limits(4, 256, 10.0)
        engines.conversations = lambda: Conversations(make_env, render, limits, group_seed)
        try:
            sampling = engines.sampling(3, temperature=1.0, max_tokens=6)
            groups = dict(engines.stream([prompt, prompt], sampling, lambda k: group_seed(5, k)))
        finally:
            engines.conversations = None
        for _ in range(6):  # every session was released: six more open, one after another
            env = make_env()
            env.reset("guess?", {"target": "7"})
            assert env.step("7").done
            env.close()
    for group in groups.values():
        for s in group.samples:
            # The tiny model never writes the digit alone: Guess hints until its third guess.
            replies = [m["content"] for m in s.messages if m["role"] == "user"]
            assert s.turns == 3 and len(replies) == 2 and set(replies) <= {"higher", "lower"}
            assert s.env_reward == pytest.approx(-0.3) and not s.tool_calls
            # The first reply's ids in the context: the hint as the template renders it (after
            # the end token that closes a turn cut at max_tokens).
            start = s.loss_mask.index(0)
            span = s.completion_token_ids[start : s.loss_mask.index(1, start)]
            hint = render([{"role": "user", "content": replies[0]}])
            assert span in (hint, [tokenizer.eos_token_id] + hint)


def test_the_python_tool_runs_in_its_own_actor(ray_local):
    """The driver's `python` tool sends programs to a Ray actor, which runs each confined."""
    cfg = load_config(
        "configs/smoke.yaml",
        [
            'rollout.environment={"name": "tools", "tools": ["python"], "tool_timeout_s": 3}',
            "reward.isolation=best_effort",
        ],
    )
    actor = start_python_tool(cfg)
    try:
        assert python(f"import os; print(os.getpid() != {os.getpid()})") == "True\n"
        reply, record = call_tool({"python": python}, "python", {"code": "while 1: pass"}, 3.0)
        assert record["outcome"] == "crash" and "ran past 2 s" in reply  # killed at its deadline
        reply, record = call_tool({"python": python}, "python", {"code": "x = 1\nprint(y)"}, 3.0)
        assert record["outcome"] == "crash" and reply.startswith("error: RuntimeError: the")
        assert reply.endswith(
            "File \"<completion>\", line 2, in <module>\nNameError: name 'y' is not defined"
        )
    finally:
        set_python_runner(None)
        ray.kill(actor)
