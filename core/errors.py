"""Errors that cross package boundaries: a bad config, and a run that cannot go on."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is wrong; the message names the dotted key, the value and the fix."""


class RunStopped(RuntimeError):
    """The run cannot go on; the message says why and how to continue."""


class ActorFault(RuntimeError):
    """Remote calls of a pool that failed: which actors (`who`, e.g. "rollout engine", and
    their indices `late`) and in which `phase` of the work (e.g. a weight push's "update")."""

    who: str
    late: list[int]
    phase: str


class DeadlineMissed(ActorFault):
    """Calls that did not answer within their deadline, after `waited_s` seconds."""

    def __init__(self, who: str, late: list[int], phase: str, waited_s: float):
        self.who, self.late, self.phase, self.waited_s = who, late, phase, waited_s
        names = ", ".join(f"{who} {i}" for i in late)
        super().__init__(f"{names}: no answer in phase `{phase}` after {waited_s:.1f} s")

    def __reduce__(self):  # raised inside an actor, it crosses to the caller pickled
        return DeadlineMissed, (self.who, self.late, self.phase, self.waited_s)


class ActorDied(ActorFault):
    """An actor that died (its process exited or was killed) during the call; `reason` is
    Ray's account of it."""

    def __init__(self, who: str, late: list[int], phase: str, reason: str):
        self.who, self.late, self.phase, self.reason = who, late, phase, reason
        names = ", ".join(f"{who} {i}" for i in late)
        super().__init__(f"{names} died in phase `{phase}` ({reason})")

    def __reduce__(self):
        return ActorDied, (self.who, self.late, self.phase, self.reason)
