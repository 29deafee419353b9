"""DeepSpeed, imported without the mlflow import it does not need.

`deepspeed.autotuning` imports mlflow at import time whenever it is installed (Cohort's
`trackers` extra installs it), for `deepspeed --autotuning` alone, which Cohort never runs.
That import is about 3 s of every learner rank's start on a 2-core CPU. Importing DeepSpeed
through `import_deepspeed()` hides mlflow for that one import; mlflow stays importable afterwards.
"""

from __future__ import annotations

import sys
from types import ModuleType


def import_deepspeed() -> ModuleType:
    """The `deepspeed` module, imported on first call with mlflow hidden from it."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # `import mlflow` raises ImportError; DeepSpeed catches it
    try:
        import deepspeed as module
    finally:
        if hide and sys.modules.get("mlflow", ...) is None:
            del sys.modules["mlflow"]
    return module
