"""Built-in reward functions, selected in the config by `reward.functions[i].name`.

Every function has the reward signature `fn(completion, *, prompt, answer, row, **kwargs)` and
is pure: same inputs, same score, no state (`num_tokens` is passed to those that name it).
Guaranteed: `math_answer`, `exact_match`, `regex_match` and `format` return exactly 0.0 or 1.0
and never raise on any completion; `length` raises only on bad kwargs. Code
execution (`code_tests`) and the HTTP reward model (`remote_rm`) live in their own files. Not
guaranteed: a time limit; math-verify runs with its signal-based timeouts off (they fail outside
the main thread), so the wall-clock limit is the sandbox's job (`reward/sandbox.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from reward.code_exec import code_tests
from reward.remote_rm import remote_rm

# A number: optional minus, then digits grouped by thousands commas (`1,234,567`) or plain
# digits, then optional decimals. `(?<![\d.])` stops a match from starting right after a digit
# or a dot, so `8-5` yields 5 (not -5) and `3.14` is one number (not 3 and 14).
_NUMBER = r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_PLAIN_NUMBER_RE = re.compile(r"\s*-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*")
_BOXED = "\\boxed{"
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
EXTRACT = ("auto", "answer_tag", "boxed", "last_number", "none")
"""Ways to find the final answer in a completion (see `extract_answer`)."""

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
    # Imported here: math-verify and sympy take seconds to import, and every process that
    # imports this module (driver, reward actors) would pay that whatever its functions.
    from math_verify import parse, verify

    gold_parsed = parse(_BOXED + gold + "}", parsing_timeout=None)
    predicted_parsed = parse(_BOXED + predicted + "}", parsing_timeout=None)
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))


def last_answer_tag(text: str) -> str | None:
    """Content of the last complete `<answer>...</answer>` in `text`, else None."""
    matches = _ANSWER_TAG_RE.findall(text)
    return matches[-1] if matches else None


def extract_answer(text: str, how: str = "auto") -> str | None:
    """The final answer written in `text`, stripped, or None when there is none (or it is empty).

    `answer_tag`: inside the last complete `<answer>...</answer>`, its last `\\boxed{}` if it has
    one, else its whole content. `boxed`: the last complete `\\boxed{...}`. `last_number`: the
    last number (`last_number`). `auto`: `answer_tag` if the text has an answer tag, else
    `boxed` if it has a box, else `last_number`. `none`: the whole text.
    """
    if how not in EXTRACT:
        raise ValueError(f"extract={how!r} is not one of {EXTRACT} (reward.functions[i].kwargs)")
    tag = last_answer_tag(text) if how in ("auto", "answer_tag") else None
    if tag is not None:
        found = last_boxed(tag) or tag
    elif how == "answer_tag":
        found = None
    elif how in ("auto", "boxed"):
        found = last_boxed(text)
        if found is None and how == "auto":
            found = last_number(text)
    elif how == "last_number":
        found = last_number(text)
    else:
        found = text
    return found.strip() if found and found.strip() else None


def math_answer(
    completion: str, *, prompt: str, answer: str, row: dict, extract: str = "auto", **kwargs
) -> float:
    """1.0 if the completion's final answer equals the reference `answer`, else 0.0.

    The final answer is found by `extract_answer(completion, extract)`; by default the content
    of the last `<answer>` tag (or the last box inside it), else of the last complete
    `\\boxed{...}`, else the last number in the text: integers, decimals (`3.5`), negatives
    (`-7`) and thousands commas (`1,234` = 1234); a fraction like `1/2` counts only inside a box
    or tag (as a number it is `2`). No answer, or an empty reference, scores 0.0. Equality as in
    `answers_equal`: floats for two plain numbers, math-verify otherwise (`0.5` = `1/2` =
    `\\frac{1}{2}`); several boxes: the last one counts.
    """
    predicted = extract_answer(completion, extract)
    if predicted is None or not answer.strip():
        return 0.0
    return 1.0 if answers_equal(answer.strip(), predicted) else 0.0


def exact_match(
    completion: str,
    *,
    prompt: str,
    answer: str,
    row: dict,
    extract: str = "none",
    ignore_case: bool = False,
    **kwargs,
) -> float:
    """1.0 if the extracted answer (`extract_answer`; default the whole completion) equals the
    reference `answer` as text, else 0.0. Both sides are stripped and runs of whitespace become
    one space; `ignore_case` compares case-folded. An empty reference or no answer scores 0.0."""
    predicted = extract_answer(completion, extract)
    if predicted is None or not answer.strip():
        return 0.0
    a, b = " ".join(predicted.split()), " ".join(answer.split())
    if ignore_case:
        a, b = a.casefold(), b.casefold()
    return 1.0 if a == b else 0.0


def regex_match(
    completion: str,
    *,
    prompt: str,
    answer: str,
    row: dict,
    pattern: str = "",
    fullmatch: bool = False,
    **kwargs,
) -> float:
    """1.0 if the regex `pattern` matches the completion, else 0.0: anywhere (`re.search`), or
    the whole stripped completion with `fullmatch: true`; re.DOTALL. Each `{answer}` in the
    pattern is replaced by the reference answer, escaped (`The answer is {answer}\\.`)."""
    if not pattern:
        raise ValueError("regex_match needs kwargs: {pattern: REGEX} in its reward.functions entry")
    regex = re.compile(pattern.replace("{answer}", re.escape(answer.strip())), re.DOTALL)
    found = regex.fullmatch(completion.strip()) if fullmatch else regex.search(completion)
    return 1.0 if found else 0.0


def length(
    completion: str,
    *,
    prompt: str,
    answer: str,
    row: dict,
    num_tokens: int = -1,
    unit: str = "tokens",
    scale: float = 1.0,
    **kwargs,
) -> float:
    """`scale` x the completion's length in `unit` (`tokens`, or `chars`). With a negative weight
    it penalises every token (e.g. `weight: -0.001`)."""
    return scale * _length(completion, num_tokens, unit)


def _length(completion: str, num_tokens: int, unit: str) -> int:
    if unit == "chars":
        return len(completion)
    if unit != "tokens":
        raise ValueError(f"unit={unit!r} must be `tokens` or `chars`")
    if num_tokens < 0:
        raise ValueError("unit=tokens needs the token count; none was given (use unit: chars)")
    return num_tokens


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


def environment_reward(completion: str, *, env_reward: float | None = None, **_: Any) -> float:
    """The reward the multi-turn environment gave the trajectory: the sum of its steps' rewards
    (an OpenEnv environment's observation rewards, or a user environment's `Step.reward`)."""
    if env_reward is None:
        raise ValueError(
            "the environment gave this trajectory no reward; `environment_reward` needs an "
            "environment whose steps return one (rollout.environment)"
        )
    return env_reward


BUILTIN: dict[str, Callable[..., Any]] = {
    "math_answer": math_answer,
    "exact_match": exact_match,
    "regex_match": regex_match,
    "format": format_match,
    "length": length,
    "code_tests": code_tests,
    "remote_rm": remote_rm,
    "environment_reward": environment_reward,
}
"""Built-in reward functions by their config name."""

BUILTIN_RANGES: dict[str, tuple[float, float]] = {
    "math_answer": (0.0, 1.0),
    "exact_match": (0.0, 1.0),
    "regex_match": (0.0, 1.0),
    "format": (0.0, 1.0),
    "code_tests": (0.0, 1.0),
}
"""Declared score ranges of the built-ins whose scores are bounded; `length` and `remote_rm`
take the user default unless the config gives `range`, as does `environment_reward`."""
