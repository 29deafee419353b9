"""The benchmark's CPU attribution (benchmarks/cpu_shares.py): roles, per-interval usage, and
the shares over one phase's seconds; and one real sample of a busy process."""

import subprocess
import sys
import time

import pytest

from benchmarks.cpu_shares import Sampler, phase_shares, role, usage


def test_roles_group_ray_actors_by_class_and_name_ray_daemons():
    assert role("ray::LearnerAc", "ray::LearnerActor.train") == "ray::LearnerActor"
    assert role("ray::LearnerAc", "ray::LearnerActor") == "ray::LearnerActor"
    assert role("gcs_server", "/venv/ray/core/src/ray/gcs/gcs_server --log_dir=x") == (
        "ray gcs_server"
    )
    assert role("python", "/venv/bin/python -u /venv/ray/_private/log_monitor.py") == (
        "ray log_monitor"
    )
    assert role("kworker/u8:0-ev", "") == "kernel workers"
    assert role("kdamond.0", "") == "kdamond.0"


def test_usage_counts_each_role_per_interval_and_new_processes_from_zero():
    before = {1: ("ray::LearnerActor", 10.0), 2: ("raylet", 5.0), 3: ("ray::IDLE", 1.0)}
    now = {
        1: ("ray::LearnerActor", 11.8),  # 1.8 CPU-s in 1 s: 180% of one core
        2: ("raylet", 5.02),
        3: ("ray::RewardActor", 0.5),  # a new role for this pid (an idle worker became an
        # actor, or the pid was reused): counted from zero
        4: ("driver", 0.3),  # new
    }
    used = usage(before, now, interval_s=1.0)
    assert used == pytest.approx(
        {"ray::LearnerActor": 180.0, "raylet": 2.0, "ray::RewardActor": 50.0, "driver": 30.0}
    )


def test_phase_shares_average_over_the_seconds_of_the_phase_only():
    seconds = [
        {"ray::LearnerActor": 180.0, "dashboard": 4.0},
        {"ray::LearnerActor": 170.0, "dashboard": 6.0, "raylet": 2.0},
        {"ray::RolloutActor": 175.0, "dashboard": 3.0},  # generation: not a training second
    ]
    train = phase_shares(seconds, "ray::LearnerActor", 100.0)
    assert train["samples"] == 2
    assert train["percent"] == pytest.approx(
        {"ray::LearnerActor": 175.0, "dashboard": 5.0, "raylet": 1.0}
    )
    assert list(train["percent"])[0] == "ray::LearnerActor"  # largest first
    assert phase_shares(seconds, "ray::LearnerActor", 200.0) == {"samples": 0, "percent": {}}


def test_a_busy_process_is_seen_using_a_core():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        sampler = Sampler(driver_pid=busy.pid, interval_s=0.5)
        deadline = time.monotonic() + 30
        while len(sampler.seconds) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        seconds = sampler.stop()
    finally:
        busy.kill()
        busy.wait()
    assert len(seconds) >= 4, seconds
    # Two cores: the spinning driver gets most of one in every interval after the first.
    assert all(s.get("driver", 0.0) > 50.0 for s in seconds[1:]), seconds
