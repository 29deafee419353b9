"""Scoring throughput of `code_tests` in the reward sandbox, in completions per second.

Scores 200 completions (25 groups of 8, three problems in turn, each with 3 assert tests; in each
group half the completions are right and half fail one or more tests) in a `RewardActor` of 1
and of 2 sandbox worker processes, after a warm-up call, and checks every score against the
expected one. `--stdin` uses stdin/stdout cases instead of asserts. Prints one line per setting,
then a JSON object as the last line. Usage: python benchmarks/code_tests_throughput.py [--n 200]
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

GROUP_SIZE = 8
PROBLEMS = [
    (
        ["assert add(1, 2) == 3", "assert add(-4, 4) == 0", "assert add(10, 5) == 15"],
        "def add(a, b):\n    return a + b\n",
        "def add(a, b):\n    return a - b\n",
    ),
    (
        ["assert rev('abc') == 'cba'", "assert rev('') == ''", "assert rev('ab') == 'ba'"],
        "def rev(s):\n    return s[::-1]\n",
        "def rev(s):\n    return s\n",
    ),
    (
        ["assert fib(1) == 1", "assert fib(10) == 55", "assert fib(20) == 6765"],
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n"
        "        a, b = b, a + b\n    return a\n",
        "def fib(n):\n    return n\n",
    ),
]
STDIN_PROBLEM = (
    [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "5 5\n", "output": "10\n"},
        {"input": "-1 1\n", "output": "0\n"},
    ],
    "a, b = map(int, input().split())\nprint(a + b)\n",
    "a, b = map(int, input().split())\nprint(a * b)\n",
)


def make_groups(n: int, stdin: bool) -> tuple[list[Group], list[list[float]]]:
    """Groups of completions and the score each must get."""
    groups, expected = [], []
    for g in range(n // GROUP_SIZE):
        tests, right, wrong = STDIN_PROBLEM if stdin else PROBLEMS[g % len(PROBLEMS)]
        fields = {"tests": tests}
        prompt = Prompt(id=f"bench:{g}", text="q", token_ids=[1], answer="", fields=fields)
        codes = [right if j % 2 == 0 else wrong for j in range(GROUP_SIZE)]
        texts = [f"Here is the code:\n```python\n{c}```\n" for c in codes]
        groups.append(Group(prompt, [Sample([1], t, [], "stop", 0) for t in texts]))
        passes_wrong = sum(_passes(wrong, t) for t in tests) / len(tests)
        expected.append([1.0 if j % 2 == 0 else passes_wrong for j in range(GROUP_SIZE)])
    return groups, expected


def _passes(code: str, test) -> bool:
    """Whether `code` passes `test`, computed here by plain execution (the expected score)."""
    if isinstance(test, dict):
        a, b = map(int, test["input"].split())
        return str(a * b if "a * b" in code else a + b) == test["output"].strip()
    namespace: dict = {}
    exec(code, namespace)
    try:
        exec(test, namespace)
    except AssertionError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="completions to score")
    parser.add_argument("--stdin", action="store_true", help="stdin/stdout cases, not asserts")
    args = parser.parse_args()
    groups, expected = make_groups(args.n, args.stdin)
    n = sum(len(g.samples) for g in groups)
    results: dict[str, float] = {"completions": n, "tests_per_completion": 3}
    with tempfile.TemporaryDirectory() as base_dir:
        for workers in (1, 2):
            actor = RewardActor(
                [{"name": "code_tests"}],
                "exclude",
                0.0,
                base_dir,
                {"workers": workers, "timeout_s": 60.0},
            )
            try:
                actor.score(groups[:2])  # warm-up
                t0 = time.perf_counter()
                scores = actor.score(groups)
                seconds = time.perf_counter() - t0
            finally:
                actor.close()
            got = [[s.reward for s in row] for row in scores]
            assert got == expected, f"scores differ from the expected ones: {got[:2]}"
            results[f"workers_{workers}_per_s"] = n / seconds
            print(
                f"sandbox, {workers} worker(s): {n / seconds:7.1f} completions/s "
                f"({seconds:.2f} s for {n} x 3 tests)",
                flush=True,
            )
    print(json.dumps({k: round(v, 2) for k, v in results.items()}))


if __name__ == "__main__":
    main()
