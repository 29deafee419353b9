"""Errors that cross package boundaries: a bad config, and a run that cannot go on."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is wrong; the message names the dotted key, the value and the fix."""


class RunStopped(RuntimeError):
    """The run cannot go on; the message says why and how to continue."""
