"""Config sections `learner` and `algorithm`: the DeepSpeed ranks and the GRPO loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from core.choices import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    RATIO_LEVELS,
    SAMPLER_CORRECTIONS,
    STD_NORMALIZATIONS,
)
from core.config.checks import require

if TYPE_CHECKING:
    from core.config.run import Config


def parse_cores(spec: str) -> list[int]:
    """`"0,2-3"` -> [0, 2, 3]; empty -> []. Raises ValueError on anything else."""
    cores: list[int] = []
    for part in filter(None, spec.replace(" ", "").split(",")):
        lo, _, hi = part.partition("-")
        cores += range(int(lo), int(hi or lo) + 1)
    return cores


LLAMA_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""The attention and MLP projections of Llama-, Qwen- and Mistral-style models."""
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's `max_lora_rank` takes; it serves adapters of any rank up to it."""


@dataclass
class LoraConfig:
    rank: int = 0
    """LoRA rank r: train rank-r adapters on the frozen base weights (PEFT) instead of all the
    weights; 0 = full fine-tuning. With LoRA the KL reference is the base model with the adapters
    switched off (no second copy), and the engines get the merged weights."""
    alpha: float = 0
    """Scale of the adapters' update (alpha / rank); 0 = 2 x rank."""
    dropout: float = 0.0
    """Dropout on the adapters' input while training. Above 0 the learner's log-probabilities
    are noisy against the sampler's (the engines run without it), which the clipped ratio sees
    as off-policy drift; 0 is usual for RL."""
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR_LAYERS))
    """Names of the linear layers that get adapters (the last part of the module name), or
    `[all-linear]` for every linear layer but the output head."""
    push: Literal["merged", "adapter"] = "merged"
    """What the engines get after each update: `merged`, the base weights plus the adapters'
    update, on any transport; `adapter`, the adapters alone (a few percent of the bytes), served
    by vLLM's LoRA support on the unchanged base (the engine is started with `enable_lora`;
    pushed through Ray's object store whatever `cluster.weight_transport` says). Generation
    with an adapter costs some speed: docs/speed.md."""

    def check(self, key: str) -> None:
        require(self.rank >= 0, key + ".rank", self.rank, "must be >= 0 (0 = no LoRA)")
        require(self.alpha >= 0, key + ".alpha", self.alpha, "must be >= 0 (0 = 2 x rank)")
        require(0 <= self.dropout < 1, key + ".dropout", self.dropout, "must be in [0, 1)")
        require(
            bool(self.target_modules) or not self.rank,
            key + ".target_modules",
            self.target_modules,
            "name at least one layer, e.g. [q_proj, v_proj], or [all-linear]",
        )
        require(
            self.push == "merged" or self.rank <= max(VLLM_LORA_RANKS),
            key + ".rank",
            self.rank,
            f"vLLM serves adapters up to rank {max(VLLM_LORA_RANKS)}; push merged weights "
            f"({key}.push=merged) or lower the rank",
        )

    @property
    def scale_alpha(self) -> float:
        return self.alpha or 2.0 * self.rank


@dataclass
class LearnerConfig:
    world_size: int = 1
    """Data-parallel DeepSpeed ranks, one Ray actor each."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3 (which also shards the KL
    reference model over the ranks instead of a full copy on each)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """`adamw`, or `sgd` (plain, no momentum: the update is -lr x gradient; for gradient checks
    and ablations)."""
    lr: float = 1e-5
    """Peak learning rate."""
    warmup_steps: int = 0
    """Linear warm-up of the learning rate over this many optimizer steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass on one rank; gradients accumulate across them."""
    micro_batch_tokens: int = 0
    """When > 0, micro-batches are cut by token budget instead: each rank's mini-batch is sorted
    by length and split so that a micro-batch's padded tokens (rows x longest row) stay within
    this budget where possible (less padding, fewer passes); every rank uses the same number of
    micro-batches. 0 = fixed `micro_batch_size` rows in sample order."""
    pack_sequences: bool = False
    """Each micro-batch is one row of its samples back to back, positions restarting per
    sample and attention kept within each (transformers reads the boundaries from the
    positions: flash-attention varlen on GPU, a block-diagonal mask with sdpa), so no padding
    is computed; with `micro_batch_tokens` the budget counts real tokens. Loss and gradient
    equal the padded layout's. See docs/speed.md for when it is faster on a CPU."""
    logprob_chunk_tokens: int = 1024
    """Token log-probabilities and entropies are computed from the last hidden state through
    the output head this many positions at a time (`learner/head.py`), so the [B, C, V] logits
    never exist at once. A micro-batch with more completion positions is split into
    checkpointed chunks, each remade in backward: at 4k tokens per sequence SmolLM2's peak
    learner memory falls by a third to a half for about 2% more time; one with no more runs
    in one pass, as fast as full logits (on the demo's short micro-batches the recomputation
    would cost about 7% of the train phase; docs/speed.md). For model types whose logits are
    plainly head(hidden) (llama, qwen2/3, mistral, olmo, smollm3); others use full logits.
    0 = full logits always."""
    num_threads: int = 0
    """torch CPU threads per learner rank (0 = the machine's cores / world size, or the number of
    `cpu_cores` when set)."""
    cpu_cores: str = ""
    """CPU only: cores the learner ranks are pinned to, e.g. `1` or `4-7` (empty = not pinned).
    With `rollout.omp_threads_bind` on other cores this disaggregates the engine and the learner
    the way separate GPUs do on a cluster."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters instead of full fine-tuning (`learner.lora.rank` > 0)."""

    def check(self, cfg: Config) -> None:
        self.lora.check("learner.lora")
        require(
            not (self.lora.rank and self.lora.push == "adapter")
            or cfg.cluster.weight_transport in ("auto", "object_store"),
            "learner.lora.push",
            self.lora.push,
            f"adapters go through Ray's object store, not cluster.weight_transport="
            f"{cfg.cluster.weight_transport}; set that to auto, or push merged weights",
        )
        require(self.world_size >= 1, "learner.world_size", self.world_size, "must be >= 1")
        require(
            self.zero_stage in (0, 1, 2, 3), "learner.zero_stage", self.zero_stage, "must be 0-3"
        )
        require(self.lr > 0, "learner.lr", self.lr, "must be > 0")
        require(len(self.betas) == 2, "learner.betas", self.betas, "needs two values")
        require(
            self.micro_batch_size >= 1, "learner.micro_batch_size", self.micro_batch_size, ">= 1"
        )
        require(
            self.logprob_chunk_tokens >= 0,
            "learner.logprob_chunk_tokens",
            self.logprob_chunk_tokens,
            "must be >= 0 (0 = full logits)",
        )
        require(
            self.micro_batch_tokens >= 0,
            "learner.micro_batch_tokens",
            self.micro_batch_tokens,
            "must be >= 0 (0 = fixed micro_batch_size)",
        )
        try:
            parse_cores(self.cpu_cores)
        except ValueError:
            require(
                False, "learner.cpu_cores", self.cpu_cores, "use core numbers like 1, 4-7 or 0,2"
            )
        require(
            not self.cpu_cores or not cfg.cluster.use_gpu,
            "learner.cpu_cores",
            self.cpu_cores,
            "is for CPU runs; on GPU each rank owns its GPU",
        )
        # Every rank trains on the same number of whole micro-batches in every mini-batch, so
        # that averaging micro-batch losses and ranks' gradients equals the batch mean exactly.
        r, updates = cfg.rollout, cfg.algorithm.updates_per_batch
        per_update = r.prompts_per_step * r.group_size // updates
        split = self.world_size * (1 if self.micro_batch_tokens else self.micro_batch_size)
        require(
            (r.prompts_per_step * r.group_size) % updates == 0 and per_update % split == 0,
            "learner.micro_batch_size",
            self.micro_batch_size,
            f"prompts_per_step * group_size / updates_per_batch = {per_update} samples per "
            f"update must divide evenly by world_size * micro_batch_size = {split}",
        )


@dataclass
class AlgorithmConfig:
    advantage_estimator: Literal[ADVANTAGE_ESTIMATORS] = "grpo"
    """How a sample's advantage comes from its group's rewards: `grpo` (minus the group mean,
    divided by a std, see std_normalization), `dr_grpo` (minus the group mean only), `rloo`
    (minus the mean of the other samples), `reinforce_pp_baseline` (minus the group mean, then
    whitened over the batch)."""
    std_normalization: Literal[STD_NORMALIZATIONS] = "group"
    """For `grpo`: divide by the group's reward std (the paper), the batch's, or not at all."""
    std_eps: float = 1e-6
    """Added to the std before dividing: (r - mean) / (std + eps)."""
    loss_aggregation: Literal[LOSS_AGGREGATIONS] = "seq-mean-token-mean"
    """How token losses become the batch loss: `token-mean` (every token of the mini-batch
    weighs the same; exact across micro-batches and ranks; DAPO), `seq-mean-token-mean` (each
    sequence's token mean, then the mean over sequences; GRPO), `seq-mean-token-sum-norm`
    (token sums divided by sequences x loss_norm_tokens; Dr. GRPO)."""
    loss_norm_tokens: int = 0
    """The constant length normaliser of `seq-mean-token-sum-norm` (0 = rollout.max_new_tokens)."""
    ratio_level: Literal[RATIO_LEVELS] = "token"
    """Importance ratio pi / pi_old per token (PPO, GRPO) or per sequence as the geometric mean
    of its tokens' ratios (GSPO; use small clip_eps, e.g. 3e-4 / 4e-4)."""
    clip_eps_low: float = 0.2
    """PPO clip: the ratio is kept above 1 - clip_eps_low."""
    clip_eps_high: float = 0.2
    """PPO clip: the ratio is kept below 1 + clip_eps_high (DAPO's clip-higher raises it)."""
    dual_clip: float = 0.0
    """Dual clip c > 1 bounds a negative-advantage token's loss at -c * A (0 = off; 3 is usual)."""
    kl_coef: float = 0.0
    """Weight of KL(policy || reference); 0 loads no reference model."""
    kl_estimator: Literal[KL_ESTIMATORS] = "k3"
    """Per-token KL estimate: k1 = log ratio, k2 = log ratio^2 / 2, k3 = e^-x - 1 + x (GRPO)."""
    kl_in: Literal["loss", "reward"] = "loss"
    """Apply the KL as a loss term (GRPO) or subtract kl_coef x the sequence's summed KL from
    its reward before advantages (PPO-style reward penalty)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0 = entropy is only logged)."""
    updates_per_batch: int = 1
    """Optimizer steps per generated batch (the batch is split into this many mini-batches).
    Old log-probabilities are computed once before the first, so the ratio departs from 1 after
    it. With 1 they equal the current ones and are not recomputed."""
    sampler_correction: Literal[SAMPLER_CORRECTIONS] = "none"
    """Correct for vLLM's and the learner's probabilities differing: `token_truncate` weights each
    token's loss by min(pi_learner / pi_vllm, correction_upper) (TIS); `sequence_mask` drops
    sequences whose product of ratios is outside [correction_lower, correction_upper]."""
    correction_upper: float = 2.0
    """Upper threshold of the sampler correction."""
    correction_lower: float = 0.5
    """Lower threshold of `sequence_mask`."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose reward scores (before the overlong penalty) are
    all equal and keep sending prompts until, in prompt order, prompts_per_step groups have a
    spread (then what still runs is aborted); when the prompt budget runs out first, the batch
    is filled with the dropped groups."""
    max_generation_rounds: int = 3
    """The prompt budget of a step with dynamic_sampling: at most max_generation_rounds *
    prompts_per_step prompts (veRL's max_num_gen_batches)."""
    overlong_buffer: int = 0
    """DAPO soft overlong punishment: the last this-many tokens before rollout.max_new_tokens
    cost up to overlong_factor reward, linearly (0 = off)."""
    overlong_factor: float = 1.0
    """Reward penalty of a completion that reaches rollout.max_new_tokens (with overlong_buffer)."""
    mask_truncated: bool = False
    """Leave completions cut at max_new_tokens out of the loss (DAPO overlong filtering); their
    rewards still count in their group's baseline."""

    def check(self, cfg: Config) -> None:
        require(
            self.updates_per_batch >= 1,
            "algorithm.updates_per_batch",
            self.updates_per_batch,
            ">= 1",
        )
        require(self.kl_coef >= 0, "algorithm.kl_coef", self.kl_coef, "must be >= 0")
        require(
            self.clip_eps_low >= 0 and self.clip_eps_high >= 0,
            "algorithm.clip_eps_low/high",
            (self.clip_eps_low, self.clip_eps_high),
            "must be >= 0",
        )
        require(self.clip_eps_low < 1, "algorithm.clip_eps_low", self.clip_eps_low, "must be < 1")
        require(
            self.dual_clip == 0 or self.dual_clip > 1,
            "algorithm.dual_clip",
            self.dual_clip,
            "must be 0 (off) or > 1",
        )
        require(
            self.std_normalization == "group" or self.advantage_estimator == "grpo",
            "algorithm.std_normalization",
            self.std_normalization,
            f"is for advantage_estimator grpo only, not {self.advantage_estimator!r}",
        )
        require(
            self.loss_norm_tokens >= 0, "algorithm.loss_norm_tokens", self.loss_norm_tokens, ">= 0"
        )
        require(self.entropy_coef >= 0, "algorithm.entropy_coef", self.entropy_coef, "must be >= 0")
        require(
            0 < self.correction_lower < 1 < self.correction_upper,
            "algorithm.correction_upper",
            (self.correction_lower, self.correction_upper),
            "need 0 < correction_lower < 1 < correction_upper",
        )
        require(
            self.max_generation_rounds >= 1,
            "algorithm.max_generation_rounds",
            self.max_generation_rounds,
            "must be >= 1",
        )
        max_new_tokens = cfg.rollout.max_new_tokens
        require(
            0 <= self.overlong_buffer < max_new_tokens,
            "algorithm.overlong_buffer",
            self.overlong_buffer,
            f"must be in [0, max_new_tokens={max_new_tokens})",
        )
        require(
            self.overlong_factor >= 0, "algorithm.overlong_factor", self.overlong_factor, ">= 0"
        )
