"""Spreading work over a pool of actors: contiguous shares in order, and replacing dead ones."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def split_contiguous(items: list[T], n: int) -> list[list[T]]:
    """`items` cut into `n` contiguous chunks, the first `len(items) % n` one item longer."""
    size, extra = divmod(len(items), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(n)]


def replace_dead(actors: list, start, probe) -> int:
    """Replace, in place, every Ray actor in `actors` that no longer answers `probe(actor)` (an
    ObjectRef) within 60 s with `start(index)`; returns how many were replaced."""
    import ray

    replaced = 0
    for i, actor in enumerate(actors):
        try:
            ray.get(probe(actor), timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            ray.kill(actor)
            actors[i] = start(i)
            ray.get(probe(actors[i]))
            replaced += 1
    return replaced
