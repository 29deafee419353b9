"""`learner/lora.py` on a tiny Llama without DeepSpeed: which layers get adapters, the merged
weights against a hand computation and PEFT's own merge, the adapter files vLLM and PEFT load,
and the checkpoint filter that leaves the tied output head out."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from core.config import LoraConfig
from learner import checkpoint, lora


@pytest.fixture
def adapted(tiny_model):
    """The tiny Llama with rank-4 adapters whose B is random (a fresh adapter's B is zero, which
    would make every merge equal the base)."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = lora.add_adapters(base, LoraConfig(rank=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.1)
    return model


def test_only_the_adapters_train(adapted):
    trained = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    layers = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained}
    assert layers == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_merged_weights_are_base_plus_scaled_update_under_the_base_names(adapted, tiny_model):
    merged = dict(lora.merged_parameters(adapted, zero_stage=0))
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    tied = {"lm_head.weight"}  # the tiny model ties its head to the embeddings
    assert set(merged) == set(base) - tied
    q = adapted.get_base_model().model.layers[0].self_attn.q_proj
    by_hand = base["model.layers.0.self_attn.q_proj.weight"] + (8 / 4) * (
        q.lora_B["default"].weight @ q.lora_A["default"].weight
    )
    assert torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"], by_hand, atol=1e-6)
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(merged[name], base[name])
    # PEFT's own merge agrees, and ours left the adapters in place (the model still adapts).
    before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    peft_merged = adapted.merge_and_unload().state_dict()
    assert all(torch.allclose(merged[k], peft_merged[k], atol=1e-6) for k in merged)
    assert all(torch.equal(before[n], p) for n, p in adapted.named_parameters() if n in before)


def test_export_order_matches_the_merged_names(adapted):
    names = [name for name, _, _ in lora.export_order(adapted)]
    assert names == [name for name, _ in lora.merged_parameters(adapted, zero_stage=0)]
    layers = [layer for _, _, layer in lora.export_order(adapted) if layer is not None]
    assert len(layers) == 2 * 7  # 2 layers x 7 projections


def test_adapters_off_is_the_base_model(adapted, tiny_model):
    ids = torch.tensor([[3, 10, 11, 12, 13]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        want = base(input_ids=ids).logits
        with lora.adapters_off(adapted):
            off = adapted(input_ids=ids).logits
        on = adapted(input_ids=ids).logits
    assert torch.equal(off, want) and not torch.allclose(on, want)


def test_adapter_files_load_in_peft_and_give_the_same_model(adapted, tiny_model, tmp_path):
    """What an engine writes from a pushed adapter (`RolloutActor.load_adapter`) is a PEFT folder
    that reproduces the adapted model."""
    from peft import PeftModel

    config, tensors = lora.adapter_files(adapted, zero_stage=0)
    assert all(".default." not in k for k in tensors)  # PEFT's saved names
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, tmp_path)
    ids = torch.tensor([[3, 10, 11, 12, 13]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, adapted(input_ids=ids).logits)


def test_unknown_target_modules_name_the_key_and_the_layers(tiny_model):
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"learner.lora.target_modules=\['qkv'\].*'q_proj'"):
        lora.add_adapters(base, LoraConfig(rank=4, target_modules=["qkv"]))


class FakeEngine:
    """DeepSpeed's side of `save_checkpoint` that the filter changes: `module_state_dict`
    leaves out frozen names as `named_parameters` lists them (each tied weight once)."""

    def __init__(self, module):
        self.module = module

    def module_state_dict(self, exclude_frozen_parameters=False):
        state = self.module.state_dict()
        for name, p in self.module.named_parameters():
            if exclude_frozen_parameters and not p.requires_grad:
                state.pop(name, None)
        return state


def test_a_lora_checkpoint_leaves_out_the_tied_head(adapted):
    engine = FakeEngine(adapted)
    assert "base_model.model.lm_head.weight" in engine.module_state_dict(True)  # DeepSpeed's
    with checkpoint._tied_frozen_left_out(engine, frozen_base=True):
        kept = engine.module_state_dict(exclude_frozen_parameters=True)
    assert kept and all(".lora_" in k for k in kept)
    assert "module_state_dict" not in vars(engine)  # DeepSpeed's own method is back
