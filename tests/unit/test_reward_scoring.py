"""Scoring samples: failures of any kind, weighted sums, on_failure, metrics, loading functions."""

import math

import pytest

from core.config import ConfigError, RewardFunctionConfig
from core.pools import split_contiguous
from core.records import Group, Prompt, Sample
from reward.actor import RewardActor
from reward.functions import RewardFunction, load_reward_function, load_reward_functions
from reward.scoring import Score, reward_metrics, score_groups, score_sample


def sample(text: str) -> Sample:
    return Sample([], text, logprobs=[], finish_reason="stop", policy_version=0)


PROMPT = Prompt(id="train:0", text="What is 3 + 4?", token_ids=[1], answer="7", fields={"k": 1})


def length(completion, *, prompt, answer, row, scale=1.0):
    return scale * len(completion)


def raises(completion, *, prompt, answer, row):
    raise RuntimeError("boom")


def returns(value):
    return lambda completion, **_: value


def fn(name, f, weight=1.0, **kwargs) -> RewardFunction:
    return RewardFunction(name=name, weight=weight, kwargs=kwargs, fn=f)


def test_arguments_reach_the_function():
    seen = {}

    def spy(completion, *, prompt, answer, row, extra):
        seen.update(completion=completion, prompt=prompt, answer=answer, row=row, extra=extra)
        return 1

    score_sample([fn("spy", spy, extra="x")], PROMPT, sample("abc"), "exclude", 0.0)
    assert seen == {"completion": "abc", "prompt": "What is 3 + 4?", "answer": "7",
                    "row": {"k": 1}, "extra": "x"}  # fmt: skip


def test_the_environments_reward_reaches_functions_that_name_it():
    env = load_reward_functions([RewardFunctionConfig(name="environment_reward")], None)

    def batched(completions, *, prompts, answers, rows, env_rewards):
        return [2 * r for r in env_rewards]

    batched.batched = True
    functions = env + [fn("twice", batched)]
    rewarded = Sample([], "x", [], "stop", 0, messages=[{"role": "assistant"}], env_reward=0.75)
    s = score_sample(functions, PROMPT, rewarded, "exclude", 0.0)
    assert s.components == {"environment_reward": 0.75, "twice": 1.5} and s.reward == 2.25
    none = score_sample(env, PROMPT, sample("x"), "exclude", 0.0)  # no environment reward
    assert none.excluded and "gave this trajectory no reward" in none.errors["environment_reward"]


def test_weighted_sum():
    # 0.5 * len("abcd") * 2 (scale) + 2.0 * True = 0.5 * 8 + 2.0 * 1 = 6.0
    functions = [fn("length", length, 0.5, scale=2.0), fn("flag", returns(True), 2.0)]
    s = score_sample(functions, PROMPT, sample("abcd"), "exclude", 0.0)
    assert s == Score(reward=6.0, components={"length": 8.0, "flag": 1.0})


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (raises, "RuntimeError: boom"),
        (returns("1.0"), "TypeError: returned '1.0' (str), expected a number"),
        (returns(None), "TypeError: returned None (NoneType), expected a number"),
        (returns(math.nan), "ValueError: returned nan, expected a finite number"),
        (returns(-math.inf), "ValueError: returned -inf, expected a finite number"),
    ],
)
def test_failures_are_recorded_and_excluded(bad, error):
    functions = [fn("length", length), fn("bad", bad, 3.0)]
    s = score_sample(functions, PROMPT, sample("abc"), "exclude", 0.5)
    assert s.failed and s.excluded and s.reward == 0.0
    assert s.errors == {"bad": error}
    assert s.components["length"] == 3.0 and math.isnan(s.components["bad"])


def test_on_failure_score_keeps_the_sample():
    # length 3 * weight 1 + failure_score 0.5 * weight 3 = 3 + 1.5 = 4.5
    functions = [fn("length", length), fn("bad", raises, 3.0)]
    s = score_sample(functions, PROMPT, sample("abc"), "score", 0.5)
    assert s.failed and not s.excluded and s.reward == 4.5


def test_unknown_on_failure():
    with pytest.raises(ValueError, match="reward.on_failure='drop'"):
        score_sample([fn("length", length)], PROMPT, sample("a"), "drop", 0.0)


def test_groups_and_metrics():
    # "breaks" fails on completions that contain "x".
    def breaks(completion, **_):
        if "x" in completion:
            raise KeyError("x")
        return 1.0

    functions = [fn("length", length), fn("breaks", breaks, 10.0)]
    groups = [Group(PROMPT, [sample("a"), sample("xx")]), Group(PROMPT, [sample("abc")])]
    scores = score_groups(functions, groups, "exclude", 0.0)
    # rewards: "a" = 1 + 10 = 11, "xx" excluded (0.0), "abc" = 3 + 10 = 13
    assert [[s.reward for s in g] for g in scores] == [[11.0, 0.0], [13.0]]
    assert scores[0][1].errors == {"breaks": "KeyError: 'x'"}
    metrics = reward_metrics(scores, ["length", "breaks"])
    # kept rewards 11 and 13: mean 12, population std 1; length scored on all three: (1+2+3)/3
    # Call seconds are measured, so checked apart: every function has them, >= 0.
    seconds = {k: metrics.pop(k) for k in list(metrics) if k.startswith("time/")}
    assert sorted(seconds) == ["time/reward/breaks", "time/reward/length"]
    assert all(v >= 0 for v in seconds.values())
    no_failures = {f"failures/{kind}": 0.0 for kind in ("exception", "timeout", "crash", "invalid")}
    assert metrics == {
        "reward/mean": 12.0,
        "reward/std": 1.0,
        "reward/length/mean": 2.0,
        "reward/length/errors": 0.0,
        **{f"reward/length/{k}": v for k, v in no_failures.items()},
        "reward/breaks/mean": 1.0,
        "reward/breaks/errors": 1.0,
        **{f"reward/breaks/{k}": v for k, v in no_failures.items()},
        "reward/breaks/failures/exception": 1.0,
        "reward/errors": 1.0,
        "reward/excluded": 1.0,
        "reward/failure_rate": 1 / 3,
    }


def test_metrics_with_nothing_kept_are_nan():
    metrics = reward_metrics([[Score(0.0, {"f": math.nan}, True, True, {"f": "E: e"})]], ["f"])
    assert math.isnan(metrics["reward/mean"]) and math.isnan(metrics["reward/f/mean"])
    assert metrics["reward/excluded"] == 1.0


def test_load_builtin_and_unknown_name():
    loaded = load_reward_function(RewardFunctionConfig(name="math_answer"))
    assert loaded("7", prompt="", answer="7", row={}) == 1.0
    with pytest.raises(ConfigError, match=r"reward.functions\[2\].name='maths'.*math_answer"):
        load_reward_function(RewardFunctionConfig(name="maths"), key="reward.functions[2]")


def test_load_user_function_from_file(tmp_path):
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "mine.py").write_text(
        "LIMIT = 3\n"
        "def short(completion, *, prompt, answer, row, limit=LIMIT):\n"
        "    return float(len(completion) <= limit)\n"
    )
    cfg = RewardFunctionConfig(fn="rewards/mine.py:short", weight=2.0, kwargs={"limit": 1})
    [loaded] = load_reward_functions([cfg], base_dir=tmp_path)
    assert (loaded.name, loaded.weight, loaded.kwargs) == ("short", 2.0, {"limit": 1})
    # weight 2 * (len("ab") <= 1 = 0) = 0; weight 2 * (len("a") <= 1 = 1) = 2
    assert score_sample([loaded], PROMPT, sample("ab"), "exclude", 0.0).reward == 0.0
    assert score_sample([loaded], PROMPT, sample("a"), "exclude", 0.0).reward == 2.0
    absolute = RewardFunctionConfig(fn=f"{tmp_path}/rewards/mine.py:short")
    short = load_reward_function(absolute, base_dir=tmp_path / "elsewhere")
    assert short("ab", prompt="", answer="", row={}) == 1.0  # default limit 3


def test_load_errors_name_key_path_and_function(tmp_path):
    (tmp_path / "mine.py").write_text("VALUE = 3\ndef other(completion, **_):\n    return 1.0\n")
    missing = RewardFunctionConfig(fn="nope/missing.py:f")
    with pytest.raises(ConfigError) as e:
        load_reward_functions([RewardFunctionConfig(name="format"), missing], base_dir=tmp_path)
    assert "reward.functions[1].fn" in str(e.value)
    assert str(tmp_path / "nope" / "missing.py") in str(e.value)
    with pytest.raises(ConfigError, match="defines no `short`; its callables: other"):
        load_reward_function(RewardFunctionConfig(fn="mine.py:short"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="`VALUE` in .* is a int, not a function"):
        load_reward_function(RewardFunctionConfig(fn="mine.py:VALUE"), base_dir=tmp_path)
    (tmp_path / "broken.py").write_text("def f(:\n")
    with pytest.raises(ConfigError, match="importing .*broken.py failed: SyntaxError"):
        load_reward_function(RewardFunctionConfig(fn="broken.py:f"), base_dir=tmp_path)


def test_actor_class_in_process(tmp_path):
    # The actor rebuilds configs from plain dicts, as they arrive through Ray.
    actor = RewardActor([{"name": "math_answer", "weight": 2.0}], "exclude", 0.0, str(tmp_path))
    try:
        assert actor.function_names() == ["math_answer"]
        [[right, wrong]] = actor.score([Group(PROMPT, [sample("\\boxed{7}"), sample("8")])])
    finally:
        actor.close()
    assert (right.reward, wrong.reward) == (2.0, 0.0)


def test_split_contiguous():
    assert split_contiguous([1, 2, 3, 4, 5], 3) == [[1, 2], [3, 4], [5]]
    assert split_contiguous([1], 3) == [[1], [], []]
