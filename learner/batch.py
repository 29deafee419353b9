"""Turning scored groups into padded tensors for the learner.

Guarantees: sequences are prompt + completion, right-padded; `mask[b, t]` is 1 exactly where
`targets[b, t]` is a completion token of a usable sample, so prompt tokens, padding and
excluded samples never reach the loss. Not covered: packing several sequences into one row
(the speed issue).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout.records import Group


@dataclass
class FlatSample:
    """One sample with its prompt tokens, advantage and sampler log-probabilities."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logprobs: list[float]
    advantage: float
    valid: bool


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1] next token at each position
    mask: torch.Tensor  # [B, L-1] 1 on completion tokens of valid samples
    advantages: torch.Tensor  # [B]
    sampler_logprobs: torch.Tensor  # [B, L-1] vLLM's logprobs, aligned with targets


def flatten(groups: list[Group], advantages: torch.Tensor, valid: torch.Tensor) -> list[FlatSample]:
    """Groups [P] of G samples and [P, G] advantages/valid -> P * G flat samples, group-major."""
    return [
        FlatSample(
            prompt_ids=g.prompt.token_ids,
            completion_ids=s.completion_token_ids,
            sampler_logprobs=s.logprobs,
            advantage=float(advantages[i, j]),
            valid=bool(valid[i, j]),
        )
        for i, g in enumerate(groups)
        for j, s in enumerate(g.samples)
    ]


def collate(samples: list[FlatSample], pad_id: int) -> MicroBatch:
    """Right-pad prompt + completion of each sample into one batch."""
    length = max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    b = len(samples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention = torch.zeros((b, length), dtype=torch.long)
    mask = torch.zeros((b, length - 1))
    sampler = torch.zeros((b, length - 1))
    for i, s in enumerate(samples):
        n_p, n_c = len(s.prompt_ids), len(s.completion_ids)
        input_ids[i, : n_p + n_c] = torch.tensor(s.prompt_ids + s.completion_ids)
        attention[i, : n_p + n_c] = 1
        # Position t predicts token t + 1: completion tokens are targets n_p - 1 .. n_p + n_c - 2.
        if s.valid:
            mask[i, n_p - 1 : n_p + n_c - 1] = 1
        sampler[i, n_p - 1 : n_p + n_c - 1] = torch.tensor(s.sampler_logprobs[:n_c])
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention,
        targets=input_ids[:, 1:],
        mask=mask,
        advantages=torch.tensor([s.advantage for s in samples]),
        sampler_logprobs=sampler,
    )
