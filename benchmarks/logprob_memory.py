"""Peak learner memory of one training micro-batch with full logits against the output head in
chunks (`learner.logprob_chunk_tokens`), side by side, at 256, 1k and 4k tokens per sequence.

Workload, on the demo model (SmolLM2-135M-Instruct, vocabulary 49152) in float32: one sequence
of a 32-token prompt and a completion filling the rest, the learner's own log-probability and
entropy function (`learner/head.py: completion_token_stats`) with the entropy's gradient on,
and a policy-gradient-shaped loss of both, then backward. Each variant runs in a fresh process,
once to warm up and once measured; peak memory is the process's peak resident set over what it
held after loading the model and making the inputs, so it counts activations, logits and
gradients.

    python benchmarks/logprob_memory.py [--tokens 256,1024,4096] [--chunk 1024]

Prints, per length: peak MiB and KiB per token for each variant, the chunked/full memory ratio,
and the time of a forward and backward for each; as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT_TOKENS = 32


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(tokens: int, chunk: int) -> dict[str, float]:
    """One variant in this process: the peak memory over the loaded state, and the time."""
    import torch
    from transformers import AutoModelForCausalLM

    from cluster.models import SMOLLM2, resolve_model
    from learner.head import completion_token_stats

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(SMOLLM2), dtype=torch.float32)
    model.train()
    columns = tokens - PROMPT_TOKENS
    ids = torch.randint(0, model.config.vocab_size, (1, tokens))
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": torch.arange(tokens).unsqueeze(0),
    }
    targets = ids[:, PROMPT_TOKENS:]
    advantages = torch.randn(1, columns)

    def step() -> float:
        started = time.perf_counter()
        logp, entropy = completion_token_stats(model, inputs, targets, 1.0, chunk, "grad")
        loss = -(logp * advantages).mean() - 0.01 * entropy.mean()
        loss.backward()
        model.zero_grad(set_to_none=False)
        return time.perf_counter() - started

    step()  # warm-up: gradient buffers exist from here on, as in training
    base = rss_kib()
    seconds = step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_mib": (peak - base) / 1024, "seconds": seconds}


def run_variant(tokens: int, chunk: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", f"{tokens},{chunk}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="256,1024,4096")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one variant
        tokens, chunk = map(int, args.one.split(","))
        print(json.dumps(measure(tokens, chunk)))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    print(f"SmolLM2-135M-Instruct, float32, {os.cpu_count()} threads, chunk {args.chunk}")
    print(f"{'tokens':>6} {'variant':>8} {'peak MiB':>9} {'KiB/token':>9} {'fwd+bwd s':>9}")
    results = {}
    for tokens in map(int, args.tokens.split(",")):
        full, chunked = run_variant(tokens, 0), run_variant(tokens, args.chunk)
        for name, r in (("full", full), ("chunked", chunked)):
            per_token = r["peak_mib"] * 1024 / tokens
            print(
                f"{tokens:>6} {name:>8} {r['peak_mib']:>9.0f} {per_token:>9.1f} "
                f"{r['seconds']:>9.2f}"
            )
        ratio = chunked["peak_mib"] / full["peak_mib"]
        slower = chunked["seconds"] / full["seconds"]
        print(f"{tokens:>6} chunked/full: memory {ratio:.2f}x, time {slower:.2f}x")
        results[tokens] = {"full": full, "chunked": chunked, "memory_ratio": ratio}
    print(json.dumps({"chunk": args.chunk, "results": results}))


if __name__ == "__main__":
    main()
