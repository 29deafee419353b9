"""`cohort eval CONFIG|RUN`: pass@1 and pass@k of a model on the config's eval set, with vLLM.

The eval prompts are built exactly as training builds them (`data.eval`, chat template, prompt
template); completions come from one in-process `RolloutActor` (no Ray); correctness is the
`reward.accuracy_function` score (1 = right) from the config's own reward functions, scored by a
`RewardActor` exactly as in training: every call in a sandbox worker under `reward.timeout_s`
and `reward.isolation`, so a hostile completion or reward function fails its sample, not the
evaluation (failures go to `reward_failures.jsonl` beside the results). Reports:
greedy accuracy (what training logs as `eval/accuracy`), and from n samples per prompt at
`--temperature` the unbiased pass@1 and pass@k (Chen et al. 2021, "Evaluating Large Language
Models Trained on Code", eq. 1). Results are saved as JSON. Not covered: several engines or
GPUs (one engine evaluates everything).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from core.config import Config, load_config
from reward.failures import FAILURES_LOG, append_failures


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them right) is right."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


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
    cfg: Config, model: str, k: int, n: int, temperature: float, limit: int = 0
) -> dict:
    """Greedy accuracy, pass@1 and pass@k over the eval set; per-prompt details included."""
    from transformers import AutoTokenizer

    from cluster.data import load_prompts
    from cluster.metrics import accuracy
    from reward.actor import RewardActor
    from reward.failures import failure_records
    from reward.functions import read_sources
    from rollout.actor import RolloutActor

    acc_fn = cfg.reward.accuracy_function
    if not acc_fn:
        raise ValueError("cohort eval needs reward.accuracy_function (which function says right)")
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = load_prompts("eval", cfg.data.eval, cfg.data, tokenizer)
    prompts = prompts[:limit] if limit else prompts
    r = cfg.reward
    sandbox = {"workers": r.workers_per_actor, "timeout_s": r.timeout_s,
               "memory_limit_mb": r.memory_limit_mb, "cpu_limit_s": r.cpu_limit_s,
               "max_processes": r.max_processes, "isolation": r.isolation}  # fmt: skip
    rewards = RewardActor([dataclasses.asdict(f) for f in r.functions], r.on_failure,
                          r.failure_score, str(Path.cwd()), sandbox,
                          read_sources(r.functions, Path.cwd()))  # fmt: skip
    t0 = time.perf_counter()
    actor = RolloutActor(cfg, model, engine_index=0)
    max_tokens = cfg.rollout.eval_max_new_tokens
    greedy = actor.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    sampled = actor.generate(prompts, n=n, temperature=temperature, top_p=1.0,
                             max_tokens=max_tokens, seed=cfg.trainer.seed)  # fmt: skip
    try:
        greedy_scores, scores = rewards.score(greedy), rewards.score(sampled)
    finally:
        rewards.close()
    failures = failure_records(greedy, greedy_scores, 1) + failure_records(sampled, scores, 2)
    right = [sum(s.components.get(acc_fn, 0.0) >= 1.0 for s in row) for row in scores]
    per_prompt = [
        {"id": g.prompt.id, "prompt": g.prompt.text, "answer": g.prompt.answer,
         "greedy": gg.samples[0].text, "greedy_right": gs[0].components.get(acc_fn, 0.0) >= 1.0,
         "right_of_n": c}
        for g, gg, gs, c in zip(sampled, greedy, greedy_scores, right)
    ]  # fmt: skip
    return {
        "model": model,
        "prompts": len(prompts),
        "n": n,
        "k": k,
        "temperature": temperature,
        "greedy/accuracy": accuracy(greedy_scores, acc_fn),
        "pass@1": sum(pass_at_k(n, c, 1) for c in right) / len(right),
        f"pass@{k}": sum(pass_at_k(n, c, k) for c in right) / len(right),
        "reward/mean": sum(s.reward for row in scores for s in row) / (n * len(prompts)),
        "reward/failures": len(failures),
        "time_s": time.perf_counter() - t0,
        "per_prompt": per_prompt,
        "failures": failures,
    }


def run_eval(
    target: str, overrides: list[str], checkpoint: str, k: int, n: int, temperature: float,
    out: str, limit: int = 0,
) -> dict:  # fmt: skip
    """Evaluate, print a summary, save the JSON; returns the results."""
    cfg, run = load_target(target, overrides)
    n = max(n, k)
    model, label = model_to_evaluate(cfg, run, checkpoint)
    print(f"evaluating {label} on data.eval ({n} samples per prompt, T={temperature})", flush=True)
    results = {"checkpoint": label, "config": target} | evaluate_model(
        cfg, model, k, n, temperature, limit
    )
    results["data.eval"] = dataclasses.asdict(cfg.data.eval)
    where = (
        Path(out)
        if out
        else (run or Path(cfg.trainer.output_dir))
        / "eval"
        / (f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json")
    )
    where.parent.mkdir(parents=True, exist_ok=True)
    failures = results.pop("failures")
    append_failures(where.parent / FAILURES_LOG, failures)
    where.write_text(json.dumps(results, indent=1))
    print(f"greedy accuracy {results['greedy/accuracy']:.3f} | pass@1 {results['pass@1']:.3f} | "
          f"pass@{k} {results[f'pass@{k}']:.3f} | {results['prompts']} prompts | "
          f"{results['time_s']:.0f}s -> {where}", flush=True)  # fmt: skip
    return results
