"""Toy reward functions for the smoke config and the learning test (tiny random model).

A user reward function takes the completion text and keyword arguments (prompt, answer, row,
plus the config's kwargs) and returns a float.
"""


def digit_fraction(completion: str, **_) -> float:
    """Fraction of the completion's characters that are digits (0 for an empty completion).

    A random character-level policy earns about 10/46 of the maximum: partial reward, and
    every group has spread, so GRPO has signal from the first step."""
    if not completion:
        return 0.0
    return sum(ch.isdigit() for ch in completion) / len(completion)
