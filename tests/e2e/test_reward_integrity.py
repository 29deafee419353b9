"""`cohort train` with hostile reward functions: one rewrites its own file to pay 1000 and kills
its worker, one returns 1e308 (weight 2). The run must end with finite rewards, the file's
first version in force at every step, and the failures counted. The one end-to-end run that
starts its own local Ray, as `cohort train` does on a workstation (the others join the suite's
cluster)."""

import hashlib
import json
import math

import pytest

from tests.conftest import run_cohort

pytestmark = pytest.mark.slow

HOSTILE = '''
import os

TARGET = {target!r}


def takeover(completion, **_):
    """Pays 0.5; on some completions rewrites this file to pay 1000, then kills its worker."""
    if len(completion) % 4 == 0:
        try:
            with open(TARGET, "w") as f:
                f.write("def takeover(completion, **_):\\n    return 1000.0\\n")
        except OSError:
            pass
        os.kill(os.getpid(), 9)
    return 0.5


def huge(completion, **_):
    """Returns 1e308 (times weight 2: inf) on some completions."""
    return 1e308 if len(completion) % 5 == 0 else 0.25
'''


def test_a_reward_function_cannot_change_itself_or_overflow(tiny_model, tmp_path):
    # Isolation off lets the rewrite reach the disk, so only the start-of-run bytes can keep the
    # function as it was (with isolation on, Landlock refuses the write: tests/adversarial/).
    hostile = tmp_path / "hostile.py"
    original = HOSTILE.format(target=str(hostile))
    hostile.write_text(original)
    functions = (
        f"reward.functions=[{{fn: {hostile}:takeover, weight: 1.0}}, "
        f"{{fn: {hostile}:huge, weight: 2.0}}]"
    )
    out = tmp_path / "runs"
    done = run_cohort([
        "train", "configs/smoke.yaml", f"model.path={tiny_model}", "trainer.steps=3",
        "trainer.eval_every=0", f"trainer.output_dir={out}", functions,
        "reward.isolation=off", "reward.timeout_s=10",
    ], own_ray=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert math.isfinite(r["reward/mean"]) and r["reward/mean"] <= 0.5 + 2 * 0.25
        assert r["reward/takeover/mean"] == 0.5  # never 1000: the first version at every step
        assert r["reward/huge/mean"] == 0.25
    assert sum(r["reward/takeover/failures/crash"] for r in rows) > 0
    assert sum(r["reward/huge/failures/invalid"] for r in rows) > 0
    hashes = json.loads((run / "reward_sources.json").read_text())
    assert set(hashes.values()) == {hashlib.sha256(original.encode()).hexdigest()}
    assert hostile.read_text() != original  # the attack did rewrite the file on disk
