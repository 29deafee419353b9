"""What this machine's CPU can do natively, for choices that depend on it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 flags of bfloat16 arithmetic in hardware (AVX-512 BF16, AMX); without one, bfloat16
matmuls are converted to float32 and back, slower than float32 itself."""


@cache
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)
