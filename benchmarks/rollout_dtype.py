"""vLLM's CPU generation in bfloat16 against float32 (`model.rollout_dtype`), side by side.

Workloads, on the demo model (SmolLM2-135M-Instruct): the demo's step (8 prompts of 45 tokens x
8 samples of exactly 24 tokens) and the multi-turn demo's first turn (4 prompts of 300 tokens
x 8 samples of exactly 40 tokens). One engine per dtype, in this process, one after the other,
each warmed up on one prompt first.

    python benchmarks/rollout_dtype.py

Prints the CPU's bfloat16 support (AVX-512 BF16 or AMX: without either, bfloat16 matmuls are
converted, not native), tokens per second for each dtype and workload, the float32/bfloat16
ratio, and as its last line one JSON object.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.hardware import NATIVE_BF16_FLAGS, cpu_flags  # noqa: E402

WORKLOADS = {"demo step": (8, 45, 8, 24), "multi-turn first turn": (4, 300, 8, 40)}
"""name -> (prompts, prompt tokens, samples per prompt, completion tokens)"""


def cpu_bf16_support() -> list[str]:
    return [f for f in ("avx512f", *NATIVE_BF16_FLAGS) if f in cpu_flags()]


def main() -> None:
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="2")
    from vllm import LLM, SamplingParams

    from cluster.models import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    rng = random.Random(0)
    results: dict[str, dict[str, float]] = {}
    for dtype in ("bfloat16", "float32"):
        llm = LLM(path, dtype=dtype, max_model_len=512, enforce_eager=True, seed=0,
                  enable_chunked_prefill=False, max_num_batched_tokens=4096)  # fmt: skip
        for name, (n_prompts, prompt_len, group, completion) in WORKLOADS.items():
            prompts = [{"prompt_token_ids": [rng.randrange(100, 40000) for _ in range(prompt_len)]}
                       for _ in range(n_prompts)]  # fmt: skip
            params = SamplingParams(n=group, max_tokens=completion, min_tokens=completion,
                                    temperature=1.0, seed=0)  # fmt: skip
            llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - t0
            tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
            results.setdefault(name, {})[dtype] = tokens / seconds
            print(f"{dtype:9s} {name:22s} {tokens} tokens in {seconds:6.1f} s: "
                  f"{tokens / seconds:6.1f} tokens/s", flush=True)  # fmt: skip
        del llm
    support = cpu_bf16_support()
    print(f"CPU: {', '.join(support) or 'no AVX-512, no native bfloat16'}")
    for name, r in results.items():
        print(f"{name}: float32 / bfloat16 = {r['float32'] / r['bfloat16']:.2f}x")
    print(json.dumps({"cpu_flags": support, "tokens_per_s": results}))


if __name__ == "__main__":
    main()
