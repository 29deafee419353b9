"""`code_tests`: completions' Python run against assert and stdin/stdout tests in a subprocess."""

import time

import pytest

from reward.code_exec import code_tests, extract_code

ADD_TESTS = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]}


def run(completion: str, row: dict, **kwargs) -> float:
    return code_tests(completion, prompt="", answer="", row=row, **kwargs)


def test_extracts_the_last_fenced_block():
    text = "first\n```python\nx = 1\n```\nbetter:\n```py\nx = 2\n```\n"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_assert_tests_score_the_fraction_passed():
    completion = "Here:\n```python\ndef add(a, b):\n    print('noise')\n    return a + b\n```"
    assert run(completion, ADD_TESTS) == pytest.approx(2 / 3)  # the third test is wrong on purpose


def test_stdin_stdout_tests_and_json_string_field():
    row = {"cases": '[{"input": "2 3\\n", "output": "5\\n"}, {"input": "1 1", "output": "3"}]'}
    completion = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert run(completion, row, tests_field="cases") == 0.5


def test_broken_code_is_a_wrong_answer_not_a_failure():
    assert run("```python\ndef add(a, b) return\n```", ADD_TESTS) == 0.0  # syntax error
    assert run("import os\nos._exit(0)", ADD_TESTS) == 0.0
    assert run("raise SystemExit(0)", ADD_TESTS) == 0.0


def test_a_hanging_test_times_out_alone():
    code = "def add(a, b):\n    while a < 0:\n        pass\n    return a + b\n"
    t0 = time.monotonic()
    # add(-1, 1) loops forever: that test fails after per_test_s, the next one still runs.
    assert run(code, ADD_TESTS, per_test_s=0.5) == pytest.approx(1 / 3)
    assert time.monotonic() - t0 < 4


def test_memory_bomb_fails_its_test():
    code = "def add(a, b):\n    x = bytearray(2**31)\n    return a + b\n"
    assert run(code, ADD_TESTS, memory_mb=256) == 0.0


def test_rows_without_tests_are_a_data_error():
    with pytest.raises(ValueError, match="row field 'tests' holds no list of tests"):
        run("x = 1", {"other": 1})
