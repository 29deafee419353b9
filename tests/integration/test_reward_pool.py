"""RewardPool on the suite's Ray: groups split over two actors come back in order."""

import tempfile
from pathlib import Path

import pytest

from core.config import ConfigError, RewardConfig, RewardFunctionConfig
from core.records import Group, Prompt, Sample
from reward.pool import RewardPool

pytestmark = pytest.mark.integration


def group(answer: str, texts: list[str]) -> Group:
    prompt = Prompt(id=f"train:{answer}", text="q", token_ids=[1], answer=answer)
    samples = [Sample([], t, [], "stop", 0) for t in texts]
    return Group(prompt, samples)


def scratch_dirs() -> set[Path]:
    """The reward sandboxes' worker temp dirs on this node (the suite's Ray shares its TMPDIR)."""
    return set(Path(tempfile.gettempdir()).glob("cohort-reward-*"))


def test_pool_scores_groups_in_order(ray_local, tmp_path):
    cfg = RewardConfig(
        functions=[RewardFunctionConfig(name="math_answer", weight=2.0)], num_actors=2
    )
    before = scratch_dirs()
    pool = RewardPool(cfg, base_dir=".", num_cpus=0.5, run_id="test")
    try:
        assert pool.function_names == ["math_answer"]
        groups = [group("1", ["1", "2"]), group("2", ["2", "\\boxed{2}", "x"]), group("3", ["0"])]
        scores = pool.score(groups)  # actor 0 gets the first two groups, actor 1 the third
        assert [[s.reward for s in g] for g in scores] == [[2.0, 0.0], [2.0, 2.0, 0.0], [0.0]]
        made = scratch_dirs() - before
        assert len(made) >= 2, made  # each actor's sandbox has at least one worker
    finally:
        pool.shutdown()
    # Ray ends actors with a kill, which runs no exit handler: the pool closes the sandboxes
    # first, so their workers' temp dirs do not outlive the run.
    assert not made & scratch_dirs()
    # A bad entry fails in the pool's constructor, before any actor starts (the user files are
    # read there, once), with the config key and the path tried.
    bad = RewardConfig(functions=[RewardFunctionConfig(fn="missing.py:f")])
    with pytest.raises(ConfigError, match=r"reward.functions\[0\].fn.*/nowhere/missing.py"):
        RewardPool(bad, base_dir="/nowhere", num_cpus=0.5, run_id="bad")
    # A function the file does not define is found in the actor; the pool raises that
    # ConfigError itself (the CLI's "config error", exit 2), not Ray's error around it.
    (tmp_path / "r.py").write_text("def other(completion, **_):\n    return 1.0\n")
    missing = RewardConfig(functions=[RewardFunctionConfig(fn=f"{tmp_path}/r.py:missing")])
    with pytest.raises(ConfigError, match="defines no `missing`; its callables: other") as error:
        RewardPool(missing, base_dir=tmp_path, num_cpus=0.5, run_id="missing")
    assert type(error.value) is ConfigError
