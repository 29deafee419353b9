"""GPU smoke (skipped without CUDA): two training steps with CUDA vLLM, DeepSpeed on the GPU
and vLLM's weight transfer: colocated on one GPU (IPC transport, the engine sleeping while the
learner trains), and split over two GPUs (NCCL transport, learner rank 0 broadcasting; skipped
with fewer than two GPUs, as NCCL cannot put two ranks on one device); on the tiny model and on
SmolLM2-135M-Instruct (or the model folder in $COHORT_GPU_SMOKE_MODEL, e.g. a ~0.5B Qwen2.5);
colocated once more with the learner's ZeRO states offloaded while the engine generates
(DeepSpeed `offload_states`). Prints the seconds of every phase (`push` among them) and, when
colocated, the GPU memory the engine's sleep freed.

Run on a GPU machine: `make test-gpu` (docs/cluster.md lists what each mode covers).
"""

import json
import os

import pytest

from tests.conftest import run_cohort

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

MODES = {
    "nccl": ["cluster.weight_transport=nccl", "rollout.gpu_memory_utilization=0.5"],
    "ipc-colocated": ["cluster.weight_transport=ipc", "cluster.colocate=true",
                      "rollout.gpu_memory_utilization=0.3"],
    "ipc-colocated-offload": ["cluster.weight_transport=ipc", "cluster.colocate=true",
                              "cluster.offload_learner=true", "learner.zero_stage=1",
                              "rollout.gpu_memory_utilization=0.3"],
}  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["tiny", "small"])
def test_two_steps_on_gpu(tiny_model, tmp_path, mode, model):
    if mode == "nccl" and torch.cuda.device_count() < 2:
        pytest.skip("the NCCL transport needs the engine and the learner on two GPUs")
    path = tiny_model if model == "tiny" else os.environ.get(
        "COHORT_GPU_SMOKE_MODEL", "smollm2-135m-instruct")  # fmt: skip
    done = run_cohort(["train", "configs/smoke.yaml", f"model.path={path}", "trainer.steps=2",
                       "trainer.eval_every=0", f"trainer.output_dir={tmp_path}",
                       "cluster.use_gpu=true", "cluster.verify_weights=true",
                       "model.rollout_dtype=bfloat16", *MODES[mode]])  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        times = " ".join(f"{k[5:]} {v:.2f}s" for k, v in r.items() if k.startswith("time/"))
        freed = r.get("colocate/sleep_freed_gib")
        slept = f", sleep freed {freed:.2f} GiB" if freed is not None else ""
        print(f"[{mode} {model}] step {r['step']}: {times}{slept}")
    assert [r["step"] for r in rows] == [1, 2]
    if "colocate" in mode:
        assert all(r["colocate/sleep_freed_gib"] > 0 for r in rows)
    assert all(r["push/engines_identical"] == 1.0 for r in rows)
    assert rows[0]["push/checksum"] != rows[1]["push/checksum"]
