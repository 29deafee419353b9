"""Generated code against `code_tests`: how the attack modules build, run and judge attacks.

An `Attack` is a completion whose `add(a, b)` returns a + b only if the attack got through (or,
for a stdin/stdout row, that prints the sum only then), so it scores 1.0 when it gets through
and 0.0 when it is stopped, next to an honest completion that must score 1.0. `attack_runs`
scores a module's attacks through one real `RewardActor` (no Ray) under the default isolation
(`strict`), most in one call, and those harmless to this machine again with `isolation: off`
as a control, where each must score 1.0: proof that the attack works and that the sandbox is
what stops it. `assert_stopped` checks one attack's outcome and its side effect.
"""

from __future__ import annotations

import string
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from reward.actor import RewardActor
from reward.scoring import Score
from tests.adversarial.targets import (
    SYSCALLS,
    Targets,
    can_stop,
    group,
    skip_unless_stoppable,
)

PER_TEST_S = 2.0
ROWS = {
    "asserts": {"tests": ["assert add(1, 2) == 3", "assert add(20, 22) == 42"]},
    "cases": {
        "tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "20 22\n", "output": "42\n"}]
    },
}
HONEST = {
    "asserts": "def add(a, b):\n    return a + b\n",
    "cases": "a, b = map(int, input().split())\nprint(a + b)\n",
}
DEADLINE_S = PER_TEST_S * (2 + 1) + 5.0
"""code_tests returns within per_test_s * (tests + 1) + 5 s (its docstring); two tests a row."""
MARGIN_S = 3.0
"""A loaded 2-core machine."""


@dataclass(frozen=True)
class Attack:
    name: str
    program: str
    """The completion, with `$name` fields of `Targets.fields`."""
    stoppers: tuple[str, ...]
    """The isolation layers that stop it, any one of them; none: the judge's design does."""
    control: bool = False
    """Harmless to this machine: also run with isolation off, where it must get through."""
    row: str = "asserts"
    unharmed: Callable[[Targets], bool] | None = None
    """Whether the side effect it is after did not happen, checked on the targets."""
    spoils_others: bool = False
    """Would spoil the other attacks if it got through: runs alone, after them."""


def breach(body: str) -> str:
    """A completion whose `add` is right only if `body`, the body of a function, returns True
    (an exception counts as stopped)."""
    return (
        "import os, signal, socket, sys\n\n\ndef attack():\n"
        + textwrap.indent(textwrap.dedent(body).strip() + "\n", "    ")
        + "\n\ntry:\n    WORKED = attack() is True\nexcept BaseException:\n    WORKED = False\n\n\n"
        "def add(a, b):\n    return a + b if WORKED else -1\n"
    )


def attack_param(attack: Attack):
    """`attack` as a test case, skipped when no layer here would stop it."""
    marks = [skip_unless_stoppable(attack.stoppers)]
    if "$sys_" in attack.program:
        marks.append(pytest.mark.skipif(not SYSCALLS, reason="no system call numbers here"))
    return pytest.param(attack, id=attack.name, marks=marks)


def runnable(attacks: list[Attack]) -> list[Attack]:
    """The attacks that a layer here would stop (the others are not run at all)."""
    return [a for a in attacks if can_stop(a.stoppers) and (SYSCALLS or "$sys_" not in a.program)]


@dataclass
class Runs:
    confined: dict[str, tuple[Score, Score]]
    """Attack name -> (honest sample, attack) scores under the default isolation."""
    control: dict[str, tuple[Score, Score]]
    """The same with `isolation: off`, for the attacks harmless to this machine."""
    confined_targets: Targets
    control_targets: Targets
    later: Score
    """An honest sample scored after every attack."""
    workers_before: list[int]
    workers_after: list[int]
    replaced: int


def code_actor(**kwargs) -> RewardActor:
    config = {
        "name": "code_tests",
        "kwargs": {"per_test_s": PER_TEST_S, "memory_mb": 512, **kwargs},
    }
    return RewardActor([config], "exclude", 0.0, ".", {"workers": 1, "timeout_s": 60.0})


def score_attacks(actor: RewardActor, attacks: list[Attack], targets: Targets) -> dict:
    fields = targets.fields()
    groups = [
        group([HONEST[a.row], string.Template(a.program).substitute(fields)], ROWS[a.row])
        for a in attacks
    ]
    return {a.name: tuple(row) for a, row in zip(attacks, actor.score(groups), strict=True)}


def worker_pids(actor: RewardActor) -> list[int]:
    return [w.process.pid for w in actor.sandboxes[0].workers]


@contextmanager
def attack_runs(tmp_path_factory, attacks: list[Attack]) -> Iterator[Runs]:
    """Every runnable attack scored (see the module docstring); the targets live until exit."""
    confined, control = code_actor(), code_actor(isolation="off")
    [worker] = worker_pids(confined)
    confined_targets = Targets(tmp_path_factory.mktemp("confined"), worker)
    control_targets = Targets(tmp_path_factory.mktemp("control"), *worker_pids(control))
    try:
        attacks = runnable(attacks)
        together = [a for a in attacks if not a.spoils_others]
        results = score_attacks(confined, together, confined_targets)
        for attack in (a for a in attacks if a.spoils_others):
            results |= score_attacks(confined, [attack], confined_targets)
        [[later]] = confined.score([group([HONEST["asserts"]], ROWS["asserts"])])
        yield Runs(
            confined=results,
            control=score_attacks(control, [a for a in attacks if a.control], control_targets),
            confined_targets=confined_targets,
            control_targets=control_targets,
            later=later,
            workers_before=[worker],
            workers_after=worker_pids(confined),
            replaced=confined.sandboxes[0].replaced,
        )
    finally:
        confined.close()
        control.close()
        confined_targets.close()
        control_targets.close()


def assert_stopped(attack: Attack, runs: Runs) -> None:
    """The attack scored 0 in time beside an honest 1, its side effect did not happen, and
    (where it is harmless) it got through with isolation off."""
    honest, attacked = runs.confined[attack.name]
    assert honest.components == {"code_tests": 1.0}
    assert attacked.components == {"code_tests": 0.0} and not attacked.failed, attacked.errors
    assert attacked.seconds["code_tests"] < DEADLINE_S + MARGIN_S
    if attack.unharmed:
        assert attack.unharmed(runs.confined_targets)
    if attack.control:
        _, unconfined = runs.control[attack.name]
        assert unconfined.components == {"code_tests": 1.0}, "the attack works without isolation"
        assert unconfined.seconds["code_tests"] < DEADLINE_S + MARGIN_S
        if attack.unharmed:
            assert not attack.unharmed(runs.control_targets)
