"""Full fine-tuning against LoRA on the learner, side by side, with the KL off and on.

Workload: the demo model (SmolLM2-135M-Instruct, float32 learner), one batch of P=8 prompts x
G=8 samples (45 prompt tokens, 24 completion tokens, as the demo's), micro-batches of 16, AdamW,
one update per batch, rank-16 adapters on every projection (configs/lora.yaml).

    python benchmarks/lora.py [--steps 3] [--threads 2] [--engine]

Each case runs in a fresh process (so its peak memory is its own): one learner rank built as the
driver builds it, one warm-up step, then `--steps` timed steps on the same batch. Per case it
prints seconds per learner step, the peak resident memory during the timed steps, the bytes the
learner holds in weights, gradients, optimizer state and a reference copy, and what a weight
push moves: the seconds to put the merged bfloat16 weights in Ray's object store (the
`object_store` transport's learner side) and their bytes, against the bytes of the adapters
alone. Then the ratios, and as its last line one JSON object.

`--engine` measures the sampler side instead: the demo's bfloat16 vLLM engine on this CPU
generating P x G samples of exactly 24 tokens with merged weights (LoRA off), then an engine
started with `enable_lora` generating the same with a rank-16 adapter as a LoRA request (what
`learner.lora.push=adapter` runs), and the seconds to load that adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {
    "full": [],
    "full+kl": ["algorithm.kl_coef=0.04"],
    "lora16": ["learner.lora.rank=16", "learner.lora.alpha=32"],
    "lora16+kl": ["learner.lora.rank=16", "learner.lora.alpha=32", "algorithm.kl_coef=0.04"],
}
PROMPTS, GROUP, PROMPT_TOKENS, COMPLETION_TOKENS = 8, 8, 45, 24


def batch(vocab: int):
    """Random prompts and completions with 0/1 rewards, every group with spread."""
    from core.records import Group, Prompt, Sample, Score, ScoredGroup

    rng = random.Random(0)
    out = []
    for p in range(PROMPTS):
        prompt = Prompt(f"p{p}", "q", [rng.randrange(100, vocab) for _ in range(PROMPT_TOKENS)])
        samples = [
            Sample([rng.randrange(100, vocab) for _ in range(COMPLETION_TOKENS)], "", [-2.0] * 24,
                   "stop", 0)
            for _ in range(GROUP)
        ]  # fmt: skip
        rewards = [float(i % 2) for i in range(GROUP)]
        scores = [Score(r, {}) for r in rewards]
        out.append(ScoredGroup(Group(prompt, samples), scores, rewards, [True] * GROUP, [0.0] * 8))
    return out


def held_bytes(actor) -> dict[str, int]:
    """Bytes of the learner's weights, gradients, optimizer state and reference copy."""
    import torch

    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    module = actor.engine.module
    optimizer = actor.engine.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)
    states = [v for s in inner.state.values() for v in s.values()]
    return {
        "weights": size(module.parameters()),
        "grads": size(p.grad for p in module.parameters() if p.grad is not None),
        "optimizer": size(states),
        "reference": size(actor.ref_model.parameters()) if actor.ref_model is not None else 0,
        "trained_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }


class PeakRss:
    """The process's largest resident set size while the block runs, sampled every 50 ms."""

    def __enter__(self):
        import psutil

        self.peak, self.done = 0, threading.Event()
        process = psutil.Process()

        def sample():
            while not self.done.wait(0.05):
                self.peak = max(self.peak, process.memory_info().rss)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def one_case(name: str, steps: int, threads: int) -> dict:
    """Runs in its own process: build, warm up, time `steps` steps and a push export."""
    import ray
    import torch

    from cluster.models import resolve_model
    from core.config import load_config
    from learner import lora
    from learner.actor import LearnerActor

    overrides = [
        "rollout.prompts_per_step=8",
        "rollout.group_size=8",
        "rollout.max_new_tokens=24",
        "learner.micro_batch_size=16",
        f"learner.num_threads={threads}",
        *CASES[name],
    ]
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides)
    path = resolve_model(cfg.model.path)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    actor = LearnerActor(
        path, 0, model=cfg.model, rollout=cfg.rollout, learner=cfg.learner,
        algorithm=cfg.algorithm, trainer=cfg.trainer, use_gpu=False,
    )  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    actor.setup("127.0.0.1", port)
    setup_s = time.perf_counter() - t0
    data = batch(actor.engine.module.config.vocab_size)
    actor.train(data)  # warm-up
    times = []
    with PeakRss() as rss:
        for _ in range(steps):
            t0 = time.perf_counter()
            actor.train(data)
            times.append(time.perf_counter() - t0)
    held = held_bytes(actor)
    t0 = time.perf_counter()
    refs = actor.export_weights("bfloat16")
    export_s = time.perf_counter() - t0
    push_bytes = sum(t.numel() * t.element_size() for r in refs for t in ray.get(r).values())
    module = actor.engine.module
    adapter_bytes = 0
    if lora.is_lora(module):
        adapter_bytes = sum(t.numel() * 2 for t in lora.adapter_state(module, 0).values())
    ray.shutdown()
    times.sort()
    return {
        "case": name,
        "setup_s": setup_s,
        "train_s": times[len(times) // 2],
        "step_peak_rss_mib": rss.peak / 2**20,
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{f"{k}_mib": v / 2**20 for k, v in held.items() if k != "trained_params"},
        "trained_params": held["trained_params"],
        "push_export_s": export_s,
        "push_mib": push_bytes / 2**20,
        "adapter_mib": adapter_bytes / 2**20,
        "torch_threads": torch.get_num_threads(),
    }


def engine_case() -> dict:
    """Runs in its own process: tokens per second without and with a LoRA adapter."""
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="2")
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from cluster.models import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapter = LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False)
    get_peft_model(base, adapter).save_pretrained(folder)
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(100, 40000) for _ in range(PROMPT_TOKENS)]}
               for _ in range(PROMPTS)]  # fmt: skip
    params = SamplingParams(n=GROUP, max_tokens=COMPLETION_TOKENS, min_tokens=COMPLETION_TOKENS,
                            temperature=1.0, seed=0)  # fmt: skip
    common = dict(dtype="bfloat16", max_model_len=256, enforce_eager=True, seed=0,
                  enable_chunked_prefill=False, max_num_batched_tokens=4096)  # fmt: skip

    def tokens_per_s(llm, **kwargs) -> float:
        llm.generate(prompts[:1], params, use_tqdm=False, **kwargs)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False, **kwargs)
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        return tokens / (time.perf_counter() - t0)

    llm = LLM(path, **common)
    merged = tokens_per_s(llm)
    del llm
    llm = LLM(path, enable_lora=True, max_lora_rank=16, max_loras=2, **common)
    request = LoRARequest("bench", 1, folder)
    t0 = time.perf_counter()
    llm.llm_engine.add_lora(request)
    load_s = time.perf_counter() - t0
    with_adapter = tokens_per_s(llm, lora_request=request)
    return {"merged_tokens_per_s": merged, "adapter_tokens_per_s": with_adapter,
            "adapter_load_s": load_s, "threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", action="store_true", help="measure generation instead")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    if args.case == "engine":
        print("RESULT " + json.dumps(engine_case()), flush=True)
        return
    if args.case:
        print("RESULT " + json.dumps(one_case(args.case, args.steps, args.threads)), flush=True)
        return
    if args.engine:
        r = child(["--case", "engine"], "engine")
        print(
            f"generation, {PROMPTS} x {GROUP} samples of {COMPLETION_TOKENS} tokens: merged "
            f"{r['merged_tokens_per_s']:.1f} tokens/s, with a rank-16 adapter "
            f"{r['adapter_tokens_per_s']:.1f} tokens/s (x"
            f"{r['adapter_tokens_per_s'] / r['merged_tokens_per_s']:.2f}); adapter load "
            f"{r['adapter_load_s']:.2f} s"
        )
        print(json.dumps(r))
        return

    results = []
    for name in CASES:
        print(f"{name}: building and timing {args.steps} steps...", flush=True)
        results.append(
            child(
                ["--case", name, "--steps", str(args.steps), "--threads", str(args.threads)], name
            )
        )

    cols = ["case", "train_s", "step_peak_rss_mib", "weights_mib", "grads_mib", "optimizer_mib",
            "reference_mib", "trained_params", "push_export_s", "push_mib",
            "adapter_mib"]  # fmt: skip
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")
    by = {r["case"]: r for r in results}
    for kl in ("", "+kl"):
        full, lo = by[f"full{kl}"], by[f"lora16{kl}"]
        print(
            f"lora16{kl} / full{kl}: train time x{lo['train_s'] / full['train_s']:.2f}, "
            f"peak memory in the steps x{lo['step_peak_rss_mib'] / full['step_peak_rss_mib']:.2f}, "
            f"learner state (weights+grads+optimizer+reference) x"
            f"{state(lo) / state(full):.2f}, adapter bytes / merged push bytes "
            f"{lo['adapter_mib'] / lo['push_mib']:.3f}"
        )
    print(json.dumps(results))


def child(args: list[str], name: str) -> dict:
    """This script with `args` in a fresh process; its RESULT line."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{name} failed:\n{proc.stdout[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def state(r: dict) -> float:
    return r["weights_mib"] + r["grads_mib"] + r["optimizer_mib"] + r["reference_mib"]


if __name__ == "__main__":
    main()
