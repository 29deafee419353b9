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
    """One sample with its prompt tokens and sampler log-probabilities."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logprobs: list[float]
    valid: bool
    """The sample's tokens enter the loss (its reward did not fail, and it is not a truncated
    completion left out by `algorithm.mask_truncated`)."""


@dataclass
class MicroBatch:
    """Layout [left pad | prompt | completion | right pad]: every completion starts at the
    same column, so the model computes logits for the completion columns only."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L] 0 at each prompt's first token
    targets: torch.Tensor  # [B, C] completion tokens, C = longest completion
    mask: torch.Tensor  # [B, C] 1 on completion tokens of valid samples
    sampler_logprobs: torch.Tensor  # [B, C] vLLM's logprobs of the targets


def flatten(
    groups: list[Group], valid: list[list[bool]], mask_truncated: bool = False
) -> list[FlatSample]:
    """Groups [P] of G samples -> P * G flat samples, group-major. A sample enters the loss when
    `valid[i][j]` and, with `mask_truncated`, when it was not cut at the token limit."""
    return [
        FlatSample(
            prompt_ids=g.prompt.token_ids,
            completion_ids=s.completion_token_ids,
            sampler_logprobs=s.logprobs,
            valid=valid[i][j] and not (mask_truncated and s.finish_reason == "length"),
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
        sampler_logprobs=sampler,
    )


@dataclass(frozen=True)
class BatchPlan:
    """How a batch of `num_samples` flat samples is split over ranks, updates and micro-batches.

    Rank r takes the contiguous share [r * S, (r + 1) * S), S = num_samples / world_size. Each
    share is cut into `updates` equal slices; mini-batch k (one optimizer step) is the k-th
    slice of every rank, made of `accumulation_steps` micro-batches per rank. Config validation
    guarantees the divisions are exact.
    """

    num_samples: int
    world_size: int
    updates: int
    micro_batch_size: int

    def __post_init__(self):
        if self.num_samples % (self.world_size * self.updates * self.micro_batch_size):
            raise ValueError(
                f"{self.num_samples} samples do not split into {self.world_size} ranks x "
                f"{self.updates} updates x micro-batches of {self.micro_batch_size}"
            )

    @property
    def share(self) -> int:
        return self.num_samples // self.world_size

    @property
    def per_rank_update(self) -> int:
        return self.share // self.updates

    @property
    def per_update(self) -> int:
        """Samples in one mini-batch over all ranks."""
        return self.num_samples // self.updates

    @property
    def accumulation_steps(self) -> int:
        return self.per_rank_update // self.micro_batch_size

    def micro_slices(self, rank: int) -> list[tuple[int, int]]:
        """[lo, hi) flat indices of `rank`'s micro-batches, in training order."""
        start = rank * self.share
        return [
            (lo, lo + self.micro_batch_size)
            for lo in range(start, start + self.share, self.micro_batch_size)
        ]

    def minibatch_counts(self, tokens: list[int], index: int) -> tuple[float, float]:
        """Loss tokens and sequences with any loss token in the mini-batch that holds flat
        sample `index`, over every rank (`tokens[i]` = sample i's loss tokens)."""
        k = (index % self.share) // self.per_rank_update
        members = [
            tokens[r * self.share + k * self.per_rank_update + j]
            for r in range(self.world_size)
            for j in range(self.per_rank_update)
        ]
        return float(sum(members)), float(sum(n > 0 for n in members))
