"""`BatchSource`: which weights each step's batch is generated with, in sync and one_step_off
mode, and the batch a checkpoint carries over. Fake engines record the order of events."""

import json
import math
import threading
import time

from cluster.data import PromptStream
from cluster.metrics import PhaseTimer
from cluster.overlap import PENDING, BatchSource, batch_from_dict
from core.config import load_config
from core.records import Group, Prompt, Sample
from reward.scoring import Score
from tests.unit.fake_pools import FakeRewardsBase, FakeStreamRollout


class FakeEngines(FakeStreamRollout):
    """Generates with the current `version`; records ("generate", step seed, version)."""

    def __init__(self, events: list):
        super().__init__(self._group)
        self.events, self.version = events, 0
        self.busy = threading.Lock()

    def _group(self, prompt, n, seed):
        time.sleep(0.01)
        return Group(prompt, [Sample([1, 2], "12", [-0.1, -0.2], "stop", self.version)] * n)

    def stream(self, prompts, sampling, seed_of=lambda key: None, max_in_flight=0):
        stream = super().stream(prompts, sampling, seed_of, max_in_flight)
        engines = self

        class Busy:  # the engines are busy from the first group to the last
            def __iter__(self):
                with engines.busy:
                    engines.events.append(("generate", seed_of(0), engines.version))
                    yield from stream

            def close(self):
                stream.close()

            def metrics(self):
                return stream.metrics()

        return Busy()

    def push(self, version):
        assert not self.busy.locked(), "weights changed while a batch was being generated"
        self.version = version
        self.events.append(("push", version))


class FakeRewards(FakeRewardsBase):
    def score_only(self, groups):
        return [[Score(float(i % 2), {"f": float(i % 2)}) for i, _ in enumerate(g.samples)]
                for g in groups]  # fmt: skip


SMALL = ["rollout.prompts_per_step=2", "rollout.group_size=2", "learner.micro_batch_size=4",
         "algorithm.sampler_correction=token_truncate"]  # fmt: skip


def run(mode: str, steps: int = 4):
    cfg = load_config("configs/smoke.yaml", [*SMALL, f"trainer.mode={mode}"])
    prompts = [Prompt(f"train:{i}", str(i), [i]) for i in range(40)]
    events: list = []
    engines = FakeEngines(events)
    source = BatchSource(cfg, PromptStream(prompts, 0), engines, FakeRewards(), last_step=steps)
    trained = []
    for step in range(1, steps + 1):
        timer = PhaseTimer()
        batch, times = source.get(step, timer)
        assert "time/generate" in times and "time/reward" in times
        trained.append((step, batch.groups[0].samples[0].policy_version, batch.groups[0].prompt.id))
        source.wait_idle(timer)
        engines.push(step)
    source.shutdown()
    return trained, events


def test_sync_mode_samples_each_batch_with_the_latest_weights():
    trained, _ = run("sync")
    assert [(s, v) for s, v, _ in trained] == [(1, 0), (2, 1), (3, 2), (4, 3)]


def test_one_step_off_samples_with_the_weights_one_update_behind():
    trained, events = run("one_step_off")
    # Step 1 is on-policy; step t >= 2 trains on a batch sampled by v(t-2) while at v(t-1).
    assert [(s, v) for s, v, _ in trained] == [(1, 0), (2, 0), (3, 1), (4, 2)]
    generated = [e for e in events if e[0] == "generate"]
    assert len(generated) == 4  # nothing generated past the last step
    # Same prompts per step as sync mode: the stream is read in step order.
    assert [p for *_, p in trained] == [p for *_, p in run("sync")[0]]


def test_pending_batch_round_trips_through_a_checkpoint(tmp_path):
    cfg = load_config("configs/smoke.yaml", [*SMALL, "trainer.mode=one_step_off"])
    prompts = [Prompt(f"train:{i}", str(i), [i], answer="a", fields={"k": [1]}) for i in range(8)]
    source = BatchSource(cfg, PromptStream(prompts, 0), FakeEngines([]), FakeRewards(), 3)
    source.get(1, PhaseTimer())
    source.save(tmp_path)  # holds step 2's batch
    saved = json.loads((tmp_path / PENDING).read_text())
    assert saved["step"] == 2
    restored = BatchSource(cfg, PromptStream(prompts, 0), FakeEngines([]), FakeRewards(), 3)
    restored.restore(tmp_path)
    batch, _ = restored.get(2, PhaseTimer())
    expected, _ = source.get(2, PhaseTimer())
    assert batch == expected
    source.shutdown()
    restored.shutdown()


def test_batch_from_dict_keeps_nan_components():
    import dataclasses

    from cluster.training_batch import TrainingBatch
    from core.records import ScoredGroup

    group = Group(Prompt("train:0", "1+1", [5], "2"), [Sample([3], "2", [-0.5], "length", 4)])
    failed = Score(0.0, {"f": math.nan}, failed=True, excluded=True, errors={"f": "E"},
                   kinds={"f": "exception"})  # fmt: skip
    scored = ScoredGroup(group, [failed], [0.0], [False], [0.0])
    batch = TrainingBatch([scored], [scored], {"rollout/groups_sampled": 1.0})
    back = batch_from_dict(json.loads(json.dumps(dataclasses.asdict(batch))))
    assert back.groups == batch.groups
    assert [(sg.rewards, sg.valid, sg.penalties) for sg in back.scored] == [([0.0], [False], [0.0])]
    assert math.isnan(back.generated_scores[0][0].components["f"])
    assert back.generated_scores[0][0].kinds == {"f": "exception"}
