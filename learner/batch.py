"""Turning scored groups into padded tensors for the learner: `flatten` the groups, split the
samples over ranks, mini-batches and micro-batches (`BatchPlan`), and collate one rank's
micro-batches (`rank_batch`).

Guarantees: sequences are prompt + completion with every completion starting at the same
column; `mask[b, t]` is 1 exactly where `targets[b, t]` is a completion token of a usable
sample that the model generated, so prompt tokens, environment and tool replies of a
multi-turn trajectory, padding and excluded samples never reach the loss. Micro-batches
are lists of flat sample indices: fixed-size runs in sample order, or, under a token budget,
each rank's mini-batch sorted by length and cut so that rows x longest row fits the budget,
with the same number of micro-batches on every rank and no sample leaving its mini-batch.
With `pack`, a micro-batch is one row of its samples back to back (no padding at all), and
a token budget counts the samples' tokens instead of rows x longest row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.records import Group


@dataclass
class FlatSample:
    """One sample with its prompt tokens and sampler log-probabilities."""

    prompt_ids: list[int]
    completion_ids: list[int]
    sampler_logprobs: list[float]
    valid: bool
    """The sample's tokens enter the loss (its reward did not fail, and it is not a truncated
    completion left out by `algorithm.mask_truncated`)."""
    loss_mask: list[int] = field(default_factory=list)
    """Multi-turn: 1 per completion token the model generated, 0 per environment token (empty:
    all generated)."""

    @property
    def loss_tokens(self) -> int:
        """Completion tokens that enter the loss."""
        if not self.valid:
            return 0
        return sum(self.loss_mask) if self.loss_mask else len(self.completion_ids)


@dataclass
class MicroBatch:
    """B samples as the model reads them (`input_ids`, `attention_mask`, `position_ids`) and
    as the loss reads them ([B, C]: sample b's completion tokens from column 0, C = the
    longest completion).

    Padded (`collate`): rows [left pad | prompt | completion | right pad], R = B; every
    completion starts at the same column, so the model computes logits for the completion
    columns only. Packed (`pack`): one row of every sample's prompt and completion back to
    back, R = 1, positions restarting at 0 for each sample and no attention mask (the model
    keeps attention within each sample, transformers reading the boundaries from the
    positions); `gather` picks each target's preceding position out of the row."""

    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor | None  # [R, L]; None when packed
    position_ids: torch.Tensor  # [R, L] 0 at each prompt's first token
    targets: torch.Tensor  # [B, C] completion tokens, C = longest completion
    mask: torch.Tensor  # [B, C] 1 on completion tokens of valid samples
    sampler_logprobs: torch.Tensor  # [B, C] vLLM's logprobs of the targets
    lengths: torch.Tensor  # [B] prompt + completion tokens
    completion_lengths: torch.Tensor  # [B]
    gather: torch.Tensor | None = None  # [B, C] packed: flat index into [R * L] before each target

    @property
    def real_tokens(self) -> int:
        """Prompt and completion tokens (the positions that are not padding)."""
        return int(self.lengths.sum())

    @property
    def positions(self) -> int:
        """Rows x columns of `input_ids`: what the forward pass computes, padding included."""
        return self.input_ids.numel()


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
            loss_mask=s.loss_mask,
        )
        for i, g in enumerate(groups)
        for j, s in enumerate(g.samples)
    ]


def _loss_tensors(samples: list[FlatSample], pad_id: int) -> dict[str, torch.Tensor]:
    """The [B, C] tensors the loss reads, and the lengths, alike for both layouts."""
    c = max(1, max(len(s.completion_ids) for s in samples))
    b = len(samples)
    targets = torch.full((b, c), pad_id, dtype=torch.long)
    mask = torch.zeros((b, c))
    sampler = torch.zeros((b, c))
    for i, s in enumerate(samples):
        n_c = len(s.completion_ids)
        targets[i, :n_c] = torch.tensor(s.completion_ids, dtype=torch.long)
        mask[i, :n_c] = float(s.valid)
        if s.loss_mask:  # multi-turn: environment tokens are context only
            mask[i, :n_c] *= torch.tensor(s.loss_mask, dtype=mask.dtype)
        sampler[i, :n_c] = torch.tensor(s.sampler_logprobs[:n_c])
    return {
        "targets": targets,
        "mask": mask,
        "sampler_logprobs": sampler,
        "lengths": torch.tensor([len(s.prompt_ids) + len(s.completion_ids) for s in samples]),
        "completion_lengths": torch.tensor([len(s.completion_ids) for s in samples]),
    }


def collate(samples: list[FlatSample], pad_id: int) -> MicroBatch:
    """Left-pad prompts and right-pad completions so that all completions start at column P."""
    p = max(len(s.prompt_ids) for s in samples)
    c = max(1, max(len(s.completion_ids) for s in samples))
    b = len(samples)
    input_ids = torch.full((b, p + c), pad_id, dtype=torch.long)
    attention = torch.zeros((b, p + c), dtype=torch.long)
    for i, s in enumerate(samples):
        n_p, n_c = len(s.prompt_ids), len(s.completion_ids)
        input_ids[i, p - n_p : p + n_c] = torch.tensor(s.prompt_ids + s.completion_ids)
        attention[i, p - n_p : p + n_c] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, L]
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        **_loss_tensors(samples, pad_id),
    )


def pack(samples: list[FlatSample], pad_id: int) -> MicroBatch:
    """All samples in one row, prompt + completion after prompt + completion, no padding; the
    [B, C] tensors as `collate` makes them."""
    loss = _loss_tensors(samples, pad_id)
    ids, positions = [], []
    gather = torch.zeros_like(loss["targets"])
    for i, s in enumerate(samples):
        n_p, n_c = len(s.prompt_ids), len(s.completion_ids)
        start = len(ids)
        ids += s.prompt_ids + s.completion_ids
        positions += range(n_p + n_c)
        # The position before completion token j is the sample's (n_p - 1 + j)-th.
        gather[i, :n_c] = torch.arange(start + n_p - 1, start + n_p - 1 + n_c)
    return MicroBatch(
        input_ids=torch.tensor([ids]),
        attention_mask=None,
        position_ids=torch.tensor([positions]),
        gather=gather,
        **loss,
    )


@dataclass(frozen=True)
class BatchPlan:
    """How a batch of `num_samples` flat samples is split over ranks, updates and micro-batches.

    Rank r takes the contiguous share [r * S, (r + 1) * S), S = num_samples / world_size. Each
    share is cut into `updates` equal slices; mini-batch k (one optimizer step) is the k-th
    slice of every rank. Its micro-batches are `micro_batch_size` rows in sample order, or,
    with `micro_batch_tokens` > 0, cut by token budget (`micro_batches`). Config validation
    guarantees the divisions are exact.
    """

    num_samples: int
    world_size: int
    updates: int
    micro_batch_size: int
    micro_batch_tokens: int = 0
    pack: bool = False
    """Micro-batches are packed rows: a token budget counts real tokens, not rows x longest."""

    def __post_init__(self):
        rows = 1 if self.micro_batch_tokens else self.micro_batch_size
        if self.num_samples % (self.world_size * self.updates * rows):
            raise ValueError(
                f"{self.num_samples} samples do not split into {self.world_size} ranks x "
                f"{self.updates} updates x micro-batches of {rows}"
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
        """DeepSpeed's `gradient_accumulation_steps`, which it divides each micro-batch's loss
        by: micro-batches per rank per mini-batch, or 1 under a token budget (the count varies,
        so the learner marks each mini-batch's last micro-batch itself)."""
        return 1 if self.micro_batch_tokens else self.per_rank_update // self.micro_batch_size

    def update_of(self, index: int) -> int:
        """The mini-batch (update) that flat sample `index` belongs to."""
        return (index % self.share) // self.per_rank_update

    def micro_slices(self, rank: int) -> list[tuple[int, int]]:
        """[lo, hi) flat indices of `rank`'s fixed-size micro-batches, in training order."""
        start = rank * self.share
        return [
            (lo, lo + self.micro_batch_size)
            for lo in range(start, start + self.share, self.micro_batch_size)
        ]

    def micro_batches(self, rank: int, lengths: list[int]) -> list[list[int]]:
        """Flat sample indices of `rank`'s micro-batches in training order, mini-batch by
        mini-batch (`lengths[i]` = sample i's prompt + completion tokens).

        Without a token budget: `micro_slices`. With one, each mini-batch's samples of this
        rank are sorted by length (longest first, stable) and cut greedily so that `cost` <=
        `micro_batch_tokens` (a longer sample is a micro-batch of its own).
        Every rank then uses the largest count of any rank for that mini-batch (backward and
        step are collectives): a rank with fewer splits its largest micro-batch until it has
        as many. Samples never change mini-batch, so `minibatch_counts` holds either way.
        """
        if not self.micro_batch_tokens:
            return [list(range(lo, hi)) for lo, hi in self.micro_slices(rank)]
        batches: list[list[int]] = []
        ranks = range(self.world_size)
        for k in range(self.updates):
            cuts = [self._greedy_cut(self._update_indices(r, k), lengths) for r in ranks]
            count = max(len(c) for c in cuts)
            batches += _split_to_count(cuts[rank], count, lengths, self.cost)
        return batches

    def _update_indices(self, rank: int, k: int) -> list[int]:
        """`rank`'s samples of mini-batch k."""
        start = rank * self.share + k * self.per_rank_update
        return list(range(start, start + self.per_rank_update))

    def _greedy_cut(self, indices: list[int], lengths: list[int]) -> list[list[int]]:
        """`indices` longest first, cut where one more row would exceed the token budget."""
        batches: list[list[int]] = []
        for i in sorted(indices, key=lambda i: -lengths[i]):
            last = batches[-1] if batches else []
            if last and self.cost(last + [i], lengths) <= self.micro_batch_tokens:
                last.append(i)
            else:
                batches.append([i])
        return batches

    def cost(self, batch: list[int], lengths: list[int]) -> int:
        """Positions a micro-batch of longest-first `batch` computes: its tokens when packed,
        else rows x longest row."""
        if self.pack:
            return sum(lengths[i] for i in batch)
        return len(batch) * lengths[batch[0]]

    def minibatch_counts(self, tokens: list[int], index: int) -> tuple[float, float]:
        """Loss tokens and sequences with any loss token in the mini-batch that holds flat
        sample `index`, over every rank (`tokens[i]` = sample i's loss tokens)."""
        k = self.update_of(index)
        members = [tokens[i] for r in range(self.world_size) for i in self._update_indices(r, k)]
        return float(sum(members)), float(sum(n > 0 for n in members))


def _split_to_count(
    batches: list[list[int]], count: int, lengths: list[int], cost
) -> list[list[int]]:
    """Split the micro-batch with the most rows (then the highest `cost`; the first of equals)
    into two halves in its place until there are `count`; order is kept. Needs `count` <= the
    number of samples."""
    batches = list(batches)

    def size(j: int) -> tuple[int, int]:
        return len(batches[j]), cost(batches[j], lengths)

    while len(batches) < count:
        j = max(range(len(batches)), key=size)
        half = (len(batches[j]) + 1) // 2
        batches[j : j + 1] = [batches[j][:half], batches[j][half:]]
    return batches


@dataclass
class RankBatch:
    """A batch as one rank trains on it: how the whole batch is split, the loss tokens of every
    sample (each rank holds the whole batch, so loss normalisers count all of it) and this
    rank's share collated into micro-batches."""

    plan: BatchPlan
    micro_indices: list[list[int]]
    """This rank's micro-batches as flat sample indices, in training order."""
    micro: list[MicroBatch]
    """`micro_indices` collated, one each."""
    loss_tokens: list[int]  # [P * G]
    """Each sample's tokens that enter the loss (0 for a sample that does not)."""

    def minibatch_counts(self, i: int) -> tuple[float, float]:
        """Loss tokens and sequences with any, over all ranks, in micro-batch i's mini-batch."""
        return self.plan.minibatch_counts(self.loss_tokens, self.micro_indices[i][0])

    def ends_minibatch(self, i: int) -> bool:
        """Micro-batch i is its mini-batch's last on this rank (the optimizer steps after it)."""
        if i + 1 == len(self.micro_indices):
            return True
        update = self.plan.update_of
        return update(self.micro_indices[i][0]) != update(self.micro_indices[i + 1][0])


def rank_batch(samples: list[FlatSample], plan: BatchPlan, rank: int, pad_id: int) -> RankBatch:
    """`samples` (the whole batch, flat) with `rank`'s micro-batches under `plan` collated."""
    lengths = [len(s.prompt_ids) + len(s.completion_ids) for s in samples]
    micro_indices = plan.micro_batches(rank, lengths)
    make = pack if plan.pack else collate
    micro = [make([samples[i] for i in ids], pad_id) for ids in micro_indices]
    loss_tokens = [s.loss_tokens for s in samples]
    return RankBatch(plan, micro_indices, micro, loss_tokens)
