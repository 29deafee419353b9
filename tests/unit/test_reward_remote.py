"""`remote_rm` against a real local HTTP server: good, slow, failing and malformed answers,
retries with backoff, the concurrency limit, and a server slower than reward.timeout_s."""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.records import Group, Prompt, Sample
from reward.actor import RewardActor
from reward.remote_rm import RemoteRewardError, remote_rm


class Handler(BaseHTTPRequestHandler):
    """`/good` scores len(completion); `/slow` sleeps first; `/flaky` answers 503 twice per
    completion, then scores; `/bad` answers 400; `/text` answers non-JSON; `/parts` answers
    named components."""

    calls: Counter = Counter()
    in_flight = 0
    """Requests to /concurrency being served."""
    max_in_flight = 0
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        counted = self.path == "/concurrency"
        with cls.lock:
            cls.calls[(self.path, body["completion"])] += 1
            cls.in_flight += counted
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
            attempt = cls.calls[(self.path, body["completion"])]
        try:
            code, payload = self.reply(body, attempt)
        finally:
            # Leave the count before answering: once the client has its answer it may send
            # the next request, which must not find this one still counted.
            with cls.lock:
                cls.in_flight -= counted
        self.answer(code, payload)

    def reply(self, body: dict, attempt: int) -> tuple[int, bytes]:
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/bad" or (self.path == "/flaky" and attempt <= 2):
            return (400 if self.path == "/bad" else 503), b'{"error": "no"}'
        if self.path == "/text":
            return 200, b"not json"
        if self.path == "/parts":
            return 200, json.dumps({"reward": {"a": 1, "b": 2}}).encode()
        if self.path == "/concurrency":
            time.sleep(0.2)
        score = len(body["completion"]) + (body["row"].get("bonus", 0))
        return 200, json.dumps({"reward": score, "answer_seen": body["answer"]}).encode()

    def answer(self, code: int, payload: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except BrokenPipeError:  # the client gave up (a timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def call(url: str, completions: list[str], **kwargs) -> list:
    n = len(completions)
    return remote_rm(completions, prompts=["q"] * n, answers=["a"] * n, rows=[{"bonus": 1}] * n,
                     url=url, **kwargs)  # fmt: skip


def test_good_responses(server):
    assert call(server + "/good", ["ab", "abcd"]) == [3, 5]  # len + row bonus 1
    assert call(server + "/parts", ["x"]) == [{"a": 1, "b": 2}]


def test_slow_server_times_out_after_retries(server):
    t0 = time.monotonic()
    [result] = call(server + "/slow", ["x"], timeout_s=0.2, retries=1, backoff_s=0.1)
    # two attempts of 0.2 s and one backoff of 0.1 s
    assert isinstance(result, RemoteRewardError) and "failed 2 times" in str(result)
    assert "timed out" in str(result) and time.monotonic() - t0 < 1.0


def test_failing_server_is_retried_with_backoff(server):
    t0 = time.monotonic()
    assert call(server + "/flaky", ["abc"], backoff_s=0.1) == [4]  # third attempt succeeds
    assert Handler.calls[("/flaky", "abc")] == 3
    assert time.monotonic() - t0 >= 0.1 + 0.2  # backoffs 0.1 then 0.2


def test_client_errors_and_bad_json_are_not_retried(server):
    [bad] = call(server + "/bad", ["q"], backoff_s=0.01)
    assert "HTTP 400" in str(bad) and Handler.calls[("/bad", "q")] == 1
    [text] = call(server + "/text", ["q"])
    assert "non-JSON" in str(text)
    [refused] = call("http://127.0.0.1:9/none", ["q"], retries=0)
    assert "failed 1 times" in str(refused)


def test_concurrency_limit(server):
    Handler.max_in_flight = 0
    assert call(server + "/concurrency", ["x"] * 6, max_concurrency=2) == [2] * 6
    assert Handler.max_in_flight == 2


def test_through_the_sandbox(server, tmp_path):
    # One group to /good, scored; a server slower than reward.timeout_s is a timeout failure;
    # without the network grant the sandbox refuses the connection.
    prompt = Prompt(id="train:0", text="q", token_ids=[1], answer="a", fields={"bonus": 0})
    groups = [Group(prompt, [Sample([], t, [], "stop", 0) for t in ("a", "abc")])]
    good = {"name": "remote_rm", "network": True, "kwargs": {"url": server + "/good"}}
    slow = {"name": "remote_rm", "network": True,
            "kwargs": {"url": server + "/slow", "timeout_s": 5}}  # fmt: skip
    denied = {"name": "remote_rm", "kwargs": {"url": server + "/good", "retries": 0}}
    actor = RewardActor([denied], "exclude", 0.0, str(tmp_path), {"workers": 1})
    try:
        scores = actor.score(groups)[0]
    finally:
        actor.close()
    assert [s.kinds for s in scores] == [{"remote_rm": "exception"}] * 2
    assert "Operation not permitted" in scores[0].errors["remote_rm"]
    actor = RewardActor([good], "exclude", 0.0, str(tmp_path), {"workers": 1})
    try:
        assert [s.reward for s in actor.score(groups)[0]] == [1.0, 3.0]
    finally:
        actor.close()
    actor = RewardActor([slow], "exclude", 0.0, str(tmp_path), {"workers": 1, "timeout_s": 0.5})
    try:
        scores = actor.score(groups)[0]
    finally:
        actor.close()
    assert [s.kinds for s in scores] == [{"remote_rm": "timeout"}] * 2
