"""LoRA on the learner (`learner.lora`): only the adapters train, the KL reference is the base
model, the engines get base + update merged, checkpoints hold the adapters and resume exactly.

One learner for the module: 2 ranks under ZeRO-3 (the case where the base weights and the
adapters are partitioned and must be gathered together), rank-4 adapters on every projection,
the KL on, trained from its start checkpoint on hand-built batches (tests/integration/
test_learner.py's). The push parity test adds a float32 vLLM engine.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cluster.transport import make_transport, resolve_transport
from core.records import Prompt
from learner.ranks import LearnerRanks
from rollout.pool import RolloutPool
from tests.conftest import scored
from tests.integration.test_learner import batch, config, params

pytestmark = pytest.mark.integration

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA = [
    "learner.lora.rank=4",
    "learner.lora.alpha=8",
    "learner.world_size=2",
    "learner.zero_stage=3",
    "learner.micro_batch_size=4",
    "learner.lr=5e-2",
    "algorithm.kl_coef=0.1",
]


@pytest.fixture(scope="module")
def trained(ray_local, tiny_model, tmp_path_factory):
    """(learner, its start checkpoint, the base weights, the metrics of 2 steps from the start)."""
    learner = LearnerRanks(config(tiny_model, *LORA), tiny_model, "lora")
    start = tmp_path_factory.mktemp("lora-start")
    learner.save_checkpoint(str(start))
    base = params(learner)
    metrics = [learner.train(scored(*batch(seed=s))) for s in (0, 1)]
    yield learner, start, base, metrics
    learner.shutdown()


@pytest.fixture(scope="module")
def ids(tiny_model) -> tuple[list[int], list[int]]:
    tok = AutoTokenizer.from_pretrained(tiny_model)
    return tok("what is 2+3?")["input_ids"], tok("5, five.", add_special_tokens=False)["input_ids"]


def base_logprobs(tiny_model: str, prompt_ids: list[int], completion_ids: list[int]):
    """The base model's log-probabilities of the completion, loaded on its own here."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]  # [C, V]
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]


def test_only_the_adapted_layers_change_and_the_merge_is_base_plus_update(
    trained, tiny_model, tmp_path
):
    learner, _, base, metrics = trained
    assert [m["train/optimizer_steps"] for m in metrics] == [1, 2]
    merged = params(learner)
    assert sorted(merged) == sorted(base)  # the base model's names: no lora_ or base_layer keys
    adapted = {k for k in base if k.split(".")[-2] in TARGETS}
    assert len(adapted) == 2 * len(TARGETS)  # 2 layers
    unchanged = {k for k in base if torch.equal(base[k], merged[k])}
    assert unchanged == set(base) - adapted, "only the adapted projections may change"

    # The adapter folder, merged by PEFT itself into a freshly loaded base, gives the same
    # weights as the learner's own merge.
    from peft import PeftModel

    learner.save_adapter(str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (
        saved["r"] == 4
        and saved["lora_alpha"] == 8
        and set(saved["target_modules"]) == set(TARGETS)
    )
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(tensors) == 2 * len(adapted)  # A and B for each adapted layer
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    by_peft = PeftModel.from_pretrained(plain, tmp_path / "adapter").merge_and_unload()
    state = {k: v.detach() for k, v in by_peft.state_dict().items()}
    worst = max(float((state[k] - merged[k]).abs().max()) for k in adapted)
    assert worst < 1e-6


def test_the_reference_is_the_base_model(trained, tiny_model, ids):
    """With the adapters off the learner scores as the base model loaded on its own; with them
    on it does not (the KL has something to measure), and the KL metric is positive."""
    learner, _, _, metrics = trained
    prompt_ids, completion_ids = ids
    reference = torch.tensor(learner.sequence_logprobs(prompt_ids, completion_ids, True))
    policy = torch.tensor(learner.sequence_logprobs(prompt_ids, completion_ids))
    base = base_logprobs(tiny_model, prompt_ids, completion_ids)
    assert float((reference - base).abs().max()) < 1e-5
    assert float((policy - base).abs().max()) > 1e-2
    # The first step starts at the reference: the adapters' B is zero, so the KL is too.
    assert metrics[0]["train/kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics[1]["train/kl"] > 1e-5


def test_a_checkpoint_holds_the_adapters_and_resumes_exactly(trained, tmp_path):
    """The checkpoint leaves out the frozen base (a fraction of a full one), and a learner put
    back to its start repeats the same two updates bitwise."""
    learner, start, base, metrics = trained
    learner.save_checkpoint(str(tmp_path))
    for states in (tmp_path / "deepspeed").glob("*model_states.pt"):
        module = torch.load(states, map_location="cpu", weights_only=False)["module"]
        frozen = [k for k in module if ".lora_" not in k]
        assert not frozen, f"{states.name} holds frozen weights: {frozen}"  # tied head included
    size = sum(f.stat().st_size for f in (tmp_path / "deepspeed").glob("*.pt"))
    full = sum(t.numel() * 4 for t in base.values())
    # AdamW keeps the fp32 adapters and two moments, ZeRO-3 a copy: far below the base's size.
    assert size < 0.5 * full, f"checkpoint {size} bytes against {full} for the base weights"
    after = params(learner)

    learner.load_checkpoint(str(start))
    assert all(torch.equal(v, base[k]) for k, v in params(learner).items())
    again = [learner.train(scored(*batch(seed=s))) for s in (0, 1)]
    timeless = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics]
    assert [{k: v for k, v in m.items() if not k.startswith("time/")} for m in again] == timeless
    assert all(torch.equal(v, after[k]) for k, v in params(learner).items())


@pytest.mark.parametrize("push", ["merged", "adapter"])
def test_a_push_makes_the_engine_score_as_the_learner(trained, tiny_model, ids, push):
    """`merged`: the engine reloads base + update; `adapter`: it keeps the base and serves the
    pushed adapters as a vLLM LoRA request. Either way it then scores a fixed completion as the
    learner does, and so do the samples it draws (tagged with the pushed version)."""
    learner, _, _, _ = trained
    prompt_ids, completion_ids = ids
    cfg = config(tiny_model, *LORA, "model.rollout_dtype=float32", f"learner.lora.push={push}")
    engine = RolloutPool(cfg, tiny_model, f"lora-{push}", weight_transport=resolve_transport(cfg))
    try:
        before = engine.sequence_logprobs(prompt_ids, completion_ids)[0]
        transport = make_transport(cfg, learner, engine)
        transport.push(learner, engine, version=7)
        after = torch.tensor(engine.sequence_logprobs(prompt_ids, completion_ids)[0])
        policy = torch.tensor(learner.sequence_logprobs(prompt_ids, completion_ids))
        assert float((after - policy).abs().max()) < 2e-4  # float32: summation order only
        assert float((after - torch.tensor(before)).abs().max()) > 1e-2
        prompt = Prompt("p", "q", prompt_ids, "5")
        [group] = engine.generate([prompt], n=2, temperature=1.0, seed=3)
        for s in group.samples:
            assert s.policy_version == 7
            mine = learner.sequence_logprobs(prompt_ids, s.completion_token_ids)
            assert max(abs(a - b) for a, b in zip(s.logprobs, mine)) < 2e-4
        if push == "adapter":  # a second push replaces the first adapter
            transport.push(learner, engine, version=8)
            [group] = engine.generate([prompt], n=1, temperature=1.0, seed=3)
            assert group.samples[0].policy_version == 8
            assert len(set(engine.weights_checksums())) == 1
    finally:
        engine.shutdown()
