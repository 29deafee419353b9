"""Built-in reward functions, selected in the config by `reward.functions[i].name`.

Every function has the reward signature `fn(completion, *, prompt, answer, row, **kwargs) -> float`
and is pure: same inputs, same score, no state. Guaranteed: `math_answer` and `format_match`
return exactly 0.0 or 1.0 and never raise on any string input. Not guaranteed: a time limit;
math-verify runs with its signal-based timeouts off (they fail outside the main thread, and reward
actors may call from threads), so the wall-clock limit is the sandbox's job (issue 4).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from math_verify import parse, verify

# A number: optional minus, then digits grouped by thousands commas (`1,234,567`) or plain
# digits, then optional decimals. `(?<![\d.])` stops a match from starting right after a digit
# or a dot, so `8-5` yields 5 (not -5) and `3.14` is one number (not 3 and 14).
_NUMBER = r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_PLAIN_NUMBER_RE = re.compile(r"\s*-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*")
_BOXED = "\\boxed{"

DEFAULT_FORMAT = r"<think>.*?</think>\s*<answer>.*?</answer>"
"""DeepSeek-R1's format: reasoning in <think> tags, then the answer in <answer> tags."""


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` in `text` (nested braces kept), else None.

    An unclosed `\\boxed{` (a completion cut at `max_new_tokens`) is skipped, so an earlier
    complete box is used if there is one.
    """
    start = text.rfind(_BOXED)
    while start != -1:
        depth, i = 1, start + len(_BOXED)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len(_BOXED) : i - 1]
        start = text.rfind(_BOXED, 0, start)
    return None


def last_number(text: str) -> str | None:
    """The last number written in `text` (see `_NUMBER`), as written, else None."""
    matches = _NUMBER_RE.findall(text)
    return matches[-1] if matches else None


def _as_float(text: str) -> float | None:
    """`text` as a float if it is one plain number (`-1,234.5`), else None."""
    if not _PLAIN_NUMBER_RE.fullmatch(text):
        return None
    return float(text.replace(",", ""))


def answers_equal(gold: str, predicted: str) -> bool:
    """Whether `predicted` is mathematically equal to `gold`.

    Two plain numbers are compared as floats (fast, no sympy); anything else goes through
    math-verify, both sides parsed as LaTeX inside `\\boxed{}` (so `\\frac12`, `0.5` and `1/2`
    agree), with its signal-based timeouts off.
    """
    gold_number, predicted_number = _as_float(gold), _as_float(predicted)
    if gold_number is not None and predicted_number is not None:
        return gold_number == predicted_number
    gold_parsed = parse(_BOXED + gold + "}", parsing_timeout=None)
    predicted_parsed = parse(_BOXED + predicted + "}", parsing_timeout=None)
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))


def math_answer(completion: str, *, prompt: str, answer: str, row: dict, **kwargs) -> float:
    """1.0 if the completion's final answer equals the reference `answer`, else 0.0.

    The final answer is the content of the last complete `\\boxed{...}` if the completion has
    one, otherwise the last number in the text: integers, decimals (`3.5`), negatives (`-7`) and
    thousands commas (`1,234` = 1234). A completion with neither, or an empty reference, scores
    0.0. Equality as in `answers_equal`: floats for two plain numbers, math-verify otherwise.
    """
    predicted = last_boxed(completion)
    if predicted is None:
        predicted = last_number(completion)
    if predicted is None or not predicted.strip() or not answer.strip():
        return 0.0
    return 1.0 if answers_equal(answer.strip(), predicted.strip()) else 0.0


def format_match(
    completion: str,
    *,
    prompt: str,
    answer: str,
    row: dict,
    pattern: str = DEFAULT_FORMAT,
    **kwargs,
) -> float:
    """1.0 if the whole stripped completion matches the regex `pattern` (with re.DOTALL), else 0.0.

    The default `pattern` is DeepSeek-R1's `<think>.*?</think>\\s*<answer>.*?</answer>`; text
    before `<think>` or after `</answer>` (other than whitespace) fails it.
    """
    return 1.0 if re.fullmatch(pattern, completion.strip(), re.DOTALL) else 0.0


BUILTIN: dict[str, Callable[..., float]] = {"math_answer": math_answer, "format": format_match}
"""Built-in reward functions by their config name."""
