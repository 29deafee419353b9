"""The `gloo` weight transport on real actors: 2 DeepSpeed ranks under ZeRO-3 and 2 vLLM
engines on the tiny Llama, joined through vLLM's weight-transfer factories (the code `nccl`
runs: `learner/export.py`'s sender and client, the engines' protocol methods, the transport's
deadlines and `Health`'s healing), with `object_store` pushes of the same weights as the
reference.

Asserts: after a push every engine holds bitwise the weights an `object_store` push gives
(SHA-256 over each engine's parameters), tagged with the push's version; an engine that stops
answering in the middle of a push is named with the phase within the deadline plus a few
seconds, restarted, the group formed again and the push completed; a learner rank that dies
while the ranks gather the parameters is named at once, and the run stops.
"""

import re
import time

import pytest
import ray
from transformers import AutoTokenizer

from cluster.health import Health
from cluster.transport import SEND_GRACE_S, ObjectStoreTransport, make_transport
from core.config import load_config
from core.errors import ActorDied, RunStopped
from core.pools import start_together
from core.records import Prompt
from learner.ranks import LearnerRanks
from rollout.pool import RolloutPool
from tests.conftest import scored

pytestmark = pytest.mark.integration

DEADLINE_S = 4.0


def config(tiny_model: str):
    overrides = [
        f"model.path={tiny_model}",
        "learner.world_size=2",
        "learner.zero_stage=3",
        "learner.lr=0.05",
        "cluster.rollout_engines=2",
        "cluster.weight_transport=gloo",
        f"cluster.push_timeout_s={DEADLINE_S}",
    ]
    return load_config("configs/smoke.yaml", overrides)


class Setup:
    def __init__(self, tiny_model: str):
        self.cfg = config(tiny_model)
        pools = start_together(  # side by side, as the driver starts them
            learner=lambda: LearnerRanks(self.cfg, tiny_model, "gloo"),
            engines=lambda: RolloutPool(self.cfg, tiny_model, "gloo", weight_transport="gloo"),
        )
        self.learner, self.engines = pools["learner"], pools["engines"]
        self.transport = make_transport(self.cfg, self.learner, self.engines)
        self.version = 0
        tok = AutoTokenizer.from_pretrained(tiny_model)
        chat = [{"role": "user", "content": "what is 2+3?"}]
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        self.prompt_ids = tok(text, add_special_tokens=False)["input_ids"]

    def train_step(self) -> None:
        """One update on a batch of the configured size (the learner's DeepSpeed plan) sampled
        by the engines, rewards 0/1 alternating in each group."""
        r = self.cfg.rollout
        prompts = [Prompt(f"p{i}", "2+3?", self.prompt_ids, "5") for i in range(r.prompts_per_step)]
        groups = self.engines.generate(prompts, n=r.group_size, seed=self.version)
        rewards = [[j % 2 for j in range(r.group_size)] for _ in groups]
        metrics = self.learner.train(scored(groups, rewards))
        assert metrics["train/optimizer_steps"] == self.version + 1
        self.version += 1

    def object_store_checksums(self) -> list[str]:
        """The engines' checksums after pushing the same weights again through
        `object_store`."""
        ObjectStoreTransport("float32").push(self.learner, self.engines, self.version)
        return self.engines.weights_checksums()

    def shutdown(self) -> None:
        for pool in (self.engines, self.learner):
            pool.shutdown()


@pytest.fixture(scope="module")
def setup(ray_local, tiny_model):
    s = Setup(tiny_model)
    yield s
    s.shutdown()


def test_a_gloo_push_gives_every_engine_the_object_store_weights(setup):
    before = setup.engines.weights_checksums()
    setup.train_step()
    setup.transport.push(setup.learner, setup.engines, setup.version)
    after = setup.engines.weights_checksums()
    assert after[0] == after[1] != before[0]
    assert setup.object_store_checksums() == after
    versions = ray.get([a.__ray_call__.remote(lambda a: a.version) for a in setup.engines.actors])
    assert versions == [setup.version] * 2


def test_an_engine_that_stops_mid_push_is_named_restarted_and_pushed_again(setup, capsys):
    setup.train_step()
    health = Health(setup.cfg, setup.engines, None, setup.learner, setup.transport)
    health.step = 7
    setup.engines.hang_in_next_load(1, seconds=3600.0)
    t0 = time.monotonic()
    health.push(setup.version)
    took = time.monotonic() - t0
    out = capsys.readouterr().out
    assert "rollout engine 1: no answer in phase `update` after 4." in out
    assert health.restarts["rollout"] == 1
    healed = setup.engines.weights_checksums()
    assert healed[0] == healed[1] and setup.object_store_checksums() == healed
    # detection at the deadline, then a restart, a new group and a full push
    detected = re.search(r"no answer in phase `update` after ([\d.]+) s", out).group(1)
    print(f"engine hang: named after {detected} s, healed after {took:.1f} s (deadline 4 s)")
    assert took < DEADLINE_S + 60


def test_a_learner_rank_that_dies_in_the_gather_stops_the_run_at_once(setup):
    """Rank 1 exits after 3 parameters of the push's gathers; rank 0 then waits in the next
    gather, so only the dead actor's own error can end the push early."""

    def die_after_three(actor):
        class Dying:
            def __init__(self, source):
                self.source = source

            def metadata(self):
                return self.source.metadata()

            def __iter__(self):
                for i, item in enumerate(self.source):
                    if i == 3:
                        import os

                        os._exit(1)
                    yield item

        actor.weight_sender.source = Dying(actor.weight_sender.source)

    ray.get(setup.learner.ranks[1].__ray_call__.remote(die_after_three))
    health = Health(setup.cfg, setup.engines, None, setup.learner, setup.transport)
    health.step = 9
    t0 = time.monotonic()
    with pytest.raises(RunStopped) as e:
        health.push(setup.version + 1)
    took = time.monotonic() - t0
    assert isinstance(e.value.__cause__, ActorDied)
    assert "learner rank 1 died in phase `send`" in str(e.value)
    assert "trainer.resume=auto" in str(e.value)
    print(f"learner rank death: detected in {took:.1f} s")
    assert took < DEADLINE_S + SEND_GRACE_S
