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
