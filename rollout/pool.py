"""All rollout engines as one object: stream groups through them, broadcast weights.

Guarantees: `stream` hands each prompt's group to the engine with the fewest tokens in flight
and yields groups as they finish (`rollout/stream.py`); `generate` returns groups in the order
of the prompts given, whatever the number of engines; `load_weights` returns once every engine
holds the new version, or raises `DeadlineMissed` naming the engines that did not within
`cluster.push_timeout_s`. A dead engine is replaced by `restart_dead` (`cluster/health.py`
decides when).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import ray

from core.config import Config
from core.pools import get_within, replace_dead
from core.records import Group, Prompt, Sampling
from rollout.actor import RolloutActor
from rollout.stream import GroupStream, group_seed
from rollout.turns import Conversations


class RolloutPool:
    def __init__(
        self,
        cfg: Config,
        model_path: str,
        run_id: str = "",
        placement=None,
        weight_transport: str = "object_store",
    ):
        """`placement` (`cluster.placement.Placement`) puts engine i in its placement group;
        without it engines go anywhere with the CPUs (GPU) they need. `weight_transport`: how
        weights will arrive (`cluster/transport.py` resolves it), which the engines set up for."""
        self.cfg, self.model_path, self.run_id = cfg, model_path, run_id
        self.weight_transport = weight_transport
        self.placement = placement
        self.heal: Callable[[], None] | None = None
        """Set by `cluster/health.py`: restarts dead engines and gives them the current
        weights, so a stream can resend a dead engine's groups; None: a dead engine raises."""
        self.conversations: Callable[[], Conversations] | None = None
        """Set by the driver for multi-turn rollouts (`rollout.environment`): a new
        `Conversations` for each stream; None: single-turn groups."""
        self.actors = [self._start(i) for i in range(cfg.cluster.rollout_engines)]
        ray.get([a.__ray_ready__.remote() for a in self.actors])

    def _start(self, i: int):
        cfg = self.cfg
        options = (
            self.placement.rollout_options(i)
            if self.placement
            else {"num_cpus": cfg.cluster.rollout_cpus, "num_gpus": int(cfg.cluster.use_gpu)}
        )
        return (
            ray.remote(RolloutActor)
            .options(
                name=f"cohort-rollout-{self.run_id}-{i}" if self.run_id else None,
                **options,
            )
            .remote(cfg, self.model_path, i, self.weight_transport)
        )

    def restart_dead(self) -> int:
        """Replace every engine that no longer answers with a fresh one (initial weights: the
        caller pushes the current ones); returns how many were restarted."""
        return replace_dead(self.actors, self._start, lambda a: a.__ray_ready__.remote())

    def stream(
        self,
        prompts: Iterable[Prompt],
        sampling: Sampling,
        seed_of: Callable[[int], int | None] = lambda key: None,
        max_in_flight: int = 0,
    ) -> GroupStream:
        """Generate a group for each prompt as the engines have room, yielding `(key, group)`
        (key = the prompt's position in `prompts`) as each group finishes. `prompts` is read
        lazily, at most `max_in_flight` groups are running at a time (0: no limit), and each
        goes to the engine with the fewest tokens in flight; `seed_of(key)` seeds the group.
        Closing the stream early aborts what is still running."""
        turns = self.conversations() if self.conversations else None
        return GroupStream(self, iter(prompts), sampling, seed_of, max_in_flight, turns)

    def generate(
        self,
        prompts: list[Prompt],
        n: int,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        top_p: float | None = None,
    ) -> list[Group]:
        """Sample n completions for each prompt (temperature 0: greedy), in prompt order; with
        `seed`, prompt i's group is seeded from (seed, i). Defaults: the `rollout` section's
        temperature, top-p and max_new_tokens."""
        sampling = self.sampling(n, temperature, max_tokens, top_p)
        seed_of = (lambda key: None) if seed is None else (lambda key: group_seed(seed, key))
        groups = dict(self.stream(prompts, sampling, seed_of))
        return [groups[i] for i in range(len(prompts))]

    def sampling(
        self,
        n: int,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
    ) -> Sampling:
        """`Sampling` with the `rollout` section's values where an argument is None."""
        r = self.cfg.rollout
        temperature = r.temperature if temperature is None else temperature
        top_p = r.top_p if top_p is None else top_p
        max_tokens = max_tokens or r.max_new_tokens
        return Sampling(n, temperature, top_p if temperature > 0 else 1.0, max_tokens)

    def load_weights(self, refs: list, version: int) -> None:
        futures = [a.load_weights.remote(refs, version) for a in self.actors]
        get_within(futures, self.cfg.cluster.push_timeout_s, "rollout engine", "load")

    def load_adapter(self, ref, version: int) -> None:
        """`learner.lora.push=adapter`: every engine serves the adapters in `ref` from now on."""
        futures = [a.load_adapter.remote(ref, version) for a in self.actors]
        get_within(futures, self.cfg.cluster.push_timeout_s, "rollout engine", "load")

    def hang_in_next_load(self, engine: int, seconds: float) -> None:
        """Fault injection: engine `engine` stops answering for `seconds` in its next load."""
        ray.get(self.actors[engine].hang_in_next_load.remote(seconds))

    def sequence_logprobs(
        self, prompt_ids: list[int], completion_ids: list[int]
    ) -> list[list[float]]:
        """Each engine's log-probabilities of a fixed completion."""
        return ray.get(
            [a.sequence_logprobs.remote(prompt_ids, completion_ids) for a in self.actors]
        )

    def weights_checksums(self) -> list[str]:
        """Each engine's SHA-256 over its weights (equal strings = identical weights)."""
        return ray.get([a.weights_checksum.remote() for a in self.actors])

    def sleep(self) -> list[float]:
        """Colocated mode: every engine frees its GPU memory; returns the GiB each freed."""
        return ray.get([a.sleep.remote() for a in self.actors])

    def wake_up(self) -> None:
        ray.get([a.wake_up.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
