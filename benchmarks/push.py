"""Weight push on CPU: `object_store` against `gloo`, with 1 and 2 engines.

One learner rank (the demo config's model and dtypes: SmolLM2-135M-Instruct, float32 master
weights, bfloat16 engines) pushes its weights to the engines through each transport, as the
driver does after every step (the engines reload them through vLLM's layerwise reload either
way). Each push is timed from the driver's call to the last engine holding the new version;
the first push of each setting is a warm-up and not counted.

    python benchmarks/push.py [--pushes 5] [--model demo|tiny]

Prints a table (median and min seconds per push, and each transport's time relative to
`object_store` with the same engines) and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--model", choices=["demo", "tiny"], default="demo")
    args = parser.parse_args()

    import ray

    from cluster.models import TINY_LLAMA, resolve_model
    from cluster.transport import make_transport
    from core.config import load_config
    from learner.ranks import LearnerRanks
    from rollout.pool import RolloutPool

    env = {"PYTHONPATH": str(REPO)}
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env})
    base = ["cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5", "rollout.kv_cache_gib=1"]
    if args.model == "tiny":
        base += [f"model.path={TINY_LLAMA}", "model.rollout_dtype=float32"]
    first = load_config("configs/demo.yaml", base)
    model = resolve_model(first.model.path)
    learner = LearnerRanks(first, model, "bench-push")
    print(f"model {args.model} ({model}), engines in {first.model.rollout_dtype}")

    results = {}
    for engines in (1, 2):
        for transport in ("object_store", "gloo"):
            overrides = [*base, f"cluster.rollout_engines={engines}"]
            cfg = load_config(
                "configs/demo.yaml", [*overrides, f"cluster.weight_transport={transport}"]
            )
            pool = RolloutPool(
                cfg, model, f"bench-push-{transport}-{engines}", weight_transport=transport
            )
            push = make_transport(cfg, learner, pool)
            seconds = []
            for version in range(args.pushes + 1):
                t0 = time.perf_counter()
                push.push(learner, pool, version)
                seconds.append(time.perf_counter() - t0)
            sums = pool.weights_checksums()
            assert len(set(sums)) == 1, "engines differ after the push"
            pool.shutdown()
            timed = seconds[1:]  # the first push is a warm-up
            results[f"{transport}, {engines} engine{'s' * (engines > 1)}"] = {
                "median_s": statistics.median(timed),
                "min_s": min(timed),
                "checksum": sums[0][:16],
            }
            print(
                f"{transport:12s} {engines} engine(s): " + " ".join(f"{s:.2f}" for s in timed),
                flush=True,
            )

    print("\n| transport, engines | median s | min s | vs object_store |")
    print("|---|---|---|---|")
    for name, r in results.items():
        same = results[f"object_store, {name.split(', ')[1]}"]["median_s"]
        print(f"| {name} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['median_s'] / same:.2f}x |")
    checksums = {r["checksum"] for r in results.values()}
    print(f"all engines hold the same weights whatever the transport: {len(checksums) == 1}")
    print(json.dumps({"model": args.model, "pushes": args.pushes, "results": results}))
    learner.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
