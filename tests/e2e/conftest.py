"""Runs of the real loop shared by the learning and resume tests.

Each `cohort train` run (joining the suite's Ray cluster, tests/conftest.py) spends about 25 s
starting vLLM, the reward sandbox and DeepSpeed on two cores and about a second per step, so
one run serves several tests: the run that shows the GRPO preset learns
(test_learning.py) is also the uninterrupted reference that the killed-and-resumed runs of
test_resume.py must reproduce bit for bit, and the same holds for the one_step_off run. The
shared runs write a checkpoint after every step and save the final policy; their metrics must
not depend on it, which the resume tests check implicitly (a resumed run, whose checkpoints
were written at other moments, ends with the same rows). A shared run that fails fails every
test that uses it, with its output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, TIMING_KEYS, cohort_command

STEPS = 10
EVAL_EVERY = 5
RUN_TIMEOUT_S = 600
CHECKPOINTED = ("trainer.checkpoint_every=1", "trainer.save_final=true")
# The GRPO preset as the 7B recipe runs it: two learner ranks with ZeRO stage 1, so resuming
# restores sharded optimizer states and every rank's RNG states.
GRPO = (*CHECKPOINTED, "learner.world_size=2", "learner.zero_stage=1")
OVERLAP = ("trainer.mode=one_step_off", "algorithm.sampler_correction=token_truncate")
ONE_STEP_OFF = (*CHECKPOINTED, *OVERLAP)


def load_preset(preset: str) -> dict:
    """configs/<preset>.yaml as a dict."""
    return yaml.safe_load((REPO / "configs" / f"{preset}.yaml").read_text())


def preset_overrides(preset: str) -> list[str]:
    """configs/<preset>.yaml's `algorithm:` and `rollout:` sections as overrides of the smoke
    experiment: the preset's loss and its sampling (temperature, top-p, group and batch sizes,
    completion length). Its model, data, reward and learner sections are the demo task's and
    stay the toy task's."""
    sections = load_preset(preset)
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section in ("algorithm", "rollout")
        for key, value in sections[section].items()
    ]


def cohort(tiny_model: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`cohort train configs/smoke.yaml` for STEPS steps into `out`, run in its own session;
    after it ends (or is killed) every process it left behind (Ray's) is killed with its
    process group. stdout and stderr are merged into `stdout`."""
    args = [
        "train",
        "configs/smoke.yaml",
        f"model.path={tiny_model}",
        f"trainer.steps={STEPS}",
        f"trainer.eval_every={EVAL_EVERY}",
        f"trainer.output_dir={out}",
        *overrides,
    ]
    command, env = cohort_command(args)
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out_text, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out_text, _ = proc.communicate(timeout=60)
        pytest.fail(f"not done after {RUN_TIMEOUT_S} s; the output ends:\n{out_text[-3000:]}")
    finally:
        kill_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out_text, "")


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Run:
    """A run directory after its last process ended."""

    dir: Path
    stdout: str
    """The output of the process that finished the run."""

    @property
    def rows(self) -> list[dict]:
        return [json.loads(x) for x in (self.dir / "metrics.jsonl").read_text().splitlines()]

    @property
    def exact_rows(self) -> list[dict]:
        """The metrics rows without the timing-dependent keys: what a resumed run reproduces
        exactly."""
        return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in self.rows]

    def weights(self) -> dict:
        return load_file(self.dir / "policy" / "model.safetensors")


def run_in(out: Path, done: subprocess.CompletedProcess) -> Run:
    """The one run directory under `out`, after `done` finished it (exit 0 asserted)."""
    assert done.returncode == 0, done.stdout[-3000:]
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return Run(run_dir, done.stdout)


@pytest.fixture(scope="session")
def grpo_run(tiny_model, tmp_path_factory) -> Run:
    """The GRPO preset learning the toy task with two ZeRO-1 ranks, checkpointed every step."""
    out = tmp_path_factory.mktemp("grpo")
    return run_in(out, cohort(tiny_model, out, *preset_overrides("grpo"), *GRPO))


@pytest.fixture(scope="session")
def one_step_off_run(tiny_model, tmp_path_factory) -> Run:
    """The smoke experiment in one_step_off mode, checkpointed every step."""
    out = tmp_path_factory.mktemp("one_step_off")
    return run_in(out, cohort(tiny_model, out, *ONE_STEP_OFF))
