"""Model FLOPs of the learner's passes and the peak they are measured against (`perf/mfu`).

Model FLOPs count the arithmetic the model needs, not what the hardware ran: real tokens only
(no padding), 2 FLOPs per multiply-add, the backward pass twice the forward, and no
recomputation, the convention of model FLOPs utilisation (Chowdhery et al. 2022, "PaLM",
appendix B). For one sequence of T real tokens whose last C tokens are scored, the forward pass
costs

    2 * body * T                        every matmul of the layers (attention projections, MLP)
  + 2 * 2 * layers * attn_dim * T(T+1)/2  causal attention: scores and weighted sum, token i
                                          attending to i positions
  + 2 * head * C                          the output head on the scored positions only

where `body` is the layers' matrix parameters and `head` the output head's (hidden x vocab).
A training pass is forward + backward, 3x the forward; the old-policy and reference passes add
one forward each.

The peak is the device's dense matmul rate in the learner's dtype: on a GPU from a table of
known devices, on a CPU (or an unknown GPU) measured once at start-up by timing a matmul with
the learner's dtype and threads (`calibrate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FlopModel:
    body: int
    """Parameters of the layers' matrices (embeddings, norms and biases excluded)."""
    head: int
    """Parameters of the output head (hidden x vocab), tied to the embeddings or not."""
    layers: int
    attn_dim: int
    """Width of the attention scores' dot products: query heads x head dim."""

    @classmethod
    def of(cls, model: torch.nn.Module) -> FlopModel:
        """From a transformers causal LM (also under ZeRO-3, whose parameters are partitioned:
        their full sizes are `ds_numel`)."""
        cfg = model.config
        head_weight = model.get_output_embeddings().weight
        skip = {id(model.get_input_embeddings().weight), id(head_weight)}

        def numel(p: torch.nn.Parameter) -> int:
            return int(getattr(p, "ds_numel", p.numel()))

        def is_matrix(p: torch.nn.Parameter) -> bool:
            return len(getattr(p, "ds_shape", p.shape)) == 2

        body = sum(numel(p) for p in model.parameters() if is_matrix(p) and id(p) not in skip)
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(body, numel(head_weight), cfg.num_hidden_layers, heads * head_dim)

    def forward(self, tokens: torch.Tensor, scored: torch.Tensor) -> float:
        """Forward FLOPs of a batch: `tokens` [B] real tokens per sequence, `scored` [B] scored
        (completion) tokens per sequence."""
        t = tokens.double()
        dense = 2 * self.body * t
        attention = 2 * self.layers * self.attn_dim * t * (t + 1)  # 2 matmuls x 2 x sum(i)
        head = 2 * self.head * scored.double()
        return float((dense + attention + head).sum())


PEAK_TFLOPS = {
    # Dense rates per GPU (no sparsity; SXM parts), as NVIDIA publishes them: tensor cores in
    # bf16/fp16 and in tf32, CUDA cores in fp32 (torch's float32 matmuls unless TF32 is on).
    "H200": {"bfloat16": 989.0, "tf32": 494.5, "float32": 66.9},
    "H100": {"bfloat16": 989.0, "tf32": 494.5, "float32": 66.9},
    "A100": {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5},
    "L40S": {"bfloat16": 362.0, "tf32": 183.0, "float32": 91.6},
    "L4": {"bfloat16": 121.0, "tf32": 60.0, "float32": 30.3},
    "A10": {"bfloat16": 125.0, "tf32": 62.5, "float32": 31.2},
}
"""Checked in order, by substring of `torch.cuda.get_device_name()` ("NVIDIA H100 80GB HBM3");
another GPU is calibrated like a CPU."""


@dataclass(frozen=True)
class Peak:
    flops_per_s: float
    source: str
    """"table: <device>" or "calibrated: <n>x<n> <dtype> matmul, <threads> threads"."""


def device_peak(device: torch.device, dtype: torch.dtype) -> Peak:
    """The peak of `device` for matmuls in `dtype`: the table's for a known GPU, else measured."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = "bfloat16" if dtype in (torch.bfloat16, torch.float16) else "float32"
        if key == "float32" and torch.get_float32_matmul_precision() != "highest":
            key = "tf32"  # "high" or "medium": float32 matmuls run on tensor cores
        for model, rates in PEAK_TFLOPS.items():
            if model in name:
                return Peak(rates[key] * 1e12, f"table: {name}")
    return calibrate(device, dtype)


def calibrate(
    device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 0.3
) -> Peak:
    """Dense matmul FLOP/s of `device` in `dtype` with this process's torch threads: the best of
    repeated n x n x n products over about `seconds` after a warm-up (the best, because the
    question is what the hardware can do, not how busy it is now)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: kernels chosen, caches and pages touched
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    threads = torch.get_num_threads()
    source = f"calibrated: {n}x{n} {str(dtype).removeprefix('torch.')} matmul, {threads} threads"
    return Peak(2 * n**3 / best, source)
