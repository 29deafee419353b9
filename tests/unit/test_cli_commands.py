"""`cohort plot`, `doctor`, `export`, `eval`'s config check and `config --reference` on fixtures
the tests write."""

import json
import shutil
import sys

import yaml

from cluster import checkpoint
from cluster.cli import main
from cluster.doctor import ray_reachable


def fake_run(tmp_path, tiny_model, steps=12):
    """A run folder as training leaves it: config, metrics, and the final policy."""
    run = tmp_path / "runs" / "exp" / "20250101-000000"
    run.mkdir(parents=True)
    cfg = yaml.safe_load(open("configs/smoke.yaml"))
    cfg["model"]["path"] = tiny_model
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for s in range(steps + 1):
        row = {"step": s}
        if s:
            row |= {"reward/mean": 0.2 + 0.05 * s, "reward/std": 0.1, "accuracy": 0.03 * s,
                    "rollout/completion_len": 20 - s / 2, "train/kl": 0.001 * s,
                    "train/clip_frac": 0.01, "time/generate": 3.0, "time/train": 5.0,
                    "time/reward": 0.1, "time/push": 0.5, "time/step": 8.6}  # fmt: skip
        if s % 4 == 0:
            row |= {"eval/accuracy": 0.1 + 0.02 * s, "eval/reward": 0.1 + 0.02 * s}
        rows.append(json.dumps(row))
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n{torn")
    shutil.copytree(tiny_model, run / "policy")
    return run


def test_plot_writes_a_png_of_the_curves(tmp_path, tiny_model, capsys):
    run = fake_run(tmp_path, tiny_model)
    assert main(["plot", str(run.parent)]) == 0  # an output folder: its newest run
    png = run / "plots" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert str(png) in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "nowhere")]) == 2


def test_doctor_lists_versions_and_fixes(tmp_path, capsys, monkeypatch):
    """Exit 0 with everything required (this venv has it), 1 when Ray is unreachable or
    torchvision is broken. torchvision is made absent, then broken, so the machine's own does
    not decide the code."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # find_spec: not installed
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "vllm", "deepspeed", "ray", "transformers", "CPU cores", "GPU"):
        assert name in out
    assert "  - required:" not in out  # optional extras may still be listed under "to fix"

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens on port 1
    assert main(["doctor"]) == 1
    assert "start the cluster (`ray start --head`) or fix RAY_ADDRESS" in capsys.readouterr().out

    monkeypatch.delenv("RAY_ADDRESS")
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text("raise RuntimeError('nms missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision")
    assert main(["doctor"]) == 1
    assert "torchvision is installed but broken (RuntimeError: nms missing)" in (
        capsys.readouterr().out
    )
    assert "NOT reachable" in ray_reachable("127.0.0.1:1", timeout=1)
    assert "not host:port" in ray_reachable("nonsense")


def load_and_generate(folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok.apply_chat_template([{"role": "user", "content": "what is 1+1?"}],
                                  add_generation_prompt=True, return_tensors="pt")  # fmt: skip
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    return model


def test_export_final_policy_loads_and_generates(tmp_path, tiny_model):
    run = fake_run(tmp_path, tiny_model)
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    load_and_generate(out)
    assert main(["export", str(run), "--out", str(out)]) == 2  # never overwrites


def test_export_from_a_checkpoint_has_its_weights(tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    run = fake_run(tmp_path, tiny_model)
    shutil.rmtree(run / "policy")
    state = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    state = {k: v + 0.5 for k, v in state.items()}  # a "trained" policy
    tmp = checkpoint.begin(run, 3)
    (tmp / "learner" / "deepspeed").mkdir(parents=True)
    torch.save({"module": state}, tmp / "learner" / "deepspeed" / "mp_rank_00_model_states.pt")
    checkpoint.commit(run, tmp, 3, {"step": 3}, keep=2)
    out = tmp_path / "from_ckpt"
    assert main(["export", str(run), "--out", str(out), "--checkpoint", "latest"]) == 0
    model = load_and_generate(out)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--checkpoint", "policy"]) == 2


def test_export_refuses_a_broken_folder(tmp_path, tiny_model, capsys):
    run = fake_run(tmp_path, tiny_model)
    for f in (run / "policy").glob("*.safetensors"):
        f.unlink()
    assert main(["export", str(run), "--out", str(tmp_path / "bad")]) == 1
    assert "no .safetensors" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.tmp").exists()


def test_eval_without_accuracy_function_is_a_clear_error(tmp_path, capsys):
    """Refused before a checkpoint is exported or a model is built, with the key to set."""
    assert main(["eval", "configs/smoke.yaml", f"trainer.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "cohort eval needs reward.accuracy_function" in err
    assert "reward.accuracy_function=math_answer" in err
    assert not list(tmp_path.iterdir())


def test_committed_config_reference_is_up_to_date(capsys):
    assert main(["config", "--reference"]) == 0
    generated = capsys.readouterr().out
    committed = open("docs/config.md").read()
    assert committed == generated, "run: cohort config --reference > docs/config.md"
    assert "| `data.on_bad_row` |" in generated and "| `logging.wandb` |" in generated
