"""Every recipe in configs/ passes `cohort config` (the GPU recipes cannot run here) and opens
with comments saying what it is and how to run it."""

from pathlib import Path

import pytest

from cluster.cli import main
from core.config import load_config

RECIPES = sorted(Path("configs").glob("*.yaml"))


def test_the_promised_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {"smoke", "demo", "gsm8k_qwen2.5_1.5b", "multinode_7b"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_passes_cohort_config(path, capsys):
    assert main(["config", str(path)]) == 0, capsys.readouterr().err
    assert path.read_text().startswith("#"), f"{path} must open with a comment"


def test_gpu_recipes_ask_for_what_they_need():
    single = load_config("configs/gsm8k_qwen2.5_1.5b.yaml")
    assert (
        single.cluster.use_gpu and single.cluster.rollout_engines + single.learner.world_size == 8
    )
    assert single.data.train.path.endswith(".parquet") and single.data.on_bad_row == "skip"
    multi = load_config("configs/multinode_7b.yaml")
    gpus = multi.cluster.rollout_engines * multi.cluster.rollout_tp + multi.learner.world_size
    assert gpus == 32 and multi.learner.zero_stage == 3 and multi.trainer.resume == "auto"
