"""The GRPO training loop (synchronous mode): the single controller of a run.

Reads like a single-process script: prompts -> generate -> reward (-> more rounds with dynamic
sampling) -> train -> push weights -> log -> maybe evaluate. Every phase is timed. The driver
talks to actors only through the pools' coarse methods. Not covered yet: checkpoints and
resume (reliability issue), overlapped modes (speed issue).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from cluster.config import Config, dump_yaml, reward_function_name
from cluster.data import PromptStream, load_prompts
from cluster.metrics import MetricsLog, PhaseTimer, accuracy, rollout_metrics
from cluster.models import resolve_model
from cluster.ray_setup import connect_ray
from cluster.rollout_batch import sample_batch
from learner.group import LearnerGroup
from learner.weight_push import make_transport
from reward.pool import RewardPool
from reward.scoring import reward_metrics
from rollout.pool import RolloutPool
from rollout.records import Prompt


def create_run_dir(cfg: Config) -> Path:
    """`<output_dir>/<run id>/` with the resolved config saved in it."""
    run_id = time.strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.trainer.output_dir) / run_id
    suffix = 1
    while path.exists():
        path = Path(cfg.trainer.output_dir) / f"{run_id}-{suffix}"
        suffix += 1
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(dump_yaml(cfg))
    return path


def train(cfg: Config) -> Path:
    """Run a whole experiment; returns the run directory."""
    run_dir = create_run_dir(cfg)
    print(f"run directory: {run_dir}", flush=True)
    connect_ray(cfg)
    model_path = resolve_model(cfg.model.path)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_prompts = load_prompts("train", cfg.data.train, cfg.data, tokenizer)
    eval_prompts = load_prompts("eval", cfg.data.eval, cfg.data, tokenizer)
    stream = PromptStream(train_prompts, cfg.trainer.seed)

    run_id = run_dir.name
    rollout = RolloutPool(cfg, model_path, run_id)
    rewards = RewardPool(cfg.reward, base_dir=Path.cwd(), num_cpus=cfg.cluster.reward_cpus,
                         run_id=run_id)  # fmt: skip
    learner = LearnerGroup(cfg, model_path, run_id)
    transport = make_transport(cfg.cluster.weight_transport, cfg.model.rollout_dtype)
    log = MetricsLog(run_dir / "metrics.jsonl", cfg.trainer.steps, cfg.logging.console)
    names = [reward_function_name(f) for f in cfg.reward.functions]
    t = cfg.trainer

    if t.eval_every:
        log.write({"step": 0, **evaluate(cfg, rollout, rewards, eval_prompts)})
    for step in range(1, t.steps + 1):
        timer = PhaseTimer()
        batch = sample_batch(cfg, stream, rollout, rewards, timer)  # generate + reward
        with timer("train"):
            train_metrics = learner.train(batch.groups, batch.shaped.rewards, batch.shaped.valid)
        with timer("push"):
            transport.push(learner, rollout, version=step)
        groups, scores = batch.generated_groups, batch.generated_scores
        row = {"step": step, **reward_metrics(scores, names)} | batch.metrics
        row |= rollout_metrics(groups, scores, cfg.reward.accuracy_function)
        row |= train_metrics | timer.metrics()
        if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
            row |= evaluate(cfg, rollout, rewards, eval_prompts)
        log.write(row)
        if t.samples_every and (step % t.samples_every == 0 or step == 1):
            write_samples(run_dir / "samples.jsonl", step, groups, scores)
    log.close()
    if t.save_final:
        learner.save_pretrained(str(run_dir / "policy"))
        tokenizer.save_pretrained(str(run_dir / "policy"))
    for pool in (rollout, rewards, learner):
        pool.shutdown()
    print(f"done: metrics in {run_dir / 'metrics.jsonl'}", flush=True)
    return run_dir


def evaluate(cfg: Config, rollout: RolloutPool, rewards: RewardPool, prompts: list[Prompt]) -> dict:
    """Greedy decoding on the held-out prompts; accuracy from `reward.accuracy_function`."""
    t0 = time.perf_counter()
    groups = rollout.generate(prompts, n=1, temperature=0.0,
                              max_tokens=cfg.rollout.eval_max_new_tokens)  # fmt: skip
    scores = rewards.score(groups)
    out = {"eval/reward": sum(s.reward for row in scores for s in row) / len(prompts)}
    if cfg.reward.accuracy_function:
        out["eval/accuracy"] = accuracy(scores, cfg.reward.accuracy_function)
    out["eval/completion_len"] = sum(len(g.samples[0].completion_token_ids) for g in groups) / len(
        groups
    )
    out["time/eval"] = time.perf_counter() - t0
    return out


def write_samples(path: Path, step: int, groups, scores) -> None:
    """Append the batch's first two groups' completions with their rewards."""
    with path.open("a") as f:
        for g, row in list(zip(groups, scores))[:2]:
            for s, sc in zip(g.samples, row):
                record = {"step": step, "prompt": g.prompt.text, "answer": g.prompt.answer,
                          "completion": s.text, **dataclasses.asdict(sc)}  # fmt: skip
                f.write(json.dumps(record) + "\n")
