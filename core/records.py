"""Records the rollout side produces: one sampled completion, and a prompt's group of them."""

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
    """Version of the weights that generated it: 0 = initial, +1 per weight push."""


@dataclass
class Group:
    """A prompt and the G completions sampled for it; the unit GRPO normalises over."""

    prompt: Prompt
    samples: list[Sample]
