"""Spreading work over a pool of actors: contiguous shares in order, and replacing dead ones."""

from __future__ import annotations

import time
from typing import TypeVar

from core.errors import DeadlineMissed

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


def get_within(refs: list, timeout_s: float, who: str, phase: str, wait=None, get=None) -> list:
    """`ray.get(refs)` (one ref per actor, in actor order) that waits at most `timeout_s` seconds
    in all; raises `DeadlineMissed` naming the actors whose call had not finished by then. A call
    that failed counts as finished: `ray.get` raises its error (a dead actor stays a
    `RayActorError`). `wait` and `get` stand in for `ray.wait` / `ray.get` in tests."""
    if wait is None or get is None:
        import ray

        wait, get = wait or ray.wait, get or ray.get
    t0 = time.monotonic()
    _, pending = wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = [i for i, ref in enumerate(refs) if ref in pending]
        raise DeadlineMissed(who, late, phase, time.monotonic() - t0)
    return get(refs)


def start_together(**factories):
    """Call every factory (each builds a pool of actors and waits until they are ready) in its
    own thread, and return their results by name.

    The pools' start-up is mostly separate processes importing vLLM or DeepSpeed and loading
    weights, so starting them together costs about the slowest one, not the sum. If any
    factory fails, the pools that did start are shut down and the first error (in argument
    order) is raised.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    with ThreadPoolExecutor(len(factories), thread_name_prefix="start") as pool:
        futures = {name: pool.submit(factory) for name, factory in factories.items()}
        wait(futures.values())
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        for f in futures.values():
            if f.exception() is None:
                f.result().shutdown()
        raise errors[0]
    return {name: f.result() for name, f in futures.items()}
