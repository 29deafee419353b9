"""Local mode is safe by default: the dashboard is on loopback and wants Ray's token."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

PROBE = """
import os, urllib.error, urllib.request
from core.config import load_config
from cluster.ray_setup import connect_ray, secure_local_defaults
cfg = load_config("configs/smoke.yaml", [])
secure_local_defaults(cfg)  # as the CLI does, before ray is imported
import ray
connect_ray(cfg)
url = ray._private.worker.global_worker.node.address_info["webui_url"]
print("URL", url)
try:
    urllib.request.urlopen(f"http://{url}/api/jobs/", timeout=10)
    print("STATUS 200")
except urllib.error.HTTPError as e:
    print("STATUS", e.code)
token = os.environ.get("RAY_AUTH_TOKEN") or open(os.path.expanduser("~/.ray/auth_token")).read()
auth = {"Authorization": "Bearer " + token.strip()}
req = urllib.request.Request(f"http://{url}/api/jobs/", headers=auth)
print("WITH TOKEN", urllib.request.urlopen(req, timeout=10).status)
"""


def test_local_dashboard_is_loopback_and_token_protected():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    out = done.stdout
    assert "URL 127.0.0.1:" in out, done.stderr[-2000:]
    assert "STATUS 401" in out and "WITH TOKEN 200" in out, out + done.stderr[-2000:]


def test_a_cluster_too_small_for_the_config_exits_2_with_the_fix(tiny_model, tmp_path):
    # The suite's cluster (4 CPUs) cannot hold an engine of 4 CPUs beside the learner's 0.5 and
    # the reward actor's 0.25: a clear error and exit code 2 before any actor starts, not a
    # traceback and exit 1.
    from tests.conftest import run_cohort

    args = ["train", "configs/smoke.yaml", f"model.path={tiny_model}", "cluster.rollout_cpus=4"]
    done = run_cohort([*args, f"trainer.output_dir={tmp_path}"])
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the Ray cluster cannot hold this config" in done.stderr
    needs = "CPU: needs 4.75 (learner ranks 0.5, rollout engines 4, reward actors 0.25)"
    assert f"{needs}, the cluster has 4" in done.stderr
    assert "Add nodes" in done.stderr and "Traceback" not in done.stderr
