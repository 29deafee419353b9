"""The GRPO training loop (synchronous mode): the single controller of a run.

Reads like a single-process script: prompts -> generate -> reward (-> more rounds with dynamic
sampling) -> train -> push weights -> log -> maybe evaluate. Every phase is timed. The driver
talks to actors only through the pools' coarse methods; `cluster/health.py` restarts dead
actors and guards against non-finite steps, `cluster/checkpoint.py` writes and finds
checkpoints, `cluster/overlap.py` generates the next batch while the learner trains
(`trainer.mode: one_step_off`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from cluster import checkpoint
from cluster.checkpoint import find_resume_point
from cluster.data import (
    PromptStream,
    SourceRows,
    read_datasets,
    steps_for_epochs,
    tokenize_datasets,
)
from cluster.evaluation import evaluate
from cluster.health import Health, faults_during
from cluster.metrics import MetricsLog, PhaseTimer, perf_metrics, rollout_metrics
from cluster.models import resolve_model
from cluster.multi_turn import (
    conversations_factory,
    log_tool_failures,
    multi_turn_metrics,
    start_python_tool,
)
from cluster.overlap import BatchSource
from cluster.placement import contention_note, report, reserve
from cluster.ray_setup import connect_ray
from cluster.transport import make_transport, resolve_transport
from core import faults
from core.config import Config, dump_yaml, reward_function_name
from core.pools import Starting
from environments.loading import tool_schemas
from learner.ranks import LearnerRanks
from reward.functions import read_sources
from reward.pool import RewardPool
from reward.scoring import reward_metrics
from rollout.pool import RolloutPool


def create_run_dir(cfg: Config) -> Path:
    """`<output_dir>/<run id>/`, new; `train` saves the config in it once resolved."""
    run_id = time.strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.trainer.output_dir) / run_id
    suffix = 1
    while path.exists():
        path = Path(cfg.trainer.output_dir) / f"{run_id}-{suffix}"
        suffix += 1
    path.mkdir(parents=True)
    return path


def train(cfg: Config) -> Path:
    """Run a whole experiment (or continue one, see `trainer.resume`); returns the run
    directory."""
    t = cfg.trainer
    resume_from = find_resume_point(Path(t.output_dir), t.resume)
    run_dir = resume_from.parent.parent if resume_from else create_run_dir(cfg)
    print(f"run directory: {run_dir}", flush=True)
    if note := contention_note(cfg):
        print(note, flush=True)
    model_path = resolve_model(cfg.model.path)

    tools = tool_schemas(cfg.rollout.environment, Path.cwd())  # multi-turn: shown in prompts
    # Every input that is cheap to check is checked before Ray starts: the data's files and rows
    # and the reward functions' files (the config already is).
    rows = read_datasets(cfg.data)
    sources = read_sources(cfg.reward.functions, Path.cwd())

    connect_ray(cfg)
    run_id = run_dir.name
    placement = reserve(cfg, run_id)  # checks the cluster first: fails before any actor starts
    starting = Starting(  # vLLM, the reward sandboxes and DeepSpeed start side by side
        rollout=lambda: RolloutPool(cfg, model_path, run_id, placement, resolve_transport(cfg)),
        rewards=lambda: RewardPool(
            cfg.reward,
            base_dir=Path.cwd(),
            num_cpus=cfg.cluster.reward_cpus,
            run_id=run_id,
            resources=cfg.cluster.reward_resources,
            run_dir=run_dir,
            sources=sources,
        ),
        learner=lambda: LearnerRanks(cfg, model_path, run_id, placement),
    )

    tokenizer, (train_prompts, eval_prompts), conversations = starting.meanwhile(
        lambda: tokenize(cfg, model_path, rows, tools, run_dir)
    )
    pools = starting.result()
    if cfg.data.epochs:
        t.steps = steps_for_epochs(cfg, len(train_prompts))
    if not resume_from:  # the config this run uses, trainer.steps from data.epochs included
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    stream = PromptStream(train_prompts, t.seed, cfg.data.shuffle)
    rollout, rewards, learner = pools["rollout"], pools["rewards"], pools["learner"]
    rollout.conversations = conversations  # None: single-turn groups
    start_python_tool(cfg)  # the `python` tool's sandboxed executor, when it is used
    for name, layers in rewards.isolation.items():
        print(f"reward sandbox of {name}: {', '.join(layers) or 'none'}", flush=True)
    (run_dir / "placement.json").write_text(json.dumps(report(rollout, learner, rewards), indent=1))
    peak = learner.peak_flops()  # measured with every actor up and idle
    (run_dir / "learner_peak.json").write_text(json.dumps(peak, indent=1))
    transport = make_transport(cfg, learner, rollout)
    health = Health(cfg, rollout, rewards, learner, transport)
    names = [reward_function_name(f) for f in cfg.reward.functions]

    batches = BatchSource(cfg, stream, health.rollout, health.rewards, last_step=t.steps)
    start = 0
    if resume_from:
        start = resume(resume_from, run_dir, learner, stream)
        batches.restore(resume_from)
        health.push(start)  # engines sample the checkpoint's policy
    log = MetricsLog.for_run(run_dir, cfg)  # metrics.jsonl, console, TensorBoard/W&B/MLflow
    if t.eval_every and start == 0:
        log.write({"step": 0, **evaluate(cfg, health.rollout, health.rewards, eval_prompts)})
    for step in range(start + 1, t.steps + 1):
        timer = PhaseTimer()
        health.step = step
        health.before_generate()
        if cfg.cluster.offload_learner:
            learner.offload_states()  # the engines get the GPU memory while they generate
        with faults_during("generate", t.fault_injection, step):
            batch, gen_times = batches.get(step, timer)  # one_step_off: step+1 starts here
        if cfg.cluster.colocate:
            freed = rollout.sleep()  # engines give the GPUs to the learner
            gen_times["colocate/sleep_freed_gib"] = min(freed)
            if cfg.cluster.offload_learner:
                learner.reload_states()
        with timer("train"), faults_during("train", t.fault_injection, step):
            train_metrics = health.train(batch.scored)
        if cfg.cluster.colocate:
            rollout.wake_up()
        batches.wait_idle(timer)  # the engines finish the batch generated ahead first
        with timer("push"), faults_during("push", t.fault_injection, step):
            health.push(step)  # within cluster.push_timeout_s, or heals / stops
        groups, scores = batch.generated_groups, batch.generated_scores
        row = {"step": step, **reward_metrics(scores, names)} | batch.metrics
        row |= rollout_metrics(groups, scores, cfg.reward.accuracy_function)
        row |= staleness(batch.groups, learner_version=step - 1)
        row |= train_metrics | health.metrics() | timer.metrics() | gen_times
        row |= perf_metrics(row, peak["peak_flops_per_s"])
        if conversations:
            row |= multi_turn_metrics(groups)
            log_tool_failures(cfg, run_dir, step, groups)
        if cfg.cluster.verify_weights:
            row |= weight_check(rollout)
        if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
            row |= evaluate(cfg, health.rollout, health.rewards, eval_prompts)
        log.write(row)
        if t.samples_every and (step % t.samples_every == 0 or step == 1):
            write_samples(run_dir / "samples.jsonl", step, groups, scores)
        if t.checkpoint_every and (step % t.checkpoint_every == 0 or step == t.steps):
            save_checkpoint(cfg, run_dir, step, learner, stream, batches)
        health.stop_if_nonfinite()
    log.close()
    if t.save_final:
        learner.save_pretrained(str(run_dir / "policy"))
        tokenizer.save_pretrained(str(run_dir / "policy"))
        if cfg.learner.lora.rank:  # the adapters alone too, to serve or share without the base
            learner.save_adapter(str(run_dir / "adapter"))
    for pool in (batches, rollout, rewards, learner, placement):
        pool.shutdown()
    print(f"done: metrics in {run_dir / 'metrics.jsonl'}", flush=True)
    return run_dir


def tokenize(
    cfg: Config,
    model_path: str,
    sources: list[SourceRows],
    tools: list[dict] | None,
    run_dir: Path | None = None,
):
    """The tokenizer, the prompts of each of `sources` (`read_datasets`' rows) and the multi-turn
    conversations factory: the driver's longest start-up work (importing transformers, the chat
    template on every prompt), which it does while the actors start."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = tokenize_datasets(sources, cfg.data, tokenizer, run_dir, tools)
    return tokenizer, prompts, conversations_factory(cfg, model_path, tokenizer, Path.cwd())


def weight_check(rollout: RolloutPool) -> dict:
    """Checksums of every engine's weights after a push: all equal, and which value."""
    sums = rollout.weights_checksums()
    return {"push/engines_identical": float(len(set(sums)) == 1), "push/checksum": sums[0][:16]}


def staleness(groups, learner_version: int) -> dict[str, float]:
    """How many updates behind the learner the sampling policy was, over the batch's samples."""
    lags = [learner_version - s.policy_version for g in groups for s in g.samples]
    return {"rollout/staleness_mean": sum(lags) / len(lags), "rollout/staleness_max": max(lags)}


def save_checkpoint(cfg: Config, run_dir: Path, step: int, learner, stream, batches) -> None:
    """Write step `step`'s checkpoint; a failed write (e.g. a full disk) is reported and leaves
    the previous checkpoint as `latest`."""
    t0 = time.perf_counter()
    tmp = checkpoint.begin(run_dir, step)
    try:
        learner.save_checkpoint(str(tmp / "learner"))
        batches.save(tmp)  # one_step_off: the next step's batch, already generated
        faults.at(cfg.trainer.fault_injection, "checkpoint", step)
        state = {"step": step, "stream": stream.state(), "seed": cfg.trainer.seed}
        path = checkpoint.commit(run_dir, tmp, step, state, cfg.trainer.keep_checkpoints)
    except (OSError, RuntimeError) as e:  # a full disk surfaces as either (torch's writer)
        checkpoint.abort(tmp)
        free_mb = shutil.disk_usage(run_dir).free / 2**20
        cause = str(e).strip().splitlines()[-1][:300]
        print(
            f"checkpoint of step {step} FAILED ({cause}; {free_mb:.0f} MiB free on "
            f"{run_dir}); the previous checkpoint stays the latest and the run goes on; free "
            "disk space, the next checkpoint will try again",
            flush=True,
        )
        return
    print(f"checkpoint: {path} ({time.perf_counter() - t0:.1f}s)", flush=True)


def resume(path: Path, run_dir: Path, learner, stream) -> int:
    """Load a checkpoint into the learner and the data stream; drop log rows written after it.
    Returns the checkpoint's step."""
    state = checkpoint.read_driver_state(path)
    print(f"resuming from {path} (step {state['step']})", flush=True)
    learner.load_checkpoint(str(path / "learner"))
    stream.restore(state["stream"])
    for name in ("metrics.jsonl", "samples.jsonl"):
        checkpoint.truncate_jsonl(run_dir / name, state["step"])
    return state["step"]


def write_samples(path: Path, step: int, groups, scores) -> None:
    """Append the batch's first two groups' completions with their rewards."""
    with path.open("a") as f:
        for g, row in list(zip(groups, scores))[:2]:
            for s, sc in zip(g.samples, row):
                record = {
                    "step": step,
                    "prompt": g.prompt.text,
                    "answer": g.prompt.answer,
                    "completion": s.text,
                    **dataclasses.asdict(sc),
                }
                if s.messages:  # multi-turn: the whole conversation, with roles
                    record |= {"messages": s.messages, "turns": s.turns}
                    record |= {"finish_reason": s.finish_reason, "tool_calls": s.tool_calls}
                    record |= {"env_reward": s.env_reward}
                f.write(json.dumps(record) + "\n")
