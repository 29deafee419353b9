"""Token log-probabilities and entropies from the last hidden state, through the output head a
chunk of positions at a time, so the [B, C, V] logits never exist at once.

With a vocabulary of 49k (SmolLM2) to 152k (Qwen) the logits and their softmax dominate the
learner's activation memory: at 4k completion tokens a sequence's fp32 logits alone take 0.8 to
2.5 GB, and the loss keeps several tensors of that size for backward. Here each chunk's logits
are made, reduced to [chunk] log-probabilities and entropies, and dropped; with gradients on,
each chunk is an activation checkpoint (`torch.utils.checkpoint`), so backward remakes one
chunk's logits at a time. The gradient math is unchanged (same functions, `learner/grpo.py`);
the cost is one more pass of the head in backward.

`completion_token_stats` is what the learner calls for every pass (policy, old and reference
log-probabilities). Guarantees: `chunked_token_stats` equals `token_logprobs` and
`entropy_from_logits` of the full logits, values and gradients, to float rounding. `head_of`
finds the decoder and output head only of model types whose logits are exactly
`lm_head(hidden)` (`PLAIN_HEAD_MODELS`); for any other (logit scaling or soft-capping) it
returns None and the full logits are used.
Liger Kernel's fused linear cross-entropy is the GPU kernel of this idea; it fixes the loss to
cross-entropy, while GRPO's gradient with respect to each log-probability comes from the policy
loss after it, so the chunks are checkpointed instead.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from learner import grpo

PLAIN_HEAD_MODELS = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "olmo", "olmo2", "smollm3"}
)
"""Model types whose causal-LM logits are `lm_head(last hidden state)` with nothing after."""


def head_of(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """`(decoder, head)` of a causal LM (a DeepSpeed engine's or PEFT model's underlying one
    included), or None when its logits are not plainly `head(decoder(...))`."""
    model = getattr(model, "module", model)  # a DeepSpeed engine
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    return model.get_decoder(), model.get_output_embeddings()


def chunked_token_stats(
    hidden: torch.Tensor,  # [B, C, H] last hidden state at the column before each target
    head: torch.nn.Module,  # [H] -> [V]
    targets: torch.Tensor,  # [B, C] token ids
    temperature: float,
    chunk_tokens: int,
    entropy: str = "none",  # "none", "value" (no gradient) or "grad"
) -> tuple[torch.Tensor, torch.Tensor | None]:  # [B, C] log-probs, [B, C] entropies or None
    """Log-probabilities of `targets` (and entropies) under softmax(head(hidden) / temperature),
    `chunk_tokens` positions at a time."""
    b, c, h = hidden.shape
    flat_hidden, flat_targets = hidden.reshape(b * c, h), targets.reshape(b * c)

    def stats(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(x).unsqueeze(0)  # [1, n, V]
        logp, ent = grpo.token_stats(logits, t.unsqueeze(0), temperature, entropy)  # [1, n]
        return logp[0], logp.new_zeros(()) if ent is None else ent[0]

    logps, entropies = [], []
    for start in range(0, b * c, chunk_tokens):
        x, t = flat_hidden[start : start + chunk_tokens], flat_targets[start : start + chunk_tokens]
        # One chunk would be remade in backward while every other activation is still held:
        # no lower peak, only more work, so it is not checkpointed.
        if torch.is_grad_enabled() and b * c > chunk_tokens:
            logp, ent = checkpoint(stats, x, t, use_reentrant=False)
        else:
            logp, ent = stats(x, t)
        logps.append(logp)
        entropies.append(ent)
    logp = torch.cat(logps).reshape(b, c)
    if entropy == "none":
        return logp, None
    return logp, torch.cat(entropies).reshape(b, c)


def completion_token_stats(
    model: torch.nn.Module,  # a causal LM, a DeepSpeed engine or PEFT model of one
    inputs: dict[str, torch.Tensor],  # input_ids, position_ids (, attention_mask): [R, L]
    targets: torch.Tensor,  # [B, C] completion tokens
    temperature: float,
    chunk_tokens: int,  # 0: full logits
    entropy: str = "none",  # "none", "value" (no gradient) or "grad"
    gather: torch.Tensor | None = None,  # [B, C] packed rows: flat index into [R * L]
) -> tuple[torch.Tensor, torch.Tensor | None]:  # [B, C] log-probs, [B, C] entropies or None
    """Log-probabilities of the completion tokens (and entropies) under
    softmax(logits / temperature). Padded rows (`gather` None): the completions are the last C
    columns, and the head and the softmax run on those only. Packed rows: the positions are
    picked with `gather`. With `chunk_tokens` (where `head_of(model)` allows) the head runs a
    chunk of positions at a time, else on full logits."""
    columns = targets.shape[1]
    parts = head_of(model) if chunk_tokens or gather is not None else None
    # No KV cache: nothing is decoded, and with one transformers ignores packed positions.
    inputs = {**inputs, "use_cache": False}
    if parts is not None:
        # The model's own forward, so a DeepSpeed engine's backward hooks sit on its outputs;
        # the last hidden state is after the final norm: the head's input.
        last = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        if gather is not None:
            hidden = last.reshape(-1, last.shape[-1])[gather]  # [B, C, H]
        else:
            hidden = last[:, -columns - 1 : -1]  # [B, C, H]: the column before each target
        chunk = chunk_tokens or hidden.shape[0] * hidden.shape[1]
        return chunked_token_stats(hidden, parts[1], targets, temperature, chunk, entropy)
    if gather is not None:  # a head this module does not know: every position's logits
        logits = model(**inputs).logits
        logits = logits.reshape(-1, logits.shape[-1])[gather]  # [B, C, V]
    else:
        logits = model(**inputs, logits_to_keep=columns + 1).logits[:, :-1]  # [B, C, V]
    return grpo.token_stats(logits, targets, temperature, entropy)
