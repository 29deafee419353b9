"""The `python` tool's executor: a Ray actor that runs model-written programs the way
`code_tests` runs them.

Each call runs the program in a fresh `code_runner` process forked by this actor's zygote (see
`code_exec.py`), confined by `reward.isolation` (Landlock, seccomp, resource limits; `strict`
refuses to run without them), in an empty temporary directory, with a clean environment and
empty stdin; its stdout is the tool's reply. Guarantees: the program never runs in the driver or
in this actor's process; every call ends by its timeout with the runner's process group killed;
this actor is the runners' subreaper, so nothing they leave behind reaches the driver.
Not guaranteed: what `reward.isolation` leaves open at the chosen level (docs/rewards.md).
"""

from __future__ import annotations

from reward import code_exec
from reward.isolation import Policy


class PythonToolActor:
    """Wrapped with `ray.remote` by the driver when `python` is among the tools."""

    def __init__(self, isolation: str, memory_mb: int):
        code_exec.set_policy(Policy(level=isolation))
        self.memory_mb = memory_mb

    def run(self, code: str, timeout_s: float) -> dict[str, str]:
        """`{"output": what it printed}` or `{"error": why it failed, with its traceback}`:
        returned, not raised, so the model reads the program's error and not Ray's."""
        try:
            return {
                "output": code_exec.run_python(code, timeout_s=timeout_s, memory_mb=self.memory_mb)
            }
        except RuntimeError as e:
            return {"error": str(e)}
