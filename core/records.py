"""The records that travel between actors: a prompt, a sampled completion, a prompt's group of
them, a sample's score, and a group with its scores and the rewards the learner trains on.

Plain dataclasses of plain data, so Ray moves them between processes cheaply and every package
can read them without importing another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prompt:
    """One prompt as the driver hands it to the engines (built by `cluster/data.py`)."""

    id: str
    """Stable id, `<source>:<row>`, e.g. `train:17`."""
    text: str
    """The user prompt as written (after `data.prompt_template`), given to reward functions."""
    token_ids: list[int]
    """Prompt tokens after the tokenizer's chat template (with the generation prompt)."""
    answer: str = ""
    """Reference answer for verifiable rewards."""
    fields: dict[str, Any] = field(default_factory=dict)
    """The dataset row's other fields, passed to reward functions."""


@dataclass
class Sample:
    """One completion sampled by a vLLM engine."""

    completion_token_ids: list[int]
    text: str
    logprobs: list[float]
    """Log-probability of each sampled token under the sampling distribution (after
    temperature), one per completion token."""
    finish_reason: str
    """`stop` (end of sequence or a stop string) or `length` (hit `max_new_tokens`)."""
    policy_version: int
    """Version of the weights that generated it: 0 = initial, +1 per weight push (a multi-turn
    trajectory: the version of its first turn)."""
    loss_mask: list[int] = field(default_factory=list)
    """Multi-turn trajectories: 1 per completion token the model generated, 0 per token an
    environment or tool added (kept in the context, left out of the loss, the KL and the
    entropy; their `logprobs` are 0). Empty: every token was generated (a single turn)."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Multi-turn: the conversation after the prompt, `{"role", "content"}` per turn
    (assistant turns as the model wrote them, environment and tool replies as they came)."""
    turns: int = 1
    """Model turns in the trajectory."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Multi-turn: every tool call, `{"name", "outcome", "input", "error"}`; outcome is `ok` or
    a failure kind (`environments.tools.FAILURE_KINDS`)."""
    env_reward: float | None = None
    """Multi-turn: the sum of the environment's step rewards (None when it gave none)."""


@dataclass
class Group:
    """A prompt and the G completions sampled for it; the unit GRPO normalises over."""

    prompt: Prompt
    samples: list[Sample]


@dataclass
class Sampling:
    """How a stream of groups is sampled (shared by every group of the stream)."""

    n: int
    """Samples per group (G)."""
    temperature: float
    """0 means greedy."""
    top_p: float
    max_tokens: int


@dataclass
class GroupRequest:
    """One prompt's group as the pool sends it to an engine."""

    key: int
    """Position of the prompt in its stream (what results are matched and aborted by)."""
    prompt: Prompt
    sampling: Sampling
    seed: int | None
    """Seed of the group's sampling generator (sample j uses seed + j); with a seed, the
    group's samples are a function of the seed and the weights, whichever engine runs it and
    whatever else it runs. None: the engine's global generator (greedy needs none)."""


@dataclass
class EngineReport:
    """What one engine did in one `RolloutActor.run` call."""

    finished: list[tuple[int, Group]]
    """(key, group) of every group that finished, in the order they finished."""
    busy_s: float
    """Seconds spent stepping the engine."""
    tokens: int
    """Completion tokens of the finished groups."""
    load: int
    """Tokens still to come for the engine's unfinished groups (an upper bound)."""


@dataclass
class Score:
    """One sample's reward and how it was made."""

    reward: float
    """Weighted sum of the functions' scores (0.0 when `excluded`)."""
    components: dict[str, float]
    """Each function's raw (unweighted) score by name; NaN where that function failed. A function
    that returns a dict adds its entries as `<fn>/<key>` (its score is their sum)."""
    failed: bool = False
    """Some function failed on this sample."""
    excluded: bool = False
    """Failed under `on_failure="exclude"`: the learner must leave this sample out."""
    errors: dict[str, str] = field(default_factory=dict)
    """Function name -> `"ExceptionType: message"` for each function that failed."""
    kinds: dict[str, str] = field(default_factory=dict)
    """Function name -> failure kind (`reward.scoring.KINDS`) for each function that failed."""
    tracebacks: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Function name -> traceback (or the sandbox's account) for each function that failed."""
    seconds: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    """Function name -> wall-clock seconds its call took (a batched call's time is shared
    equally by its samples)."""


@dataclass
class ScoredGroup:
    """A group with everything the learner needs from the reward side, sample by sample."""

    group: Group
    scores: list[Score]
    """One per sample, as the reward functions gave them."""
    rewards: list[float]
    """What the learner trains on: the score's reward plus the overlong penalty (0 for an
    excluded sample)."""
    valid: list[bool]
    """False where the sample's reward failed and `reward.on_failure` is `exclude`."""
    penalties: list[float]
    """The overlong penalty alone (0 when off)."""
