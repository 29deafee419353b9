"""Multi-turn rollouts wired into a run: the engines' `Conversations`, and what a step reports
and logs of its trajectories and tool calls.

Guarantees: with `rollout.environment` set, every stream of the rollout pool (training and
evaluation) runs trajectories; each step logs turns, how trajectories ended and every tool call
by tool and outcome, appends each failed call with its input to `<run>/tool_failures.jsonl`,
and stops the run (`RunStopped`, exit code 3) when more than
`rollout.environment.max_tool_failure_rate` of at least `MIN_CALLS` calls failed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cluster.data import chat_template
from core.config import Config
from core.errors import RunStopped
from core.records import Group
from environments.loading import environment_factory
from environments.tools import set_python_runner
from rollout.stream import group_seed
from rollout.turns import Conversations, Limits, ReplyRenderer

MIN_CALLS = 16


def start_python_tool(cfg: Config):
    """When `python` is among the tools: the sandboxed executor (`reward/python_tool.py`) as a
    Ray actor, wired to the tool; returns the actor (None without the tool)."""
    env = cfg.rollout.environment
    if env.name != "tools" or "python" not in env.tools:
        set_python_runner(None)
        return None
    import ray

    from reward.python_tool import PythonToolActor

    actor = (
        ray.remote(PythonToolActor)
        .options(num_cpus=0)
        .remote(cfg.reward.isolation, cfg.reward.memory_limit_mb or 1024)
    )
    # Its own deadline ends before the tool call's, so the runner is killed, not abandoned.
    deadline = max(0.5, env.tool_timeout_s - 1.0)

    def run(code: str) -> str:
        result = ray.get(actor.run.remote(code, deadline))
        if "error" in result:
            raise RuntimeError(result["error"])
        return result["output"]

    set_python_runner(run)
    return actor


def end_token_ids(model_path: str, tokenizer) -> set[int]:
    """Ids that end a model turn: the tokenizer's end of sequence and the generation config's."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} - {None}
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    ids |= set(eos if isinstance(eos, list) else [eos]) - {None}
    return ids


def conversations_factory(
    cfg: Config, model_path: str, tokenizer, base_dir: Path
) -> Callable[[], Conversations] | None:
    """A new `Conversations` per stream when `rollout.environment` is set, else None."""
    env = cfg.rollout.environment
    if not env.enabled:
        return None
    make_env = environment_factory(env, tokenizer, base_dir)
    render = ReplyRenderer(tokenizer, chat_template(cfg.data), end_token_ids(model_path, tokenizer))
    # A tools step bounds each call itself (its calls run one after another); this is a backstop.
    if env.name == "tools":
        step_timeout = env.max_tool_calls_per_turn * env.tool_timeout_s + 5.0
    else:
        step_timeout = env.tool_timeout_s
    limits = Limits(env.max_turns, env.total_tokens(cfg), step_timeout)
    return lambda: Conversations(make_env, render, limits, group_seed)


def multi_turn_metrics(groups: list[Group]) -> dict[str, float]:
    """Turns, how trajectories ended, and tool calls by tool and outcome (`unknown` and
    `over_limit` calls counted by outcome alone: the model chose their names), over `groups`."""
    samples = [s for g in groups for s in g.samples]
    n = len(samples)
    ends = Counter(s.finish_reason for s in samples)
    calls = [c for s in samples for c in s.tool_calls]
    out = {
        "multi_turn/turns_mean": sum(s.turns for s in samples) / n,
        "multi_turn/turns_max": float(max(s.turns for s in samples)),
        "multi_turn/end_max_turns_frac": ends["max_turns"] / n,
        "multi_turn/end_length_frac": ends["length"] / n,
        "tools/calls_per_trajectory": len(calls) / n,
        "tools/failure_frac": sum(c["outcome"] != "ok" for c in calls) / max(1, len(calls)),
    }
    # Calls by outcome only where the name may be one the model made up (unknown, over_limit):
    # metric keys stay few; tool_failures.jsonl has the names.
    keys = Counter(
        f"tools/{c['outcome']}"
        if c["outcome"] in ("unknown", "over_limit")
        else f"tools/{c['name'] or 'unparsed'}/{c['outcome']}"
        for c in calls
    )
    out.update((key, float(count)) for key, count in keys.items())
    env_rewards = [s.env_reward for s in samples if s.env_reward is not None]
    if env_rewards:
        out["multi_turn/env_reward_mean"] = sum(env_rewards) / len(env_rewards)
    return out


def log_tool_failures(cfg: Config, run_dir: Path, step: int, groups: list[Group]) -> None:
    """Append the step's failed tool calls, with their input, to `<run>/tool_failures.jsonl`, and
    stop the run past the failure-rate limit."""
    calls = [(g.prompt.id, c) for g in groups for s in g.samples for c in s.tool_calls]
    failed = [(pid, c) for pid, c in calls if c["outcome"] != "ok"]
    if failed:
        with (run_dir / "tool_failures.jsonl").open("a") as f:
            for pid, c in failed:
                f.write(json.dumps({"step": step, "prompt_id": pid, **c}, default=str) + "\n")
    limit = cfg.rollout.environment.max_tool_failure_rate
    if len(calls) >= MIN_CALLS and len(failed) > limit * len(calls):
        kinds = Counter(c["outcome"] for _, c in failed)
        raise RunStopped(
            f"step {step}: {len(failed)} of {len(calls)} tool calls failed ({dict(kinds)}), more "
            f"than rollout.environment.max_tool_failure_rate={limit}; see "
            f"{run_dir / 'tool_failures.jsonl'} for each call and its input"
        )
