"""`ray job submit` against a Ray head started on loopback with token authentication.

The job runs the smoke config with two rollout engines and two DeepSpeed ranks under ZeRO-3,
so the prompt split across engines, the gloo process group and the layer-by-layer gathers of
the weight push all run for real.
"""

import json
import socket
import subprocess
import time

import pytest

from tests.conftest import REPO, ray_cli, short_temp_dir, stop_ray_cluster

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def submit_job(submit: list[str], env: dict, wait_s: float = 60.0):
    """`ray job submit`, retried while the new head's dashboard agent has not registered yet
    (Ray answers "No available agent to submit job" for a few seconds after `ray start`)."""
    deadline = time.monotonic() + wait_s
    while True:
        result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_job_runs_smoke_config(tiny_model, tmp_path):
    ray, env = ray_cli()
    gcs, dash = free_port(), free_port()
    temp_dir = short_temp_dir()
    start = [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4",
             "--include-dashboard=true", "--disable-usage-stats",
             f"--temp-dir={temp_dir}"]  # fmt: skip
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        out = tmp_path / "runs"
        submit = [ray, "job", "submit", f"--address=http://127.0.0.1:{dash}",
                  f"--working-dir={REPO}", "--", "python", "-m", "cluster", "train",
                  "configs/smoke.yaml", "trainer.steps=2", "trainer.eval_every=2",
                  f"model.path={tiny_model}", f"trainer.output_dir={out}",
                  "cluster.rollout_engines=2", "learner.world_size=2", "learner.zero_stage=3",
                  "learner.micro_batch_size=8"]  # fmt: skip
        t0 = time.time()
        result = submit_job(submit, env)
        logs = result.stdout[-4000:] + result.stderr[-2000:]
        assert result.returncode == 0, logs
        assert "succeeded" in result.stdout.lower(), logs
        (run_dir,) = out.iterdir()
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert all("reward/mean" in r and "time/generate" in r for r in rows[1:])
        print(f"job took {time.time() - t0:.0f} s")
    finally:
        stop_ray_cluster(temp_dir)  # this cluster only, not every Ray on the machine
