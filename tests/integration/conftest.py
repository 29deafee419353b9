"""Fixtures of the integration tier: an OpenEnv environment (`Guess`) as a file, and served by
OpenEnv's own server on a free local port."""

import contextlib
import importlib.util
import socket
import threading
import time

import pytest

GUESS = '''
from openenv.core import Action, Environment, Observation, State


class GuessAction(Action):
    guess: str


class GuessObservation(Observation):
    hint: str = ""


class Guess(Environment[GuessAction, GuessObservation, State]):
    """The model guesses the row's digit; a right guess earns 1 and ends the episode, a wrong one
    costs 0.1 and gets a hint."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, max_guesses: int = 3):
        super().__init__()
        self.max_guesses = max_guesses

    def reset(self, seed=None, episode_id=None, target="5", **kwargs):
        self.target, self.guesses = str(target), 0
        return GuessObservation(hint="guess a digit")

    def step(self, action, timeout_s=None, **kwargs):
        self.guesses += 1
        guess = action.guess.strip()
        if guess == self.target:
            return GuessObservation(hint="right", done=True, reward=1.0)
        hint = "higher" if guess < self.target else "lower"
        return GuessObservation(hint=hint, done=self.guesses >= self.max_guesses, reward=-0.1)

    @property
    def state(self):
        return State(step_count=self.guesses)


class NotAnEnvironment:
    def step(self, action):
        return "x"
'''


@pytest.fixture(scope="module")
def guess_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("openenv") / "guess.py"
    path.write_text(GUESS)
    return path


@contextlib.contextmanager
def serve_guess(guess_file, sessions: int):
    """OpenEnv's server for `Guess` on a free local port, with at most `sessions` at once."""
    import uvicorn
    from openenv.core.env_server.http_server import create_fastapi_app

    spec = importlib.util.spec_from_file_location("guess_served", guess_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = create_fastapi_app(
        module.Guess, module.GuessAction, module.GuessObservation, max_concurrent_envs=sessions
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the OpenEnv server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def guess_server(guess_file):
    """The server with one session at a time: a trajectory that did not close its session would
    block the next."""
    with serve_guess(guess_file, 1) as url:
        yield url
