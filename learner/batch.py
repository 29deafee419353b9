"""Turning scored groups into padded tensors for the learner.

Guarantees: sequences are prompt + completion with every completion starting at the same
column; `mask[b, t]` is 1 exactly where `targets[b, t]` is a completion token of a usable
sample, so prompt tokens, padding and excluded samples never reach the loss. Not covered:
packing several sequences into one row (the speed issue).
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
    """Layout [left pad | prompt | completion | right pad]: every completion starts at the
    same column, so the model computes logits for the completion columns only."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L] 0 at each prompt's first token
    targets: torch.Tensor  # [B, C] completion tokens, C = longest completion
    mask: torch.Tensor  # [B, C] 1 on completion tokens of valid samples
    advantages: torch.Tensor  # [B]
    sampler_logprobs: torch.Tensor  # [B, C] vLLM's logprobs of the targets


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
    """Left-pad prompts and right-pad completions so that all completions start at column P."""
    p = max(len(s.prompt_ids) for s in samples)
    c = max(1, max(len(s.completion_ids) for s in samples))
    b = len(samples)
    input_ids = torch.full((b, p + c), pad_id, dtype=torch.long)
    attention = torch.zeros((b, p + c), dtype=torch.long)
    mask = torch.zeros((b, c))
    sampler = torch.zeros((b, c))
    for i, s in enumerate(samples):
        n_p, n_c = len(s.prompt_ids), len(s.completion_ids)
        input_ids[i, p - n_p : p + n_c] = torch.tensor(s.prompt_ids + s.completion_ids)
        attention[i, p - n_p : p + n_c] = 1
        mask[i, :n_c] = float(s.valid)
        sampler[i, :n_c] = torch.tensor(s.sampler_logprobs[:n_c])
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, L]
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        targets=input_ids[:, p:],
        mask=mask,
        advantages=torch.tensor([s.advantage for s in samples]),
        sampler_logprobs=sampler,
    )
