"""Step-time benchmark on the reference workload, against the raw engines.

Workload: the demo model (SmolLM2-135M-Instruct; the engine in the demo's `rollout_dtype:
auto`, float32 on a CPU without native bfloat16; a float32 learner), P=8 prompts x G=8 samples
per step, up to 64 new tokens, micro-batches of 16, no KL, one update per batch.

    python benchmarks/step.py --mode sync|one_step_off --placement split|shared [--steps 5]
        [--cpu-shares]

`split` pins the vLLM engine to core 0 and the learner to core 1 (disaggregated, as samplers
and learners own separate GPUs on a cluster); `shared` lets both phases use every core.

It runs `cohort train` for `--steps` steps (the first is a warm-up and is not counted), then,
in fresh processes pinned the same way, the same vLLM engine called directly on the same
prompts and a bare DeepSpeed forward/backward/step on the batches that engine generated. It
prints seconds per phase, the ratios, and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import cpu_shares as cpu_shares_module  # noqa: E402

WORKLOAD = [
    "rollout.prompts_per_step=8",
    "rollout.group_size=8",
    "rollout.max_new_tokens=64",
    "rollout.temperature=1.0",
    "model.learner_dtype=float32",
    "learner.micro_batch_size=16",
    "algorithm.kl_coef=0",
    "algorithm.updates_per_batch=1",
    "algorithm.sampler_correction=token_truncate",
    "trainer.eval_every=0",
    "trainer.save_final=false",
    "trainer.checkpoint_every=0",
    "trainer.samples_every=0",
    "logging.progress=lines",
]
PLACEMENTS = {
    "split": ["rollout.omp_threads_bind=0", "learner.cpu_cores=1"],
    "shared": [],
}


def cohort_overrides(mode: str, placement: str, steps: int) -> list[str]:
    return [*WORKLOAD, *PLACEMENTS[placement], f"trainer.mode={mode}", f"trainer.steps={steps}"]


def run_cohort(overrides: list[str], cpu_shares: bool = False) -> tuple[list[dict], dict, dict]:
    """`cohort train configs/demo.yaml ...`; returns the metrics rows of the training steps,
    the learner's peak (`learner_peak.json`) and, with `cpu_shares`, each role's share of the
    cores while the learner trains and while the engine generates (`benchmarks/cpu_shares.py`;
    otherwise {})."""
    with tempfile.TemporaryDirectory() as out:
        args = [
            sys.executable,
            "-m",
            "cluster",
            "train",
            "configs/demo.yaml",
            *overrides,
            f"trainer.output_dir={out}",
        ]
        proc = subprocess.Popen(
            args, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        sampler = cpu_shares_module.Sampler(proc.pid) if cpu_shares else None
        stdout, _ = proc.communicate()
        seconds = sampler.stop() if sampler else []
        step_lines = [line for line in stdout.splitlines() if line.startswith("step ")]
        print("\n".join(step_lines), flush=True)
        if proc.returncode != 0:
            sys.exit(f"cohort train failed (exit {proc.returncode}):\n{stdout[-4000:]}")
        (run_dir,) = Path(out).iterdir()
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        peak = json.loads((run_dir / "learner_peak.json").read_text())
    shares = {}
    if cpu_shares:  # a phase is the seconds in which its actor used most of a core or more
        shares = {
            "train": cpu_shares_module.phase_shares(seconds, "ray::LearnerActor", 100.0),
            "generate": cpu_shares_module.phase_shares(seconds, "ray::RolloutActor", 80.0),
        }
    return [r for r in rows if r["step"] >= 1], peak, shares


def step_prompts(overrides: list[str], steps: int) -> list[list[list[int]]]:
    """The token ids of each step's prompts, as the run draws them."""
    from transformers import AutoTokenizer

    from cluster.data import PromptStream, load_datasets
    from cluster.models import resolve_model
    from core.config import load_config

    cfg = load_config("configs/demo.yaml", overrides)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model.path))
    with tempfile.TemporaryDirectory() as tmp:
        train, _ = load_datasets(cfg.data, tokenizer, Path(tmp))
    stream = PromptStream(train, cfg.trainer.seed, cfg.data.shuffle)
    n = cfg.rollout.prompts_per_step
    return [[p.token_ids for p in stream.next_batch(n)] for _ in range(steps)]


def raw_vllm(overrides: list[str], prompts: list[list[list[int]]], out: Path) -> None:
    """The rollout engine's vLLM `LLM`, same settings and core binding, called directly."""
    from cluster.models import resolve_model
    from core.config import load_config, parse_cores
    from rollout.actor import engine_env

    cfg = load_config("configs/demo.yaml", overrides)
    env = engine_env(cfg, 0)
    os.environ.update(env)
    # Pinned like the rollout actor pins itself; without it the engine's Python thread and
    # torch's thread pool float onto the other core and the baseline is not one core's worth.
    cores = parse_cores(env["VLLM_CPU_OMP_THREADS_BIND"])
    os.sched_setaffinity(0, cores)
    os.environ["OMP_NUM_THREADS"] = str(len(cores))  # as Ray sets it for an actor
    from vllm import LLM, SamplingParams

    r = cfg.rollout
    llm = LLM(
        model=resolve_model(cfg.model.path),
        dtype=cfg.model.rollout_dtype,
        seed=cfg.trainer.seed,
        max_model_len=cfg.data.max_prompt_tokens + r.max_new_tokens,
        logprobs_mode="processed_logprobs",
        enforce_eager=True,
    )
    params = SamplingParams(
        n=r.group_size,
        temperature=r.temperature,
        top_p=r.top_p,
        max_tokens=r.max_new_tokens,
        logprobs=0,
    )
    seconds, batches = [], []
    for step_ids in prompts:
        t0 = time.perf_counter()
        outputs = llm.generate(
            [{"prompt_token_ids": ids} for ids in step_ids], params, use_tqdm=False
        )
        seconds.append(time.perf_counter() - t0)
        batches.append(
            [(list(o.prompt_token_ids), list(c.token_ids)) for o in outputs for c in o.outputs]
        )
    out.write_text(json.dumps({"seconds": seconds, "batches": batches}))


def raw_deepspeed(overrides: list[str], batches: list, same_math: bool, out: Path) -> None:
    """A bare DeepSpeed ZeRO-0 engine with AdamW: per step, forward, token log-probabilities,
    a policy-gradient-shaped loss, backward and step over the same micro-batches. With
    `same_math`, the log-probabilities and entropies come from the learner's own function
    (`learner/head.py`: the head in chunks of `learner.logprob_chunk_tokens`, each recomputed in
    the backward, plus the entropy), so what remains between it and Cohort's train phase is the
    orchestration, not the math."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    from cluster.models import resolve_model
    from core.config import load_config, parse_cores
    from learner.batch import FlatSample, collate
    from learner.grpo import token_logprobs
    from learner.head import completion_token_stats

    cfg = load_config("configs/demo.yaml", overrides)
    cores = parse_cores(cfg.learner.cpu_cores)
    if cores:
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores) or os.cpu_count() or 1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model.path), dtype=torch.float32)
    model.config.use_cache = False
    mbs = cfg.learner.micro_batch_size
    n = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    ds_config = {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": n // mbs,
        "train_batch_size": n,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 0},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learner.lr)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    pad = model.config.pad_token_id or 0
    seconds = []
    for batch in batches:
        samples = [FlatSample(p, c, [0.0] * len(c), True) for p, c in batch]
        advantages = torch.randn(len(samples))
        t0 = time.perf_counter()
        for lo in range(0, len(samples), mbs):
            mb = collate(samples[lo : lo + mbs], pad)
            if same_math:
                inputs = {
                    "input_ids": mb.input_ids,
                    "position_ids": mb.position_ids,
                    "attention_mask": mb.attention_mask,
                }
                chunk = cfg.learner.logprob_chunk_tokens
                temperature = cfg.rollout.temperature
                logp, _ = completion_token_stats(
                    engine, inputs, mb.targets, temperature, chunk, "value"
                )
            else:
                logits = engine(
                    input_ids=mb.input_ids,
                    attention_mask=mb.attention_mask,
                    position_ids=mb.position_ids,
                    logits_to_keep=mb.targets.shape[1] + 1,
                ).logits[:, :-1]
                logp = token_logprobs(logits, mb.targets)
            per_token = -advantages[lo : lo + mbs, None] * logp * mb.mask
            engine.backward(per_token.sum() / mb.mask.sum().clamp(min=1))
            engine.step()
        seconds.append(time.perf_counter() - t0)
    out.write_text(json.dumps({"seconds": seconds}))


def in_subprocess(fn: str, overrides: list[str], payload: dict) -> dict:
    """Run `fn` of this file in a fresh process (vLLM binds threads process-wide)."""
    with tempfile.TemporaryDirectory() as tmp:
        args_path, out = Path(tmp) / "args.json", Path(tmp) / "out.json"
        args_path.write_text(json.dumps({"overrides": overrides, **payload}))
        env = os.environ | {"VLLM_LOGGING_LEVEL": "WARNING"}
        subprocess.run(
            [sys.executable, __file__, "--internal", fn, str(args_path), str(out)],
            cwd=REPO,
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        return json.loads(out.read_text())


def raw_engines(args, overrides: list[str]) -> tuple[dict, dict]:
    """Raw vLLM then raw DeepSpeed on the run's prompts; with `--raw-cache FILE`, measured
    once per placement and step count and reused (they do not depend on the mode)."""
    key = f"{args.placement}/{args.steps}"
    cache = (
        json.loads(Path(args.raw_cache).read_text())
        if args.raw_cache and Path(args.raw_cache).exists()
        else {}
    )
    if key in cache:
        print(f"raw engine timings from {args.raw_cache} ({key})", flush=True)
        return cache[key]["vllm"], cache[key]["deepspeed"]
    prompts = step_prompts(overrides, args.steps)
    print("raw vLLM on the same prompts ...", flush=True)
    vllm = in_subprocess("raw_vllm", overrides, {"prompts": prompts})
    print("raw DeepSpeed on the same batches ...", flush=True)
    payload = {"batches": vllm["batches"], "same_math": False}
    ds = in_subprocess("raw_deepspeed", overrides, payload)
    print("raw DeepSpeed with the learner's log-prob and entropy function ...", flush=True)
    ds["same_math_seconds"] = in_subprocess(
        "raw_deepspeed", overrides, payload | {"same_math": True}
    )["seconds"]
    if args.raw_cache:
        cache[key] = {"vllm": vllm, "deepspeed": ds}
        Path(args.raw_cache).write_text(json.dumps(cache))
    return vllm, ds


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["sync", "one_step_off"], default="sync")
    parser.add_argument("--placement", choices=list(PLACEMENTS), default="split")
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="steps run; the first is warm-up (and in one_step_off the last, "
        "which has nothing to overlap with, is not counted either)",
    )
    parser.add_argument(
        "--raw-cache",
        default="",
        help="JSON file to keep and reuse the raw engines' timings across modes",
    )
    parser.add_argument(
        "--cpu-shares",
        action="store_true",
        help="also sample every process's CPU once a second during the run and print each "
        "role's share of the cores while the learner trains and while the engine generates "
        "(costs about 1%% of a core)",
    )
    parser.add_argument("--internal", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2 + (args.mode == "one_step_off"):
        parser.error("--steps: need at least one measured step after the warm-up")
    if args.internal:
        fn, args_path, out = args.internal
        payload = json.loads(Path(args_path).read_text())
        overrides = payload.pop("overrides")
        {"raw_vllm": raw_vllm, "raw_deepspeed": raw_deepspeed}[fn](
            overrides, *payload.values(), Path(out)
        )
        return

    overrides = cohort_overrides(args.mode, args.placement, args.steps)
    print(
        f"cohort train configs/demo.yaml, mode {args.mode}, placement {args.placement}, "
        f"{args.steps} steps (step 1 is warm-up)",
        flush=True,
    )
    rows, peak, shares = run_cohort(overrides, args.cpu_shares)
    rows = rows[1:]
    if args.mode == "one_step_off":
        # The last step has no next batch to generate: it is train + push only, which would
        # flatter the mode. Only steps with a batch generated alongside them are counted.
        rows = rows[:-1]
    vllm, ds = raw_engines(args, overrides)
    raw_gen, raw_train = mean(vllm["seconds"][1:]), mean(ds["seconds"][1:])
    same_math_train = mean(ds["same_math_seconds"][1:]) if "same_math_seconds" in ds else None

    def phase(key: str) -> float:
        return mean([r.get(key, 0.0) for r in rows])

    step_s, train_s, push_s = phase("time/step"), phase("time/train"), phase("time/push")
    waited = phase("time/generate_wait")
    raw_tokens = mean([sum(len(c) for _, c in b) for b in vllm["batches"][1:]])
    raw_real_tokens = mean([sum(len(p) + len(c) for p, c in b) for b in vllm["batches"][1:]])
    # The raw engines one after the other in sync mode, side by side (the slower one sets the
    # pace) when generation overlaps training on cores of its own. Each raw engine was timed
    # with every core of its placement, so on shared cores overlapping cannot beat their sum.
    serial = args.mode == "sync" or args.placement == "shared"
    pace = (lambda gen, train: gen + train) if serial else max
    raw_step = pace(raw_gen, raw_train)
    # Sampling makes the run and the raw engine generate different amounts (the run's policy
    # changes after each update, the raw engine's does not): the raw engines' seconds per
    # generated token and per trained token, times the run's tokens, are the same work.
    gen_scale = phase("rollout/tokens") / raw_tokens
    train_scale = phase("train/real_tokens") / raw_real_tokens
    raw_step_same_work = pace(raw_gen * gen_scale, raw_train * train_scale)
    result = {
        "step_s": step_s,
        "generate_s": phase("time/generate"),
        "reward_s": phase("time/reward"),
        "train_s": train_s,
        "logprobs_s": phase("time/train_logprobs"),
        "push_s": push_s,
        "generate_wait_s": waited,
        "driver_s": step_s - waited - train_s - push_s,
        "overhead_frac": (step_s - raw_step) / step_s,
        "raw_step_same_work_s": raw_step_same_work,
        "overhead_same_work_frac": (step_s - raw_step_same_work) / step_s,
        "push_frac": push_s / step_s,
        "tokens_per_s": phase("rollout/tokens") / step_s,
        "generated_tokens": phase("rollout/tokens"),
        "padding_frac": phase("train/padding_frac"),
        "mfu": phase("perf/mfu"),
        "learner_peak_gflops": peak["peak_flops_per_s"] / 1e9,
        "learner_tokens_per_s": phase("perf/learner_tokens_per_s"),
        "generate_tokens_per_s": phase("perf/generate_tokens_per_s"),
        "raw_vllm_generate_s": raw_gen,
        "raw_vllm_tokens": raw_tokens,
        "raw_deepspeed_train_s": raw_train,
        "gen_vs_raw_vllm": phase("time/generate") / raw_gen,
        # Sampling makes the two generate different token counts: compare seconds per token too.
        "gen_vs_raw_vllm_per_token": phase("time/generate") / (raw_gen * gen_scale),
        "train_vs_raw_deepspeed": train_s / raw_train,
        "raw_real_tokens": raw_real_tokens,
        "train_vs_raw_deepspeed_per_token": train_s / (raw_train * train_scale),
        # The same step with the learner's log-prob/entropy function: orchestration alone.
        "raw_deepspeed_same_math_train_s": same_math_train,
        "train_vs_raw_same_math": (
            train_s / (same_math_train * train_scale) if same_math_train else None
        ),
        "steps_per_hour": 3600 / step_s,
        "mode": args.mode,
        "placement": args.placement,
        "measured_steps": len(rows),
    }
    print()
    print(f"{'phase':<28}{'seconds/step':>14}")
    for key in (
        "generate_s",
        "reward_s",
        "train_s",
        "logprobs_s",
        "push_s",
        "generate_wait_s",
        "driver_s",
        "step_s",
        "raw_vllm_generate_s",
        "raw_deepspeed_train_s",
        "raw_deepspeed_same_math_train_s",
    ):
        if result[key] is not None:
            print(f"{key:<28}{result[key]:>14.2f}")
    if result["train_vs_raw_same_math"]:
        print(
            "train vs raw DeepSpeed with the learner's log-prob/entropy function "
            f"{result['train_vs_raw_same_math']:.2f}x per trained token"
        )
    print(
        f"generated tokens/step {result['generated_tokens']:.0f} (raw vLLM {raw_tokens:.0f}), "
        f"{result['tokens_per_s']:.1f} tokens/s over the whole step"
    )
    print(
        f"generate vs raw vLLM {result['gen_vs_raw_vllm']:.2f}x (per token "
        f"{result['gen_vs_raw_vllm_per_token']:.2f}x), train vs raw DeepSpeed "
        f"{result['train_vs_raw_deepspeed']:.2f}x (per token "
        f"{result['train_vs_raw_deepspeed_per_token']:.2f}x), push "
        f"{100 * result['push_frac']:.1f}%, {result['steps_per_hour']:.0f} steps/hour"
    )
    print(
        f"orchestration overhead {100 * result['overhead_same_work_frac']:.1f}% of the step "
        f"against the raw engines doing the run's work (per-token scaled, "
        f"{result['raw_step_same_work_s']:.1f} s); {100 * result['overhead_frac']:.1f}% against "
        f"their own samples ({raw_step:.1f} s)"
    )
    print(
        f"learner MFU {100 * result['mfu']:.1f}% of its peak "
        f"({result['learner_peak_gflops']:.0f} GFLOP/s: {peak['ranks'][0]['source']}), "
        f"{result['learner_tokens_per_s']:.0f} tokens/s trained, "
        f"{result['generate_tokens_per_s']:.0f} tokens/s generated"
    )
    for phase_name, share in shares.items():
        top = ", ".join(f"{k} {v:.1f}%" for k, v in list(share["percent"].items())[:10])
        print(f"cores while {phase_name} ({share['samples']} s, % of one core): {top}")
    result["cpu_shares"] = shares
    print(json.dumps(result))


if __name__ == "__main__":
    main()
