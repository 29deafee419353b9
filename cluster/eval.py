"""`cohort eval CONFIG|RUN`: pass@1 and pass@k of a model on the config's eval set, with vLLM.

The eval prompts are built exactly as training builds them (`data.eval`, chat template, prompt
template); generation and scoring take training's own path (`cluster/evaluation.py`: the rollout
and reward pools on Ray, every reward call in the sandbox, dead actors restarted), so a hostile
completion or reward function fails its sample, not the evaluation (failures go to
`reward_failures.jsonl` beside the results). Correctness is the `reward.accuracy_function`
score (1 = right). Reports:
greedy accuracy (what training logs as `eval/accuracy`), and from n samples per prompt at
`--temperature` the unbiased pass@1 and pass@k (Chen et al. 2021, "Evaluating Large Language
Models Trained on Code", eq. 1). Results are saved as JSON; the engines are
`cluster.rollout_engines`, as in training.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from cluster.evaluation import pass_at_k_report
from core.config import Config, load_config


def load_target(target: str, overrides: list[str]) -> tuple[Config, Path | None]:
    """The config of a YAML file, or of a run folder (its saved config.yaml), and the run."""
    from cluster.export import find_run

    path = Path(target)
    if path.is_dir():
        run = find_run(path)
        return load_config(run / "config.yaml", overrides), run
    return load_config(path, overrides), None


def model_to_evaluate(cfg: Config, run: Path | None, checkpoint: str) -> tuple[str, str]:
    """(loadable model folder or name, label) for `--checkpoint`: `base` (model.path),
    `policy`, `latest` or a checkpoint folder of the run, or any Hugging Face folder.
    Checkpoints are exported to `<run>/export-<name>` first."""
    from cluster.export import export, policy_source
    from cluster.models import resolve_model

    if checkpoint == "base" or (run is None and checkpoint == "auto"):
        return resolve_model(cfg.model.path), f"base model {cfg.model.path}"
    if Path(checkpoint, "config.json").is_file():
        return checkpoint, checkpoint
    if run is None:
        raise FileNotFoundError(f"--checkpoint {checkpoint} needs a run folder, not a config")
    source = policy_source(run, checkpoint)
    if (source / "config.json").is_file():
        return str(source), str(source)
    out = run / f"export-{source.name}"
    if not out.exists():
        export(run, out, str(source))
    return str(out), str(source)


def evaluate_model(
    cfg: Config, model: str, k: int, n: int, temperature: float, out_dir: Path, limit: int = 0
) -> dict:
    """Greedy accuracy, pass@1 and pass@k over the eval set through the rollout and reward
    pools (Ray: local, or the cluster of `RAY_ADDRESS`); failed reward calls are logged in
    `out_dir`."""
    from cluster.data import read_source
    from cluster.driver import tokenize
    from cluster.health import Health
    from cluster.multi_turn import start_python_tool
    from cluster.ray_setup import connect_ray
    from core.pools import Starting
    from environments.loading import tool_schemas
    from reward.functions import read_sources
    from reward.pool import RewardPool
    from rollout.pool import RolloutPool

    tools = tool_schemas(cfg.rollout.environment, Path.cwd())
    rows = read_source("eval", cfg.data.eval, cfg.data)  # bad rows and files: before Ray starts
    sources = read_sources(cfg.reward.functions, Path.cwd())
    connect_ray(cfg)
    t0 = time.perf_counter()
    starting = Starting(
        rollout=lambda: RolloutPool(cfg, model, run_id="eval"),
        rewards=lambda: RewardPool(
            cfg.reward,
            base_dir=Path.cwd(),
            num_cpus=cfg.cluster.reward_cpus,
            run_id="eval",
            run_dir=out_dir,
            sources=sources,
        ),
    )
    _, (prompts,), conversations = starting.meanwhile(lambda: tokenize(cfg, model, [rows], tools))
    prompts = prompts[:limit] if limit else prompts
    pools = starting.result()
    rollout, rewards = pools["rollout"], pools["rewards"]
    rollout.conversations = conversations
    start_python_tool(cfg)
    try:
        health = Health(cfg, rollout, rewards)
        report = pass_at_k_report(cfg, health.rollout, health.rewards, prompts, k, n, temperature)
    finally:
        rollout.shutdown()
        rewards.shutdown()
    return {"model": model} | report | {"time_s": time.perf_counter() - t0}


def run_eval(
    target: str,
    overrides: list[str],
    checkpoint: str,
    k: int,
    n: int,
    temperature: float,
    out: str,
    limit: int = 0,
) -> dict:
    """Evaluate, print a summary, save the JSON; returns the results."""
    cfg, run = load_target(target, overrides)
    if not cfg.reward.accuracy_function:  # before a checkpoint is exported or a model built
        raise ValueError(
            "cohort eval needs reward.accuracy_function, the reward function whose score 1 means "
            "right: add e.g. `reward.accuracy_function=math_answer` to the command line"
        )
    n = max(n, k)
    model, label = model_to_evaluate(cfg, run, checkpoint)
    print(f"evaluating {label} on data.eval ({n} samples per prompt, T={temperature})", flush=True)
    where = (
        Path(out)
        if out
        else (run or Path(cfg.trainer.output_dir))
        / "eval"
        / (f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json")
    )
    where.parent.mkdir(parents=True, exist_ok=True)
    results = {"checkpoint": label, "config": target} | evaluate_model(
        cfg, model, k, n, temperature, where.parent, limit
    )
    results["data.eval"] = dataclasses.asdict(cfg.data.eval)
    where.write_text(json.dumps(results, indent=1))
    print(
        f"greedy accuracy {results['greedy/accuracy']:.3f} | pass@1 {results['pass@1']:.3f} | "
        f"pass@{k} {results[f'pass@{k}']:.3f} | {results['prompts']} prompts | "
        f"{results['time_s']:.0f}s -> {where}",
        flush=True,
    )
    return results
