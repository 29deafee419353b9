"""A three-node Ray cluster simulated on this machine (a head and two workers started with
`ray start` on loopback, token authentication on, each labelled with its own custom resource),
the smoke config with 2 rollout engines and 2 DeepSpeed ranks under ZeRO-3 pinned to different
nodes, run through `ray job submit`, pushing weights through the `gloo` transport (vLLM's
weight-transfer protocol over a gloo group). So the dispatch across engines, the learner's gloo
process group, the layer-by-layer gathers of the push and the transfer group all run for real,
across nodes.

Each worker node gets its own `--temp-dir`: nodes on one machine sharing one would also share
the runtime-env working directory, and one node's cleanup deletes it under the others. Each
node's dashboard agent gets a free port: on Ray's fixed default (52365), held by any other Ray
on the machine, the agents serve no HTTP and `ray job submit` finds "No available agent".

Asserts: the job succeeded; the actors landed where the config's placement says
(placement.json against the nodes' labels); after every push all engines hold identical
weights (SHA-256 over each engine's weights) and the weights changed; the evaluation ran at
`trainer.eval_every`; the metrics equal a single-node run of the same config pushing through
`object_store` (the engines' weight checksums exactly, every other non-time value to 1e-6
relative; the timing-dependent keys are only checked to be present). The single-node run goes
side by side with the 3-node cluster's start and job, whose process start-ups leave a core idle.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    TIMING_KEYS,
    cohort_command,
    free_port,
    ray_cli,
    short_temp_dir,
    stop_ray_cluster,
)

pytestmark = pytest.mark.slow

COMMON = [
    "trainer.steps=3",
    "trainer.eval_every=2",
    "cluster.rollout_engines=2",
    "learner.world_size=2",
    "learner.zero_stage=3",
    "learner.micro_batch_size=8",
    "cluster.verify_weights=true",
    "cluster.rollout_cpus=0.5",
    "cluster.learner_cpus=0.5",
]
CLUSTER = [
    "cluster.rollout_resources={rollout_node: 1}",
    "cluster.learner_resources={learner_node: 1}",
    "cluster.weight_transport=gloo",
]
"""The 3-node run only: pinned to the labelled nodes, pushing through `gloo` (vLLM's transfer
protocol, as `nccl` runs it) where the single-node run pushes through `object_store`."""


def submit_job(submit: list[str], env: dict, wait_s: float = 180.0):
    """`ray job submit`, retried while the new head's dashboard agent has not registered yet
    (Ray answers "No available agent to submit job" for a few seconds after `ray start`, for
    minutes on a loaded machine)."""
    deadline = time.monotonic() + wait_s
    while True:
        result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


def metrics(out: Path) -> tuple[list[dict], Path]:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return rows, run


LABELS = """
import json, ray
ray.init()
nodes = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({k: n["NodeID"] for n in nodes for k in n["Resources"] if k.endswith("_node")}))
"""
"""Prints {label resource: node id} of the cluster at RAY_ADDRESS."""


def ray_start(ray: str, env: dict, nodes: list[tuple[str, list[str]]]) -> None:
    """`ray start` of each (temp dir, arguments) node on loopback, all at once, each with its
    own temp dir and dashboard agent port."""
    starting = []
    for temp_dir, args in nodes:
        agent = f"--dashboard-agent-listen-port={free_port()}"
        start = [ray, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", agent]
        start += [f"--temp-dir={temp_dir}", *args]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        starting.append(subprocess.Popen(start, env=env, **pipes))
    for proc in starting:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-2000:] + err[-3000:]


def test_three_node_job_places_and_matches_single_node(tiny_model, tmp_path):
    # The single-node run, in the suite's cluster, goes side by side with the 3-node cluster's
    # start and job: each alone leaves a core idle much of the time (process start-ups wait on
    # one another), and the two runs share nothing but the machine.
    single_command, single_env = cohort_command(
        ["train", "configs/smoke.yaml", f"model.path={tiny_model}",
         f"trainer.output_dir={tmp_path / 'single'}", *COMMON]
    )  # fmt: skip
    single_log = tmp_path / "single.log"  # a file: an unread pipe would fill and stall the run
    with single_log.open("w") as log:
        single = subprocess.Popen(
            single_command, cwd=REPO, env=single_env, stdout=log, stderr=subprocess.STDOUT
        )
    ray, env = ray_cli()
    gcs, dash = free_port(), free_port()
    head_dir, rollout_dir, learner_dir = dirs = [short_temp_dir() for _ in range(3)]
    try:
        head = f"--head --port={gcs} --dashboard-host=127.0.0.1 --dashboard-port={dash}"
        head += f" --include-dashboard=true --num-cpus=1 --ray-client-server-port={free_port()}"
        ray_start(ray, env, [(head_dir, [*head.split(), '--resources={"head_node": 1}'])])
        workers = []
        for node_dir, label in [(rollout_dir, "rollout_node"), (learner_dir, "learner_node")]:
            node = [f"--address=127.0.0.1:{gcs}", "--num-cpus=2", f'--resources={{"{label}": 2}}']
            workers.append((node_dir, node))
        ray_start(ray, env, workers)  # the two worker nodes join side by side
        at_cluster = env | {"RAY_ADDRESS": f"127.0.0.1:{gcs}"}
        options = {"capture_output": True, "text": True, "check": True, "timeout": 120}
        found = subprocess.run([sys.executable, "-c", LABELS], env=at_cluster, **options)
        labels = json.loads(found.stdout.strip().splitlines()[-1])
        out = tmp_path / "cluster"
        train = ["python", "-m", "cluster", "train", "configs/smoke.yaml"]
        train += [f"model.path={tiny_model}", f"trainer.output_dir={out}", *COMMON, *CLUSTER]
        address = f"--address=http://127.0.0.1:{dash}"
        submit = [ray, "job", "submit", address, f"--working-dir={REPO}", "--", *train]
        job = submit_job(submit, env)
        logs = job.stdout[-4000:] + job.stderr[-2000:]
        assert job.returncode == 0, logs
        assert "succeeded" in job.stdout.lower(), logs
        single.wait(timeout=600)
    finally:
        single.kill()  # a no-op once it has ended
        stop_ray_cluster(*dirs)  # this cluster only, not every Ray on the machine
    assert single.returncode == 0, single_log.read_text()[-3000:]

    rows, run = metrics(out)
    placement = json.loads((run / "placement.json").read_text())
    assert {a["node_id"] for a in placement["rollout"]} == {labels["rollout_node"]}
    assert {a["node_id"] for a in placement["learner"]} == {labels["learner_node"]}
    assert len(placement["rollout"]) == 2 and len(placement["learner"]) == 2
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # evaluation before the first step, every trainer.eval_every steps and after the last
    assert [r["step"] for r in rows if "eval/reward" in r] == [0, 2, 3]
    train_rows = rows[1:]
    assert all("reward/mean" in r and "time/generate" in r for r in train_rows)
    assert all(r["push/engines_identical"] == 1.0 for r in train_rows)
    assert len({r["push/checksum"] for r in train_rows}) == 3  # every push changed the weights

    single_rows, _ = metrics(tmp_path / "single")
    for a, b in zip(rows, single_rows, strict=True):
        assert a.keys() == b.keys(), a["step"]
        for key, value in a.items():
            if key.startswith(TIMING_KEYS):
                continue
            if not isinstance(value, float):
                assert value == b[key], key
                continue
            assert value == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
