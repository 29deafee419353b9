"""OpenEnv environments through the adapter (`rollout.environment.name: openenv`): a real
`openenv.core.Environment` in this process, and the same environment served by OpenEnv's own
HTTP/WebSocket server and reached through its `GenericEnvClient` (`Guess`, in conftest.py; on
the real engines: tests/integration/test_stream.py)."""

import pytest

from core.config import ConfigError, EnvironmentConfig
from environments.base import EnvironmentError_, Step
from environments.loading import environment_factory

pytestmark = pytest.mark.integration


def make(path, **kwargs):
    cfg = EnvironmentConfig(name="openenv", kwargs=kwargs, tool_timeout_s=5.0)
    return environment_factory(cfg, None, path.parent)


def play(env, target: str, guesses: list[str]) -> list[Step]:
    env.reset("guess?", {"answer": target, "target": target})
    return [env.step(g) for g in guesses]


def test_an_openenv_environment_in_this_process(guess_file):
    new = make(
        guess_file, env="guess.py:Guess", env_kwargs={"max_guesses": 2}, reset_fields=["target"]
    )
    steps = play(new(), "7", ["3", "7"])
    assert steps == [
        Step([{"role": "user", "content": "higher"}], done=False, reward=-0.1),
        Step([{"role": "user", "content": "right"}], done=True, reward=1.0),
    ]
    [*_, last] = play(new(), "4", ["9", "8"])  # max_guesses ends the episode
    assert last.done and last.messages[0]["content"] == "lower"
    # Without `observation_field` the observation's one own field is the text; with it, that one.
    env = make(guess_file, env="guess.py:Guess", observation_field="metadata")()
    assert play(env, "5", ["5"])[0].messages[0]["content"] == "{}"
    env = make(guess_file, env="guess.py:Guess", observation_field="board")()
    with pytest.raises(EnvironmentError_, match=r"no field 'board' \(it has \['done', 'hint'"):
        play(env, "5", ["1"])
    env = make(guess_file, env="guess.py:Guess", reset_fields=["level"])()
    with pytest.raises(EnvironmentError_, match=r"reset_fields \['level'\] are not in the row"):
        play(env, "5", ["1"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one of `env`"),
        ({"env": "guess.py:Guess", "base_url": "http://x"}, "give exactly one of `env`"),
        ({"env": "guess.py:Guess", "colour": 1}, r"unknown keys \['colour'\]"),
        ({"env": "guess.py:NotAnEnvironment"}, "is not an openenv.core.Environment class"),
        ({"env": "guess.py:Guess", "action_field": "move"}, r"has the fields \['guess', 'meta"),
        ({"env": "guess.py:Guess", "env_kwargs": {"size": 3}}, r"env_kwargs=\{'size': 3\}"),
        ({"env": "guess.py:Nope"}, r"kwargs.env='guess.py:Nope'.*has no 'Nope'"),
        ({"base_url": "http://localhost:1"}, r"kwargs.action_field: name the field"),
        ({"base_url": "http://x", "env_kwargs": {"n": 1}}, r"env_kwargs: the server builds"),
        ({"env": "guess.py:Guess", "reset_fields": "target"}, r"reset_fields='target': must be"),
    ],
)
def test_openenv_entries_are_checked_when_the_run_starts(guess_file, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make(guess_file, **kwargs)


def test_an_openenv_server_one_session_per_trajectory(guess_file, guess_server):
    new = make(guess_file, base_url=guess_server, action_field="guess", reset_fields=["target"])
    for target in "27":  # one session at a time: the first must have been released
        env = new()
        steps = play(env, target, ["5", target])
        assert [s.messages[0]["content"] for s in steps] == ["lower" if target < "5" else "higher",
                                                             "right"]  # fmt: skip
        assert [s.reward for s in steps] == [-0.1, 1.0] and steps[-1].done
        env.close()
    env = make(guess_file, base_url=guess_server, action_field="move")()
    try:  # the server's GuessAction refuses the field: that step fails (a crash), not the run
        with pytest.raises(RuntimeError, match="Invalid message.*VALIDATION_ERROR"):
            play(env, "5", ["1"])
    finally:
        env.close()
    env = new()  # and its session was released
    assert play(env, "5", ["5"])[0].done
    env.close()
