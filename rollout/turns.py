"""Multi-turn trajectories on the streaming engines: model turn, environment reply, next turn.

A group starts as one request of n samples on the prompt (as a single-turn group). Each sample
then becomes a trajectory of its own: its turn goes to the environment (in a thread, so the
engines keep generating other requests), and the reply's tokens are appended to the exact ids
the engine saw and produced; the next turn is one request (n = 1) on that context, sent to the
engine that ran the previous turn so vLLM's prefix cache holds it. When all n trajectories have
ended, the group is yielded like a single-turn group, each sample's completion being everything
after the prompt with `loss_mask` 1 on generated tokens and 0 on the replies.

Guarantees: training ids are never re-tokenised: the model's turns are the engine's output ids,
and a reply's ids are the chat template's rendering of the reply messages after an assistant
turn, cut after the turn's end token (`ReplyRenderer`), so the context of turn t + 1 is the
context of turn t, its output and the reply. A turn cut at `rollout.max_new_tokens` is closed
with the template's end-of-turn token (context, not trained: the model did not write it) and
answered like any other. The environment sees every turn, the
last one included. A trajectory ends `stop` (the environment is done, or a turn ended on a
stop string rather than the end-of-turn token), `length` (`max_total_tokens` reached: a turn
is cut to fit what is left, and a reply that does not fit ends it; or the final turn was cut
at `max_new_tokens`) or `max_turns` (the environment replied to the last allowed turn; the
reply is not added). Turn t of sample j in a seeded group is seeded
from (seed + j, t), so trajectories are a function of the seeds, the weights and the
environment. An environment that raises or
returns nonsense ends its trajectory and is recorded as a `crash` tool call of `environment`;
one whose step takes longer than `Limits.step_timeout_s`, as a `timeout`. An environment's
`close()`, if it has one, is called once when its trajectory ends. The steps' rewards are summed
into the sample's `env_reward`.
Not covered: a policy version change within a trajectory (the sample records its first turn's).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from core.records import Group, GroupRequest, Prompt, Sample, Sampling

_BASE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


class ReplyRenderer:
    """Token ids of environment messages as the chat template places them after an assistant
    turn that ended with one of `end_ids` (what the model emits to end its turn)."""

    def __init__(self, tokenizer, template: str | None, end_ids: set[int]):
        self.tokenizer, self.template, self.end_ids = tokenizer, template, end_ids
        base = self._ids(_BASE, generation_prompt=False)
        ends = [i for i, t in enumerate(base) if t in end_ids]
        if not ends:
            raise ValueError(
                "the chat template does not end an assistant turn with the model's end token "
                f"{sorted(end_ids)}; multi-turn rollouts need one (set data.chat_template)"
            )
        self.cut = ends[-1] + 1
        self.base = base[: self.cut]
        self.end_of_turn = base[ends[-1]]
        """The token the template closes an assistant turn with."""

    def _ids(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=generation_prompt,
            tokenize=False,
            chat_template=self.template,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, messages: list[dict]) -> list[int]:
        """The reply's ids, ending with the template's prompt for the next assistant turn."""
        full = self._ids(_BASE + messages, generation_prompt=True)
        if full[: self.cut] != self.base:
            raise ValueError(
                "the chat template renders earlier turns differently once a reply follows; "
                "multi-turn rollouts need a template whose rendering only grows"
            )
        return full[self.cut :]


@dataclass
class Limits:
    max_turns: int
    max_total_tokens: int
    step_timeout_s: float
    """Longest an environment step may take."""


@dataclass
class Trajectory:
    """One sample's conversation so far."""

    env: Any
    prompt: Prompt
    seed: int | None
    sampling: Sampling
    completion: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    """[start, end) of each model turn in `completion`."""
    version: int = -1
    finish: str = ""
    text: str = ""
    """The last model turn's text (what reward functions see as the completion)."""
    env_reward: float | None = None
    """The sum of the environment's step rewards (None while no step gave one)."""

    @property
    def context(self) -> list[int]:
        return self.prompt.token_ids + self.completion

    def add_turn(self, sample: Sample) -> None:
        start = len(self.completion)
        self.completion += sample.completion_token_ids
        self.mask += [1] * len(sample.completion_token_ids)
        self.logprobs += sample.logprobs
        self.spans.append((start, len(self.completion)))
        self.messages.append({"role": "assistant", "content": sample.text})
        self.text = sample.text
        if self.version < 0:
            self.version = sample.policy_version

    def add_reply(self, messages: list[dict], ids: list[int]) -> None:
        self.completion += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.messages += messages

    def sample(self) -> Sample:
        return Sample(
            completion_token_ids=self.completion,
            text=self.text,
            logprobs=self.logprobs,
            finish_reason=self.finish,
            policy_version=self.version,
            loss_mask=self.mask,
            messages=self.messages,
            turns=len(self.spans),
            tool_calls=self.tool_calls,
            env_reward=self.env_reward,
        )


class Conversations:
    """The multi-turn side of one `GroupStream`: turns in, next-turn requests and finished groups
    out. `make_env()` builds one environment per trajectory; `render` is a `ReplyRenderer`."""

    def __init__(
        self,
        make_env: Callable[[], Any],
        render: ReplyRenderer,
        limits: Limits,
        seed_of_turn: Callable[[int, int], int],
        record: bool = False,
    ):
        self.make_env, self.render, self.limits = make_env, render, limits
        self.seed_of_turn = seed_of_turn
        self.groups: dict[int, list[Trajectory]] = {}
        self.open: dict[int, int] = {}
        """Trajectories of each group not yet ended."""
        self.results: queue.Queue = queue.Queue()
        self.busy = 0
        """Environment steps running."""
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="cohort-env")
        self.step_pool = ThreadPoolExecutor(8, thread_name_prefix="cohort-env-step")
        self.first: dict[int, GroupRequest] = {}
        """Each group's first request (its seed and sampling), by key, until its turn is back."""
        self.log: list[tuple[int, int, list[int], list[int]]] | None = [] if record else None
        """With `record`: (group key, sample, prompt ids sent, output ids) of every turn."""

    def add(self, key: Any, group: Group, engine: int) -> None:
        """A finished request: a group's first turn (n samples) or one trajectory's next."""
        if isinstance(key, tuple):
            gkey, j, _ = key
            todo = [(gkey, j, group.samples[0])]
        else:
            gkey, todo = key, [(key, j, s) for j, s in enumerate(group.samples)]
            first = self.first.pop(key)
            self.groups[key] = [
                Trajectory(
                    self.make_env(),
                    group.prompt,
                    None if first.seed is None else first.seed + j,
                    first.sampling,
                )
                for j in range(len(group.samples))
            ]
            self.open[key] = len(group.samples)
        for gkey, j, sample in todo:
            if self.log is not None:
                sent = list(group.prompt.token_ids)
                self.log.append((gkey, j, sent, sample.completion_token_ids))
            self.busy += 1
            self.pool.submit(self._advance, gkey, j, sample, engine)

    def sent(self, request: GroupRequest) -> None:
        """A group's first request went out (its seed and sampling are the trajectories')."""
        self.first[request.key] = request

    def _advance(self, gkey: int, j: int, sample: Sample, engine: int) -> None:
        try:
            self.results.put(self._next_turn(gkey, j, sample, engine))
        except BaseException as e:  # surfaced by `poll` in the stream's thread
            self.results.put(e)

    def _next_turn(self, gkey: int, j: int, sample: Sample, engine: int):
        traj = self.groups[gkey][j]
        first = not traj.spans
        traj.add_turn(sample)
        turn = len(traj.spans)
        if len(traj.context) >= self.limits.max_total_tokens:
            return self._end(gkey, j, "length")
        cut = sample.finish_reason == "length"
        ids = sample.completion_token_ids
        if not cut and not (ids and ids[-1] in self.render.end_ids):
            return self._end(gkey, j, "stop")  # a stop string or token that ends no turn
        step = self._env_step(traj, first, sample.text)
        if step is None or step.done or not step.messages:
            return self._end(gkey, j, "length" if cut else "stop")
        if turn >= self.limits.max_turns:  # the environment had more to say
            return self._end(gkey, j, "max_turns")
        # A turn cut at max_new_tokens is closed as the template closes turns.
        reply = [self.render.end_of_turn] * cut + self.render(step.messages)
        room = self.limits.max_total_tokens - len(traj.context) - len(reply)
        if room <= 0:
            return self._end(gkey, j, "length")
        traj.add_reply(step.messages, reply)
        s = traj.sampling
        sampling = Sampling(1, s.temperature, s.top_p, min(s.max_tokens, room))
        seed = None if traj.seed is None else self.seed_of_turn(traj.seed, turn)
        prompt = Prompt(traj.prompt.id, traj.prompt.text, traj.context, traj.prompt.answer)
        return GroupRequest((gkey, j, turn), prompt, sampling, seed), engine

    def _env_step(self, traj: Trajectory, first: bool, action: str):
        """The environment's reply (a `Step`: `messages`, `done`, `tool_calls`), or None when it
        failed (recorded as a tool call of `environment`)."""

        def run():
            if first:
                row = traj.prompt.fields | {"answer": traj.prompt.answer}
                traj.env.reset(traj.prompt.text, row)
            return traj.env.step(action)

        future = self.step_pool.submit(run)
        record = {"name": "environment", "input": action, "error": ""}
        try:
            step = future.result(timeout=self.limits.step_timeout_s)
        except FutureTimeout:
            error = f"the step took longer than {self.limits.step_timeout_s:g} s"
            traj.tool_calls.append(record | {"outcome": "timeout", "error": error})
            return None
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            traj.tool_calls.append(record | {"outcome": "crash", "error": error})
            return None
        traj.tool_calls += step.tool_calls
        if step.reward is not None:
            traj.env_reward = (traj.env_reward or 0.0) + float(step.reward)
        return step

    def _end(self, gkey: int, j: int, finish: str):
        traj = self.groups[gkey][j]
        traj.finish = finish
        close = getattr(traj.env, "close", None)
        if close is not None:  # a server session, say: released when its trajectory ends
            try:
                close()
            except Exception as e:
                error = f"closing it failed: {type(e).__name__}: {e}"
                record = {"name": "environment", "input": "", "outcome": "crash", "error": error}
                traj.tool_calls.append(record)
        return gkey

    def poll(self) -> tuple[list[tuple[GroupRequest, int]], list[tuple[int, Group]]]:
        """Next-turn requests (each with the engine of its previous turn) and finished groups,
        from the environment steps done since the last call."""
        requests, finished = [], []
        while True:
            try:
                result = self.results.get_nowait()
            except queue.Empty:
                break
            self.busy -= 1
            if isinstance(result, BaseException):
                raise result
            if isinstance(result, tuple):
                requests.append(result)
                continue
            gkey = result
            self.open[gkey] -= 1
            if not self.open[gkey]:
                del self.open[gkey]
                trajectories = self.groups.pop(gkey)
                group = Group(trajectories[0].prompt, [t.sample() for t in trajectories])
                finished.append((gkey, group))
        return requests, finished

    def wait(self, timeout: float) -> None:
        """Block until an environment step is done or `timeout` seconds passed."""
        try:
            item = self.results.get(timeout=timeout)
        except queue.Empty:
            return
        self.results.put(item)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.step_pool.shutdown(wait=False, cancel_futures=True)
