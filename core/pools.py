"""Spreading work over a pool of actors: contiguous shares in order, and replacing dead ones."""

from __future__ import annotations

import time
from typing import TypeVar

from core.errors import ActorDied, ActorFault, DeadlineMissed

T = TypeVar("T")

DEATH_GRACE_S = 2.0
"""How long `get_within` looks for a dead actor behind another call's error."""


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
    in all; raises `DeadlineMissed` naming the actors whose call had not finished by then. A
    failed call ends the wait at once: an actor that died raises `ActorDied` naming it, an
    `ActorFault` raised inside the call (a deadline it set on its own calls) passes through as
    it is, any other error as `ray.get` raises it. `wait` and `get` stand in for `ray.wait` /
    `ray.get` in tests."""
    import ray

    wait, get = wait or ray.wait, get or ray.get

    def death(ref, e: Exception) -> ActorDied:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return ActorDied(who, [refs.index(ref)], phase, reason)

    t0 = time.monotonic()
    pending = list(refs)
    while pending and (left := timeout_s - (time.monotonic() - t0)) > 0:
        done, pending = wait(pending, num_returns=1, timeout=left)
        for ref in done:
            try:
                get([ref])
            except ActorFault:
                raise
            except ray.exceptions.RayActorError as e:
                raise death(ref, e) from e
            except Exception as e:
                # A collective fails on every member when one member dies: name the dead
                # actor, the cause, if its death shows within a moment.
                ended, _ = wait(pending, num_returns=len(pending), timeout=DEATH_GRACE_S)
                for other in ended:
                    try:
                        get([other])
                    except ray.exceptions.RayActorError as dead:
                        raise death(other, dead) from e
                    except Exception:
                        pass
                raise
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
