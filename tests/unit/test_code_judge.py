"""`reward.code_judge`: dataset tests run in this process against code in a real runner."""

import time

import pytest

from reward.code_exec import RunnerProcess
from reward.code_judge import judge_asserts, same_output
from reward.isolation import Policy


def judge(code: str, tests: list[str], per_test_s: float = 2.0) -> list[bool]:
    def launch():
        spec = {"mode": "functions", "code": code, "load_s": per_test_s}
        return RunnerProcess.start(spec, Policy(memory_mb=512), "/tmp")

    deadline = time.monotonic() + per_test_s * (len(tests) + 1) + 5
    return judge_asserts(tests, launch, per_test_s=per_test_s, deadline=deadline)


HAS_CLOSE = """
def has_close_elements(numbers, threshold):
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
"""
HUMANEVAL_TEST = """
METADATA = {"author": "jt"}

def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True

check(has_close_elements)
"""


def test_humaneval_check_pattern():
    assert judge(HAS_CLOSE, [HUMANEVAL_TEST]) == [True]
    wrong = "def has_close_elements(numbers, threshold):\n    return True\n"
    assert judge(wrong, [HUMANEVAL_TEST]) == [False]


def test_multi_statement_tests_with_loops_and_comprehensions():
    code = "def square(x):\n    return x * x\n"
    tests = [
        "xs = [square(i) for i in range(5)]\nassert xs == [0, 1, 4, 9, 16]",
        "total = 0\nfor i in range(4):\n    total += square(i)\nassert total == 14",
        "assert all(square(i) >= 0 for i in range(-3, 3))",
        "assert square(3) == 10",
    ]
    assert judge(code, tests) == [True, True, True, False]


def test_expected_exceptions_arrive_as_builtin_classes():
    code = (
        "def parse(s):\n"
        "    if not s:\n"
        "        raise ValueError('empty')\n"
        "    return int(s)\n"
        "class Custom(Exception):\n"
        "    pass\n"
        "def odd():\n"
        "    raise Custom('x')\n"
    )
    tests = [
        "try:\n    parse('')\nexcept ValueError as e:\n    assert 'empty' in str(e)\n"
        "else:\n    raise AssertionError('no error')",
        "import pytest\nwith pytest.raises(ValueError):\n    parse('x')",  # int('x')
        "try:\n    odd()\nexcept ValueError:\n    pass",  # not a ValueError: fails
        "assert parse('12') == 12",
    ]
    assert judge(code, tests) == [True, True, False, True]


def test_class_instances_travel_as_handles():
    code = (
        "class Stack:\n"
        "    def __init__(self):\n"
        "        self.items = []\n"
        "    def push(self, x):\n"
        "        self.items.append(x)\n"
        "        return self\n"
        "    def pop(self):\n"
        "        return self.items.pop()\n"
        "    def __len__(self):\n"
        "        return len(self.items)\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "def count(stack):\n"
        "    return len(stack.items)\n"
    )
    tests = [
        "s = Stack()\ns.push(1).push(2)\nassert len(s) == 2 and s.pop() == 2 and s.items == [1]",
        "s = Stack()\ns.push('a')\nassert count(s) == 1",  # a handle goes back as an argument
        "assert Stack() == 5",  # the code's __eq__ is never consulted
        "assert Stack() != Stack()",  # handles compare by identity
        "s = Stack()\nassert s == s",
        "assert Stack()",  # no truth value: fails
    ]
    assert judge(code, tests) == [True, True, False, True, True, False]


def test_plain_subclasses_arrive_as_plain_values():
    code = (
        "import collections, enum\n"
        "class Color(enum.IntEnum):\n"
        "    RED = 1\n"
        "def count(s):\n"
        "    return collections.Counter(s)\n"
        "def point():\n"
        "    return collections.namedtuple('P', 'x y')(1, 2)\n"
        "def red():\n"
        "    return Color.RED\n"
    )
    tests = [
        "c = count('aab')\nassert type(c) is dict and c == {'a': 2, 'b': 1}",
        "assert point() == (1, 2) and type(point()) is tuple",
        "assert red() == 1 and type(red()) is int",
    ]
    assert judge(code, tests) == [True, True, True]


def test_in_place_changes_to_arguments_come_back():
    code = "def fill(xs, d):\n    xs.sort()\n    d['n'] = len(xs)\n"
    assert judge(
        code, ["a, d = [3, 1, 2], {}\nfill(a, d)\nassert a == [1, 2, 3] and d == {'n': 3}"]
    )


def test_globals_are_read_at_each_use():
    code = "count = 0\ndef bump():\n    global count\n    count += 1\n"
    assert judge(code, ["bump()\nbump()\nassert count == 2"]) == [True]


def test_generators_and_iteration():
    code = "def evens(n):\n    for i in range(n):\n        yield 2 * i\n"
    tests = ["assert list(evens(3)) == [0, 2, 4]", "g = evens(2)\nassert next(g) == 0"]
    assert judge(code, tests) == [True, True]


def test_stdlib_modules_are_the_judges_own():
    code = "import math as m\ndef area(r):\n    return m.pi * r * r\n"
    tests = [
        "assert math.isclose(area(2), 12.566, rel_tol=1e-3)",  # math: never imported by the test
        "assert m.isclose(area(1), 3.1416, rel_tol=1e-3)",
        "assert isinstance(m.pi, float)",
    ]
    assert judge(code, tests) == [True, True, True]


def test_broken_tests_and_unloadable_code_fail():
    assert judge("def f():\n    return 1\n", ["assert f( == 1", "assert f() == 1"]) == [False, True]
    assert judge("raise RuntimeError('top level')", ["assert True", "pass"]) == [False, False]


def test_a_hung_runner_is_replaced_for_the_next_test():
    # SIGALRM is ignored and time.sleep does not return: only the judge's deadline helps.
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "def f(x):\n"
        "    if x < 0:\n"
        "        time.sleep(60)\n"
        "    return x\n"
    )
    t0 = time.monotonic()
    assert judge(code, ["assert f(-1) == -1", "assert f(1) == 1"], per_test_s=0.5) == [False, True]
    assert time.monotonic() - t0 < 5


def test_same_output():
    assert same_output("1 \n2\n\n", "1\n2")
    assert not same_output("1\n2", "1\n3")


@pytest.mark.parametrize("test", ["assert f(lambda: 1) == 1", "assert f(print) == 1"])
def test_functions_cannot_be_passed_to_the_code(test):
    assert judge("def f(g):\n    return 1\n", [test]) == [False]
