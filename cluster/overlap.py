"""Where each step's training batch comes from: generated on demand (`trainer.mode: sync`) or
one step ahead in a background thread while the learner trains (`one_step_off`).

Schedule in `one_step_off` (v_k = the weights after k pushes):

    step 1:  generate B1 with v0 | then generate B2 with v0  while  train on B1 -> v1
    step t:  generate B(t+1) with v(t-1)                     while  train on Bt -> vt
             push vt once B(t+1) is done (the engines never change weights mid-batch)

so every batch after the first is sampled by the policy one update older than the learner that
trains on it (staleness 1; the importance correction of `algorithm.sampler_correction` uses
the sampler's log-probabilities). Guarantees: the batch for each step, its prompts and its
sampling seed are the same as in a run that never stopped (a checkpoint stores the batch
generated ahead, `pending_batch.json`), so a fixed seed reproduces a run in either mode.
Not covered: more than one step of lookahead (`async`; see `trainer.mode` for why).
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cluster.data import PromptStream
from cluster.metrics import PhaseTimer
from cluster.training_batch import TrainingBatch, sample_batch
from core.config import Config
from core.records import Group, Prompt, Sample, Score, ScoredGroup

PENDING = "pending_batch.json"


class BatchSource:
    def __init__(self, cfg: Config, stream: PromptStream, rollout, rewards, last_step: int):
        self.cfg, self.stream, self.rollout, self.rewards = cfg, stream, rollout, rewards
        self.last_step = last_step
        self.ahead = cfg.trainer.mode == "one_step_off"
        self._thread = ThreadPoolExecutor(1, "cohort-generate") if self.ahead else None
        self._pending: tuple[int, Future] | None = None

    def _sample(self, step: int) -> tuple[TrainingBatch, dict[str, float]]:
        timer = PhaseTimer()
        batch = sample_batch(self.cfg, self.stream, self.rollout, self.rewards, timer, step)
        return batch, {k: v for k, v in timer.metrics().items() if k != "time/step"}

    def get(self, step: int, timer: PhaseTimer) -> tuple[TrainingBatch, dict[str, float]]:
        """Step `step`'s batch and its generate/reward timings; in `one_step_off` also starts
        generating step `step + 1`'s batch with the engines' current weights."""
        if self._pending is None:
            with timer("generate_wait"):
                batch, times = self._sample(step)
        else:
            pending_step, future = self._pending
            assert pending_step == step, f"batch for step {pending_step} requested at {step}"
            with timer("generate_wait"):  # how long training waited for generation
                batch, times = future.result()
            self._pending = None
        if self.ahead and step < self.last_step:
            self._pending = (step + 1, self._thread.submit(self._sample, step + 1))
        return batch, times

    def wait_idle(self, timer: PhaseTimer) -> None:
        """Block until the batch being generated ahead is done (before a weight push)."""
        if self._pending is not None:
            with timer("generate_wait"):
                self._pending[1].result()

    def save(self, folder: Path) -> None:
        """Write the batch generated ahead (if any) into a checkpoint folder."""
        if self._pending is not None:
            step, future = self._pending
            batch, times = future.result()
            data = {"step": step, "batch": dataclasses.asdict(batch), "times": times}
            (folder / PENDING).write_text(json.dumps(data))

    def restore(self, folder: Path) -> None:
        """Take the batch a checkpoint generated ahead as the next step's batch."""
        path = folder / PENDING
        if self.ahead and path.exists():
            data = json.loads(path.read_text())
            done: Future = Future()
            done.set_result((batch_from_dict(data["batch"]), data["times"]))
            self._pending = (data["step"], done)

    def shutdown(self) -> None:
        if self._thread:
            self._thread.shutdown(wait=True, cancel_futures=True)


def batch_from_dict(d: dict) -> TrainingBatch:
    """Inverse of `dataclasses.asdict` for a `TrainingBatch` (JSON in a checkpoint)."""

    def scored(sg: dict) -> ScoredGroup:
        g = sg["group"]
        group = Group(Prompt(**g["prompt"]), [Sample(**s) for s in g["samples"]])
        scores = [Score(**s) for s in sg["scores"]]
        return ScoredGroup(group, scores, sg["rewards"], sg["valid"], sg["penalties"])

    return TrainingBatch(
        scored=[scored(sg) for sg in d["scored"]],
        generated=[scored(sg) for sg in d["generated"]],
        metrics=d["metrics"],
    )
