"""Model FLOPs (learner/flops.py) by hand and against torch's FLOP counter, the GPU peak table,
and the perf metrics built from them (cluster/metrics.py)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

from cluster.metrics import perf_metrics
from learner import flops
from learner.flops import FlopModel


@pytest.fixture(scope="module")
def model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


def test_the_tiny_model_counted_by_hand(model):
    # 2 layers of hidden 128: q, k, v, o 128x128 each, MLP gate and up 128x256, down 256x128;
    # the head is the tied 52-token embedding (not in the body); 2 heads of 64.
    per_layer = 4 * 128 * 128 + 3 * 128 * 256
    assert FlopModel.of(model) == FlopModel(2 * per_layer, 52 * 128, 2, 128)


@pytest.mark.parametrize("length, scored", [(1, 1), (9, 4), (30, 12)])
def test_forward_flops_match_torchs_counter(tiny_model, length, scored):
    """torch's FlopCounterMode counts every matmul of a real forward pass. With attention as
    plain matmuls ("eager": scores over the full square, the causal mask applied after) it
    equals ours once our causal attention (token i attends to i positions) is swapped for the
    full square. (The CPU's fused SDPA kernel has no FLOP formula: the counter sees no
    attention there.)"""
    eager = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
    fm = FlopModel.of(eager)
    ids = torch.randint(6, 52, (1, length))
    with FlopCounterMode(display=False) as counter:
        eager(input_ids=ids, logits_to_keep=scored)
    ours = fm.forward(torch.tensor([length]), torch.tensor([scored]))
    causal = 2 * fm.layers * fm.attn_dim * length * (length + 1)
    full = 4 * fm.layers * fm.attn_dim * length * length
    assert counter.get_total_flops() == ours - causal + full


def test_a_batch_is_the_sum_of_its_sequences(model):
    fm = FlopModel.of(model)
    each = [fm.forward(torch.tensor([t]), torch.tensor([c])) for t, c in [(5, 2), (11, 7)]]
    assert fm.forward(torch.tensor([5, 11]), torch.tensor([2, 7])) == sum(each)


def test_known_gpus_come_from_the_table(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _: "NVIDIA H100 80GB HBM3")
    cuda = torch.device("cuda", 0)
    assert flops.device_peak(cuda, torch.bfloat16).flops_per_s == 989e12
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")  # torch's default: no TF32
        assert flops.device_peak(cuda, torch.float32).flops_per_s == pytest.approx(66.9e12)
        torch.set_float32_matmul_precision("high")
        assert flops.device_peak(cuda, torch.float32).flops_per_s == pytest.approx(494.5e12)
    finally:
        torch.set_float32_matmul_precision(precision)


def test_the_cpu_peak_is_measured():
    one = flops.device_peak(torch.device("cpu"), torch.float32)
    assert one.source.startswith("calibrated: 1024x1024 float32 matmul")
    # A 1024^3 matmul on one modern core: between 1 GFLOP/s and 1 TFLOP/s.
    assert 1e9 < one.flops_per_s < 1e12


def test_perf_metrics_by_hand():
    row = {"time/generate": 2.0, "rollout/tokens": 500, "time/train": 4.0,
           "train/real_tokens": 1000.0, "train/model_flops": 8e9}  # fmt: skip
    assert perf_metrics(row, peak_flops_per_s=1e10) == {
        "perf/generate_tokens_per_s": 250.0,
        "perf/learner_tokens_per_s": 250.0,
        "perf/mfu": 0.2,
    }
