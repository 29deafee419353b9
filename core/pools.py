"""Spreading work over a pool of actors: contiguous shares in order, and replacing dead ones."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

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


class Starting:
    """Pools of actors starting side by side, each factory (which builds a pool and waits until
    it is ready) in its own thread, while the caller goes on with other work (`meanwhile`).

    The pools' start-up is mostly separate processes importing vLLM or DeepSpeed and loading
    weights, so starting them together costs about the slowest one, not the sum. When a factory
    fails, or the caller's own work does, the error is raised at once rather than after vLLM
    has loaded: the pools already started are shut down, and those still starting are shut down
    when they are ready (a process that exits first takes them with it: Ray ends a driver's
    actors). The threads are daemons, so such an exit does not wait for them.
    """

    def __init__(self, **factories: Callable[[], Any]):
        import threading
        from concurrent.futures import Future

        self.futures: dict[str, Future] = {name: Future() for name in factories}
        for name, factory in factories.items():
            run = functools.partial(_resolve, self.futures[name], factory)
            threading.Thread(target=run, name=f"start-{name}", daemon=True).start()

    def meanwhile(self, work: Callable[[], T]) -> T:
        """`work()`, run in the calling thread while the pools start; if it fails, `cancel`."""
        try:
            return work()
        except BaseException:
            self.cancel()
            raise

    def result(self) -> dict[str, Any]:
        """The started pools by name, once all are ready; the first failure (in argument order
        among those failed so far) as soon as one fails."""
        from concurrent.futures import FIRST_EXCEPTION, wait

        done, _ = wait(self.futures.values(), return_when=FIRST_EXCEPTION)
        failed = [f for f in self.futures.values() if f in done and f.exception() is not None]
        if failed:
            self.cancel()
            raise failed[0].exception()
        return {name: f.result() for name, f in self.futures.items()}

    def cancel(self) -> None:
        """Shut down every pool that has started or will have."""
        for future in self.futures.values():
            future.add_done_callback(_shut_down)


def _resolve(future, factory: Callable[[], Any]) -> None:
    try:
        future.set_result(factory())
    except BaseException as e:  # the caller gets it from the future
        future.set_exception(e)


def _shut_down(future) -> None:
    if future.exception() is None:
        future.result().shutdown()


def start_together(**factories: Callable[[], Any]) -> dict[str, Any]:
    """Start the pools side by side (`Starting`) and return them by name once all are ready."""
    return Starting(**factories).result()
