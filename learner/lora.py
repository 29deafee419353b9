"""LoRA on the learner (PEFT): adapters on a frozen base, the base as the KL reference, and the
merged weights the engines and exported folders get.

Guarantees: only the adapters train (the base weights have no gradient and no optimizer
state); the reference log-probabilities are the same model's with its adapters switched off,
which equals the base model loaded on its own (nothing else is trained); merged weights are
base + (alpha / r) B A computed into a new tensor, the adapters are untouched, and carry the base
model's parameter names, so vLLM and transformers load them as a plain model. Under ZeRO-3 each
layer's base weight and adapters are gathered together, on all ranks in the same order. Not
covered: adapters on embeddings or the output head, DoRA and other PEFT variants, several
adapters on one model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from core.config import LoraConfig
from learner.deepspeed_import import import_deepspeed

ADAPTER = "default"
"""PEFT's name for the one adapter the learner trains."""


def add_adapters(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """`model` (a transformers causal LM) with trainable LoRA adapters on `lora.target_modules`
    and every other weight frozen (a PEFT model)."""
    import peft

    targets = lora.target_modules
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.scale_alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _linear(m)})
        raise ValueError(
            f"learner.lora.target_modules={targets}: {err}. This model's linear layers are "
            f"named {names}; choose among them or use [all-linear]"
        ) from err


def _linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear)


def is_lora(module: torch.nn.Module) -> bool:
    """Whether `module` is a PEFT model (the learner was built with `learner.lora.rank` > 0)."""
    return hasattr(module, "disable_adapter") and hasattr(module, "get_base_model")


@contextmanager
def adapters_off(module: torch.nn.Module):
    """Within the block, `module` computes as its base model (the KL reference)."""
    with module.disable_adapter():
        yield


def merged_parameters(
    module: torch.nn.Module, zero_stage: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """(base model's parameter name, full tensor) for every base parameter, the adapters merged
    into the layers that have them; new tensors, the model is not changed. All ranks must iterate
    under ZeRO-3."""
    deepspeed = import_deepspeed()

    for name, param, layer in export_order(module):
        group = [param] + (_adapter_params(layer) if layer is not None else [])
        with deepspeed.zero.GatheredParameters(group, enabled=zero_stage == 3):
            tensor = param.data.detach().clone()
            if layer is not None:
                tensor += layer.get_delta_weight(ADAPTER).to(tensor.dtype)
        yield name, tensor


def export_order(module: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter, object]]:
    """(base name, base parameter, the LoRA layer whose update adds to it or None) in the base
    model's `named_parameters` order (tied parameters once), adapters left out."""
    from peft.tuners.lora import LoraLayer

    base = module.get_base_model()
    layers = {n: m for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, param in base.named_parameters():
        if ".lora_" in name:
            continue
        layer_name, sep, leaf = name.rpartition(".base_layer.")
        if not sep:
            yield name, param, None
        else:
            # Only the weight carries the update; a bias passes through as it is.
            yield f"{layer_name}.{leaf}", param, layers[layer_name] if leaf == "weight" else None


def _adapter_params(layer) -> list[torch.nn.Parameter]:
    return [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]


def adapter_state(module: torch.nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """The trainable adapters' full tensors under the PEFT model's own names (all ranks must
    call under ZeRO-3)."""
    deepspeed = import_deepspeed()

    state = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            with deepspeed.zero.GatheredParameters([param], enabled=zero_stage == 3):
                state[name] = param.data.detach().clone()
    return state


def adapter_files(module: torch.nn.Module, zero_stage: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """What a PEFT adapter folder holds, in memory: `adapter_config.json`'s content and the
    tensors of `adapter_model.safetensors` under PEFT's saved names (all ranks must call under
    ZeRO-3). vLLM's LoRA support loads such a folder."""
    import peft

    tensors = peft.get_peft_model_state_dict(module, state_dict=adapter_state(module, zero_stage))
    config = module.peft_config[ADAPTER].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    return config, tensors
