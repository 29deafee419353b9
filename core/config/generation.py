"""Config sections `rollout` and `reward`: sampling with vLLM and scoring the samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from core.choices import ISOLATION_LEVELS, REWARD_ON_FAILURE
from core.config.checks import require, require_file_spec

if TYPE_CHECKING:
    from core.config.run import Config


@dataclass
class EnvironmentConfig:
    """Multi-turn rollouts: after each model turn an environment answers (a tool's result, a
    game's next state), and the trajectory goes on until the environment says it is done, the
    model answers without a tool call, `max_turns` or `max_total_tokens`."""

    name: str = ""
    """Built-in environment: `tools` (the model calls `tools` in the chat template's format,
    parsed by vLLM's `tool_parser`; the trajectory ends at a reply without a tool call), or
    `openenv` (an OpenEnv environment in this process or on a server, set by `kwargs`:
    docs/environments.md). Exclusive with `fn`; neither = single-turn rollouts."""
    fn: str = ""
    """A user environment class as `path/to/file.py:ClassName` (docs/environments.md)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the environment's constructor (one instance per trajectory); for
    `openenv`: `env` or `base_url`, `env_kwargs`, `action_field`, `observation_field`,
    `reset_fields`."""
    tools: list[str] = field(default_factory=list)
    """Tools of the `tools` environment: built-ins `calculator` or `python`, or user functions
    as `path/to/file.py:function` (type hints and a docstring give the JSON schema the model
    sees)."""
    tool_parser: str = "hermes"
    """vLLM tool parser that reads the model's tool calls (`hermes`: `<tool_call>{json}
    </tool_call>`, as Qwen2.5, Hermes and SmolLM3 write them; any name vLLM registers)."""
    max_turns: int = 4
    """Model turns per trajectory; a trajectory still going after them ends as `max_turns`."""
    max_total_tokens: int = 0
    """Prompt plus every turn and reply of a trajectory; the last turn is cut to fit, and a
    trajectory that reaches it ends as `length`. 0 = data.max_prompt_tokens + max_turns x
    rollout.max_new_tokens."""
    tool_timeout_s: float = 10.0
    """Wall-clock limit of one tool call (the model reads the `timeout` failure as the tool's
    reply), and of one step of a user or OpenEnv environment (past it the trajectory ends)."""
    max_tool_calls_per_turn: int = 4
    """Tool calls run per model turn; the ones after them are answered as `over_limit`
    failures without running, so one turn takes at most this many x tool_timeout_s."""
    max_tool_failure_rate: float = 1.0
    """Stop the run (exit code 3) when more than this fraction of a step's tool calls failed
    and there were at least 16; 1 = never (malformed calls are the model's to unlearn)."""

    @property
    def enabled(self) -> bool:
        return bool(self.name or self.fn)

    def check(self, cfg: Config) -> None:
        key = "rollout.environment"
        require(
            not (self.name and self.fn),
            key,
            {"name": self.name, "fn": self.fn},
            "give at most one of `name` (built-in) or `fn` (file.py:ClassName)",
        )
        require(
            self.name in ("", "tools", "openenv"),
            key + ".name",
            self.name,
            "the built-ins are `tools` and `openenv`",
        )
        if self.fn:
            require_file_spec(key + ".fn", self.fn, "ClassName")
        require(
            self.name != "tools" or bool(self.tools),
            key + ".tools",
            self.tools,
            "the `tools` environment needs at least one tool (calculator, python, file.py:fn)",
        )
        require(self.max_turns >= 1, key + ".max_turns", self.max_turns, "must be >= 1")
        require(
            not (self.enabled and cfg.algorithm.overlong_buffer),
            key,
            {"name": self.name, "fn": self.fn},
            "algorithm.overlong_buffer measures single completions; with an environment, bound "
            "trajectories with max_total_tokens and set algorithm.overlong_buffer=0",
        )
        require(
            self.max_total_tokens >= 0,
            key + ".max_total_tokens",
            self.max_total_tokens,
            "must be >= 0 (0 = prompt + max_turns x max_new_tokens)",
        )
        require(self.tool_timeout_s > 0, key + ".tool_timeout_s", self.tool_timeout_s, "> 0")
        require(
            self.max_tool_calls_per_turn >= 1,
            key + ".max_tool_calls_per_turn",
            self.max_tool_calls_per_turn,
            "must be >= 1",
        )
        require(
            0 < self.max_tool_failure_rate <= 1,
            key + ".max_tool_failure_rate",
            self.max_tool_failure_rate,
            "must be in (0, 1]; 1 never stops the run",
        )

    def total_tokens(self, cfg: Config) -> int:
        """`max_total_tokens` with 0 resolved."""
        return self.max_total_tokens or (
            cfg.data.max_prompt_tokens + self.max_turns * cfg.rollout.max_new_tokens
        )


@dataclass
class RolloutConfig:
    group_size: int = 8
    """G: responses sampled per prompt; the group's mean reward is the baseline."""
    prompts_per_step: int = 8
    """P: prompts per training step; a step trains on P * G samples."""
    max_new_tokens: int = 64
    """Longest completion; longer ones stop with finish reason `length`."""
    temperature: float = 1.0
    """Sampling temperature; the learner divides its logits by the same value."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off; below 1 the learner's ratio is only approximate)."""
    eval_max_new_tokens: int = 64
    """Longest completion at evaluation."""
    eval_temperature: float = 0.0
    """Sampling temperature at evaluation: 0 = greedy; above 0, `eval/accuracy` is pass@1 over
    `eval_samples` samples per prompt, seeded by trainer.seed (every evaluation of a run draws
    the same random numbers), for a policy whose greedy answer says little."""
    eval_samples: int = 1
    """Samples per held-out prompt when eval_temperature > 0."""
    max_groups_in_flight: int = 0
    """Groups generating at once across the engines; each finished group makes room for the
    next prompt, sent to the engine with the fewest tokens in flight. 0 = prompts_per_step
    (a step's prompts all start at once)."""
    kv_cache_gib: float = 1.0
    """KV cache per engine in GiB (CPU engines; sets VLLM_CPU_KVCACHE_SPACE)."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory a vLLM engine may take (GPU engines only)."""
    omp_threads_bind: str = "auto"
    """CPU cores the engine's OpenMP threads bind to (vLLM `VLLM_CPU_OMP_THREADS_BIND`):
    `auto` = the node's cores split into one block per engine; or a list such as `0-1`."""
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    """Multi-turn rollouts with tools or a user environment (off unless `name` or `fn`)."""

    def check(self, cfg: Config) -> None:
        self.environment.check(cfg)
        require(
            self.group_size >= 2,
            "rollout.group_size",
            self.group_size,
            "GRPO needs at least 2 per group",
        )
        require(
            self.prompts_per_step >= 1,
            "rollout.prompts_per_step",
            self.prompts_per_step,
            "must be >= 1",
        )
        require(
            self.max_new_tokens >= 1, "rollout.max_new_tokens", self.max_new_tokens, "must be >= 1"
        )
        require(
            self.temperature > 0,
            "rollout.temperature",
            self.temperature,
            "must be > 0 for training",
        )
        require(0 < self.top_p <= 1, "rollout.top_p", self.top_p, "must be in (0, 1]")
        require(
            self.eval_temperature >= 0,
            "rollout.eval_temperature",
            self.eval_temperature,
            "must be >= 0 (0 = greedy)",
        )
        require(self.eval_samples >= 1, "rollout.eval_samples", self.eval_samples, ">= 1")
        require(
            self.max_groups_in_flight >= 0,
            "rollout.max_groups_in_flight",
            self.max_groups_in_flight,
            "must be >= 0 (0 = prompts_per_step)",
        )


@dataclass
class RewardFunctionConfig:
    name: str = ""
    """A built-in reward function (`math_answer`, `exact_match`, `regex_match`, `format`,
    `length`, `code_tests`, `remote_rm`, `environment_reward`; see docs/rewards.md); exclusive
    with `fn`. The overlong penalty is `algorithm.overlong_buffer`."""
    fn: str = ""
    """A user function as `path/to/file.py:function_name`; exclusive with `name`."""
    weight: float = 1.0
    """Weight of this function in the summed reward."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the function on every call."""
    batched: bool = False
    """Call the function once per group with lists (`completions`, `prompts=`, `answers=`,
    `rows=`) instead of once per sample; it returns one value per completion."""
    range: list[float] = field(default_factory=list)
    """[low, high] its scores must lie in; a score outside is an `invalid` failure. Empty: the
    built-in's own range, or [-1e6, 1e6] for a user function."""
    network: bool = False
    """Let the function's sandbox worker open network connections (`remote_rm` and functions
    that call a service need it); off by default."""
    read_paths: list[str] = field(default_factory=list)
    """Files or folders the function's worker may read besides the Python installation and
    the import path (a word list, a small model); nothing else is readable."""
    env: list[str] = field(default_factory=list)
    """Environment variables the function's worker keeps (an API key for a service it calls);
    the others are removed, so a function never sees the run's secrets by default."""

    def check(self, key: str) -> None:
        """`key`: where this entry sits, `reward.functions[i]`."""
        require(
            bool(self.name) != bool(self.fn),
            key,
            {"name": self.name, "fn": self.fn},
            "give exactly one of `name` (built-in) or `fn` (file.py:function)",
        )
        if self.fn:
            require_file_spec(key + ".fn", self.fn, "function_name")
        require(
            not self.range or (len(self.range) == 2 and self.range[0] <= self.range[1]),
            key + ".range",
            self.range,
            "must be [low, high] with low <= high",
        )
        require(
            self.name != "remote_rm" or self.network,
            key + ".network",
            self.network,
            "remote_rm calls an HTTP reward model: set network: true to let its sandbox "
            "worker reach the network",
        )


def reward_function_name(fn: RewardFunctionConfig) -> str:
    """The name metrics use for a reward function: the built-in name or the user function's."""
    return fn.name or fn.fn.rsplit(":", 1)[-1]


@dataclass
class RewardConfig:
    functions: list[RewardFunctionConfig] = field(
        default_factory=lambda: [RewardFunctionConfig(name="math_answer")]
    )
    """Reward functions; a sample's reward is the weighted sum of their scores."""
    accuracy_function: str = "math_answer"
    """Reward function whose score (1 = right) is reported as accuracy; empty for none."""
    on_failure: Literal[REWARD_ON_FAILURE] = "exclude"
    """A failed reward call: `exclude` drops the sample from its group's statistics and the
    loss; `score` gives it `failure_score` and keeps it."""
    failure_score: float = 0.0
    """Reward of a failed call when `on_failure` is `score`."""
    timeout_s: float = 30.0
    """Wall-clock limit of one reward call (one function on one sample, or on one group when
    batched); past it the worker process and its children are killed and replaced, and the
    call is a `timeout` failure."""
    num_actors: int = 1
    """Reward actors; groups are split across them."""
    workers_per_actor: int = 2
    """Sandbox worker processes per reward actor; reward calls run in them in parallel (give
    each actor as many CPUs with cluster.reward_cpus)."""
    memory_limit_mb: int = 4096
    """Address space a worker may add to what it holds after loading the functions
    (RLIMIT_AS; an allocation beyond it raises MemoryError in the call); 0 = no limit."""
    cpu_limit_s: float = 0.0
    """CPU seconds one call may use (RLIMIT_CPU, re-armed before each call; the worker is killed
    past it and the call is a `timeout` failure); 0 = only the wall-clock timeout_s."""
    max_processes: int = 0
    """Processes and threads a worker may start beyond those its user already runs
    (RLIMIT_NPROC, not enforced for root); 0 = no limit (timeout_s still kills them)."""
    max_failure_rate: float = 0.5
    """Stop the run when one function fails on more than this fraction of a scoring call's
    samples (1 = never stop)."""
    failure_rate_min_samples: int = 16
    """Samples a scoring call needs before max_failure_rate is checked."""
    isolation: Literal[ISOLATION_LEVELS] = "strict"
    """Operating-system isolation of generated code and reward functions (docs/rewards.md):
    `strict` refuses to run generated code (`code_tests`) without file-system and network
    isolation, naming what the machine lacks; `best_effort` uses whatever the kernel offers;
    `off` applies only resource limits. `cohort doctor` shows what is available."""

    def check(self, cfg: Config) -> None:
        require(self.num_actors >= 1, "reward.num_actors", self.num_actors, ">= 1")
        require(self.timeout_s > 0, "reward.timeout_s", self.timeout_s, "must be > 0 seconds")
        require(
            self.workers_per_actor >= 1, "reward.workers_per_actor", self.workers_per_actor, ">= 1"
        )
        require(
            self.memory_limit_mb >= 0,
            "reward.memory_limit_mb",
            self.memory_limit_mb,
            "must be >= 0 (0 = no limit)",
        )
        require(
            self.cpu_limit_s >= 0, "reward.cpu_limit_s", self.cpu_limit_s, ">= 0 (0 = no limit)"
        )
        require(
            self.max_processes >= 0,
            "reward.max_processes",
            self.max_processes,
            "must be >= 0 (0 = no limit)",
        )
        require(
            0 < self.max_failure_rate <= 1,
            "reward.max_failure_rate",
            self.max_failure_rate,
            "must be in (0, 1]; 1 never stops the run",
        )
        require(
            self.failure_rate_min_samples >= 1,
            "reward.failure_rate_min_samples",
            self.failure_rate_min_samples,
            "must be >= 1",
        )
        for i, fn in enumerate(self.functions):
            fn.check(f"reward.functions[{i}]")
        names = [reward_function_name(f) for f in self.functions]
        require(len(set(names)) == len(names), "reward.functions", names, "names must be unique")
        acc = self.accuracy_function
        require(
            not acc or acc in names,
            "reward.accuracy_function",
            acc,
            f"must name one of the reward functions {names} or be empty",
        )
