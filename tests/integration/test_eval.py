"""`cohort eval` through the real entry point: vLLM loads the model (a base model, or a folder
written by `cohort export`), generates, and pass@1/pass@k are saved as JSON."""

import json
import shutil

import pytest
import yaml

from tests.conftest import run_cohort

pytestmark = pytest.mark.integration

TINY_EVAL = ["model.path=tiny-llama", "data.eval.size=6", "reward.functions=[{name: math_answer}]",
             "reward.accuracy_function=math_answer", "rollout.eval_max_new_tokens=8"]  # fmt: skip


def test_pass_at_k_and_json(tmp_path):
    out = tmp_path / "eval.json"
    result = run_cohort(["eval", "configs/smoke.yaml", *TINY_EVAL, "--k", "3", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["prompts"] == 6 and res["n"] == 3 and len(res["per_prompt"]) == 6
    for key in ("greedy/accuracy", "pass@1", "pass@3"):
        assert 0.0 <= res[key] <= 1.0
    assert res["pass@3"] >= res["pass@1"]
    assert "greedy accuracy" in result.stdout and "pass@3" in result.stdout


def test_exported_folder_loads_in_vllm(tmp_path, tiny_model):
    """A run's policy exported by `cohort export`, evaluated (so loaded and run) by vLLM."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = yaml.safe_load(open("configs/smoke.yaml"))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copytree(tiny_model, run / "policy")
    assert run_cohort(["export", str(run), "--out", str(tmp_path / "hf")]).returncode == 0
    out = tmp_path / "eval.json"
    result = run_cohort(["eval", str(run), *TINY_EVAL, "--checkpoint", str(tmp_path / "hf"),
                         "--k", "2", "--out", str(out)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["model"] == str(tmp_path / "hf") and all(p["greedy"] is not None
                                                          for p in res["per_prompt"])  # fmt: skip


def test_eval_without_accuracy_function_is_a_clear_error(tmp_path):
    result = run_cohort(["eval", "configs/smoke.yaml", "model.path=tiny-llama"])
    assert result.returncode == 2 and "reward.accuracy_function" in result.stderr
