"""A three-node Ray cluster simulated on this machine (a head and two workers started with
`ray start` on loopback, each labelled with its own custom resource), the smoke config with 2
rollout engines and 2 learner ranks pinned to different nodes, run through `ray job submit`.

Each worker node gets its own `--temp-dir`: nodes on one machine sharing one would also share
the runtime-env working directory, and one node's cleanup deletes it under the others.

Asserts: the actors landed where the config's placement says (placement.json against the
nodes' labels); after every push all engines hold identical weights (SHA-256 over each
engine's weights) and the weights changed; the metrics equal a single-node run of the same
config (every non-time value to 1e-6 relative).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, ray_cli, run_cohort, short_temp_dir, stop_ray_cluster
from tests.e2e.test_job_submit import free_port, submit_job

pytestmark = pytest.mark.slow

COMMON = ["trainer.steps=3", "trainer.eval_every=0", "cluster.rollout_engines=2",
          "learner.world_size=2", "learner.micro_batch_size=8", "cluster.verify_weights=true",
          "cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5"]  # fmt: skip
PINNED = ["cluster.rollout_resources={rollout_node: 1}",
          "cluster.learner_resources={learner_node: 1}"]  # fmt: skip


def metrics(out: Path) -> tuple[list[dict], Path]:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return rows, run


def test_three_node_cluster_places_and_matches_single_node(tiny_model, tmp_path):
    ray, env = ray_cli()
    gcs, dash = free_port(), free_port()
    short_dirs = [short_temp_dir() for _ in range(3)]
    nodes = [
        ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--include-dashboard=true", "--num-cpus=1", '--resources={"head_node": 1}',
         f"--temp-dir={short_dirs[2]}"],
        [f"--address=127.0.0.1:{gcs}", "--num-cpus=2", '--resources={"rollout_node": 2}',
         f"--temp-dir={short_dirs[0]}"],
        [f"--address=127.0.0.1:{gcs}", "--num-cpus=2", '--resources={"learner_node": 2}',
         f"--temp-dir={short_dirs[1]}"],
    ]  # fmt: skip
    try:
        for args in nodes:
            start = [ray, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args]
            subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
        labels = json.loads(subprocess.run(
            [sys.executable, "-c", "import json, ray; ray.init(); print(json.dumps({k: n['NodeID']"
             " for n in ray.nodes() if n['Alive'] for k in n['Resources'] if k.endswith('_node')"
             "}))"],
            env=env | {"RAY_ADDRESS": f"127.0.0.1:{gcs}"}, capture_output=True, text=True,
            check=True, timeout=120).stdout.strip().splitlines()[-1])  # fmt: skip
        out = tmp_path / "cluster"
        submit = [ray, "job", "submit", f"--address=http://127.0.0.1:{dash}",
                  f"--working-dir={REPO}", "--", "python", "-m", "cluster", "train",
                  "configs/smoke.yaml", f"model.path={tiny_model}", f"trainer.output_dir={out}",
                  *COMMON, *PINNED]  # fmt: skip
        job = submit_job(submit, env)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    finally:
        stop_ray_cluster(*short_dirs)  # this cluster only, not every Ray on the machine

    rows, run = metrics(out)
    placement = json.loads((run / "placement.json").read_text())
    assert {a["node_id"] for a in placement["rollout"]} == {labels["rollout_node"]}
    assert {a["node_id"] for a in placement["learner"]} == {labels["learner_node"]}
    assert len(placement["rollout"]) == 2 and len(placement["learner"]) == 2
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["push/engines_identical"] == 1.0 for r in rows)
    assert len({r["push/checksum"] for r in rows}) == 3  # every push changed the weights

    single = run_cohort(["train", "configs/smoke.yaml", f"model.path={tiny_model}",
                         f"trainer.output_dir={tmp_path / 'single'}", *COMMON])  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    single_rows, _ = metrics(tmp_path / "single")
    for a, b in zip(rows, single_rows, strict=True):
        for key, value in a.items():
            if key.startswith("time/") or not isinstance(value, float):
                assert key.startswith("time/") or value == b[key], key
                continue
            assert value == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
