"""One learner rank's training state on disk, so that a resumed run continues where it stopped.

What a rank writes under the checkpoint's `learner/` folder: DeepSpeed's model (with LoRA the
adapters only), optimizer and learning-rate schedule state (tag `deepspeed`; ZeRO shards written
by their owners, so all ranks must call) with the count of optimizer steps, and this rank's
random-number generator states (Python, NumPy, torch CPU) in `rng_rank<R>.pt`. RNG states are
read with `weights_only=True`; DeepSpeed reads its own files with pickle (only resume from
checkpoints you wrote). Not covered: the CUDA generators' states; the run-level layout, atomic
writes and the `latest` marker (`cluster/checkpoint.py`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

DEEPSPEED_TAG = "deepspeed"


def save(engine: Any, path: str, rank: int, optimizer_steps: int, frozen_base: bool) -> None:
    """Write `engine`'s state and this rank's RNG states under `path` (all ranks call). With
    `frozen_base` (LoRA) the weights that do not train are left out: the run's base model holds
    them."""
    with _tied_frozen_left_out(engine, frozen_base):
        engine.save_checkpoint(
            path,
            tag=DEEPSPEED_TAG,
            client_state={"optimizer_steps": optimizer_steps},
            exclude_frozen_parameters=frozen_base,
        )
    torch.save(rng_states(), os.path.join(path, f"rng_rank{rank}.pt"))


@contextmanager
def _tied_frozen_left_out(engine: Any, frozen_base: bool) -> Iterator[None]:
    """DeepSpeed leaves out frozen weights by their `named_parameters` names, which list a tied
    weight once: the output head's alias of the embeddings (the vocabulary x hidden matrix) would
    stay in every LoRA checkpoint. Within the block every frozen name is left out."""
    if not frozen_base:
        yield
        return
    own = engine.module_state_dict
    module = engine.module
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def trained_only(*args, **kwargs):
        state = own(*args, **kwargs)
        for name in frozen & set(state):
            del state[name]
        return state

    engine.module_state_dict = trained_only
    try:
        yield
    finally:
        del engine.module_state_dict


def load(engine: Any, path: str, rank: int, frozen_base: bool) -> int:
    """Restore what `save` wrote into `engine` and this process's RNGs; returns the optimizer
    steps taken before the checkpoint. With `frozen_base` the engine keeps the base weights it
    was built with."""
    _, client = engine.load_checkpoint(
        path,
        tag=DEEPSPEED_TAG,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
        load_module_strict=not frozen_base,
    )
    if client is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint under {path}/{DEEPSPEED_TAG}")
    states = torch.load(os.path.join(path, f"rng_rank{rank}.pt"), weights_only=True)
    restore_rng_states(states)
    return client["optimizer_steps"]


def rng_states() -> dict[str, Any]:
    """This process's Python, NumPy and torch CPU generator states, as tensors and plain
    values only (so `torch.load(weights_only=True)` reads them back)."""
    _, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (torch.from_numpy(np_keys.astype("int64")), np_pos, np_gauss, np_cached),
        "torch": torch.get_rng_state(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators to what `rng_states` returned."""
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
