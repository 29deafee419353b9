"""Tools and environments: the calculator, every outcome of a tool call, tool calls read by
vLLM's hermes parser, user environments loaded from the config, and tool failures logged and
limited."""

import json
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from cluster.multi_turn import log_tool_failures, multi_turn_metrics
from core.config import ConfigError, EnvironmentConfig, load_config
from core.errors import RunStopped
from core.records import Group, Prompt, Sample
from environments.base import EnvironmentError_, Step, as_step
from environments.loading import environment_factory, load_tools
from environments.tools import calculator, call_tool, python, schema, set_python_runner
from reward.code_exec import run_python


@pytest.mark.parametrize(
    ("expression", "value"),
    [("12 * 34", "408"), ("(1 + 2) ** 3 - 7 // 2", "24"), ("7 / 2", "3.5"), ("-4 % 3", "2")],
)
def test_calculator(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("__import__('os').system('id')", "not arithmetic"),
        ("9 ** 9 ** 9", "exponent"),
        ("10 ** 60 * 10 ** 60", "more than 100 digits"),
        ("x + 1", "not arithmetic"),
    ],
)
def test_calculator_refuses_code_and_huge_numbers(expression, error):
    with pytest.raises(ValueError, match=error):
        calculator(expression)


def slow(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "woke"


TOOLS = {"calculator": calculator, "slow": slow}


@pytest.mark.parametrize(
    ("name", "arguments", "outcome", "reply"),
    [
        ("calculator", '{"expression": "6 * 7"}', "ok", "42"),
        ("calculator", {"expression": "6 * 7"}, "ok", "42"),
        ("search", "{}", "unknown", "error: no tool named 'search'"),
        ("calculator", "{expression: 1}", "malformed", "error: arguments are not JSON"),
        ("calculator", "[1]", "malformed", "error: arguments must be a JSON object"),
        ("calculator", '{"expr": "1"}', "malformed", "error: calculator: "),
        ("calculator", '{"expression": "1 / 0"}', "crash", "error: ZeroDivisionError"),
        ("slow", '{"seconds": 2}', "timeout", "error: slow took longer than 0.3 s"),
    ],
)
def test_every_outcome_of_a_tool_call(name, arguments, outcome, reply):
    got, record = call_tool(TOOLS, name, arguments, timeout_s=0.3)
    assert got.startswith(reply)
    assert record["outcome"] == outcome and record["name"] == name
    assert record["input"] == arguments  # logged as the model wrote it
    assert (record["error"] == "") == (outcome == "ok")


def test_schema_comes_from_type_hints_and_docstring():
    s = schema(calculator)["function"]
    assert s["name"] == "calculator" and s["parameters"]["required"] == ["expression"]
    assert s["parameters"]["properties"]["expression"]["type"] == "string"


@pytest.fixture(scope="module")
def tools_env(tiny_model):
    cfg = EnvironmentConfig(name="tools", tools=["calculator"], tool_timeout_s=1.0)
    return environment_factory(cfg, AutoTokenizer.from_pretrained(tiny_model), Path.cwd())


def test_hermes_tool_calls_run_and_answer_as_tool_messages(tools_env):
    env = tools_env()
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>'
    step = env.step("let me compute " + call + call.replace("12*34", "2+2"))
    assert not step.done
    assert step.messages == [{"role": "tool", "content": "408"}, {"role": "tool", "content": "4"}]
    assert [c["outcome"] for c in step.tool_calls] == ["ok", "ok"]


def test_a_call_the_parser_cannot_read_is_malformed_and_the_trajectory_goes_on(tools_env):
    step = tools_env().step('<tool_call>{"name": calculator}</tool_call>')
    assert not step.done and step.messages[0]["content"].startswith("error:")
    [record] = step.tool_calls
    assert record["outcome"] == "malformed" and "calculator" in record["input"]


def test_calls_past_the_per_turn_limit_do_not_run(tmp_path, tiny_model):
    (tmp_path / "tick.py").write_text(
        "ran = []\n\n\ndef tick() -> str:\n"
        '    """Count a call."""\n    ran.append(1)\n    return str(len(ran))\n'
    )
    cfg = EnvironmentConfig(name="tools", tools=["tick.py:tick"], max_tool_calls_per_turn=2)
    env = environment_factory(cfg, AutoTokenizer.from_pretrained(tiny_model), tmp_path)()
    step = env.step('<tool_call>{"name": "tick", "arguments": {}}</tool_call>' * 5)
    assert [c["outcome"] for c in step.tool_calls] == ["ok"] * 2 + ["over_limit"] * 3
    assert [m["content"] for m in step.messages] == ["1", "2"] + [
        "error: at most 2 tool calls run per turn; this one did not run"
    ] * 3


def test_a_turn_without_a_call_ends_the_trajectory(tools_env):
    step = tools_env().step("the answer is 408")
    assert step.done and step.tool_calls == []


def test_a_user_environment_and_its_errors(tmp_path, tiny_model):
    (tmp_path / "envs.py").write_text(
        "class Echo:\n"
        "    def __init__(self, prefix='> '):\n"
        "        self.prefix = prefix\n"
        "    def step(self, action):\n"
        "        return self.prefix + action\n"
        "class Junk:\n"
        "    def step(self, action):\n"
        "        return 42\n"
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def make(**kw):
        return environment_factory(EnvironmentConfig(**kw), tokenizer, tmp_path)

    echo = make(fn="envs.py:Echo", kwargs={"prefix": "you said "})()
    echo.reset("p", {})  # optional in the class, always callable
    assert echo.step("hi").messages == [{"role": "user", "content": "you said hi"}]
    with pytest.raises(EnvironmentError_, match=r"Junk.step returned 42; return a Step"):
        make(fn="envs.py:Junk")().step("hi")
    with pytest.raises(ConfigError, match=r"rollout.environment.fn='envs.py:Nope'.*defines"):
        make(fn="envs.py:Nope")
    with pytest.raises(ConfigError, match=r"rollout.environment.kwargs=.*unexpected keyword"):
        make(fn="envs.py:Echo", kwargs={"colour": 1})
    with pytest.raises(ConfigError, match="no file"):
        make(fn="missing.py:Echo")


def test_tool_entries_are_checked(tmp_path):
    (tmp_path / "t.py").write_text("def bare(x):\n    return x\n")
    with pytest.raises(ConfigError, match=r"tools\[0\]='t.py:bare': cannot describe it"):
        load_tools(EnvironmentConfig(name="tools", tools=["t.py:bare"]), tmp_path)
    with pytest.raises(ConfigError, match=r"tools\[0\]='abacus': not a built-in tool"):
        load_tools(EnvironmentConfig(name="tools", tools=["abacus"]), tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.environment.name=gym", "the built-ins are `tools` and `openenv`"),
        ("rollout.environment.name=tools", "needs at least one tool"),
        ("rollout.environment.max_turns=0", "must be >= 1"),
        ("rollout.environment.max_tool_calls_per_turn=0", "max_tool_calls_per_turn.*must be >= 1"),
        ("rollout.environment.fn=envs", "path/to/file.py:ClassName"),
    ],
)
def test_environment_config_checks(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/smoke.yaml", [override])


def trajectory(outcomes: list[str], finish="stop", turns=2, name="calculator") -> Sample:
    calls = [{"name": name, "outcome": o, "input": "{}", "error": ""} for o in outcomes]
    return Sample([1, 2], "x", [0.0, 0.0], finish, 0, [1, 0], [], turns, calls)


def test_tool_failures_are_logged_with_their_input_and_stop_the_run_past_the_limit(tmp_path):
    cfg = load_config("configs/smoke.yaml", ["rollout.environment.max_tool_failure_rate=0.5"])
    prompt = Prompt("train:3", "q", [1])
    below = [Group(prompt, [trajectory(["ok", "crash"]) for _ in range(8)])]  # 8 of 16 failed
    log_tool_failures(cfg, tmp_path, 1, below)
    lines = [json.loads(x) for x in (tmp_path / "tool_failures.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and lines[0] == {
        "step": 1,
        "prompt_id": "train:3",
        "name": "calculator",
        "outcome": "crash",
        "input": "{}",
        "error": "",
    }
    above = [Group(prompt, [trajectory(["timeout", "malformed"]), trajectory(["ok"] * 15)])]
    log_tool_failures(cfg, tmp_path, 2, above)  # 2 of 17: goes on
    worse = [Group(prompt, [trajectory(["unknown", "crash"]) for _ in range(8)])]
    with pytest.raises(RunStopped, match="step 3: 16 of 16 tool calls failed"):
        log_tool_failures(cfg, tmp_path, 3, worse)


@pytest.mark.parametrize("reward", [float("nan"), float("inf"), "1", [1]])
def test_a_step_reward_that_is_not_a_finite_number_is_refused(reward):
    with pytest.raises(EnvironmentError_, match="reward` \\(a finite number or None"):
        as_step({"messages": [], "done": True, "reward": reward}, "Env")


def test_step_rewards_and_their_metric():
    assert as_step({"done": True, "reward": -0.5}, "Env") == Step(done=True, reward=-0.5)
    assert as_step(Step(reward=2), "Env").reward == 2
    samples = [trajectory([]), trajectory([]), trajectory([])]
    samples[0].env_reward, samples[1].env_reward = 1.0, 0.0  # the third's environment gave none
    assert (
        multi_turn_metrics([Group(Prompt("p", "", [1]), samples)])["multi_turn/env_reward_mean"]
        == 0.5
    )
    assert "multi_turn/env_reward_mean" not in multi_turn_metrics(
        [Group(Prompt("p", "", [1]), [trajectory([])])]
    )


def test_multi_turn_metrics():
    g = Group(
        Prompt("p", "", [1]),
        [
            trajectory(["ok", "timeout"]),
            trajectory([], "max_turns", 4),
            trajectory(["ok"], "length", 3),
        ],
    )
    m = multi_turn_metrics([g])
    assert m["multi_turn/turns_mean"] == 3 and m["multi_turn/turns_max"] == 4
    assert m["multi_turn/end_max_turns_frac"] == m["multi_turn/end_length_frac"] == 1 / 3
    assert m["tools/calls_per_trajectory"] == 1 and m["tools/failure_frac"] == 1 / 3
    assert m["tools/calculator/ok"] == 2 and m["tools/calculator/timeout"] == 1


def test_tool_names_the_model_made_up_do_not_become_metric_keys():
    made_up = [trajectory(["unknown"], name=f"tool_{i}") for i in range(50)]
    made_up += [trajectory(["over_limit"], name=f"other_{i}") for i in range(50)]
    m = multi_turn_metrics([Group(Prompt("p", "", [1]), made_up)])
    tool_keys = {k for k in m if k.startswith("tools/")}
    assert tool_keys == {
        "tools/calls_per_trajectory",
        "tools/failure_frac",
        "tools/unknown",
        "tools/over_limit",
    }
    assert m["tools/unknown"] == m["tools/over_limit"] == 50


def test_the_python_tool_runs_programs_in_a_confined_runner():
    run = lambda code, t=3.0: run_python(code, timeout_s=t, isolation="best_effort")  # noqa: E731
    assert run("print(6 * 7)") == "42\n"
    assert run("import os; print(os.getcwd().startswith('/tmp'), os.listdir('.'))") == "True []\n"
    with pytest.raises(RuntimeError, match="^the program ended with exit status 3$"):
        run("raise SystemExit(3)")
    with pytest.raises(RuntimeError) as error:  # the model reads its own traceback, nothing else
        run("import sys\nprint('so far')\n1 / 0")
    assert str(error.value) == (
        "the program ended with exit status 1; it printed:\nso far\nTraceback (most recent "
        'call last):\n  File "<completion>", line 3, in <module>\n'
        "ZeroDivisionError: division by zero"
    )
    with pytest.raises(RuntimeError, match="printed more than 16384 bytes$"):
        run("print('x' * 100000)")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="ran past 0.5 s"):
        run("while True: pass", 0.5)
    assert time.monotonic() - started < 3
    # What the model reads when it goes wrong, and the outcome counted.
    set_python_runner(lambda code: run(code, 1.0))
    try:
        reply, record = call_tool({"python": python}, "python", '{"code": "1/0"}', 5.0)
        assert record["outcome"] == "crash" and reply.startswith("error: RuntimeError")
        reply, record = call_tool({"python": python}, "python", '{"code": "print(2**10)"}', 5.0)
        assert (reply, record["outcome"]) == ("1024\n", "ok")
    finally:
        set_python_runner(None)
    with pytest.raises(RuntimeError, match="no executor"):
        python("print(1)")
