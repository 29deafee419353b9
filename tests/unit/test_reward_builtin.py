"""Built-in reward functions: answer extraction, numeric and symbolic comparison, format."""

import pytest

from reward.builtin import BUILTIN, format_match, last_boxed, last_number, math_answer


def score(completion: str, answer: str) -> float:
    return math_answer(completion, prompt="q", answer=answer, row={})


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("so the answer is \\boxed{42}", "42", 1.0),
        ("first \\boxed{7}, then corrected: \\boxed{42}", "42", 1.0),  # last box wins
        ("\\boxed{42} but 7 is my favourite number", "42", 1.0),  # a box beats a later number
        ("\\boxed{\\frac{1}{2}}", "1/2", 1.0),  # nested braces, compared by math-verify
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("3 + 4 = 7", "7", 1.0),  # last number
        ("It is 8-5 = 3", "3", 1.0),  # `8-5` is not -5
        ("10 - 15 = -5", "-5", 1.0),
        ("The total is 1,234 apples.", "1234", 1.0),  # thousands commas, trailing full stop
        ("about 1,234,567", "1,234,567", 1.0),
        ("pi is roughly 3.14", "3.14", 1.0),
        ("it is 5.0", "5", 1.0),  # float equality
        ("3 + 4 = 8", "7", 0.0),  # wrong answer
        ("\\boxed{8}", "7", 0.0),
        ("I do not know", "7", 0.0),  # no number
        ("", "7", 0.0),
        ("\\boxed{}", "7", 0.0),  # an empty box is no answer
        ("7", "", 0.0),  # no reference
    ],
)
def test_math_answer(completion, answer, expected):
    assert score(completion, answer) == expected


def test_last_boxed_nested_and_unclosed():
    assert last_boxed("\\boxed{a{b}c} and \\boxed{\\sqrt{\\frac{1}{2}}}") == "\\sqrt{\\frac{1}{2}}"
    # A box cut off at max_new_tokens is skipped; the earlier complete one is used.
    assert last_boxed("\\boxed{3} then \\boxed{\\frac{1}{") == "3"
    assert last_boxed("no box") is None


def test_last_number_forms():
    assert last_number("a -12 b") == "-12"
    assert last_number("x 2.50 y") == "2.50"
    assert last_number("12,345 and 9") == "9"
    assert last_number("none") is None


def test_format_match():
    good = "<think>2 plus 2\nis 4</think>\n<answer>4</answer>"
    assert format_match(good, prompt="", answer="", row={}) == 1.0
    assert format_match(f"  {good}\n", prompt="", answer="", row={}) == 1.0  # stripped first
    assert format_match(good + " extra", prompt="", answer="", row={}) == 0.0  # whole text
    assert format_match("<answer>4</answer>", prompt="", answer="", row={}) == 0.0
    assert format_match("4", prompt="", answer="", row={}, pattern=r"\d+") == 1.0


def test_registry_names():
    assert BUILTIN == {"math_answer": math_answer, "format": format_match}
