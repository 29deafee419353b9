"""One learner rank's training state on disk, so that a resumed run continues where it stopped.

What a rank writes under the checkpoint's `learner/` folder: DeepSpeed's model, optimizer and
learning-rate schedule state (tag `deepspeed`; ZeRO shards written by their owners, so all ranks
must call) with the count of optimizer steps, and this rank's random-number generator states
(Python, NumPy, torch CPU) in `rng_rank<R>.pt`. RNG states are read with `weights_only=True`;
DeepSpeed reads its own files with pickle (only resume from checkpoints you wrote). Not covered:
the CUDA generators' states; the run-level layout, atomic writes and the `latest` marker
(`cluster/checkpoint.py`).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

DEEPSPEED_TAG = "deepspeed"


def save(engine: Any, path: str, rank: int, optimizer_steps: int) -> None:
    """Write `engine`'s state and this rank's RNG states under `path` (all ranks call)."""
    engine.save_checkpoint(
        path, tag=DEEPSPEED_TAG, client_state={"optimizer_steps": optimizer_steps}
    )
    torch.save(rng_states(), os.path.join(path, f"rng_rank{rank}.pt"))


def load(engine: Any, path: str, rank: int) -> int:
    """Restore what `save` wrote into `engine` and this process's RNGs; returns the optimizer
    steps taken before the checkpoint."""
    _, client = engine.load_checkpoint(
        path, tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
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
