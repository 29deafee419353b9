"""Weight push parity: after a push, vLLM scores a fixed completion as the learner does.

Real Ray actors, a real vLLM engine and a real DeepSpeed engine on a tiny Llama. Tolerance:
both sides run float32 on CPU, so only kernel summation order differs; 2e-4 nats per token
is far below the change a training step makes (asserted > 1e-2).
"""

import pytest
from transformers import AutoTokenizer

from cluster.config import load_config
from learner.group import LearnerGroup
from learner.weight_push import make_transport
from reward.pool import RewardPool
from rollout.pool import RolloutPool
from rollout.records import Prompt

pytestmark = pytest.mark.integration
TOL = 2e-4


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def test_push_makes_engine_match_learner(ray_local, tiny_model):
    cfg = load_config("configs/smoke.yaml", [f"model.path={tiny_model}", "learner.lr=0.01"])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt_ids = tok.apply_chat_template(
        [{"role": "user", "content": "what is 2+3?"}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tok(prompt_ids, add_special_tokens=False)["input_ids"]
    completion_ids = tok("5, five.", add_special_tokens=False)["input_ids"]

    rollout = RolloutPool(cfg, tiny_model, "parity")
    learner = LearnerGroup(cfg, tiny_model, "parity")
    rewards = RewardPool(cfg.reward, base_dir=".", num_cpus=0.25)

    before_engine = rollout.sequence_logprobs(prompt_ids, completion_ids)[0]
    before_learner = learner.sequence_logprobs(prompt_ids, completion_ids)
    assert max_diff(before_engine, before_learner) < TOL

    prompts = [Prompt(f"p{i}", "what is 2+3?", prompt_ids, "5") for i in range(8)]
    groups = rollout.generate(prompts, n=8)
    assert all(s.policy_version == 0 for g in groups for s in g.samples)
    learner.train(groups, rewards.score(groups))
    after_learner = learner.sequence_logprobs(prompt_ids, completion_ids)
    assert max_diff(after_learner, before_learner) > 1e-2, "the step did not change the policy"
    # Not pushed yet: the engine still holds the old weights.
    assert max_diff(rollout.sequence_logprobs(prompt_ids, completion_ids)[0], before_engine) < TOL

    make_transport("object_store", cfg.model.rollout_dtype).push(learner, rollout, version=1)
    after_engine = rollout.sequence_logprobs(prompt_ids, completion_ids)[0]
    assert max_diff(after_engine, after_learner) < TOL
    assert max_diff(after_engine, before_engine) > 1e-2
    groups = rollout.generate(prompts[:1], n=2)
    assert all(s.policy_version == 1 for s in groups[0].samples)
    # Sampled-token log-probabilities agree too (temperature 1: sampling = model distribution).
    s = groups[0].samples[0]
    assert max_diff(s.logprobs, learner.sequence_logprobs(prompt_ids, s.completion_token_ids)) < TOL
    for pool in (rollout, learner, rewards):
        pool.shutdown()
