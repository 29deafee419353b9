"""Keeping a run alive: restart dead actors, retry their batch, guard against non-finite steps.

Guaranteed: a rollout engine or reward actor that dies (killed, crashed, out of memory) during
a call is restarted, a restarted engine receives the current weights before the call is
retried, and each restart is counted (`faults/rollout_restarts`, `faults/reward_restarts`);
a call is retried at most `MAX_RETRIES` times. A weight push has a deadline
(`cluster.push_timeout_s`) per phase: an engine that misses it or dies in it is killed,
restarted (counted as above; a transport with a transfer group forms it again) and pushed to
once more; a second failure or a learner rank's stops the run naming the engine or rank, the
phase and the wait.
A learner rank that dies stops the run with a message naming the last checkpoint (ZeRO state
cannot be rebuilt from the other ranks). A step whose loss or gradient norm is not finite was
skipped by the learner (no weight change); after `trainer.max_nonfinite_steps` such steps in a
row the run stops. Not covered: a dead driver
(resume from the checkpoint), the Ray head node dying.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

import ray
from ray.exceptions import RayActorError

from core import faults
from core.config import Config
from core.errors import ActorFault, DeadlineMissed, RunStopped
from core.records import ScoredGroup

MAX_RETRIES = 2


@contextmanager
def faults_during(phase: str, spec: str, step: int, delay_s: float = 0.2):
    """Fault-injection hook: SIGKILL the driver `delay_s` into the phase (or at its end when it
    is shorter), so the kill lands while the phase's remote calls are in flight."""
    if not faults.due(spec, f"kill@{phase}", step):
        yield
        return

    def kill():
        print(f"fault injection: SIGKILL to the driver during {phase} of step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    timer = threading.Timer(delay_s, kill)
    timer.start()
    yield
    kill()


class _Restarting:
    """Forwards calls to a pool; on a dead actor, restarts it and retries the call."""

    def __init__(self, pool, role: str, health: Health, after_restart=None):
        self.pool, self.role, self.health, self.after_restart = pool, role, health, after_restart

    def __getattr__(self, name: str):
        method = getattr(self.pool, name)

        def call(*args, **kwargs):
            for attempt in range(MAX_RETRIES + 1):
                try:
                    return method(*args, **kwargs)
                except RayActorError as e:
                    if attempt == MAX_RETRIES:
                        raise RunStopped(
                            f"{self.role} actor died {attempt + 1} times in a row "
                            f"during step {self.health.step}: {e}"
                        ) from e
                    restarted = self.pool.restart_dead()
                    self.health.restarts[self.role] += restarted
                    msg = f"{self.role} actor died during step {self.health.step}"
                    print(
                        f"{msg} ({type(e).__name__}); restarted {restarted}, retrying", flush=True
                    )
                    if self.after_restart:
                        self.after_restart()

        return call


class Health:
    def __init__(self, cfg: Config, rollout, rewards, learner=None, transport=None):
        """Without a learner (`cohort eval`), a restarted engine keeps the weights it loads."""
        self.cfg, self.learner, self.transport = cfg, learner, transport
        self.step = 0
        self.weights_version = 0
        """The version the engines hold (the driver sets it after each push)."""
        self.restarts = {"rollout": 0, "reward": 0}
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        resync = self._resync_restarted if learner is not None else None
        self.rollout = _Restarting(rollout, "rollout", self, resync)
        self.rewards = _Restarting(rewards, "reward", self)
        self._raw_rollout, self._raw_rewards = rollout, rewards
        rollout.heal = self._heal_rollout  # a stream resends a dead engine's groups
        self._heals = (0, 0)  # (step, engines healed in it)

    def _heal_rollout(self) -> None:
        """A rollout engine died during a stream: restart it and give it the current weights
        (the other engines reload the same ones); at most `MAX_RETRIES` times per step."""
        step, count = self._heals
        count = count + 1 if step == self.step else 1
        self._heals = (self.step, count)
        if count > MAX_RETRIES:
            raise RunStopped(
                f"rollout engines died {count} times during step {self.step}; read their logs "
                "(Ray's worker logs, session_latest/logs under Ray's temp folder), then "
                "continue from the last checkpoint with trainer.resume=auto"
            )
        before = self.restarts["rollout"]
        self._restart_engines()
        print(
            f"rollout engine died during step {self.step}; restarted "
            f"{self.restarts['rollout'] - before}, sending its groups again",
            flush=True,
        )
        if self.learner is not None:
            self._push_current_weights()

    def _resync_restarted(self) -> None:
        """After `_Restarting` replaced dead engines: re-form the transfer group, push."""
        self.transport.rejoin(self.learner, self._raw_rollout)
        self._push_current_weights()

    def _push_current_weights(self) -> None:
        self._push_healing(self.weights_version)

    def push(self, version: int) -> None:
        """Give every engine the learner's current weights, tagged `version` (see
        `_push_healing`); the `hang_rollout` fault hook fires here."""
        if faults.due(self.cfg.trainer.fault_injection, "hang_rollout", self.step):
            print(f"fault injection: rollout engine 0 hangs in step {self.step}'s push", flush=True)
            self._raw_rollout.hang_in_next_load(0, seconds=3600.0)
        self._push_healing(version)
        self.weights_version = version

    def _push_healing(self, version: int) -> None:
        """Push; engines that miss the push deadline or die in it are killed, restarted (the
        transport re-forms its transfer group) and pushed to again, once. A second failure,
        or a learner rank's, stops the run."""
        try:
            self.transport.push(self.learner, self._raw_rollout, version=version)
            return
        except ActorFault as e:
            if e.who != "rollout engine":
                raise RunStopped(self._push_fault_message(e, "")) from e
            print(f"weight push of step {self.step}: {e}; restarting it, pushing again", flush=True)
            for i in e.late:
                ray.kill(self._raw_rollout.actors[i])
        try:
            self._restart_engines()
            self.transport.push(self.learner, self._raw_rollout, version=version)
        except ActorFault as e:
            raise RunStopped(self._push_fault_message(e, " again, after a restart")) from e

    def _restart_engines(self) -> None:
        """Replace the dead engines; a transport with a transfer group forms it anew."""
        self.restarts["rollout"] += self._raw_rollout.restart_dead()
        if self.transport is not None:
            self.transport.rejoin(self.learner, self._raw_rollout)

    def _push_fault_message(self, e: ActorFault, again: str) -> str:
        limit = self.cfg.cluster.push_timeout_s
        names = ", ".join(f"{e.who} {i}" for i in e.late)
        what = "missed its deadline" if isinstance(e, DeadlineMissed) else "failed"
        return (
            f"the weight push of step {self.step} {what}{again}: {e} "
            f"(cluster.push_timeout_s={limit:g}). If pushes of this model are that slow, raise "
            f"cluster.push_timeout_s; otherwise read the log of {names} (Ray's worker logs, "
            "session_latest/logs under Ray's temp folder). Continue from the last checkpoint "
            "with trainer.resume=auto."
        )

    def before_generate(self) -> None:
        """Fault-injection hooks that kill an actor before this step's generation."""
        spec = self.cfg.trainer.fault_injection
        if faults.due(spec, "kill_rollout", self.step):
            print(f"fault injection: killing rollout engine 0 at step {self.step}", flush=True)
            ray.kill(self._raw_rollout.actors[0])
        if faults.due(spec, "kill_reward", self.step):
            print(f"fault injection: killing reward actor 0 at step {self.step}", flush=True)
            ray.kill(self._raw_rewards.actors[0])

    def train(self, batch: list[ScoredGroup]) -> dict[str, float]:
        """The learner's update, counting steps it skipped for non-finite values."""
        if faults.due(self.cfg.trainer.fault_injection, "kill_learner", self.step):
            print(f"fault injection: killing learner rank 0 at step {self.step}", flush=True)
            ray.kill(self.learner.ranks[0])
        try:
            metrics = self.learner.train(batch, self.step)
        except RayActorError as e:
            raise RunStopped(
                f"a learner rank died during step {self.step} ({type(e).__name__}: {e}). The "
                "run stops: ZeRO state cannot be rebuilt from the other ranks. Continue from "
                "the last checkpoint with trainer.resume=auto."
            ) from e
        if metrics.get("train/skipped_updates", 0) > 0:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
        else:
            self.nonfinite_in_a_row = 0
        return metrics

    def stop_if_nonfinite(self) -> None:
        """Stop after `trainer.max_nonfinite_steps` skipped steps in a row (call once the
        step's row and checkpoint are written)."""
        limit = self.cfg.trainer.max_nonfinite_steps
        if self.nonfinite_in_a_row >= limit:
            raise RunStopped(
                f"{limit} steps in a row (the last: step {self.step}) had a non-finite loss or "
                "gradient norm and were skipped. Lower learner.lr, check the reward scale, or "
                "set learner.grad_clip; continue from the last checkpoint with "
                "trainer.resume=auto."
            )

    def metrics(self) -> dict[str, float]:
        return {
            "faults/rollout_restarts": float(self.restarts["rollout"]),
            "faults/reward_restarts": float(self.restarts["reward"]),
            "faults/nonfinite_steps": float(self.nonfinite_total),
        }
