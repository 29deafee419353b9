"""Scoring throughput of the math verifier in the reward sandbox, in completions per second.

Scores the same 1,000 completions (125 groups of 8; a mix of boxed integers, boxed LaTeX
fractions and roots that go through math-verify, answer tags and bare last numbers) with
`math_answer` in a `RewardActor` sandbox of 1 and of 2 worker processes, after one warm-up
call, and in this process without a sandbox for reference. Prints one line per setting, then a
JSON object as the last line. Usage: python benchmarks/reward_throughput.py [--n 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.records import Group, Prompt, Sample  # noqa: E402
from reward.actor import RewardActor  # noqa: E402
from reward.builtin import math_answer  # noqa: E402
from reward.functions import RewardFunction  # noqa: E402
from reward.scoring import score_groups  # noqa: E402

GROUP_SIZE = 8


def completion(kind: int, n: int, wrong: int) -> tuple[str, str]:
    """(completion, reference answer) of one of four kinds; `wrong` (0/1) makes it wrong."""
    if kind == 0:
        return f"Adding up, {n} x 2 = {2 * n}. So \\boxed{{{2 * n + wrong}}}.", str(2 * n)
    if kind == 1:
        return f"We simplify to \\boxed{{\\frac{{{n}}}{{{2 * n + wrong}}}}}", "0.5"
    if kind == 2:
        return f"<think>root</think><answer>\\sqrt{{{n + wrong}}}</answer>", f"\\sqrt{{{n}}}"
    return f"First 12 - 5 = 7, then the total is {n + wrong}", str(n)


def make_groups(n: int) -> list[Group]:
    """`n // GROUP_SIZE` groups; group g has kind g % 4, and its odd samples are wrong."""
    groups = []
    for g in range(n // GROUP_SIZE):
        kind, base = g % 4, 3 + g % 97
        answer = completion(kind, base, 0)[1]
        prompt = Prompt(id=f"bench:{g}", text="q", token_ids=[1], answer=answer)
        texts = [completion(kind, base, j % 2)[0] for j in range(GROUP_SIZE)]
        groups.append(Group(prompt, [Sample([1], t, [], "stop", 0) for t in texts]))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="completions to score")
    args = parser.parse_args()
    groups = make_groups(args.n)
    n = sum(len(g.samples) for g in groups)
    results: dict[str, float] = {"completions": n}
    functions = [RewardFunction("math_answer", 1.0, {}, math_answer)]
    score_groups(functions, groups[:4], "exclude", 0.0)  # warm-up, as for the sandbox
    t0 = time.perf_counter()
    reference = score_groups(functions, groups, "exclude", 0.0)
    seconds = time.perf_counter() - t0
    results["in_process_per_s"] = n / seconds
    print(f"in process, no sandbox: {n / seconds:8.0f} completions/s", flush=True)
    with tempfile.TemporaryDirectory() as base_dir:
        for workers in (1, 2):
            t_start = time.perf_counter()
            actor = RewardActor(
                [{"name": "math_answer"}],
                "exclude",
                0.0,
                base_dir,
                {"workers": workers, "timeout_s": 30.0},
            )
            start_s = time.perf_counter() - t_start
            try:
                actor.score(groups[:4])  # warm-up: first calls into sympy in each worker
                t0 = time.perf_counter()
                scores = actor.score(groups)
                seconds = time.perf_counter() - t0
            finally:
                actor.close()
            assert [[s.reward for s in r] for r in scores] == [
                [s.reward for s in r] for r in reference
            ], "sandboxed scores differ from in-process ones"
            results[f"workers_{workers}_per_s"] = n / seconds
            results[f"workers_{workers}_start_s"] = start_s
            print(
                f"sandbox, {workers} worker(s):  {n / seconds:8.0f} completions/s "
                f"({seconds:.2f} s; start {start_s:.2f} s)",
                flush=True,
            )
    right = sum(s.reward for row in reference for s in row)
    results["accuracy"] = right / n
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
