"""Errors that cross package boundaries: a bad config, and a run that cannot go on."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is wrong; the message names the dotted key, the value and the fix."""


class RunStopped(RuntimeError):
    """The run cannot go on; the message says why and how to continue."""


class DeadlineMissed(RuntimeError):
    """Remote calls that did not answer within their deadline: which actors (`who`, e.g.
    "rollout engine", and their indices `late`), in which `phase`, after how many seconds."""

    def __init__(self, who: str, late: list[int], phase: str, waited_s: float):
        self.who, self.late, self.phase, self.waited_s = who, late, phase, waited_s
        names = ", ".join(f"{who} {i}" for i in late)
        super().__init__(f"{names}: no answer in phase `{phase}` after {waited_s:.1f} s")
