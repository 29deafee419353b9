"""Methods vLLM mixes into its worker (`worker_extension_cls`), reached via `collective_rpc`.

The name must not be `update_weights`: vLLM's worker already has that method (its native
weight-transfer API) and refuses to start.
"""

from __future__ import annotations


class WeightReceiver:
    def cohort_load_weights(self, refs: list) -> None:
        """Pull weight buckets from Ray's object store one at a time into vLLM's in-place
        layerwise reload (names and dtypes as in a Hugging Face checkpoint)."""
        import ray

        def weights():
            for ref in refs:
                yield from ray.get(ref).items()

        self.reload_weights(weights_iterator=weights(), is_checkpoint_format=True)
        self.cohort_refresh_tied_head()

    def cohort_weights_checksum(self) -> str:
        """SHA-256 over the model's parameters and buffers (name, dtype, bytes), in name order."""
        import hashlib

        import torch

        digest = hashlib.sha256()
        model = self.model_runner.get_model()
        state = dict(model.named_parameters()) | dict(model.named_buffers())
        for name in sorted(state):
            t = state[name].detach().cpu().contiguous().reshape(-1)  # 0-dim buffers too
            digest.update(name.encode() + str(t.dtype).encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def cohort_refresh_tied_head(self) -> None:
        """A head tied to the input embedding receives no checkpoint weight, so the reload does
        not re-process it; on CPU it keeps a packed copy of the OLD embedding for its matmul
        (found by the weight-push parity test). Re-tie and re-pack it from the new embedding
        (after any in-place reload: `object_store`'s, or a weight-transfer engine's)."""
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if head is None or embed is None or not model.config.tie_word_embeddings:
            return
        head.weight = embed.weight
        process = getattr(head.quant_method, "process_weights_after_loading", None)
        if process is not None:
            process(head)
