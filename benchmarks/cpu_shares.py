"""Where the cores go during each phase of a run: every process's CPU, sampled from Linux's
`/proc` once a second while a command runs, grouped by role (Ray's actor titles, Ray's daemons,
the driver, the kernel's workers).

`benchmarks/step.py --cpu-shares` prints it for the training and the generation seconds of its
run: in shared placement, what else takes the cores the learner or the engine could use. The
sampling itself costs about 1% of one core, so the headline figures are taken without it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def role(comm: str, cmdline: str) -> str:
    """The group a process is counted in: `ray::<Actor>` by the title Ray gives it (its
    method while it runs one is dropped), Ray's daemons by name, the run's driver."""
    if comm.startswith("kworker"):
        return "kernel workers"
    if cmdline.startswith("ray::"):
        return cmdline.split()[0].split(".")[0]
    for daemon in ("gcs_server", "raylet", "log_monitor", "dashboard", "monitor.py"):
        if daemon in cmdline:
            return "ray " + daemon.removesuffix(".py")
    return comm


def snapshot(driver_pid: int) -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds used so far) for every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended between the listing and the read
            continue
        pid, comm = int(entry.name), stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, ...: utime and stime at 11, 12
        seconds = (int(fields[11]) + int(fields[12])) / TICKS_PER_S
        name = "driver" if pid == driver_pid else role(comm, cmdline)
        out[pid] = (name, seconds)
    return out


class Sampler:
    """Samples `snapshot` about every `interval_s` in a thread until `stop`; `seconds` then holds
    one {role: percent of one core} per interval."""

    def __init__(self, driver_pid: int, interval_s: float = 1.0):
        self.driver_pid, self.interval_s = driver_pid, interval_s
        self.seconds: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-shares", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        before, t0 = snapshot(self.driver_pid), time.monotonic()
        while not self._stop.wait(self.interval_s):
            now, t1 = snapshot(self.driver_pid), time.monotonic()
            # The elapsed time, not the nominal interval: on a busy machine this thread wakes late.
            self.seconds.append(usage(before, now, t1 - t0))
            before, t0 = now, t1

    def stop(self) -> list[dict[str, float]]:
        self._stop.set()
        self._thread.join()
        return self.seconds


def usage(before: dict, now: dict, interval_s: float) -> dict[str, float]:
    """Percent of one core each role used between two snapshots (a new process from zero)."""
    used: Counter[str] = Counter()
    for pid, (name, seconds) in now.items():
        previous = before[pid][1] if pid in before and before[pid][0] == name else 0.0
        if seconds > previous:
            used[name] += 100 * (seconds - previous) / interval_s
    return dict(used)


def phase_shares(seconds: list[dict[str, float]], busy: str, threshold: float) -> dict:
    """Mean percent of one core per role over the samples where role `busy` used at least
    `threshold` percent (the phase it does the work of), with how many samples that was. The
    other roles' figures are what matters: `busy`'s own reads high (up to a few percent over
    the cores there are), since a sample is picked because its reading was high."""
    picked = [s for s in seconds if s.get(busy, 0.0) >= threshold]
    total: Counter[str] = Counter()
    for s in picked:
        total.update(s)
    n = len(picked)
    return {"samples": n, "percent": {k: v / n for k, v in total.most_common()} if n else {}}
