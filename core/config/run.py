"""Config sections `trainer`, `cluster` and `logging`, the root `Config` that holds every
section, and `validate`, which runs each section's checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from core.config.checks import require
from core.config.generation import RewardConfig, RolloutConfig
from core.config.inputs import DataConfig, ModelConfig
from core.config.training import AlgorithmConfig, LearnerConfig


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
    mode: Literal["sync", "one_step_off"] = "sync"
    """`sync`: generate, score, train, push, in turn (on-policy). `one_step_off`: the engines
    generate step t+1's batch while the learner trains on step t, so each batch is sampled by
    the policy one update older than the one it trains (staleness 1, reported per step as
    `rollout/staleness_mean`); needs `algorithm.sampler_correction` to correct for it.
    Reproducible with a fixed seed like sync mode. `async` (generation further ahead) is not
    built: with weights changed only between batches, more lookahead cannot shorten a step
    below max(generate, train), which one_step_off already reaches; it only adds staleness.
    On CPUs, give the engine and the learner cores of their own (`rollout.omp_threads_bind`,
    `learner.cpu_cores`): overlapped on the same cores they contend (the run prints a note)."""
    samples_every: int = 5
    """Write sample completions with their rewards to `samples.jsonl` every N steps (0 = never)."""

    def check(self, cfg: Config) -> None:
        require(self.steps >= 0, "trainer.steps", self.steps, "must be >= 0")
        require(
            self.checkpoint_every >= 0, "trainer.checkpoint_every", self.checkpoint_every, ">= 0"
        )
        require(
            self.keep_checkpoints >= 1, "trainer.keep_checkpoints", self.keep_checkpoints, ">= 1"
        )
        require(
            self.max_nonfinite_steps >= 1,
            "trainer.max_nonfinite_steps",
            self.max_nonfinite_steps,
            ">= 1",
        )
        require(bool(self.resume), "trainer.resume", self.resume, "use never, auto or a folder")
        require(
            self.mode == "sync" or cfg.algorithm.sampler_correction != "none",
            "trainer.mode",
            self.mode,
            "trains on batches sampled by the previous policy: set "
            "algorithm.sampler_correction to token_truncate (or sequence_mask) so the "
            "importance weights correct for it",
        )
        require(
            self.mode == "sync" or not cfg.cluster.colocate,
            "trainer.mode",
            self.mode,
            "cannot overlap generation and training when they share GPUs (cluster.colocate)",
        )


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
    weight_transport: Literal["auto", "object_store", "nccl", "ipc", "gloo"] = "auto"
    """How new weights reach the engines: `object_store` (any topology, CPU or GPU), `nccl`
    (vLLM's NCCL weight transfer, learner rank 0 broadcasting; GPU), `ipc` (CUDA IPC handles,
    colocated on the same GPUs), `gloo` (the `nccl` protocol over a gloo group; CPU engines),
    `auto` (ipc when colocated, nccl on GPU, else object_store)."""
    colocate: bool = False
    """GPU only: rollout engines and learner ranks share GPUs; engines sleep (vLLM sleep mode)
    while the learner trains and wake for generation."""
    offload_learner: bool = False
    """Colocated mode: move the learner's ZeRO states to CPU memory while the engines generate
    (DeepSpeed `offload_states`; needs learner.zero_stage >= 1)."""
    push_timeout_s: float = 300.0
    """Deadline (seconds) for each phase of a weight push (`object_store`: the learner's
    export, each engine's load; `nccl`/`ipc`/`gloo`: the ranks' send, the engines' version
    update; `gloo` also bounds each collective by it, plus 5 s); always on. An engine that
    misses it or dies in the push is killed, restarted (`nccl`/`ipc`/`gloo` form their transfer
    group again) and pushed to once more; a second failure, or a learner rank's, stops the run
    (exit 3, resumable)."""
    verify_weights: bool = False
    """After every push, check that all engines hold identical weights (a checksum per engine;
    costs one pass over the weights; for tests and debugging)."""
    dashboard: bool = True
    """Local mode: start Ray's dashboard, bound to 127.0.0.1 and requiring the token in
    ~/.ray/auth_token (Ray token authentication)."""

    def check(self, cfg: Config) -> None:
        lr = cfg.learner
        require(
            self.rollout_engines >= 1,
            "cluster.rollout_engines",
            self.rollout_engines,
            "must be >= 1",
        )
        require(
            0 < self.push_timeout_s < float("inf"),
            "cluster.push_timeout_s",
            self.push_timeout_s,
            "must be > 0 seconds (a push always has a deadline; raise it for slow pushes)",
        )
        require(self.rollout_tp >= 1, "cluster.rollout_tp", self.rollout_tp, "must be >= 1")
        require(
            self.rollout_tp == 1 or self.use_gpu,
            "cluster.rollout_tp",
            self.rollout_tp,
            "tensor parallelism needs GPUs (cluster.use_gpu: true)",
        )
        require(
            self.use_gpu or self.weight_transport in ("auto", "object_store", "gloo"),
            "cluster.weight_transport",
            self.weight_transport,
            "nccl and ipc need GPUs; use object_store, gloo or auto on CPU",
        )
        require(
            not self.use_gpu or self.weight_transport != "gloo",
            "cluster.weight_transport",
            self.weight_transport,
            "gloo is for CPU engines; use nccl (or auto) on GPUs",
        )
        require(
            not self.colocate or self.use_gpu,
            "cluster.colocate",
            self.colocate,
            "shares GPUs; on CPU the phases already alternate on the same cores",
        )
        require(
            not self.colocate or (self.rollout_tp == 1 and self.rollout_engines == lr.world_size),
            "cluster.colocate",
            self.colocate,
            "needs cluster.rollout_tp 1 and as many "
            "rollout engines as learner ranks (engine i shares rank i's GPU)",
        )
        require(
            not self.offload_learner or (self.colocate and lr.zero_stage >= 1),
            "cluster.offload_learner",
            self.offload_learner,
            "needs cluster.colocate: true and learner.zero_stage >= 1",
        )
        require(
            self.weight_transport != "ipc" or self.colocate,
            "cluster.weight_transport",
            "ipc",
            "CUDA IPC needs engines on the learner's GPUs: set cluster.colocate",
        )


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


def validate(cfg: Config) -> None:
    """Every section's checks; the first failing one raises a `ConfigError` naming the key, its
    value and the fix. Reads only: the config is the same afterwards. A section is checked after
    the ones its rules compute with (the learner's divides by algorithm.updates_per_batch)."""
    sections = (cfg.data, cfg.rollout, cfg.reward, cfg.algorithm, cfg.learner)
    for section in (*sections, cfg.trainer, cfg.cluster):
        section.check(cfg)
