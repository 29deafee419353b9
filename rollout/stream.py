"""A stream of groups over the rollout engines: dispatch by load, results as they finish.

Each engine holds an in-process vLLM engine that takes groups one at a time
(`RolloutActor.run`). The stream keeps every engine busy with one outstanding `run` call,
sends each new prompt's group to the engine with the fewest tokens in flight (its prompt tokens
plus n * max_tokens at dispatch, then the engine's own upper bound of what is left), and
yields `(key, group)` as soon as a group's n samples are done.

Guarantees: every prompt read from the source is yielded exactly once unless the stream is
closed first; closing it (or leaving the loop) aborts the groups still running and leaves every
engine idle. With seeds, a group's samples are a function of its seed and the weights, so which
engine ran it and when does not change them (tested: `tests/integration/test_stream.py`). An
engine that dies is replaced through the pool's `heal` hook and its groups are sent again (same
seeds, same samples); without the hook the error is raised. With a `Conversations` (multi-turn,
`rollout/turns.py`), a group is yielded once all its trajectories have ended; their later
turns go to the engine of their earlier ones and do not count against `max_in_flight`, which
counts groups. Not guaranteed: the order groups finish in, and the per-engine figures of
`metrics` (they depend on timing).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator

import ray
from ray.exceptions import RayActorError

from core.records import EngineReport, Group, GroupRequest, Prompt, Sampling

POLL_S = 0.5
"""Longest a `run` call steps an engine without a finished group, so that work queued for a
busy engine and aborts wait at most this long."""


def group_seed(seed: int, key: int) -> int:
    """A 48-bit seed for group `key` of a stream seeded `seed` (its samples use seed + j)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


class GroupStream:
    """Iterate for `(key, Group)`; see `RolloutPool.stream`."""

    def __init__(
        self,
        pool,
        prompts: Iterator[Prompt],
        sampling: Sampling,
        seed_of: Callable[[int], int | None],
        max_in_flight: int,
        turns=None,
    ):
        """`turns`: a `rollout.turns.Conversations` for multi-turn trajectories (None: each
        group is one request)."""
        self.pool, self.prompts, self.sampling, self.seed_of = pool, prompts, sampling, seed_of
        self.max_in_flight, self.turns = max_in_flight, turns
        engines = len(pool.actors)
        self.load = [0] * engines
        """Tokens in flight per engine (upper bound)."""
        self.queued: list[list[GroupRequest]] = [[] for _ in range(engines)]
        """Groups assigned to an engine whose `run` call has not returned yet."""
        self.owner: dict[int, int] = {}
        """Engine of every unfinished request, by key (a multi-turn trajectory's later turns are
        keyed `(group key, sample, turn)`)."""
        self.open: set[int] = set()
        """Groups sent and not finished (what `max_in_flight` counts)."""
        self.followups: list[tuple[GroupRequest, int]] = []
        """Multi-turn: next turns ready to send, each to the engine of its previous turn."""
        self.engine_of: dict[int, int] = {}
        """Engine each group was (last) sent to, by key."""
        self.requests: dict[int, GroupRequest] = {}
        self.calls: dict[ray.ObjectRef, int] = {}
        """Outstanding `run` call per engine."""
        self.resend: list[GroupRequest] = []
        """Groups of an engine that died, to dispatch again before new prompts."""
        self.next_key = 0
        self.exhausted = False
        self.tokens, self.busy_s = [0] * engines, [0.0] * engines
        self.groups_done = [0] * engines
        self.started = self.ended = 0.0
        self.aborted = 0
        self._iter = self._run()

    def __iter__(self) -> Iterator[tuple[int, Group]]:
        return self._iter

    def __next__(self) -> tuple[int, Group]:
        return next(self._iter)

    def close(self) -> None:
        """Abort the groups still running (also what leaving a `for` loop early does)."""
        self._iter.close()

    def metrics(self) -> dict[str, float]:
        """Per-engine completion tokens and busy fraction over the stream's wall time, and the
        groups aborted (all depend on timing: `engine/` keys)."""
        wall = max(1e-9, (self.ended or time.perf_counter()) - self.started)
        out = {"engine/groups_aborted": float(self.aborted)}
        for i, (tokens, busy) in enumerate(zip(self.tokens, self.busy_s)):
            out[f"engine/{i}/tokens"] = float(tokens)
            out[f"engine/{i}/busy_frac"] = min(1.0, busy / wall)
        return out

    def _run(self) -> Iterator[tuple[int, Group]]:
        self.started = time.perf_counter()
        try:
            self._dispatch()
            while self.calls or (self.turns and self.turns.busy):
                done = self._collect()
                self.open.difference_update(key for key, _ in done)
                self._dispatch()
                yield from done
        finally:
            self.ended = time.perf_counter()
            if self.turns:
                self.turns.close()
            self._abort_all()

    def _collect(self) -> list[tuple[int, Group]]:
        """Wait for an engine's report (or, in multi-turn, an environment step) and return the
        groups that are complete."""
        done: list[tuple[int, Group]] = []
        waiting_env = bool(self.turns and self.turns.busy)
        if self.calls:
            ready, _ = ray.wait(
                list(self.calls), num_returns=1, timeout=0.05 if waiting_env else None
            )
            if ready:
                done = self._report(ready[0])
        else:
            self.turns.wait(POLL_S)
        if self.turns:
            followups, finished = self.turns.poll()
            self.followups += followups
            done += finished
        return done

    def _report(self, ref: ray.ObjectRef) -> list[tuple[int, Group]]:
        engine = self.calls.pop(ref)
        try:
            report: EngineReport = ray.get(ref)
        except RayActorError:
            self._replace(engine)
            return []
        self.load[engine] = report.load + sum(self._cost(r) for r in self.queued[engine])
        self.tokens[engine] += report.tokens
        self.busy_s[engine] += report.busy_s
        for key, _ in report.finished:
            self.owner.pop(key)
            self.requests.pop(key)
            self.groups_done[engine] += 1
        if not self.turns:
            return report.finished
        for key, group in report.finished:
            self.turns.add(key, group, engine)
        return []

    def _cost(self, req: GroupRequest) -> int:
        return len(req.prompt.token_ids) + req.sampling.n * req.sampling.max_tokens

    def _next_request(self) -> GroupRequest | None:
        if self.resend:
            return self.resend.pop(0)
        if self.exhausted:
            return None
        prompt = next(self.prompts, None)
        if prompt is None:
            self.exhausted = True
            return None
        key, self.next_key = self.next_key, self.next_key + 1
        self.open.add(key)
        request = GroupRequest(key, prompt, self.sampling, self.seed_of(key))
        if self.turns:
            self.turns.sent(request)
        return request

    def _dispatch(self) -> None:
        """Hand out groups while there is room, each to the least-loaded engine, then make sure
        every engine with work has a `run` call outstanding; a trajectory's next turn goes to the
        engine of its previous turn (its prefix is cached there)."""
        for req, engine in self.followups:
            self._assign(req, engine)
        self.followups = []
        while self.resend or not self.max_in_flight or len(self.open) < self.max_in_flight:
            req = self._next_request()
            if req is None:
                break
            self._assign(req, min(range(len(self.load)), key=lambda i: (self.load[i], i)))
        running = set(self.calls.values())
        for engine, actor in enumerate(self.pool.actors):
            has_work = any(owner == engine for owner in self.owner.values())
            if engine not in running and has_work:
                add, self.queued[engine] = self.queued[engine], []
                self.calls[actor.run.remote(add, [], POLL_S)] = engine

    def _assign(self, req: GroupRequest, engine: int) -> None:
        self.queued[engine].append(req)
        self.load[engine] += self._cost(req)
        self.owner[req.key], self.requests[req.key] = engine, req
        self.engine_of[req.key] = engine

    def _replace(self, engine: int) -> None:
        """Engine `engine` died: restart it (pool's `heal`) and send its groups again."""
        if self.pool.heal is None:
            raise RayActorError(f"rollout engine {engine} died during a stream")
        self.pool.heal()
        lost = sorted(k for k, owner in self.owner.items() if owner == engine)
        for key in lost:
            del self.owner[key]
        self.resend = [self.requests.pop(k) for k in lost] + self.resend
        self.queued[engine], self.load[engine] = [], 0
        self._dispatch()

    def _abort_all(self) -> None:
        """Abort every unfinished group and wait until each engine has dropped them."""
        unfinished = {k[0] if isinstance(k, tuple) else k for k in self.owner}
        if self.turns:
            unfinished |= set(self.turns.open)
        self.aborted += len(unfinished)
        for ref in list(self.calls):
            try:
                ray.get(ref)
            except RayActorError:
                pass
        self.calls.clear()
        keys: dict[int, list[int]] = {}
        for key, engine in self.owner.items():
            keys.setdefault(engine, []).append(key)
        done = [self.pool.actors[e].run.remote([], ks, 0.0) for e, ks in keys.items()]
        try:
            ray.get(done)
        except RayActorError:
            pass  # a dead engine holds nothing; the next call restarts it
        self.owner.clear()
