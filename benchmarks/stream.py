"""Generation on a long-tail workload: today's stream of groups against a static split.

Workload: 2 engines on one core each, P prompts x G samples per step, up to 256 new tokens.
With the demo model (SmolLM2-135M-Instruct, bf16 engines) the prompts mix questions answered
in a few tokens ("Reply with only the number") with requests for a long explanation, which
mostly run to the limit, shuffled per step with a fixed seed: a long tail, as in reasoning
runs. With `--model tiny` (the random 2-layer Llama, for CPUs without AVX-512, where the demo
model generates about 15 tokens/s per core) every sample ends at a random token, so lengths
are roughly geometric: most short, a few at the limit.

Three ways to generate and score the same groups, with the same seeds (so the same tokens):
- `static`: the step's prompts cut into one contiguous share per engine, all sent at once, and
  the reward pool called when both engines are done (how Cohort generated before streaming);
- `stream`: `sample_batch` (the training path): every group sent at once, each to the engine
  with the fewest tokens in flight, and scored as it finishes;
- `stream, P/2 in flight`: the same with `rollout.max_groups_in_flight = P/2`, so later groups
  go to whichever engine frees up first.

    python benchmarks/stream.py [--model demo|tiny] [--reward-ms 0] [--steps 2] [--prompts 8]

Prints, per variant, the mean over steps of the generate and reward seconds, the reward time
left exposed after generation, and each engine's busy fraction, then the ratios to `static`,
and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHORT = "What is {a} + {b}? Reply with only the number."
LONG = "Explain in detail, step by step, how to add {a} and {b} by hand, then check the result."


def workload_prompts(tokenizer, step: int, count: int):
    from cluster.data import render
    from core.records import Prompt

    rng = random.Random(1000 + step)
    out = []
    for i in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        text = (LONG if i % 4 == 0 else SHORT).format(a=a, b=b)  # one in four asks for length
        ids = render(tokenizer, [{"role": "user", "content": text}], None)
        out.append(Prompt(f"s{step}:{i}", text, ids, answer=str(a + b)))
    rng.shuffle(out)
    return out


def static_split(cfg, pool, rewards, prompts, step: int) -> dict:
    """Contiguous shares, all at once, scored after both engines are done."""
    import ray

    from core.pools import split_contiguous
    from core.records import GroupRequest
    from rollout.stream import group_seed

    sampling = pool.sampling(cfg.rollout.group_size)
    step_seed = cfg.trainer.seed * 1_000_003 + step
    t0 = time.perf_counter()
    shares = split_contiguous(list(enumerate(prompts)), len(pool.actors))
    reqs = [
        [GroupRequest(k, p, sampling, group_seed(step_seed, k)) for k, p in share]
        for share in shares
    ]
    left = [len(share) for share in shares]
    busy = [0.0] * len(pool.actors)
    groups = {}
    calls = {a.run.remote(reqs[i], [], 1.0): i for i, a in enumerate(pool.actors)}
    while calls:
        [ref], _ = ray.wait(list(calls), num_returns=1)
        i = calls.pop(ref)
        report = ray.get(ref)
        busy[i] += report.busy_s
        groups |= dict(report.finished)
        left[i] -= len(report.finished)
        if left[i]:
            calls[pool.actors[i].run.remote([], [], 1.0)] = i
    generate = time.perf_counter() - t0
    t1 = time.perf_counter()
    rewards.score([groups[k] for k in range(len(prompts))])
    reward = time.perf_counter() - t1
    lengths = [len(s.completion_token_ids) for g in groups.values() for s in g.samples]
    return {
        "generate": generate,
        "reward": reward,
        "reward_exposed": reward,
        "busy": [b / generate for b in busy],
        "tokens": sum(lengths),
    }


def streamed(cfg, pool, rewards, prompts, step: int) -> dict:
    from cluster.data import PromptStream
    from cluster.metrics import PhaseTimer
    from cluster.training_batch import sample_batch

    timer = PhaseTimer()
    batch = sample_batch(cfg, PromptStream(prompts, 0, shuffle=False), pool, rewards, timer, step)
    t, m = timer.seconds, batch.metrics
    lengths = [len(s.completion_token_ids) for g in batch.groups for s in g.samples]
    return {
        "generate": t["generate"],
        "reward": t["reward"],
        "reward_exposed": t["reward_exposed"],
        "busy": [m[f"engine/{i}/busy_frac"] for i in range(len(pool.actors))],
        "tokens": sum(lengths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--model",
        choices=["demo", "tiny"],
        default="demo",
        help="demo: the demo's SmolLM2 (bf16 engines); tiny: the 2-layer random Llama (float32), "
        "whose completions end at a random token, so lengths run from 1 to the limit",
    )
    parser.add_argument(
        "--reward-ms",
        type=float,
        default=0.0,
        help="score with benchmarks/slow_reward.py, this many ms per sample (a verifier's cost); "
        "0: the config's reward",
    )
    args = parser.parse_args()

    import ray
    from transformers import AutoTokenizer

    from cluster.models import TINY_LLAMA, resolve_model
    from core.config import load_config
    from reward.pool import RewardPool
    from rollout.pool import RolloutPool

    overrides = [
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.group_size={args.group_size}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "data.max_prompt_tokens=96",
        "cluster.rollout_engines=2",
        "cluster.rollout_cpus=0.5",
    ]
    if args.model == "tiny":
        overrides += [f"model.path={TINY_LLAMA}", "model.rollout_dtype=float32"]
    if args.reward_ms:
        fn = "benchmarks/slow_reward.py:answer_slowly"
        kwargs = f"{{seconds: {args.reward_ms / 1000}}}"
        overrides += [
            f"reward.functions=[{{fn: {fn}, weight: 1.0, kwargs: {kwargs}}}]",
            "reward.accuracy_function=answer_slowly",
        ]
    cfg = load_config("configs/demo.yaml", overrides)
    in_flight = f"rollout.max_groups_in_flight={args.prompts // 2}"
    half = load_config("configs/demo.yaml", [*overrides, in_flight])
    model = resolve_model(cfg.model.path)
    tokenizer = AutoTokenizer.from_pretrained(model)
    env = {"PYTHONPATH": str(REPO)}
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env})
    pool = RolloutPool(cfg, model, "bench-stream")
    rewards = RewardPool(cfg.reward, base_dir=REPO, num_cpus=0.25, run_id="bench-stream")
    cores = os.cpu_count()
    print(
        f"{cores} cores; model {args.model}; reward {args.reward_ms:g} ms/sample; 2 engines; "
        f"P={args.prompts} G={args.group_size} "
        f"max_new_tokens={args.max_new_tokens}",
        flush=True,
    )

    variants = {
        "static": lambda p, s: static_split(cfg, pool, rewards, p, s),
        "stream": lambda p, s: streamed(cfg, pool, rewards, p, s),
        "stream, P/2 in flight": lambda p, s: streamed(half, pool, rewards, p, s),
    }
    # warm-up: a small step of each, not counted (first calls compile and fill caches)
    warm = workload_prompts(tokenizer, -1, 2)
    for run in variants.values():
        run(warm, -1)
    results = {name: [] for name in variants}
    for step in range(args.steps):
        prompts = workload_prompts(tokenizer, step, args.prompts)
        for name, run in variants.items():  # interleaved: drift hits every variant alike
            r = run(prompts, step)
            results[name].append(r)
            busy = " ".join(f"{b:.2f}" for b in r["busy"])
            print(
                f"step {step} {name:22s} generate {r['generate']:6.1f}s  reward "
                f"{r['reward']:.2f}s exposed {r['reward_exposed']:.2f}s  busy {busy}  "
                f"tokens {r['tokens']}",
                flush=True,
            )

    summary = {}
    for name, rows in results.items():
        summary[name] = {
            "generate_s": statistics.mean(r["generate"] for r in rows),
            "reward_s": statistics.mean(r["reward"] for r in rows),
            "reward_exposed_s": statistics.mean(r["reward_exposed"] for r in rows),
            "busy_min": statistics.mean(min(r["busy"]) for r in rows),
            "busy_mean": statistics.mean(statistics.mean(r["busy"]) for r in rows),
            "tokens": statistics.mean(r["tokens"] for r in rows),
        }
    base = summary["static"]
    print(
        "\n| variant | generate s | vs static | busy (mean / least busy engine) | "
        "reward s | exposed s | exposed share |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        share = s["reward_exposed_s"] / s["reward_s"] if s["reward_s"] else 0.0
        print(
            f"| {name} | {s['generate_s']:.1f} | {s['generate_s'] / base['generate_s']:.2f}x | "
            f"{s['busy_mean']:.2f} / {s['busy_min']:.2f} | {s['reward_s']:.2f} | "
            f"{s['reward_exposed_s']:.2f} | {share:.0%} |"
        )
    print(json.dumps({"steps": args.steps, "summary": summary}))
    pool.shutdown()
    rewards.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
