"""`cohort export` and `cohort eval` on a real run: a checkpoint of the real DeepSpeed learner
exported by `cohort export` holds the trained weights bit for bit, and `cohort eval` exports it
beside the run, vLLM loads and runs the export, and pass@1/pass@k are saved as JSON. (That vLLM
given the learner's weights scores as the learner does: tests/integration/test_weight_push.py.)
"""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from cluster import checkpoint
from cluster.cli import main
from core.config import load_config
from core.records import Group, Prompt, Sample
from learner.ranks import LearnerRanks
from tests.conftest import run_cohort, scored
from tests.integration.test_learner import params

pytestmark = pytest.mark.integration

TINY_EVAL = ["model.path=tiny-llama", "data.eval.size=6", "reward.functions=[{name: math_answer}]",
             "reward.accuracy_function=math_answer", "rollout.eval_max_new_tokens=8"]  # fmt: skip


def groups_of(tok, prompt_ids: list[int]) -> list[Group]:
    """8 groups of 8 hand-written completions of one prompt (the smoke config's batch)."""
    texts = ["5", "five", "4", "55", "5.", "six", "5, five.", "x"]
    samples = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        samples.append(Sample(ids, text, [0.0] * len(ids), "stop", 0))
    return [Group(Prompt(f"p{i}", "what is 2+3?", prompt_ids, "5"), samples) for i in range(8)]


@pytest.fixture(scope="module")
def trained_run(ray_local, tiny_model, tmp_path_factory):
    """A run folder after one training step of the real learner: its config.yaml and the step's
    checkpoint, written as `cluster/driver.py` writes one (`checkpoint.begin`, the learner ranks'
    `save_checkpoint`, `checkpoint.commit`); and the learner's weights before and after the
    step."""
    run = tmp_path_factory.mktemp("run")
    raw = yaml.safe_load(open("configs/smoke.yaml"))
    raw["model"]["path"], raw["learner"]["lr"] = tiny_model, 0.01
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(run / "config.yaml")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    chat = [{"role": "user", "content": "what is 2+3?"}]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]

    learner = LearnerRanks(cfg, tiny_model, "export")
    try:
        initial = params(learner)
        groups = groups_of(tok, prompt_ids)
        learner.train(scored(groups, [[j % 2 for j in range(8)] for _ in groups]), step=1)
        tmp = checkpoint.begin(run, 1)
        learner.save_checkpoint(str(tmp / "learner"))
        checkpoint.commit(run, tmp, 1, {"step": 1}, keep=2)
        trained = params(learner)
    finally:
        learner.shutdown()
    return run, initial, trained


def test_exported_checkpoint_has_the_trained_weights(trained_run, tmp_path):
    run, initial, trained = trained_run
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out), "--checkpoint", "latest"]) == 0
    exported = load_file(out / "model.safetensors")
    assert exported.keys() == trained.keys()
    differ = [k for k in trained if not torch.equal(exported[k], trained[k])]
    assert not differ, f"the export differs from the trained learner in {differ}"
    moved = [k for k in trained if not torch.equal(initial[k], trained[k])]
    assert len(moved) == len(trained), "the step did not change every weight"


def test_eval_of_a_checkpoint(trained_run, tmp_path):
    """`cohort eval RUN --checkpoint latest` exports the checkpoint beside the run and
    evaluates the export (so vLLM loads and runs it): greedy accuracy, pass@1 and pass@k per
    prompt and overall, in the JSON and on the console. (The formulas: tests/unit/
    test_evaluation.py.)"""
    run, _, trained = trained_run
    out = tmp_path / "eval.json"
    args = ["eval", str(run), *TINY_EVAL, "--checkpoint", "latest", "--k", "3", "--out", str(out)]
    result = run_cohort(args)
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["model"] == str(run / "export-step_000001")
    evaluated = load_file(run / "export-step_000001" / "model.safetensors")
    assert all(torch.equal(evaluated[k], trained[k]) for k in trained)
    assert res["checkpoint"] == str(run / "checkpoints" / "step_000001")
    assert res["prompts"] == 6 and res["n"] == 3 and len(res["per_prompt"]) == 6
    assert all(p["greedy"] is not None for p in res["per_prompt"])
    for key in ("greedy/accuracy", "pass@1", "pass@3"):
        assert 0.0 <= res[key] <= 1.0
    assert res["pass@3"] >= res["pass@1"]
    assert "greedy accuracy" in result.stdout and "pass@3" in result.stdout
