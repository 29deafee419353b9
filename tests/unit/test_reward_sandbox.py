"""The reward sandbox attacked one property per test, with real worker processes (no Ray).

Each hostile function misbehaves only on the completion "bad" and returns len(completion)
otherwise. Each test checks: the batch returns within timeout_s plus a margin, the bad sample's
failure has the right kind and is counted in the metrics and written to the failures log, the
other samples' rewards are right, and the same actor keeps scoring afterwards.
"""

import json
import math
import os
import textwrap
import time
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.records import Group, Prompt, Sample
from reward.actor import RewardActor
from reward.failures import append_failures, failure_records
from reward.scoring import Score, reward_metrics

TIMEOUT_S = 1.5
MARGIN_S = 2.5  # process replacement and a loaded 2-core machine


def group(texts: list[str], answer: str = "") -> Group:
    prompt = Prompt(id="train:0", text="q", token_ids=[1], answer=answer, fields={"k": 1})
    return Group(prompt, [Sample([1] * len(t), t, [], "stop", 0) for t in texts])


def hostile_actor(tmp_path: Path, body: str, **sandbox) -> RewardActor:
    source = (
        "import os, time, subprocess\n"
        "def hostile(completion, **_):\n"
        "    if completion != 'bad':\n"
        "        return float(len(completion))\n" + textwrap.indent(textwrap.dedent(body), "    ")
    )
    (tmp_path / "hostile.py").write_text(source)
    options = {"workers": 2, "timeout_s": TIMEOUT_S} | sandbox
    return RewardActor([{"fn": "hostile.py:hostile"}], "exclude", 0.0, str(tmp_path), options)


def attack(tmp_path: Path, body: str, kind: str, error: str, **sandbox) -> Score:
    """Run the common checks; returns the bad sample's score for test-specific ones."""
    actor = hostile_actor(tmp_path, body, **sandbox)
    try:
        groups = [group(["a", "bad", "abc"]), group(["ab", "abcd"])]
        t0 = time.monotonic()
        scores = actor.score(groups)
        assert time.monotonic() - t0 < sandbox.get("timeout_s", TIMEOUT_S) + MARGIN_S
        assert [[s.reward for s in row] for row in scores] == [[1.0, 0.0, 3.0], [2.0, 4.0]]
        bad = scores[0][1]
        assert bad.failed and bad.excluded and bad.kinds == {"hostile": kind}
        assert error in bad.errors["hostile"]
        metrics = reward_metrics(scores, ["hostile"])
        assert metrics["reward/hostile/errors"] == 1.0
        assert metrics[f"reward/hostile/failures/{kind}"] == 1.0
        assert metrics["reward/excluded"] == 1.0 and metrics["reward/mean"] == 2.5  # (1+3+2+4)/4
        log = tmp_path / "reward_failures.jsonl"
        append_failures(log, failure_records(groups, scores, call=1))
        [record] = [json.loads(line) for line in log.read_text().splitlines()]
        assert (record["function"], record["kind"]) == ("hostile", kind)
        assert record["completion"] == "bad" and record["error"] == bad.errors["hostile"]
        assert record["prompt"] == "q" and record["row"] == {"k": 1} and record["traceback"]
        # The pool keeps serving, with the same actor.
        again = actor.score([group(["abcde", "a"]), group(["bad"])])
        assert [s.reward for s in again[0]] == [5.0, 1.0] and again[1][0].kinds == {"hostile": kind}
        return bad
    finally:
        actor.close()


def test_sleeps_forever_is_a_timeout(tmp_path):
    bad = attack(tmp_path, "time.sleep(10**6)", "timeout", "reward.timeout_s=1.5")
    assert bad.seconds["hostile"] == TIMEOUT_S


def test_os_exit_is_a_crash(tmp_path):
    attack(tmp_path, "os._exit(7)", "crash", "exited with status 7")


def test_exception_is_recorded_with_traceback(tmp_path):
    bad = attack(tmp_path, "raise KeyError('missing')", "exception", "KeyError: 'missing'")
    traceback = bad.tracebacks["hostile"]
    assert "hostile.py" in traceback and "raise KeyError" in traceback


def test_string_return_is_invalid(tmp_path):
    attack(tmp_path, "return '1.0'", "invalid", "returned '1.0' (str), expected a number")


def test_nan_return_is_invalid(tmp_path):
    attack(tmp_path, "return float('nan')", "invalid", "returned nan, expected a finite number")


def test_unbounded_allocation_hits_the_memory_limit(tmp_path):
    body = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 2**20))\n"
    # Filling 256 MiB takes well under a second alone, several on a loaded machine.
    attack(tmp_path, body, "exception", "MemoryError", memory_limit_mb=256, timeout_s=10.0)


def test_process_spawning_loop_is_killed_with_its_children(tmp_path):
    # The function records its process group, then starts `sleep` processes until killed. The
    # sandbox kills the worker's whole group, so none of them may outlive the call. Isolation
    # is off: it would deny writing the record and running `sleep` (tests/adversarial/).
    body = f"""
        open({str(tmp_path / "pgid")!r}, "a").write(f"{{os.getpgid(0)}}\\n")
        while True:
            subprocess.Popen(["sleep", "60"])
    """
    attack(tmp_path, body, "timeout", "TimeoutError", isolation="off")
    groups = {int(line) for line in (tmp_path / "pgid").read_text().split()}
    assert len(groups) == 2 and os.getpgid(0) not in groups  # each worker leads its own group
    time.sleep(0.2)
    assert _live_processes_in(groups) == []


def test_cpu_limit_kills_a_busy_loop(tmp_path):
    # A wall-clock timeout far above the CPU limit: on a loaded machine the loop gets a fraction
    # of a core, and it must be the CPU limit that stops it.
    attack(tmp_path, "while True:\n    pass\n", "timeout", "reward.cpu_limit_s", cpu_limit_s=0.5,
           timeout_s=10.0)  # fmt: skip


def test_dict_return_gives_named_components(tmp_path):
    (tmp_path / "parts.py").write_text(
        "def parts(completion, *, num_tokens, **_):\n"
        "    return {'length': float(num_tokens), 'bonus': 0.5}\n"
    )
    actor = RewardActor([{"fn": "parts.py:parts", "weight": 2.0}], "exclude", 0.0, str(tmp_path))
    try:
        [[s]] = actor.score([group(["abc"])])
    finally:
        actor.close()
    # score = 3 tokens + 0.5 = 3.5; reward = weight 2 * 3.5 = 7
    assert s.reward == 7.0 and s.components == {"parts": 3.5, "parts/length": 3.0,
                                                "parts/bonus": 0.5}  # fmt: skip
    metrics = reward_metrics([[s]], ["parts"])
    assert metrics["reward/parts/length/mean"] == 3.0 and metrics["time/reward/parts"] >= 0


def test_batched_function_gets_a_group_and_fails_per_element(tmp_path):
    (tmp_path / "batch.py").write_text(
        "def per_group(completions, *, prompts, answers, rows, **_):\n"
        "    n = float(len(completions))\n"
        "    return [n if c else ValueError('empty') for c in completions]\n"
    )
    cfg = {"fn": "batch.py:per_group", "batched": True}
    actor = RewardActor([cfg], "score", -1.0, str(tmp_path))
    try:
        scores = actor.score([group(["a", "", "b"]), group(["x"])])
    finally:
        actor.close()
    # group sizes 3 and 1; the empty completion fails and is scored failure_score = -1
    assert [[s.reward for s in row] for row in scores] == [[3.0, -1.0, 3.0], [1.0]]
    assert scores[0][1].errors == {"per_group": "ValueError: empty"} and not scores[0][1].excluded


def test_bad_function_file_fails_at_the_readiness_check(tmp_path):
    """The pool's first call (`function_names`) raises the load error: raised by a method, it
    reaches the driver as a ConfigError; raised by `__init__`, Ray would pass on only its text."""
    (tmp_path / "broken.py").write_text("def f(:\n")
    actor = RewardActor([{"fn": "broken.py:f"}], "exclude", 0.0, str(tmp_path))
    with pytest.raises(ConfigError, match=r"reward.functions\[0\].fn.*SyntaxError"):
        actor.function_names()


def _live_processes_in(groups: set[int]) -> list[int]:
    """Pids of non-zombie processes whose process group is in `groups`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) in groups:
            found.append(int(entry.name))
    return found


def test_nan_components_of_failures_stay_out_of_means(tmp_path):
    actor = hostile_actor(tmp_path, "raise RuntimeError('x')")
    try:
        scores = actor.score([group(["bad", "ab"])])
    finally:
        actor.close()
    assert math.isnan(scores[0][0].components["hostile"])
    assert reward_metrics(scores, ["hostile"])["reward/hostile/mean"] == 2.0


def test_example_user_functions(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    cfgs = [{"fn": "configs/rewards/examples.py:concise_and_tagged", "kwargs": {"limit": 3}},
            {"fn": "configs/rewards/examples.py:group_diversity", "batched": True}]  # fmt: skip
    actor = RewardActor(cfgs, "exclude", 0.0, str(repo), {"workers": 1})
    try:
        [[a, b, c]] = actor.score([group(["<answer>1</answer>", "<answer>1</answer>", "xy"])])
    finally:
        actor.close()
    # a: tagged 1 + concise (18 tokens <= 3) 0 = 1; diversity 2 unique of 3
    name = "concise_and_tagged"
    assert a.components == {name: 1.0, f"{name}/tagged": 1.0, f"{name}/concise": 0.0,
                            "group_diversity": 2 / 3}  # fmt: skip
    assert b.reward == a.reward == pytest.approx(1 + 2 / 3)  # the weighted sum of both parts
    assert c.reward == pytest.approx(1.0 + 2 / 3)  # c: untagged, concise


def test_workers_temp_dirs_are_deleted_with_the_workers(tmp_path):
    """Each worker writes only in its private temp dir; a replaced worker's and a closed
    sandbox's dirs are deleted (else every run leaves one dir per worker in /tmp)."""
    actor = hostile_actor(tmp_path, "os._exit(7)")
    (sandbox,) = actor.sandboxes
    first = [w.scratch for w in sandbox.workers]
    assert all(Path(d).is_dir() for d in first)
    actor.score([group(["bad"])])  # the worker that ran it died and was replaced
    assert sum(Path(d).is_dir() for d in first) == 1
    now = [w.scratch for w in sandbox.workers]
    actor.close()
    assert not any(Path(d).exists() for d in first + now)


def test_a_killed_sandboxs_dirs_go_when_the_next_one_starts(tmp_path):
    """Ray kills actors without exit handlers: a dead owner's scratch dir, with what its reward
    code wrote, is removed by the next sandbox that starts on the node."""
    import subprocess
    import sys
    import tempfile

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = Path(tempfile.gettempdir()) / f"cohort-reward-{gone.pid}-killed"
    orphan.mkdir()
    (orphan / "written.txt").write_text("left by reward code")
    actor = hostile_actor(tmp_path, "return 0.0")
    try:
        assert not orphan.exists()
    finally:
        actor.close()


def test_scratch_dirs_follow_tmpdir(tmp_path):
    """The forkserver starts with a scrubbed environment; the sandbox's temp dirs (its
    forkserver's, its workers') still go where TMPDIR says, not to /tmp. A fresh process:
    `tempfile` resolves its dir once."""
    import subprocess
    import sys

    code = (
        "import tempfile; from reward.sandbox import _forkserver_without_secrets; "
        "_forkserver_without_secrets(); print(tempfile.mkdtemp(prefix='cohort-reward-'))"
    )
    env = os.environ | {"TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).parent == tmp_path
