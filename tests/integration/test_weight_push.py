"""Learner/engine parity: vLLM scores tokens as the learner does, at the sampling temperature,
and again after a weight push (in one bucket or in several).

Real Ray actors, real vLLM engines and one real DeepSpeed learner on a tiny Llama, shared by the
module's tests (`SharedPolicy`): a test first brings its engine to the learner's current
weights, so its assertions hold whatever ran before it. Tolerances: with a float32 engine only
kernel summation order differs, so 2e-4 nats per token (max over tokens); a bfloat16 engine
rounds weights and activations to 8 mantissa bits, so 0.05 nats at temperature 1 (divided by
the temperature for sampled tokens: the logits are). Each is far below the change a training
step makes (asserted > 5x the tolerance).

The sampling contract at temperature T and top-p p: vLLM reports `processed_logprobs`, log
softmax(logits / T) renormalised over the top-p nucleus; the learner takes log softmax(logits /
T) over the whole vocabulary. So at p = 1 the two agree, and at p < 1 vLLM's are higher by
exactly -log(nucleus mass) at each position (`train/mismatch_kl` shows the gap and
`algorithm.sampler_correction` corrects for it). This module found that vLLM's CPU engine kept a
packed copy of the old tied output head after a reload.
"""

import os

import pytest
import ray
import torch
from transformers import AutoTokenizer

from cluster.transport import make_transport
from core.config import load_config
from core.pools import start_together
from core.records import Prompt
from learner.ranks import LearnerRanks
from rollout.pool import RolloutPool
from tests.conftest import scored

pytestmark = pytest.mark.integration

TEMPERATURE, TOP_P = 0.7, 0.9
TOL = {"float32": 2e-4, "bfloat16": 0.05}  # nats per token at temperature 1


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def parity_config(tiny_model: str, dtype: str, transport: str = "object_store"):
    overrides = [
        f"model.path={tiny_model}",
        "learner.lr=0.05",
        f"model.rollout_dtype={dtype}",
        f"rollout.temperature={TEMPERATURE}",
        f"cluster.weight_transport={transport}",
    ]
    return load_config("configs/smoke.yaml", overrides)


ENGINE_TRANSPORT = {"float32": "object_store", "bfloat16": "gloo"}
"""The transport each dtype's engine is built for. An engine built for `gloo` takes
`object_store` pushes too (test_gloo_transfer.py pushes both ways to the same engines), so the
bfloat16 cases of both transports share one engine start."""


class SharedPolicy:
    """One learner for the module and an engine per rollout dtype, started on first use, with
    the version of the weights each holds (the learner's: its training steps so far). A case
    names `<dtype>` (pushed through `object_store`) or `<dtype>/<transport>`."""

    def __init__(self, tiny_model: str):
        self.tiny_model = tiny_model
        self.version = 0
        self.engines: dict[str, tuple[RolloutPool, int]] = {}  # dtype -> (engine, its version)
        cfg = parity_config(tiny_model, "float32")
        started = start_together(  # side by side, as the driver starts them
            learner=lambda: LearnerRanks(cfg, tiny_model, "parity"),
            engine=lambda: self.engine("float32"),  # the first tests' engine
        )
        self.learner = started["learner"]

    def engine(self, case: str) -> RolloutPool:
        """The engine of the case's rollout dtype."""
        dtype = case.partition("/")[0]
        if dtype not in self.engines:
            transport = ENGINE_TRANSPORT[dtype]
            cfg = parity_config(self.tiny_model, dtype, transport)
            name = f"parity-{dtype}"
            pool = RolloutPool(cfg, self.tiny_model, name, weight_transport=transport)
            self.engines[dtype] = (pool, 0)
        return self.engines[dtype][0]

    def push(self, case: str) -> None:
        """The driver's push through the case's transport (a group transport joins the learner
        and the engine anew for each push)."""
        dtype, _, transport = case.partition("/")
        engine = self.engine(case)
        cfg = parity_config(self.tiny_model, dtype, transport or "object_store")
        make_transport(cfg, self.learner, engine).push(self.learner, engine, version=self.version)
        self.engines[dtype] = (engine, self.version)

    def push_in_buckets(self, dtype: str, bucket_mb: int) -> list:
        """`ObjectStoreTransport.push` with `bucket_mb` MiB buckets instead of the default 64;
        returns the bucket refs."""
        engine = self.engine(dtype)
        refs = ray.get([r.export_weights.remote(dtype, bucket_mb) for r in self.learner.ranks])[0]
        engine.load_weights(refs, self.version)
        self.engines[dtype] = (engine, self.version)
        return refs

    def synced(self, case: str) -> RolloutPool:
        """The case's engine, holding the learner's current weights (pushed through the case's
        transport if behind)."""
        engine = self.engine(case)
        if self.engines[case.partition("/")[0]][1] != self.version:
            self.push(case)
        return engine

    def train_step(self, dtype: str, prompts: list[Prompt]) -> None:
        """One training step on samples of the `dtype` engine, with rewards 0/1 alternating in
        each group (every group has a signal)."""
        groups = self.engine(dtype).generate(prompts, n=8, seed=self.version)
        self.learner.train(scored(groups, [[j % 2 for j in range(len(g.samples))] for g in groups]))
        self.version += 1

    def learner_view(self, prompt_ids: list[int], completion_ids: list[int]):
        """Inside learner rank 0: the log-probabilities its training step takes of the completion
        (`_logprobs`, at `rollout.temperature`) [C], and its raw logits there [C, V]."""

        def inside(actor, prompt_ids, completion_ids):
            from learner.batch import FlatSample, collate

            sample = FlatSample(prompt_ids, completion_ids, [0.0] * len(completion_ids), True)
            mb = collate([sample], actor.pad_id)
            taken = actor._logprobs(actor.engine.module, mb)[0]  # [C]
            with torch.no_grad():  # the model's own logits, not the learner's path to them
                logits = actor.engine.module(
                    input_ids=mb.input_ids, attention_mask=mb.attention_mask
                ).logits[0, len(prompt_ids) - 1 : -1]  # [C, V]: the column before each token
            return taken.tolist(), logits

        rank0 = self.learner.ranks[0]
        return ray.get(rank0.__ray_call__.remote(inside, prompt_ids, completion_ids))

    def shutdown(self) -> None:
        for engine, _ in self.engines.values():
            engine.shutdown()
        self.learner.shutdown()


@pytest.fixture(scope="module")
def policy(ray_local, tiny_model):
    shared = SharedPolicy(tiny_model)
    yield shared
    shared.shutdown()


@pytest.fixture(scope="module")
def ids(tiny_model) -> tuple[list[int], list[int]]:
    """Token ids of a chat prompt and of a fixed completion."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    chat = [{"role": "user", "content": "what is 2+3?"}]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    return prompt_ids, tok("5, five.", add_special_tokens=False)["input_ids"]


def prompts_of(prompt_ids: list[int], count: int = 8) -> list[Prompt]:
    return [Prompt(f"p{i}", "what is 2+3?", prompt_ids, "5") for i in range(count)]


def nucleus(logits: torch.Tensor, temperature: float, top_p: float):
    """vLLM's top-p rule on softmax(logits / T) [C, V]: a token is kept when the tokens more
    probable than it hold less than `top_p`. Returns the log of the kept mass [C], whether each
    token is kept [C, V], and each position's distance from the cut [C] (a rounding-sized
    distance would make the cut ambiguous)."""
    probs = torch.softmax(logits / temperature, dim=-1)  # [C, V]
    ranked, order = probs.sort(dim=-1, descending=True)  # [C, V]
    above = torch.empty_like(probs).scatter_(-1, order, ranked.cumsum(-1) - ranked)  # [C, V]
    kept = above < top_p
    return torch.log((probs * kept).sum(-1)), kept, (above - top_p).abs().min(-1).values


def test_the_engine_and_the_learner_run_one_thread_per_core_they_may_use(policy):
    """Shared placement (the default): the one engine may use every core and runs that many
    OpenMP threads; each learner rank runs its share. Ray sets an actor's OMP_NUM_THREADS to its
    num_cpus (1) and vLLM's in-process engine kept that: one core generated while the other
    idled (measured: 1.68x the raw engine's time per token)."""
    [engine] = ray.get([a.where.remote() for a in policy.engine("float32").actors])
    ranks = ray.get([r.where.remote() for r in policy.learner.ranks])
    cores = os.cpu_count()
    assert engine["cores"] == list(range(cores)) and engine["threads"] == cores
    assert [r["threads"] for r in ranks] == [max(1, cores // len(ranks))] * len(ranks)


def test_sampled_logprobs_match_the_learner_at_the_temperature(policy, ids):
    """Top-p 1: vLLM's log-probability of each sampled token is the learner's at T = 0.7."""
    prompt_ids, _ = ids
    engine = policy.synced("float32")
    [group] = engine.generate(prompts_of(prompt_ids, 1), n=4, seed=1, top_p=1.0)
    tol = TOL["float32"]
    for s in group.samples:
        taken, _ = policy.learner_view(prompt_ids, s.completion_token_ids)
        assert max_diff(s.logprobs, taken) < tol
    # The check can tell the temperature: at T = 1 the same tokens score differently.
    at_one = policy.learner.sequence_logprobs(prompt_ids, s.completion_token_ids)
    assert max_diff(s.logprobs, at_one) > 5 * tol


def test_top_p_logprobs_are_the_learners_renormalised_over_the_nucleus(policy, ids):
    """Top-p 0.9: vLLM's log-probabilities are the learner's at T = 0.7 minus the log of the
    nucleus mass; the learner itself does not renormalise (see the module docstring)."""
    prompt_ids, _ = ids
    engine = policy.synced("float32")
    [group] = engine.generate(prompts_of(prompt_ids, 1), n=4, seed=2, top_p=TOP_P)
    tol, gap = TOL["float32"], 0.0
    for s in group.samples:
        taken, logits = policy.learner_view(prompt_ids, s.completion_token_ids)
        log_mass, kept, distance = nucleus(logits, TEMPERATURE, TOP_P)
        assert distance.min() > 1e-5, "a token sits on the nucleus boundary: pick another seed"
        assert max_diff(s.logprobs, (torch.tensor(taken) - log_mass).tolist()) < tol
        tokens = torch.tensor(s.completion_token_ids).unsqueeze(-1)  # [C, 1]
        outside = int((~kept.gather(-1, tokens)).sum())
        assert outside == 0, f"vLLM sampled {outside} tokens outside the nucleus"
        gap = max(gap, max_diff(s.logprobs, taken))
    assert gap > 5 * tol, "the nucleus cut no mass: the test would not see a missing top-p"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "bfloat16/gloo"])
def test_push_makes_engine_match_learner(policy, ids, dtype):
    """`object_store` in both rollout dtypes, and `gloo` (the `nccl` protocol on CPU) to the
    bfloat16 engine (its float32 push is compared bitwise in test_gloo_transfer.py)."""
    prompt_ids, completion_ids = ids
    tol = TOL[dtype.partition("/")[0]]
    engine = policy.synced(dtype)
    before_engine = engine.sequence_logprobs(prompt_ids, completion_ids)[0]
    before_learner = policy.learner.sequence_logprobs(prompt_ids, completion_ids)
    assert max_diff(before_engine, before_learner) < tol

    policy.train_step(dtype, prompts_of(prompt_ids))
    after_learner = policy.learner.sequence_logprobs(prompt_ids, completion_ids)
    assert max_diff(after_learner, before_learner) > 5 * tol, "the step did not change the policy"
    # Not pushed yet: the engine still holds the old weights.
    assert max_diff(engine.sequence_logprobs(prompt_ids, completion_ids)[0], before_engine) < tol

    policy.push(dtype)
    after_engine = engine.sequence_logprobs(prompt_ids, completion_ids)[0]
    assert max_diff(after_engine, after_learner) < tol
    assert max_diff(after_engine, before_engine) > 5 * tol
    [group] = engine.generate(prompts_of(prompt_ids, 1), n=2, top_p=1.0)
    assert all(s.policy_version == policy.version for s in group.samples)
    # Sampled-token log-probabilities agree too, at the sampling temperature.
    s = group.samples[0]
    taken, _ = policy.learner_view(prompt_ids, s.completion_token_ids)
    assert max_diff(s.logprobs, taken) < tol / TEMPERATURE


def test_push_in_several_buckets(policy, ids):
    """A push whose weights span several object-store buckets: every parameter arrives once,
    and the engine then scores as the learner does. The tiny model fits in one default (64 MiB)
    bucket, so the push here uses 1 MiB buckets."""
    prompt_ids, completion_ids = ids
    tol = TOL["float32"]
    engine = policy.synced("float32")
    before_engine = engine.sequence_logprobs(prompt_ids, completion_ids)[0]
    policy.train_step("float32", prompts_of(prompt_ids))
    [whole] = ray.get(policy.learner.export_weights("float32"))  # the default: one bucket

    refs = policy.push_in_buckets("float32", bucket_mb=1)
    buckets = ray.get(refs)
    assert len(buckets) > 1
    names = [name for bucket in buckets for name in bucket]
    assert sorted(names) == sorted(whole) and len(names) == len(set(names))
    assert all(torch.equal(b[k], whole[k]) for b in buckets for k in b)

    after_engine = engine.sequence_logprobs(prompt_ids, completion_ids)[0]
    after_learner = policy.learner.sequence_logprobs(prompt_ids, completion_ids)
    assert max_diff(after_engine, after_learner) < tol
    assert max_diff(after_engine, before_engine) > 5 * tol
