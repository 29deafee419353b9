"""Stand-ins for the rollout and reward pools in unit tests of what consumes them (the real
pools run in tests/integration and tests/e2e).

`FakeStreamRollout` finishes the groups in flight newest first, the order most unlike the
prompts', so a consumer that depended on finishing order would show it.
"""

from __future__ import annotations

from core.records import Group, Prompt, Sampling


class FakeStream:
    def __init__(self, make_group, prompts, sampling: Sampling, seed_of, max_in_flight: int):
        self.make_group, self.prompts, self.sampling = make_group, iter(prompts), sampling
        self.seed_of, self.max_in_flight = seed_of, max_in_flight or 10**9
        self.in_flight: list[tuple[int, Prompt]] = []
        self.sent = 0
        self.aborted = 0
        self.closed = False

    def _fill(self) -> None:
        while len(self.in_flight) < self.max_in_flight:
            prompt = next(self.prompts, None)
            if prompt is None:
                return
            self.in_flight.append((self.sent, prompt))
            self.sent += 1

    def __iter__(self):
        self._fill()
        while self.in_flight and not self.closed:
            key, prompt = self.in_flight.pop()  # the newest first
            group = self.make_group(prompt, self.sampling.n, self.seed_of(key))
            self._fill()
            yield key, group

    def close(self) -> None:
        self.aborted += len(self.in_flight)
        self.in_flight, self.closed = [], True

    def metrics(self) -> dict[str, float]:
        return {"engine/groups_aborted": float(self.aborted)}


class FakeStreamRollout:
    """`make_group(prompt, n, seed) -> Group` decides the samples; records each stream."""

    def __init__(self, make_group):
        self.make_group = make_group
        self.streams: list[FakeStream] = []

    def sampling(self, n, temperature=None, max_tokens=None, top_p=None) -> Sampling:
        return Sampling(n, temperature or 1.0, top_p or 1.0, max_tokens or 16)

    def stream(self, prompts, sampling, seed_of=lambda key: None, max_in_flight=0) -> FakeStream:
        self.streams.append(FakeStream(self.make_group, prompts, sampling, seed_of, max_in_flight))
        return self.streams[-1]

    def generate(self, prompts, n, seed=None, **_) -> list[Group]:
        return [self.make_group(p, n, seed) for p in prompts]


class FakeRewardsBase:
    """Subclasses define `score_only(groups)`; `account` records what a step accounted."""

    def __init__(self):
        self.accounted: list[list[Group]] = []

    def score(self, groups):
        scores = self.score_only(groups)
        self.account(groups, scores)
        return scores

    def account(self, groups, scores) -> None:
        self.accounted.append(groups)
