"""`cohort export RUN`: the trained policy as a Hugging Face folder (transformers and vLLM load it).

Sources: the run's final `policy/` (written when `trainer.save_final` is on), or a checkpoint
(`checkpoints/step_N/`, the newest complete one with `--checkpoint latest`), whose DeepSpeed
weights are put into the run's base model architecture. A LoRA run (`learner.lora.rank` > 0)
exports the base with its adapters merged, or with `--adapter` the adapters alone as a PEFT
folder (`adapter_config.json`, `adapter_model.safetensors`; transformers with PEFT and vLLM's
LoRA requests load it on top of the base model). Guarantees: the folder is written under a
temporary name and renamed when complete; before that it is validated: `config.json` and the
tokenizer load, and the safetensors hold exactly the weights the architecture expects (ties
allowed), or for an adapter exactly one A and one B per adapted layer. Not covered: sharding or
dtype conversion (weights are written as trained).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cluster import checkpoint
from core.config import Config, load_config
from learner.deepspeed_import import import_deepspeed


def find_run(path: str | Path) -> Path:
    """A run folder: `path` itself (it has config.yaml), or the newest run under an output
    folder such as `runs/demo`."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        return path
    runs = sorted(p for p in path.glob("*") if (p / "config.yaml").is_file())
    if not runs:
        raise FileNotFoundError(f"{path} is not a run folder (no config.yaml) and holds no run")
    return runs[-1]


def policy_source(run_dir: Path, which: str = "auto") -> Path:
    """The folder to export from: `policy` (final weights), `latest` (newest complete
    checkpoint), a checkpoint folder, or `auto` (policy if saved, else the latest checkpoint)."""
    if which in ("auto", "policy") and (run_dir / "policy" / "config.json").is_file():
        return run_dir / "policy"
    if which == "policy":
        raise FileNotFoundError(f"{run_dir}/policy does not exist (trainer.save_final was off)")
    if which in ("auto", "latest"):
        found = checkpoint.latest_valid(run_dir)
        if found is None:
            raise FileNotFoundError(f"{run_dir} has neither policy/ nor a complete checkpoint")
        return found
    path = Path(which)
    if not path.is_absolute() and not path.exists():
        path = run_dir / checkpoint.CHECKPOINTS / which
    reason = checkpoint.problem(path)
    if reason:
        raise FileNotFoundError(f"checkpoint {path} cannot be exported: {reason}")
    return path


def export(run_dir: Path, out: Path, which: str = "auto", adapter: bool = False) -> Path:
    """Write the run's policy (see `policy_source`) to `out` as a validated Hugging Face folder,
    or with `adapter` a LoRA run's adapters as a PEFT folder."""
    source = policy_source(run_dir, which)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out or remove it")
    cfg = load_config(run_dir / "config.yaml")
    if adapter and not cfg.learner.lora.rank:
        raise ValueError(
            f"{run_dir} trained all the weights (learner.lora.rank=0), so it has no adapter; "
            "export without --adapter"
        )
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if (source / "config.json").is_file():  # the final policy/, and adapter/ beside it
            shutil.copytree(_final_adapter(run_dir) if adapter else source, tmp)
        else:
            _from_checkpoint(cfg, source, tmp, adapter)
        if adapter:
            validate_adapter(tmp)
        else:
            validate_folder(tmp)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _final_adapter(run_dir: Path) -> Path:
    folder = run_dir / "adapter"
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{folder} holds no adapter (the run ended before writing it); export a checkpoint's "
            "adapters with --checkpoint latest --adapter"
        )
    return folder


def _from_checkpoint(cfg: Config, ckpt: Path, out: Path, adapter: bool) -> None:
    """Put a DeepSpeed checkpoint's weights into the base model's architecture and save it (a
    LoRA checkpoint's adapters onto the base model: merged, or as an adapter folder)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from cluster.models import resolve_model

    base = resolve_model(cfg.model.path)
    state = learner_state_dict(ckpt / "learner" / "deepspeed")
    if cfg.learner.lora.rank:
        _lora_from_checkpoint(cfg, base, state, ckpt, out, adapter)
        if not adapter:
            AutoTokenizer.from_pretrained(base).save_pretrained(out)
        return
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied(model)]
    if missing or unexpected:
        raise ValueError(
            f"{ckpt}: weights do not fit {base}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


def _lora_from_checkpoint(
    cfg: Config, base: str, state: dict, ckpt: Path, out: Path, adapter: bool
) -> None:
    """The base model with the checkpoint's adapters, saved merged or as an adapter folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner import lora

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = lora.add_adapters(model, cfg.learner.lora)
    wanted = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != wanted:
        raise ValueError(
            f"{ckpt}: the adapters do not fit learner.lora of the run's config: missing "
            f"{sorted(wanted - set(state))[:5]}, unexpected {sorted(set(state) - wanted)[:5]}"
        )
    model.load_state_dict(state, strict=False)
    if adapter:
        model.save_pretrained(out, safe_serialization=True)
    else:
        merged = dict(lora.merged_parameters(model, zero_stage=0))
        model.get_base_model().save_pretrained(out, state_dict=merged, safe_serialization=True)


def learner_state_dict(ds_dir: Path) -> dict:
    """Full fp32 weights of a DeepSpeed checkpoint folder (any ZeRO stage)."""
    import torch

    full = ds_dir / "mp_rank_00_model_states.pt"  # stages 0-2: the whole module, unpartitioned
    if full.is_file():
        module = torch.load(full, map_location="cpu", weights_only=False).get("module") or {}
        if module and all(v.numel() for v in module.values()):
            return {k: v.float() for k, v in module.items()}
    if not list(ds_dir.glob("*model_states.pt")):
        raise FileNotFoundError(f"{ds_dir} holds no DeepSpeed model states")
    import_deepspeed()  # before its submodule: without mlflow's import
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ds_dir.parent), tag=ds_dir.name)


def _tied(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    return set(keys if isinstance(keys, (list, set)) else keys.keys())


def validate_adapter(path: Path) -> None:
    """Raise unless `path` is a PEFT LoRA folder with an A and a B for every adapted layer."""
    from peft import PeftConfig
    from safetensors import safe_open

    config = PeftConfig.from_pretrained(path)
    weights = path / "adapter_model.safetensors"
    if config.peft_type != "LORA" or not weights.is_file():
        raise ValueError(f"{path}: not a LoRA adapter folder (type {config.peft_type})")
    with safe_open(str(weights), framework="pt") as st:
        keys = set(st.keys())
    a = {k.replace("lora_A", "") for k in keys if ".lora_A." in k}
    b = {k.replace("lora_B", "") for k in keys if ".lora_B." in k}
    if not a or a != b or len(keys) != 2 * len(a):
        raise ValueError(f"{path}: adapter weights are not A/B pairs: {sorted(keys)[:6]}")


def validate_folder(path: Path) -> None:
    """Raise unless `path` is a loadable causal-LM folder whose weights match its config."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    AutoTokenizer.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = set(model.state_dict()) - _tied(model)
    found: set[str] = set()
    files = list(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path} has no .safetensors weights")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            found |= set(st.keys())
    missing, extra = expected - found, found - set(model.state_dict())
    if missing or extra:
        raise ValueError(
            f"{path}: weights missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}"
        )
