"""A reward function with a fixed cost per sample, standing in for a verifier or a test run in
`benchmarks/stream.py` (`--reward-ms`)."""

import time


def answer_slowly(completion: str, answer: str = "", seconds: float = 0.05, **_) -> float:
    """1 when the expected answer appears in the completion, after `seconds` of waiting."""
    time.sleep(seconds)
    return float(bool(answer) and answer in completion)
