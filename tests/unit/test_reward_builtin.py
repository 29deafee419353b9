"""Built-in reward functions: answer extraction, numeric and symbolic comparison, format."""

import pytest

from reward.builtin import (
    BUILTIN,
    exact_match,
    format_match,
    last_boxed,
    last_number,
    length,
    math_answer,
    regex_match,
)


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
    assert BUILTIN["math_answer"] is math_answer and BUILTIN["format"] is format_match


# --- math-verify edge cases, the other extractions, and the other built-ins -------------------


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("\\boxed{0.5}", "1/2", 1.0),  # equivalent forms: decimal vs fraction
        ("\\boxed{1/2}", "0.5", 1.0),
        ("\\boxed{\\frac{2}{4}}", "0.5", 1.0),
        ("\\boxed{0.50}", "\\frac12", 1.0),
        ("\\boxed{0.51}", "1/2", 0.0),
        ("the answer is 1/2", "0.5", 0.0),  # unboxed, a fraction's last number is 2
        ("no answer at all", "1/2", 0.0),
        ("\\boxed{3} or maybe \\boxed{1/2}", "0.5", 1.0),  # several boxes: the last counts
        ("\\boxed{1/2} or maybe \\boxed{3}", "0.5", 0.0),
        ("<think>it is 9</think><answer>\\frac{1}{2}</answer>", "0.5", 1.0),  # tag beats number
        ("<answer>7</answer> and then \\boxed{8}", "7", 1.0),  # a tag beats a box outside it
        ("<answer>so \\boxed{4} it is 5</answer>", "4", 1.0),  # a box inside the tag
        ("<answer></answer> 7", "7", 0.0),  # an empty tag is no answer
    ],
)
def test_math_answer_edge_cases(completion, answer, expected):
    assert score(completion, answer) == expected


def test_math_answer_extract_modes():
    text = "<answer>5</answer> \\boxed{6} then 7"
    got = {how: math_answer(text, prompt="", answer=a, row={}, extract=how)
           for how, a in [("answer_tag", "5"), ("boxed", "6"), ("last_number", "7")]}  # fmt: skip
    assert got == {"answer_tag": 1.0, "boxed": 1.0, "last_number": 1.0}
    assert math_answer("\\boxed{6}", prompt="", answer="6", row={}, extract="answer_tag") == 0.0
    with pytest.raises(ValueError, match="extract='tag' is not one of"):
        math_answer("1", prompt="", answer="1", row={}, extract="tag")


def test_exact_and_regex_match():
    assert exact_match("  Paris \n", prompt="", answer="Paris", row={}) == 1.0
    assert exact_match("New   York", prompt="", answer="New York", row={}) == 1.0
    assert exact_match("paris", prompt="", answer="Paris", row={}) == 0.0
    assert exact_match("paris", prompt="", answer="Paris", row={}, ignore_case=True) == 1.0
    tagged = "<answer>Paris</answer>"
    assert exact_match(tagged, prompt="", answer="Paris", row={}, extract="answer_tag") == 1.0
    assert exact_match("", prompt="", answer="", row={}) == 0.0  # no reference
    pattern = r"answer is {answer}\."
    assert regex_match("so the answer is 3.5.", prompt="", answer="3.5", row={},
                       pattern=pattern) == 1.0  # fmt: skip
    # `{answer}` is escaped: the `.` in 3.5 does not match any character.
    assert regex_match("the answer is 3x5.", prompt="", answer="3.5", row={}, pattern=pattern) == 0
    assert regex_match("abc", prompt="", answer="", row={}, pattern="b", fullmatch=True) == 0.0
    with pytest.raises(ValueError, match="regex_match needs kwargs"):
        regex_match("abc", prompt="", answer="", row={})


def test_length():
    assert length("abcd", prompt="", answer="", row={}, num_tokens=10, scale=-0.1) == -1.0
    assert length("abcd", prompt="", answer="", row={}, unit="chars") == 4.0


def test_all_builtins_registered():
    assert sorted(BUILTIN) == ["code_tests", "environment_reward", "exact_match", "format",
                               "length", "math_answer", "regex_match", "remote_rm"]  # fmt: skip


def test_math_verify_is_imported_only_when_a_symbolic_answer_is_compared():
    """math-verify and sympy take seconds to import: the driver and reward actors import this
    module whatever their functions, and pay it only when `math_answer` compares two answers
    that are not both plain numbers."""
    import subprocess
    import sys

    check = (
        "import sys; from reward.builtin import math_answer as m;"
        "m('\\\\boxed{42}', prompt='', answer='42', row={}); print('math_verify' in sys.modules);"
        "m('\\\\boxed{0.5}', prompt='', answer='\\\\frac{1}{2}', row={});"
        "print('math_verify' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.stdout.split() == ["False", "True"], done.stderr[-2000:]
