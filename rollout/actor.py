"""The rollout actor: a Ray actor owning one in-process vLLM engine that takes groups one at a
time (continuous batching).

Guarantees: `run` adds groups to the running engine and returns as soon as at least one group
has all its n samples (or after `max_s`), so the pool can hand out more work or abort groups
while others run. Each finished `Group` carries prompt and completion token ids, text, the
log-probability of each sampled token under the sampling distribution (vLLM
`processed_logprobs`: after temperature and top-p), the finish reason and the policy version
that produced it. A group sent with a seed samples from its own generator (sample j from seed +
j), so its samples depend on the seed and the weights only, not on the engine or on what else
the engine runs. The learner divides its logits by the same temperature but does not apply
top-p, so with top-p < 1 the two distributions differ on the tail (`train/mismatch_kl` shows
how much; `algorithm.sampler_correction` corrects for it). After `load_weights` the prefix
cache is cleared, so no KV computed with old weights is reused. With `learner.lora.push=adapter`
the base weights stay and each push brings a new LoRA adapter (`load_adapter`); a group keeps
the adapter, and the version, it started with. On GPUs an engine spans
`cluster.rollout_tp` devices (vLLM's tensor parallelism over Ray). On CPU the engine runs
without chunked prefill: a prompt cut over two steps makes vLLM rewind a seeded generator,
which the CPU generator cannot (`RuntimeError: CPU Generator does not use offset`).
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass

from core.config import Config, parse_cores
from core.config.training import VLLM_LORA_RANKS
from core.records import EngineReport, Group, GroupRequest, Sample
from core.scratch import owned_temp_dir, remove_orphans


def engine_env(cfg: Config, engine_index: int = 0) -> dict[str, str]:
    """Environment a rollout actor needs before vLLM is imported."""
    env = {
        # The engine core runs inside the actor's process: starts in seconds, and weights can
        # be handed to the worker as tensors (a separate engine process receives lists).
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(cfg.rollout.kv_cache_gib))),
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }
    bind = cfg.rollout.omp_threads_bind
    if bind == "auto" and not cfg.cluster.use_gpu:
        # Split the node's cores into one block per engine (vLLM's own default binds one
        # core per engine and reserves the rest).
        cores = os.cpu_count() or 1
        per_engine = max(1, cores // cfg.cluster.rollout_engines)
        first = (engine_index % max(1, cores // per_engine)) * per_engine
        bind = f"{first}-{first + per_engine - 1}"
    if bind != "auto":
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    return env


@dataclass
class _Running:
    request: GroupRequest
    adapter: object = None
    """The LoRARequest the group was sampled with (`learner.lora.push=adapter`), else None."""
    version: int = 0
    """The policy version of that adapter."""
    steps: int = 0
    """Engine steps since it was added: each gives every sequence at most one token."""

    def tokens_left(self) -> int:
        s = self.request.sampling
        prefill = len(self.request.prompt.token_ids) if self.steps == 0 else 0
        return prefill + s.n * max(0, s.max_tokens - self.steps)


def _quiet_expected_reload_warnings() -> None:
    """vLLM's layerwise reload warns for modules that have no checkpoint weights: the rotary
    embedding (computed, not loaded) and a head tied to the input embedding (loaded with it).
    Both are expected; parity with the learner is tested (tests/integration)."""

    class Expected(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = record.getMessage()
            return not (
                "Failed to load weights" in msg
                and msg.split(":")[0] in ("RotaryEmbedding", "ParallelLMHead")
            )

    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(Expected())


class RolloutActor:
    """Wrapped with `ray.remote` by `RolloutPool`."""

    def __init__(
        self,
        cfg: Config,
        model_path: str,
        engine_index: int,
        weight_transport: str = "object_store",
    ):
        """`weight_transport`: `object_store`, or `nccl` / `ipc` / `gloo` for a weight-transfer
        engine in vLLM's factory (`gloo` is Cohort's, `core/gloo_transfer.py`), as resolved by
        the control plane."""
        env = engine_env(cfg, engine_index)
        os.environ.update(env)
        bind = env.get("VLLM_CPU_OMP_THREADS_BIND", "")
        if bind and bind not in ("auto", "all", "nobind"):
            # The engine's Python thread (scheduling, sampling) would float onto the learner's
            # cores: pin the whole process.
            cores = parse_cores(bind.replace("|", ","))
            os.sched_setaffinity(0, cores)
            # One OpenMP thread per bound core. vLLM sets the count only for engine processes
            # it spawns; this engine runs in the actor's process, where Ray set OMP_NUM_THREADS
            # to the actor's num_cpus (1 by default): one core of two in shared placement.
            # Set before vLLM replaces torch.set_num_threads with a no-op.
            import torch

            os.environ["OMP_NUM_THREADS"] = str(len(cores))
            torch.set_num_threads(len(cores))
        from vllm import LLM

        _quiet_expected_reload_warnings()

        r, c = cfg.rollout, cfg.cluster
        max_len = cfg.data.max_prompt_tokens + max(r.max_new_tokens, r.eval_max_new_tokens)
        if r.environment.enabled:  # a trajectory's turns and replies share one context
            max_len = max(max_len, r.environment.total_tokens(cfg))
        gpu_options = {}
        if weight_transport in ("nccl", "ipc", "gloo"):
            from vllm.config import WeightTransferConfig

            backend = weight_transport
            if backend == "gloo":
                from core import gloo_transfer

                gloo_transfer.register()  # the worker runs in this process (engine_env)
                backend = gloo_transfer.BACKEND
            gpu_options["weight_transfer_config"] = WeightTransferConfig(backend=backend)
        if weight_transport == "adapter":  # LoRA adapters served on the unchanged base
            rank = cfg.learner.lora.rank
            gpu_options |= {
                "enable_lora": True,
                "max_lora_rank": min(r for r in VLLM_LORA_RANKS if r >= rank),
                # Groups sampled before a push finish with the adapter they started with.
                "max_loras": 2,
            }
        if c.use_gpu:
            if c.rollout_tp > 1:
                gpu_options |= {
                    "tensor_parallel_size": c.rollout_tp,
                    "distributed_executor_backend": "ray",
                }
            if c.colocate:
                gpu_options["enable_sleep_mode"] = True
        else:  # seeded groups need whole-prompt prefills on CPU (module docstring)
            gpu_options |= {
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": max(max_len, 4096),
            }
        self.llm = LLM(
            model=model_path,
            dtype=cfg.model.rollout_dtype,
            seed=cfg.trainer.seed + engine_index,
            max_model_len=max_len,
            logprobs_mode="processed_logprobs",
            worker_extension_cls="rollout.worker_extension.WeightReceiver",
            gpu_memory_utilization=r.gpu_memory_utilization,
            enforce_eager=not c.use_gpu,  # CUDA graphs on GPU; CPU compile costs ~40 s
            **gpu_options,
        )
        self.first_transfer_rank = 1 + engine_index * c.rollout_tp
        """This engine's first worker in a weight-transfer group of the sender (rank 0) and
        every engine's workers."""
        self.use_gpu = c.use_gpu
        self.transfer_joined = False
        self.version = 0
        self.hang_s = 0.0
        self.running: dict[str, _Running] = {}
        """The engine's unfinished groups by vLLM request id."""
        self.request_ids = itertools.count()
        self.adapter = None
        """`learner.lora.push=adapter`: the LoRARequest of the latest adapter (None: the base)."""
        self.adapter_dir = ""
        """Where pushed adapters are written, made with the first (`core/scratch.py`)."""
        self.adapter_ids = itertools.count(1)

    def run(
        self, add: list[GroupRequest], abort: list[int] = (), max_s: float = 1.0
    ) -> EngineReport:
        """Drop the groups keyed `abort`, add `add`, then step the engine until a group finishes,
        none is left, or `max_s` seconds passed (calls to an actor run one at a time, so this
        is when the pool can send more work or aborts)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        dropped = [rid for rid, r in self.running.items() if r.request.key in set(abort)]
        if dropped:
            engine.abort_request(dropped)
            for rid in dropped:
                del self.running[rid]
        for req in add:
            s = req.sampling
            params = SamplingParams(
                n=s.n,
                temperature=s.temperature,
                top_p=s.top_p if s.temperature > 0 else 1.0,
                max_tokens=s.max_tokens,
                logprobs=0,
                seed=req.seed,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            rid = f"{req.key}-{next(self.request_ids)}"
            prompt = {"prompt_token_ids": req.prompt.token_ids}
            engine.add_request(rid, prompt, params, lora_request=self.adapter)
            self.running[rid] = _Running(req, adapter=self.adapter, version=self.version)
        finished, tokens = [], 0
        t0 = time.perf_counter()
        while self.running and not finished and time.perf_counter() - t0 < max_s:
            outputs = engine.step()
            for r in self.running.values():
                r.steps += 1
            for out in outputs:
                if not out.finished or out.request_id not in self.running:
                    continue
                running = self.running.pop(out.request_id)
                req = running.request
                # A whole group comes from one adapter; reloaded weights apply at once.
                version = running.version if running.adapter else self.version
                outputs_ = sorted(out.outputs, key=lambda c: c.index)
                samples = [self._sample(c, version) for c in outputs_]
                finished.append((req.key, Group(req.prompt, samples)))
                tokens += sum(len(x.completion_token_ids) for x in samples)
        if finished:
            self._drop_unused_adapters()
        load = sum(r.tokens_left() for r in self.running.values())
        return EngineReport(finished, time.perf_counter() - t0, tokens, load)

    def _sample(self, c, version: int) -> Sample:
        ids = list(c.token_ids)
        # With logprobs=0 each position's dict holds the sampled token (and nothing else).
        logprobs = [pos[tok].logprob for tok, pos in zip(ids, c.logprobs)]
        return Sample(ids, c.text, logprobs, c.finish_reason or "stop", version)

    def where(self) -> dict:
        """Where this engine runs, for the placement report: its Ray node, the cores it may use
        and torch's (OpenMP) threads."""
        import ray
        import torch

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "cores": sorted(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(),
        }

    def weights_checksum(self) -> str:
        """SHA-256 over every weight of the engine's model, in name order, and the adapter it
        serves (exact equality)."""
        digest = self.llm.collective_rpc("cohort_weights_checksum")[0]
        if self.adapter is None:
            return digest
        weights = os.path.join(self.adapter.lora_path, "adapter_model.safetensors")
        with open(weights, "rb") as f:
            return hashlib.sha256(digest.encode() + f.read()).hexdigest()

    def load_adapter(self, adapter: tuple[dict, dict], version: int) -> None:
        """`learner.lora.push=adapter`: serve `adapter` ((config, tensors), see
        `learner/export.py`; Ray resolves the pushed object reference) on the base model from
        now on, for policy `version`. Written as a PEFT folder (vLLM loads adapters from
        folders); the previous adapter is removed once no running group uses it."""
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        hang_s, self.hang_s = self.hang_s, 0.0
        config, tensors = adapter
        time.sleep(hang_s)  # fault injection (hang_in_next_load)
        # A new id for every load (a healing push repeats a version); vLLM's ids start at 1.
        lora_id = next(self.adapter_ids)
        if not self.adapter_dir:
            remove_orphans("cohort-adapters-")  # those of engines that were killed
            self.adapter_dir = owned_temp_dir("cohort-adapters-")
            atexit.register(shutil.rmtree, self.adapter_dir, ignore_errors=True)
        folder = os.path.join(self.adapter_dir, str(lora_id))
        os.makedirs(folder)
        save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump(config, f)
        request = LoRARequest(f"policy-v{version}", lora_id, folder)
        self.llm.llm_engine.add_lora(request)
        # vLLM's prefix cache is kept per adapter: nothing cached under the old one is reused.
        self.adapter, self.version = request, version
        self._drop_unused_adapters()

    def _drop_unused_adapters(self) -> None:
        """Unload the adapters that are neither the latest nor sampling a running group."""
        if self.adapter is None:
            return
        in_use = {r.adapter.lora_int_id for r in self.running.values() if r.adapter is not None}
        engine = self.llm.llm_engine
        for old in engine.list_loras() - in_use - {self.adapter.lora_int_id}:
            engine.remove_lora(old)
            shutil.rmtree(os.path.join(self.adapter_dir, str(old)), ignore_errors=True)

    def load_weights(self, refs: list, version: int) -> None:
        """Reload all weights from object-store buckets (see `WeightReceiver`)."""
        hang_s, self.hang_s = self.hang_s, 0.0
        if hang_s:  # fault injection: the first bucket arrives, then no answer
            import ray

            ray.get(refs[0])
            time.sleep(hang_s)
        self.llm.collective_rpc("cohort_load_weights", args=(refs,))
        self.llm.reset_prefix_cache()
        self.version = version

    def hang_in_next_load(self, seconds: float) -> None:
        """Fault injection (`hang_rollout`): the next weight load stops answering for `seconds`
        (`load_weights`: after receiving the first bucket; a weight-transfer group's
        `update_weights`: before joining the transfer)."""
        self.hang_s = seconds

    # vLLM's weight-transfer protocol (nccl / ipc / gloo), as the learner's `EngineClient`
    # calls it on an engine actor; each forwards to the engine's workers as vLLM's AsyncLLM.

    def init_weight_transfer_engine(self, request) -> None:
        # The sender sends every engine the same init info, with the workers' ranks starting
        # at 1 as for a single engine; vLLM adds only a worker's rank within its engine, so
        # each engine moves its workers to their own ranks in the group.
        info = dict(request.init_info)
        if "rank_offset" in info:
            info["rank_offset"] = self.first_transfer_rank
        if self.transfer_joined:  # the group is formed again (engines were restarted)
            self.llm.collective_rpc("shutdown_weight_transfer_engine")
        self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": info})
        self.transfer_joined = True

    def shutdown_weight_transfer_engine(self) -> None:
        self.llm.collective_rpc("shutdown_weight_transfer_engine")

    def start_weight_update(self) -> None:
        self.llm.collective_rpc("start_weight_update")

    def update_weights(self, request) -> None:
        hang_s, self.hang_s = self.hang_s, 0.0
        time.sleep(hang_s)  # fault injection (hang_in_next_load)
        self.llm.collective_rpc("update_weights", kwargs={"update_info": request.update_info})

    def finish_weight_update(self) -> None:
        self.llm.collective_rpc("finish_weight_update")
        if not self.use_gpu:
            self.llm.collective_rpc("cohort_refresh_tied_head")
        self.llm.reset_prefix_cache()

    def update_weight_version(self, version) -> None:
        self.version = int(version)

    def sleep(self) -> float:
        """Colocated mode: free the GPU memory (weights and KV cache) while the learner trains;
        returns how many GiB this device gained."""
        import torch

        before = torch.cuda.mem_get_info()[0]
        self.llm.sleep(level=1)
        return (torch.cuda.mem_get_info()[0] - before) / 2**30

    def wake_up(self) -> None:
        self.llm.wake_up()

    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """The engine's log-probabilities (temperature 1) of a fixed completion."""
        from vllm import SamplingParams

        if self.running:  # LLM.generate would step (and swallow) the running groups too
            raise RuntimeError("sequence_logprobs called while groups are running; wait for them")
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        ids = prompt_ids + completion_ids
        prompt = [{"prompt_token_ids": ids}]
        out = self.llm.generate(prompt, params, use_tqdm=False, lora_request=self.adapter)[0]
        positions = out.prompt_logprobs[len(prompt_ids) :]
        return [pos[tok].logprob for tok, pos in zip(completion_ids, positions)]
