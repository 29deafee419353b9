"""`code_tests`: completions' Python run in a confined subprocess against assert and stdin/stdout
tests that stay in this process (the attacks are in tests/adversarial/test_forgery.py)."""

import os
import time
from pathlib import Path

import pytest

from reward.code_exec import code_tests, extract_code
from reward.isolation import missing_for_strict

ADD_TESTS = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]}


def run(completion: str, row: dict, **kwargs) -> float:
    # best_effort: these tests are about scoring, and must pass on kernels without Landlock.
    kwargs.setdefault("isolation", "best_effort")
    return code_tests(completion, prompt="", answer="", row=row, **kwargs)


def test_extracts_the_last_fenced_block():
    text = "first\n```python\nx = 1\n```\nbetter:\n```py\nx = 2\n```\n"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_assert_tests_score_the_fraction_passed():
    completion = "Here:\n```python\ndef add(a, b):\n    print('noise')\n    return a + b\n```"
    assert run(completion, ADD_TESTS) == pytest.approx(2 / 3)  # the third test is wrong on purpose


def test_all_or_nothing():
    completion = "def add(a, b):\n    return a + b\n"
    assert run(completion, ADD_TESTS, all_or_nothing=True) == 0.0
    assert run(completion, {"tests": ADD_TESTS["tests"][:2]}, all_or_nothing=True) == 1.0


def test_stdin_stdout_tests_and_json_string_field():
    row = {"cases": '[{"input": "2 3\\n", "output": "5\\n"}, {"input": "1 1", "output": "3"}]'}
    completion = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert run(completion, row, tests_field="cases") == 0.5


def test_stdin_programs_must_exit_cleanly_and_print_little():
    case = {"tests": [{"input": "", "output": "1"}]}
    assert run("import sys\nprint(1)\nsys.exit(0)", case) == 1.0
    assert run("print(1)\nraise ValueError", case) == 0.0  # a crash after the right output
    assert run("import sys\nprint(1)\nsys.exit(3)", case) == 0.0
    assert run("print(1)\nprint('x' * 2**21)", case) == 0.0  # over MAX_OUTPUT_BYTES


def test_programs_end_as_python_ends_them():
    # Runners skip the interpreter's teardown (os._exit); what the end of a script does remains.
    code = (
        "import atexit, threading, time\n"
        "class Last:\n"
        "    def __del__(self):\n"
        "        print('teardown')\n"
        "def late():\n"
        "    time.sleep(0.05)\n"
        "    print('thread')\n"
        "keep = Last()\n"
        "threading.Thread(target=late).start()\n"
        "atexit.register(print, 'atexit')\n"
        "print(input())\n"
    )
    case = {"tests": [{"input": "main\n", "output": "main\nthread\natexit\nteardown\n"}]}
    assert run(code, case) == 1.0
    assert run("import sys\nsys.exit(256)", {"tests": [{"input": "", "output": ""}]}) == 1.0


def test_no_process_is_left_to_reap():
    # A runner killed before the program it forked leaves that program to this process.
    before = zombie_children()
    for _ in range(3):
        assert run("def add(a, b):\n    return a + b\n", ADD_TESTS) == pytest.approx(2 / 3)
        run("print(1)", {"tests": [{"input": "", "output": "1"}]})
    assert zombie_children() - before == set()


def zombie_children() -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


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


def test_the_whole_call_is_bounded_when_everything_hangs():
    # SIGALRM ignored: every test and every case ends at the judge's deadline, not the code's.
    hang = "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
    t0 = time.monotonic()
    assert run(hang + "def add(a, b):\n    time.sleep(60)\n", ADD_TESTS, per_test_s=0.5) == 0.0
    assert run(hang + "time.sleep(60)\n", ADD_TESTS, per_test_s=0.5) == 0.0  # the top level
    cases = {"tests": [{"input": "", "output": "1"}] * 3}
    assert run(hang + "time.sleep(60)\n", cases, per_test_s=0.5) == 0.0
    assert time.monotonic() - t0 < 3 * (0.5 * 4 + 5)


def test_memory_bomb_fails_its_test():
    code = "def add(a, b):\n    x = bytearray(2**31)\n    return a + b\n"
    assert run(code, ADD_TESTS, memory_mb=256) == 0.0


def test_rows_without_tests_are_a_data_error():
    with pytest.raises(ValueError, match="row field 'tests' holds no list of tests"):
        run("x = 1", {"other": 1})
    with pytest.raises(ValueError, match="only strings"):
        run("x = 1", {"tests": ["assert True", {"input": "", "output": ""}]})
    with pytest.raises(ValueError, match="kwargs.isolation"):
        run("x = 1", ADD_TESTS, isolation="paranoid")


def test_strict_isolation_runs_or_says_what_is_missing():
    code = "def add(a, b):\n    return a + b\n"
    if missing_for_strict():
        with pytest.raises(RuntimeError, match="best_effort"):
            run(code, ADD_TESTS, isolation="strict")
    else:
        assert run(code, ADD_TESTS, isolation="strict") == pytest.approx(2 / 3)
