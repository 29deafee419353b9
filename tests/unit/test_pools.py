"""Starting pools side by side (`core.pools.Starting`), with stand-in pools whose start-up is a
wait on an event: a failure is raised at once, and every pool that starts is shut down."""

import threading

import pytest

from core.pools import Starting, start_together


class Pool:
    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    def shutdown(self) -> None:
        self.log.append(f"shutdown {self.name}")


def slow(name: str, log: list[str], ready: threading.Event):
    """A factory whose pool is ready when `ready` is set."""

    def factory():
        assert ready.wait(10), f"{name} never released"
        return Pool(name, log)

    return factory


def failing(message: str):
    def factory():
        raise ValueError(message)

    return factory


def test_the_pools_come_back_by_name_once_all_are_ready():
    log: list[str] = []
    pools = start_together(a=lambda: Pool("a", log), b=lambda: Pool("b", log))
    assert {name: pool.name for name, pool in pools.items()} == {"a": "a", "b": "b"}
    assert log == []  # nothing is shut down on success


def test_a_failure_is_raised_before_a_slow_pool_is_ready_and_that_pool_is_shut_down_later():
    log: list[str] = []
    ready = threading.Event()
    starting = Starting(slow=slow("slow", log, ready), bad=failing("no reward file"))
    with pytest.raises(ValueError, match="no reward file"):
        starting.result()  # returns while `slow` is still starting
    assert log == []
    ready.set()
    starting.futures["slow"].result(timeout=10)
    assert log == ["shutdown slow"]  # the abandoned pool, once ready


def test_a_failure_of_the_callers_own_work_shuts_down_the_pools_started_meanwhile():
    log: list[str] = []
    ready = threading.Event()
    starting = Starting(quick=lambda: Pool("quick", log), slow=slow("slow", log, ready))
    starting.futures["quick"].result(timeout=10)

    def bad_data():
        raise ValueError("row 3: not valid JSON")

    with pytest.raises(ValueError, match="row 3"):
        starting.meanwhile(bad_data)
    assert log == ["shutdown quick"]
    ready.set()
    starting.futures["slow"].result(timeout=10)
    assert log == ["shutdown quick", "shutdown slow"]


def test_the_callers_work_runs_while_the_pools_start():
    log: list[str] = []
    ready = threading.Event()
    starting = Starting(slow=slow("slow", log, ready))
    # The pool can only become ready through the caller's work: it runs before `result`.
    assert starting.meanwhile(lambda: ready.set() or "prompts") == "prompts"
    assert starting.result()["slow"].name == "slow"
