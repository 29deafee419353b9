"""A reward function may import the project's packages, but not read the files beside them
(datasets, configs, runs), unless a path is granted with `read_paths`."""

import pytest

from core.records import Group, Prompt, Sample
from reward.actor import RewardActor
from reward.isolation import landlock_abi
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not landlock_abi(), reason="no Landlock on this kernel")

SOURCE = f"""
def read_config(completion, **_):
    try:
        open({str(REPO / "configs" / "grpo.yaml")!r}).read()
        return 1.0
    except OSError:
        return 0.0


def imports_the_project(completion, **_):
    import core.choices
    import reward.wire

    return 1.0
"""


def test_the_checkout_is_importable_but_not_readable(tmp_path):
    (tmp_path / "f.py").write_text(SOURCE)
    configs = [{"fn": "f.py:read_config"}, {"fn": "f.py:imports_the_project"},
               {"fn": "f.py:read_config", "read_paths": [str(REPO / "configs")]}]  # fmt: skip
    actor = RewardActor(configs[:2], "exclude", 0.0, str(tmp_path), {"workers": 1})
    granted = RewardActor(configs[2:], "exclude", 0.0, str(tmp_path), {"workers": 1})
    group = Group(Prompt("p", "q", [1]), [Sample([1], "x", [], "stop", 0)])
    try:
        [[score]] = actor.score([group])
        [[with_grant]] = granted.score([group])
    finally:
        actor.close()
        granted.close()
    assert score.components == {"read_config": 0.0, "imports_the_project": 1.0}
    assert with_grant.components == {"read_config": 1.0}
