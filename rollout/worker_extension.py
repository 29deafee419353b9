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
