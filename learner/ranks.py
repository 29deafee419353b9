"""The learner ranks as one object: create, rendezvous, and call every rank at once.

Guarantees: every call reaches all ranks concurrently (DeepSpeed collectives need that) and
returns rank 0's answer; `train` stops the run if the ranks did not take and skip the same
updates. Each rank is given only the config sections it reads. Not covered: restarting a dead
rank (a dead rank ends the run).
"""

from __future__ import annotations

from typing import Any

import ray

from core.config import AlgorithmConfig, Config
from core.errors import RunStopped
from core.pools import get_within
from core.records import ScoredGroup


class LearnerRanks:
    def __init__(self, cfg: Config, model_path: str, run_id: str = "", placement=None):
        """`placement` (`cluster.placement.Placement`) puts rank r in bundle r of the learner
        placement group."""
        # Imported here: the actor's module pulls in torch (seconds), which the driver, holding
        # only this handle, never needs.
        from learner.actor import LearnerActor

        remote = ray.remote(LearnerActor)
        self.push_timeout_s = cfg.cluster.push_timeout_s

        def options(rank: int) -> dict[str, Any]:
            if placement is not None:
                return placement.learner_options(rank)
            return {"num_cpus": cfg.cluster.learner_cpus, "num_gpus": int(cfg.cluster.use_gpu)}

        self.ranks = [
            remote.options(
                name=f"cohort-learner-{run_id}-{r}" if run_id else None, **options(r)
            ).remote(
                model_path,
                r,
                model=cfg.model,
                use_gpu=cfg.cluster.use_gpu,
                **self._sections(cfg),
            )
            for r in range(cfg.learner.world_size)
        ]
        master_addr, master_port = ray.get(self.ranks[0].node_address.remote())
        self._all("setup", master_addr, master_port)

    @staticmethod
    def _sections(cfg: Config) -> dict[str, Any]:
        """The config sections a rank reads besides `model` and `cluster.use_gpu`, which stay
        fixed for the life of its process."""
        return {
            "rollout": cfg.rollout,
            "learner": cfg.learner,
            "algorithm": cfg.algorithm,
            "trainer": cfg.trainer,
        }

    def _all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return ray.get([getattr(r, method).remote(*args, **kwargs) for r in self.ranks])

    def rebuild(self, cfg: Config) -> None:
        """The learner `LearnerRanks(cfg, ...)` would start, built in these ranks' processes
        (`LearnerActor.rebuild`): same model and world size, any other learner, algorithm,
        rollout or trainer settings. Saves each rank's start (about 10 CPU-seconds of imports),
        e.g. between the cases of a sweep."""
        self._all("rebuild", **self._sections(cfg))

    def peak_flops(self) -> dict[str, Any]:
        """The learner's matmul peak (`learner/flops.py`): per rank and in total, FLOP/s. Call
        it while the cluster is otherwise idle: on CPUs each rank measures its own now."""
        per_rank = self._all("peak_flops")
        return {
            "peak_flops_per_s": sum(flops for flops, _ in per_rank),
            "ranks": [{"flops_per_s": flops, "source": source} for flops, source in per_rank],
        }

    def train(self, batch: list[ScoredGroup], step: int = 0) -> dict[str, float]:
        """One batch of updates on the groups of `batch` with their rewards and validity;
        metrics over the whole batch. Raises when the ranks did not update alike."""
        per_rank = self._all("train", batch, step)
        updates = [(m["train/optimizer_steps"], m["train/skipped_updates"]) for m in per_rank]
        if len(set(updates)) > 1:
            raise RunStopped(
                f"the learner ranks did not update alike (optimizer steps, skipped updates per "
                f"rank: {updates}), so their weights have diverged: a learner bug, every rank "
                "must skip a non-finite update together. Continue from the last checkpoint with "
                "trainer.resume=auto."
            )
        return per_rank[0]

    def set_algorithm(self, algorithm: AlgorithmConfig) -> None:
        """Train with these algorithm settings from the next batch on (see
        `LearnerActor.set_algorithm`); with `load_checkpoint`, a learner reset to a start."""
        self._all("set_algorithm", algorithm)

    def export_weights(self, dtype: str) -> list:
        """Object refs of the full policy's buckets (see `LearnerActor.export_weights`); raises
        `DeadlineMissed` naming the ranks that did not finish within `cluster.push_timeout_s`."""
        futures = [r.export_weights.remote(dtype) for r in self.ranks]
        return get_within(futures, self.push_timeout_s, "learner rank", "export")[0]

    def export_adapter(self, dtype: str) -> list:
        """[ref] of the LoRA adapters (see `LearnerActor.export_adapter`), within the push
        deadline like `export_weights`."""
        futures = [r.export_adapter.remote(dtype) for r in self.ranks]
        return get_within(futures, self.push_timeout_s, "learner rank", "export")[0]

    def sequence_logprobs(
        self, prompt_ids: list[int], completion_ids: list[int], reference: bool = False
    ) -> list[float]:
        """Rank 0's log-probabilities of a fixed completion, the policy's or the reference's
        (see `LearnerActor.sequence_logprobs`); every rank computes them, as ZeRO-3 needs."""
        return self._all("sequence_logprobs", prompt_ids, completion_ids, reference)[0]

    def offload_states(self) -> None:
        self._all("offload_states")

    def reload_states(self) -> None:
        self._all("reload_states")

    def save_checkpoint(self, path: str) -> None:
        self._all("save_checkpoint", path)

    def load_checkpoint(self, path: str) -> None:
        self._all("load_checkpoint", path)

    def save_pretrained(self, path: str) -> None:
        self._all("save_pretrained", path)

    def save_adapter(self, path: str) -> None:
        self._all("save_adapter", path)

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r)
