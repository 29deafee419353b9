"""`code_tests` attacked by code written to forge a pass, one attack per test.

Each attack must score 0.0 on a problem where an honest solution scores 1.0 (`forged`). The
attacks are those that worked against a grader running the tests in the code's own process:
calling its report function or printing its success lines, finding its token or the expected
values in memory, replacing `exec` and friends, returning objects that equal everything,
exiting before the tests run, spamming results, and shadowing the names a test compares with.
Every attack runs with isolation `off` (only resource limits: the judge's design alone must
hold) and `best_effort`. Reading the reward worker's own memory through /proc/<pid>/mem is not
covered here: that is `reward.isolation`'s to stop (pid namespace, Landlock, seccomp).
"""

import textwrap
import time

import pytest

from reward.code_exec import code_tests

ADD = ["assert add(1, 2) == 3", "assert add(-4, 10) == 6", "assert add(100, 23) == 123"]
HONEST_ADD = "def add(a, b):\n    return a + b\n"
SHOUT = ["assert shout('quiet words') == 'QUIET WORDS!'"]
HONEST_SHOUT = "def shout(s):\n    return s.upper() + '!'\n"
SHOUT_CASES = [{"input": "quiet words\n", "output": "QUIET WORDS!\n"}]
HONEST_SHOUT_PROGRAM = "print(input().upper() + '!')\n"

# Strings of the runner's memory: every object the collector tracks, their contents, the
# frames of every thread, and what /proc says about this process and its parent.
MEMORY_STRINGS = """
import gc, os, sys

def memory_strings():
    seen, out = set(), []
    def visit(x, depth=0):
        if id(x) in seen or depth > 3:
            return
        seen.add(id(x))
        if isinstance(x, (str, bytes)):
            out.append(x if isinstance(x, str) else x.decode("latin-1"))
        elif isinstance(x, dict):
            for k, v in list(x.items()):
                visit(k, depth + 1)
                visit(v, depth + 1)
        elif isinstance(x, (list, tuple, set, frozenset)):
            for v in list(x):
                visit(v, depth + 1)
    for obj in gc.get_objects():
        visit(obj)
    for frame in sys._current_frames().values():
        while frame is not None:
            visit(frame.f_locals)
            visit(frame.f_globals)
            visit(frame.f_code.co_consts)
            frame = frame.f_back
    for path in ("/proc/self/environ", "/proc/self/cmdline", f"/proc/{os.getppid()}/cmdline",
                 f"/proc/{os.getppid()}/environ"):
        try:
            out.append(open(path, "rb").read().decode("latin-1"))
        except OSError:
            pass
    for fd in range(256):
        try:
            os.lseek(fd, 0, 0)
            out.append(os.read(fd, 1 << 20).decode("latin-1"))
        except OSError:
            pass
    return out
"""


pytestmark = pytest.mark.parametrize("isolation", ["off", "best_effort"])


def score(code: str, tests: list, isolation: str, **kwargs) -> float:
    return code_tests(
        code, prompt="", answer="", row={"tests": tests}, isolation=isolation, **kwargs
    )


def forged(attack: str, honest: str, tests: list, isolation: str, **kwargs) -> None:
    """The attack scores 0.0; an honest solution of the same problem scores 1.0."""
    assert score(attack, tests, isolation, **kwargs) == 0.0
    assert score(honest, tests, isolation, **kwargs) == 1.0


def test_fake_report_lines_on_every_fd_and_the_runners_own_functions(isolation):
    attack = textwrap.dedent(
        """
        import os, sys
        lines = [b"1\\n", b"PASS\\n", b"ok\\n", b"0123456789abcdef 1\\n", b"True\\n"]
        lines.append(b'{"dict":[["loaded",true],["globals",["add"]],["modules",{"dict":[]}]]}\\n')
        lines += [b'{"dict":[["id",%d],["value",true]]}\\n' % i for i in range(1, 50)]
        for fd in range(1024):
            for line in lines:
                try:
                    os.write(fd, line)
                except OSError:
                    pass
        runner = sys.modules.get("reward.code_runner")
        for name in dir(runner):
            for args in [(4, {"loaded": True}), (True,), (1,), ()]:
                try:
                    getattr(runner, name)(*args)
                except BaseException:
                    pass
        def add(a, b):
            return True
        """
    )
    forged(attack, HONEST_ADD, ADD, isolation)


def test_searching_memory_for_tokens_or_expected_values_finds_nothing(isolation):
    attack = MEMORY_STRINGS + textwrap.dedent(
        """
        def shout(s):
            hits = [x for x in memory_strings() if "WORDS!" in x or "QUIET WORDS" in x]
            return min(hits, key=len) if hits else ""
        """
    )
    forged(attack, HONEST_SHOUT, SHOUT, isolation)


def test_nothing_like_the_expected_output_is_reachable_from_the_code(isolation):
    # The probe finds its own planted string, so it works; the expected value is not there.
    probe = MEMORY_STRINGS + textwrap.dedent(
        """
        planted = "PLANTED " + "WORDS"
        def strings_with_words():
            return [x for x in memory_strings() if "WORDS" in x]
        """
    )
    test = (
        "found = strings_with_words()\n"
        "assert any('PLANTED WORDS' in s for s in found)\n"
        "assert not any('QUIET WORDS' in s or 'WORDS!' in s for s in found)\n"
    )
    assert score(probe, [test], isolation) == 1.0


@pytest.mark.parametrize("name", ["exec", "eval", "compile", "__import__", "print"])
def test_replacing_builtins(name, isolation):
    attack = textwrap.dedent(
        f"""
        import builtins, json
        real = builtins.{name}
        def fake(*args, **kwargs):
            return True
        builtins.{name} = fake
        json.loads = json.dumps = fake
        def add(a, b):
            return None
        """
    )
    forged(attack, HONEST_ADD, ADD, isolation)


@pytest.mark.parametrize("base", ["object", "int", "str", "float", "list", "dict", "tuple"])
def test_objects_that_equal_everything(base, isolation):
    attack = textwrap.dedent(
        f"""
        class Liar({base}):
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            def __hash__(self):
                return 0
            def __bool__(self):
                return True
            __lt__ = __le__ = __gt__ = __ge__ = __eq__
            def __class_getitem__(cls, item):
                return cls
        def add(a, b):
            return Liar()
        """
    )
    forged(attack, HONEST_ADD, ADD, isolation)


def test_printing_the_expected_output_found_in_memory(isolation):
    attack = MEMORY_STRINGS + textwrap.dedent(
        """
        for x in memory_strings():
            if "WORDS!" in x:
                print(x)
        """
    )
    forged(attack, HONEST_SHOUT_PROGRAM, SHOUT_CASES, isolation)


EXITS = ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n", "raise SystemExit(0)\n"]


@pytest.mark.parametrize(
    "attack",
    [
        *EXITS,
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",  # pid 1 survives it
        "def add(a, b):\n    import os\n    os._exit(0)\n",
        "def add(a, b):\n    raise SystemExit(0)\n",
        "def add(a, b):\n    raise KeyboardInterrupt\n",
    ],
)
def test_exiting_before_or_during_the_tests(attack, isolation):
    forged(attack + HONEST_ADD.replace("add", "unused"), HONEST_ADD, ADD, isolation)


@pytest.mark.parametrize("attack", EXITS)
def test_exiting_with_status_zero_before_printing(attack, isolation):
    forged(attack + HONEST_SHOUT_PROGRAM, HONEST_SHOUT_PROGRAM, SHOUT_CASES, isolation)


def test_a_hundred_thousand_reports_cannot_push_the_score_above_one(isolation):
    spam = textwrap.dedent(
        """
        import os, sys
        line = b'{"dict":[["id",1],["value",3]]}\\n1\\nPASS\\n0123456789abcdef 1\\n'
        for fd in range(1, 64):
            try:
                os.set_blocking(fd, False)
            except OSError:
                continue
            for _ in range(100_000):
                try:
                    os.write(fd, line)
                except OSError:
                    break
        for _ in range(100_000):
            print("3")
        """
    )
    forged(spam + "def add(a, b):\n    return 0\n", HONEST_ADD, ADD, isolation)
    assert 0.0 <= score(spam + HONEST_ADD, ADD, isolation) <= 1.0
    forged(spam, "print(3)\n", [{"input": "", "output": "3"}], isolation)


def test_all_or_nothing_gives_nothing_for_one_failure(isolation):
    two_of_three = "def add(a, b):\n    return a + b if a < 100 else 0\n"
    assert score(two_of_three, ADD, isolation) == pytest.approx(2 / 3)
    forged(two_of_three, HONEST_ADD, ADD, isolation, all_or_nothing=True)


def test_shadowing_the_names_a_test_compares_with(isolation):
    tests = [
        "assert abs(area(2) - 12.566) < 1e-2",
        "assert math.isclose(area(1), 3.1416, rel_tol=1e-3)",
        "assert round(area(1), 2) == 3.14 and isinstance(area(1), float)",
    ]
    attack = textwrap.dedent(
        """
        import builtins
        class FakeMath:
            def isclose(self, *args, **kwargs):
                return True
        math = FakeMath()
        def abs(x):
            return 0
        def round(x, n=0):
            return 3.14
        def isinstance(*args):
            return True
        builtins.abs = abs
        def area(r):
            return "no"
        """
    )
    forged(attack, "import math\ndef area(r):\n    return math.pi * r * r\n", tests, isolation)


def test_a_grandchild_holding_stdout_does_not_stall_the_judge(isolation):
    program = textwrap.dedent(
        """
        import subprocess
        try:  # keeps our stdout open, where the sandbox lets it start
            subprocess.Popen(["sleep", "5"], start_new_session=True)
        except OSError:
            pass
        print(input().upper() + "!")
        """
    )
    t0 = time.monotonic()
    assert score(program, SHOUT_CASES, isolation) == 1.0
    assert time.monotonic() - t0 < 3
