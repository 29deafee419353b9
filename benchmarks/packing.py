"""The learner's forward and backward on padded micro-batches against packed ones
(`learner.pack_sequences`), side by side, with the padding fraction of each.

Workloads, on the demo model (SmolLM2-135M-Instruct) in float32, the learner's own batching
(`learner/batch.py`) and log-probability function (`learner/head.py`) with a policy-gradient-
shaped loss and backward:

- `demo`: the demo's batch, 64 samples of a 45-token prompt and a completion of 2-24 tokens,
  micro-batches of 16 rows (padded) or the same 16 samples in one row (packed);
- `reasoning`: 8 samples of a 100-200-token prompt and a 20-300-token completion, micro-batches
  of 4, where lengths vary the way chain-of-thought completions do.

Each variant runs once to warm up, then `--repeats` times; the median is reported. About 6
minutes on 2 cores with AVX2.

    python benchmarks/packing.py [--repeats 1]

Prints per workload: seconds per batch and padding fraction for each layout, and the
packed/padded time ratio; as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORKLOADS = {
    "demo": (64, (45, 45), (2, 24), 16),
    "reasoning": (8, (100, 200), (20, 300), 4),
}
"""name -> (samples, prompt length range, completion length range, samples per micro-batch)"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from cluster.models import SMOLLM2, resolve_model
    from learner.batch import FlatSample, collate, pack
    from learner.head import completion_token_stats

    model = AutoModelForCausalLM.from_pretrained(resolve_model(SMOLLM2), dtype=torch.float32)
    model.train()
    vocab = model.config.vocab_size
    print(f"SmolLM2-135M-Instruct, float32, {torch.get_num_threads()} threads")
    results = {}
    for name in args.workloads.split(","):
        count, prompt_range, completion_range, per_micro = WORKLOADS[name]
        rng = random.Random(0)
        samples = []
        for _ in range(count):
            n_p, n_c = rng.randint(*prompt_range), rng.randint(*completion_range)
            ids = [rng.randrange(vocab) for _ in range(n_p + n_c)]
            samples.append(FlatSample(ids[:n_p], ids[n_p:], [0.0] * n_c, True))
        micro = [samples[i : i + per_micro] for i in range(0, count, per_micro)]
        row = {}
        for layout, make in (("padded", collate), ("packed", pack)):
            batches = [make(m, 0) for m in micro]

            def one_batch(batches=batches) -> float:
                started = time.perf_counter()
                for mb in batches:
                    inputs = {"input_ids": mb.input_ids, "position_ids": mb.position_ids}
                    if mb.attention_mask is not None:
                        inputs["attention_mask"] = mb.attention_mask
                    logp, entropy = completion_token_stats(
                        model, inputs, mb.targets, 1.0, 256, "value", mb.gather
                    )
                    (-(logp * mb.mask).sum() / mb.mask.sum()).backward()
                model.zero_grad(set_to_none=False)
                return time.perf_counter() - started

            one_batch()  # warm-up
            seconds = statistics.median(one_batch() for _ in range(args.repeats))
            real = sum(mb.real_tokens for mb in batches)
            padding = 1 - real / sum(mb.positions for mb in batches)
            row[layout] = {"seconds": seconds, "padding_frac": padding, "real_tokens": real}
            line = f"{name:>10} {layout:>7}: {seconds:7.2f} s per batch, padding {padding:.2f}"
            print(line, flush=True)
        row["packed_over_padded"] = row["packed"]["seconds"] / row["padded"]["seconds"]
        print(f"{name:>10} packed/padded time: {row['packed_over_padded']:.2f}x")
        results[name] = row
    print(json.dumps(results))


if __name__ == "__main__":
    main()
