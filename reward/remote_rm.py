"""`remote_rm`: a reward model behind an HTTP endpoint, one JSON request per completion.

A batched built-in: called once per group, it sends the group's requests with at most
`max_concurrency` in flight. Guaranteed: each request has its own `timeout_s`; connection
errors, timeouts, HTTP 429 and 5xx are retried `retries` times after `backoff_s`, then twice
that, and so on; any other HTTP status and an unreadable response fail at once. A completion
whose request finally fails is a failed sample (its error says which URL and why); the others
keep their scores. Not guaranteed: a concurrency limit across workers and actors (each worker
keeps its own: in all at most reward.num_actors x workers_per_actor x max_concurrency), or that
all retries fit in reward.timeout_s (choose timeout_s x (retries + 1) plus backoffs below it).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class RemoteRewardError(RuntimeError):
    """The reward model did not give a usable score for one completion."""


def remote_rm(
    completions: list[str],
    *,
    prompts: list[str],
    answers: list[str],
    rows: list[dict],
    url: str = "",
    timeout_s: float = 10.0,
    retries: int = 3,
    backoff_s: float = 0.5,
    max_concurrency: int = 8,
    response_key: str = "reward",
    headers: dict[str, str] | None = None,
    **kwargs,
) -> list[Any]:
    """POST `{"prompt", "completion", "answer", "row"}` as JSON to `url` for each completion;
    the response is JSON: a number, or an object whose `response_key` holds a number (or an
    object of named numbers, logged as components). Returns one score, or a
    `RemoteRewardError`, per completion."""
    if not url:
        raise ValueError("remote_rm needs kwargs: {url: http://HOST:PORT/PATH}")
    send = {"Content-Type": "application/json"} | (headers or {})

    def one(i: int) -> Any:
        body = json.dumps(
            {
                "prompt": prompts[i],
                "completion": completions[i],
                "answer": answers[i],
                "row": rows[i],
            },
            default=str,
        )
        return _post_with_retries(
            url, body.encode(), send, timeout_s, retries, backoff_s, response_key
        )

    with ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool:
        return list(pool.map(one, range(len(completions))))


remote_rm.batched = True  # type: ignore[attr-defined]


def _post_with_retries(
    url: str,
    body: bytes,
    headers: dict,
    timeout_s: float,
    retries: int,
    backoff_s: float,
    response_key: str,
) -> Any:
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:200]!r}"
            if e.code != 429 and e.code < 500:
                return RemoteRewardError(f"{url} answered {last} (not retried)")
            continue
        except (OSError, TimeoutError) as e:  # URLError, refused, reset, timed out
            last = f"{type(e).__name__}: {e}"
            continue
        return _score(url, raw, response_key)
    return RemoteRewardError(f"{url} failed {retries + 1} times; last: {last}")


def _score(url: str, raw: bytes, response_key: str) -> Any:
    try:
        data = json.loads(raw)
    except ValueError:
        return RemoteRewardError(f"{url} answered non-JSON: {raw[:200]!r}")
    if isinstance(data, dict):
        if response_key not in data:
            return RemoteRewardError(
                f"{url} answered {data!r:.200} without {response_key!r} (set kwargs.response_key)"
            )
        data = data[response_key]
    return data  # checked as a number (or dict of numbers) by the scorer
