"""Evaluation, one path for training's eval rows and for `cohort eval`: the rollout pool
generates, the reward pool scores (every call in the sandbox), both behind `Health`'s restarts.

Guaranteed: an engine or reward actor that dies during evaluation is restarted and the call
retried, as in training; a reward function that hangs or crashes fails its sample, never the
evaluation; greedy accuracy is the fraction of prompts whose `reward.accuracy_function` scored
1 (failed calls count as wrong). pass@k is the unbiased estimator of Chen et al. 2021
("Evaluating Large Language Models Trained on Code", eq. 1). Not covered: choosing k or n.
"""

from __future__ import annotations

import math
import time

from cluster.metrics import accuracy, generated_tokens
from core.config import Config
from core.records import Group, Prompt, Score


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them right) is right."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def generate_and_score(
    rollout,
    rewards,
    prompts: list[Prompt],
    n: int,
    temperature: float,
    max_tokens: int,
    seed: int | None = None,
    top_p: float | None = None,
) -> tuple[list[Group], list[list[Score]]]:
    """`n` completions per prompt and their scores, through the (restarting) pools."""
    groups = rollout.generate(
        prompts, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed, top_p=top_p
    )
    return groups, rewards.score(groups)


def evaluate(cfg: Config, rollout, rewards, prompts: list[Prompt]) -> dict[str, float]:
    """The eval row of a training run: greedy decoding on the held-out prompts, or
    `rollout.eval_samples` seeded samples each at `rollout.eval_temperature`."""
    t0 = time.perf_counter()
    r = cfg.rollout
    sampled = r.eval_temperature > 0
    groups, scores = generate_and_score(
        rollout,
        rewards,
        prompts,
        n=r.eval_samples if sampled else 1,
        temperature=r.eval_temperature,
        max_tokens=r.eval_max_new_tokens,
        seed=cfg.trainer.seed if sampled else None,
    )
    flat = [s for row in scores for s in row]
    out = {"eval/reward": sum(s.reward for s in flat) / len(flat)}
    if cfg.reward.accuracy_function:
        out["eval/accuracy"] = accuracy(scores, cfg.reward.accuracy_function)
    lengths = [generated_tokens(s) for g in groups for s in g.samples]
    out["eval/completion_len"] = sum(lengths) / len(lengths)
    out["time/eval"] = time.perf_counter() - t0
    return out


def pass_at_k_report(
    cfg: Config, rollout, rewards, prompts: list[Prompt], k: int, n: int, temperature: float
) -> dict:
    """Greedy accuracy, pass@1 and pass@k over `prompts` (n samples each at `temperature`,
    top-p 1), with per-prompt details (failed reward calls are in the reward pool's log)."""
    acc_fn = cfg.reward.accuracy_function
    max_tokens = cfg.rollout.eval_max_new_tokens
    greedy, greedy_scores = generate_and_score(rollout, rewards, prompts, 1, 0.0, max_tokens)
    sampled, scores = generate_and_score(
        rollout, rewards, prompts, n, temperature, max_tokens, seed=cfg.trainer.seed, top_p=1.0
    )
    right = [sum(s.components.get(acc_fn, 0.0) >= 1.0 for s in row) for row in scores]
    per_prompt = [
        {
            "id": g.prompt.id,
            "prompt": g.prompt.text,
            "answer": g.prompt.answer,
            "greedy": gg.samples[0].text,
            "greedy_right": gs[0].components.get(acc_fn, 0.0) >= 1.0,
            "right_of_n": c,
        }
        for g, gg, gs, c in zip(sampled, greedy, greedy_scores, right, strict=True)
    ]
    failed = sum(s.failed for rows in (greedy_scores, scores) for row in rows for s in row)
    return {
        "prompts": len(prompts),
        "n": n,
        "k": k,
        "temperature": temperature,
        "greedy/accuracy": accuracy(greedy_scores, acc_fn),
        "pass@1": sum(pass_at_k(n, c, 1) for c in right) / len(right),
        f"pass@{k}": sum(pass_at_k(n, c, k) for c in right) / len(right),
        "reward/mean": sum(s.reward for row in scores for s in row) / (n * len(prompts)),
        "reward/failed_samples": failed,
        "per_prompt": per_prompt,
    }
