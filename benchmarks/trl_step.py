"""Step time of Hugging Face TRL's `GRPOTrainer` on the reference workload of `benchmarks/step.py`.

Workload: the demo model (SmolLM2-135M-Instruct, float32), P=8 prompts x G=8 completions per
optimizer step (micro-batches of 16, 4 accumulation steps, one generation per step), up to 64 new
tokens, temperature 1.0, beta 0 (no reference model), lr 2e-5, the demo's arithmetic prompts in
the order Cohort's run draws them, and a reward of 1.0 when the last number in the completion
equals the sum. Generation is TRL's default path: `transformers` `generate` on the policy
model, in the training process (no vLLM). Gradient checkpointing off, as in Cohort's run (TRL
turns it on by default; `--gradient-checkpointing` restores that). TRL's own defaults otherwise
(loss type, clipping epsilon 0.2, grad-norm clip 1.0, AdamW).

TRL is not a Cohort dependency: it runs from its own virtual environment. Setup, once:

    python3 -m venv /tmp/trl-venv
    /tmp/trl-venv/bin/pip install torch==2.13.0
    /tmp/trl-venv/bin/pip install trl datasets accelerate transformers pyyaml math-verify
    # the demo model folder is built once by Cohort's own venv (converted from a GGUF):
    .venv/bin/python -c "import cluster.models as m; m.resolve_model('smollm2-135m-instruct')"

Tested with trl 1.16.0, transformers 5.24.0, accelerate 1.15.0, datasets 5.2.0, torch 2.13.0+cpu.
Run from the repository root:

    /tmp/trl-venv/bin/python benchmarks/trl_step.py --steps 3

It imports only Cohort's light modules (`core.config`, `cluster.data`, `cluster.models`:
pyyaml and transformers) to build the same prompts. Each optimizer step (generation, reward,
forward/backward of every micro-batch, optimizer step) is timed from the trainer's
`on_step_begin` to its `on_step_end`; the first step is a warm-up and is not counted. It
prints the seconds of each step and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# A number as the demo's reward reads it (`reward/builtin.py`: `_NUMBER`): optional minus,
# digits (thousands commas allowed), optional decimals; not starting right after a digit or dot.
_NUMBER_RE = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def last_number_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 where the last number in the completion equals the reference answer, else 0.0 (the
    demo's `math_answer` on completions without `\\boxed{}` or `<answer>` tags)."""
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        numbers = _NUMBER_RE.findall(text)
        try:
            ok = bool(numbers) and float(numbers[-1].replace(",", "")) == float(gold)
        except ValueError:
            ok = False
        rewards.append(1.0 if ok else 0.0)
    return rewards


def demo_prompts(config: str) -> tuple[str, list, int]:
    """The demo's model folder, its training prompts in the order Cohort's run draws them
    (first epoch), and the seed."""
    from transformers import AutoTokenizer

    from cluster.data import PromptStream, load_datasets
    from cluster.models import resolve_model
    from core.config import load_config

    cfg = load_config(config)
    try:
        model_dir = resolve_model(cfg.model.path)
    except ImportError as e:  # the GGUF conversion needs Cohort's venv
        sys.exit(
            f"{e}\nbuild the model folder once with Cohort's venv: .venv/bin/python -c \"from "
            f"cluster.models import resolve_model; resolve_model('{cfg.model.path}')\""
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        train, _ = load_datasets(cfg.data, tokenizer, Path(tmp))
    stream = PromptStream(train, cfg.trainer.seed, cfg.data.shuffle)
    return model_dir, stream.next_batch(len(train)), cfg.trainer.seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="steps run; the first is warm-up")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--num-generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=16, help="completions per micro-batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default")
    parser.add_argument("--config", default="configs/demo.yaml")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is a warm-up)")
    completions = args.prompts * args.num_generations
    micro = min(args.micro_batch, completions)
    if completions % micro:
        parser.error(f"--micro-batch {micro} must divide {completions} completions per step")

    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    os.chdir(REPO)
    model_dir, prompts, seed = demo_prompts(args.config)
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p.text}] for p in prompts],
            "answer": [p.answer for p in prompts],
        }
    )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.logs: dict[int, dict] = {}
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.setdefault(state.global_step, {}).update(logs or {})

    workload = (
        f"SmolLM2-135M-Instruct float32, {args.prompts} prompts x {args.num_generations} "
        f"completions/step, max {args.max_completion_length} new tokens, temperature 1.0, "
        f"micro-batch {micro} x {completions // micro} accumulation, beta 0, lr 2e-5, "
        f"{threads} torch threads, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}"
    )
    print(f"TRL {trl.__version__} GRPOTrainer: {workload}; {args.steps} steps (step 1 is warm-up)")
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=completions // micro,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            temperature=1.0,
            top_p=1.0,
            beta=0.0,
            num_iterations=1,
            learning_rate=2e-5,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            bf16=False,
            gradient_checkpointing=args.gradient_checkpointing,
            fp16=False,
            model_init_kwargs={"dtype": "float32"},
            use_vllm=False,
            shuffle_dataset=False,  # the dataset is already in Cohort's draw order
            seed=seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )
        trainer = GRPOTrainer(
            model=model_dir,
            reward_funcs=last_number_reward,
            args=config,
            train_dataset=dataset,
            callbacks=[timer],
        )
        trainer.train()

    for step, seconds in enumerate(timer.seconds, start=1):
        logs = timer.logs.get(step, {})
        extra = ", ".join(
            f"{key.split('/')[-1]} {logs[key]:.3g}"
            for key in ("reward", "completions/mean_length")
            if isinstance(logs.get(key), (int, float))
        )
        warm = " (warm-up)" if step == 1 else ""
        print(f"step {step}: {seconds:.2f} s{warm}" + (f"; {extra}" if extra else ""))
    measured = timer.seconds[1:]
    result = {
        "trl_version": trl.__version__,
        "step_s": sum(measured) / len(measured),
        "steps": len(measured),
        "generation": "transformers",
        "workload": workload,
        "step_seconds": timer.seconds,
        "device": str(trainer.accelerator.device),
        "torch_threads": threads,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
