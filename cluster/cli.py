"""The `cohort` command line (also `python -m cluster`, what a Ray job runs).

Commands: `train` runs an experiment; `eval` measures pass@1/pass@k of a model or a run on the
eval set; `export` writes a run's policy as a Hugging Face folder; `config` prints the resolved
config with every field's documentation (or the Markdown reference); `plot` draws a run's
curves; `doctor` checks the installation. Exit codes: 0 done, 1 failed (doctor: something
required is missing), 2 bad config, data or arguments, 3 a training run stopped (resumable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import ConfigError, documented_yaml, load_config

COMMANDS = {
    "train": (
        "run a GRPO experiment from a YAML config",
        """examples:
  cohort train configs/demo.yaml
  cohort train configs/demo.yaml rollout.group_size=4 trainer.steps=5
  cohort train configs/smoke.yaml logging.tensorboard=true
  python -m cluster train configs/smoke.yaml      (what `ray job submit` runs)
""",
    ),
    "eval": (
        "pass@1 and pass@k on the config's eval set (vLLM), saved as JSON",
        """examples:
  cohort eval configs/demo.yaml                    the base model (before training)
  cohort eval runs/demo                            the newest run's trained policy
  cohort eval runs/demo/20250101-120000 --checkpoint latest --k 8
  cohort eval configs/demo.yaml --checkpoint path/to/hf_folder data.eval.size=32
""",
    ),
    "export": (
        "write a run's trained policy as a Hugging Face folder",
        """examples:
  cohort export runs/demo                          newest run: policy/ or latest checkpoint
  cohort export runs/demo/20250101-120000 --out models/demo-grpo
  cohort export runs/demo/20250101-120000 --checkpoint step_000010
  cohort export runs/lora --adapter --out models/lora-adapter   a LoRA run's adapters (PEFT)
""",
    ),
    "config": (
        "print the resolved config with each field's documentation",
        """examples:
  cohort config configs/demo.yaml learner.lr=3e-6
  cohort config --reference > docs/config.md      the Markdown reference of every key
""",
    ),
    "plot": (
        "draw a run's curves (reward, accuracy, length, KL, clip, time) as a PNG",
        """examples:
  cohort plot runs/demo                            newest run -> <run>/plots/curves.png
  cohort plot runs/demo/20250101-120000 --out curves.png
""",
    ),
    "doctor": (
        "check versions, CPU/GPU and Ray reachability; say how to fix",
        """examples:
  cohort doctor
  RAY_ADDRESS=ray://head:10001 cohort doctor
""",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cohort",
        description="GRPO training of language models on Ray, vLLM and DeepSpeed.",
        epilog=f"{COMMANDS['train'][1]}\n"
        "`cohort COMMAND --help` shows each command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = {}
    for name, (text, examples) in COMMANDS.items():
        p[name] = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    overrides = {"nargs": "*", "help": "dotted overrides such as trainer.steps=5"}
    p["train"].add_argument("config", help="experiment YAML, e.g. configs/demo.yaml")
    p["train"].add_argument("overrides", **overrides)
    p["config"].add_argument("config", nargs="?", help="experiment YAML, e.g. configs/demo.yaml")
    p["config"].add_argument("overrides", **overrides)
    p["config"].add_argument(
        "--reference", action="store_true", help="print the Markdown reference of every config key"
    )
    e = p["eval"]
    e.add_argument("target", help="experiment YAML, or a run folder (runs/<exp>[/<run id>])")
    e.add_argument("overrides", **overrides)
    e.add_argument(
        "--checkpoint",
        default="auto",
        help="base | policy | latest | step_N | a checkpoint or Hugging Face folder "
        "(default: base for a config, the run's policy for a run)",
    )
    e.add_argument("--k", type=int, default=4, help="k of pass@k (default 4)")
    e.add_argument("--n", type=int, default=0, help="samples per prompt (default: k)")
    e.add_argument("--temperature", type=float, default=0.6, help="sampling temperature")
    e.add_argument("--limit", type=int, default=0, help="evaluate the first N prompts only")
    e.add_argument("--out", default="", help="JSON file (default <run or output_dir>/eval/)")
    x = p["export"]
    x.add_argument("run", help="run folder, or an output folder (its newest run is taken)")
    x.add_argument("--out", default="", help="destination folder (default <run>/export)")
    x.add_argument(
        "--checkpoint",
        default="auto",
        help="auto (policy/ if saved, else latest) | policy | latest | step_N",
    )
    x.add_argument(
        "--adapter",
        action="store_true",
        help="LoRA runs: the adapters alone as a PEFT folder (default: merged into the base)",
    )
    p["plot"].add_argument("run", help="run folder, or an output folder (newest run)")
    p["plot"].add_argument("--out", default="", help="PNG file (default <run>/plots/curves.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMAND_FUNCTIONS[args.command](args)
    except ConfigError as e:
        print(f"cohort: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError) as e:
        print(f"cohort: {e}", file=sys.stderr)
        return 2


def cmd_config(args) -> int:
    if args.reference:
        from cluster.config_docs import config_reference

        print(config_reference(), end="")
        return 0
    if not args.config:
        print("cohort config: give a CONFIG file (or --reference)", file=sys.stderr)
        return 2
    print(documented_yaml(load_config(args.config, args.overrides)))
    return 0


def cmd_train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    from cluster.ray_setup import secure_local_defaults

    secure_local_defaults(cfg)  # before the driver imports ray
    from cluster.data import DataError
    from cluster.driver import train
    from cluster.placement import PlacementError
    from core.errors import RunStopped

    try:
        train(cfg)
    except DataError as e:  # bad input: a data file or row
        print(f"cohort: {e}", file=sys.stderr)
        if cfg.data.on_bad_row == "error":
            print(
                "cohort: fix the file or the data.* config; with data.on_bad_row=skip, malformed "
                "rows are skipped and counted (data_report.json) instead of stopping the run",
                file=sys.stderr,
            )
        return 2
    except PlacementError as e:  # bad input: a cluster too small for the config
        print(f"cohort: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"cohort: run stopped: {e}", file=sys.stderr)
        return 3
    return 0


def cmd_eval(args) -> int:
    from cluster.data import DataError
    from cluster.eval import run_eval
    from core.errors import RunStopped

    try:
        run_eval(
            args.target,
            args.overrides,
            args.checkpoint,
            args.k,
            args.n or args.k,
            args.temperature,
            args.out,
            args.limit,
        )
    except (DataError, ValueError) as e:
        print(f"cohort: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # a reward function failing on too many samples, say
        print(f"cohort: evaluation stopped: {e}", file=sys.stderr)
        return 3
    return 0


def cmd_export(args) -> int:
    from cluster.export import export, find_run

    run = find_run(args.run)
    try:
        out = export(
            run, Path(args.out) if args.out else run / "export", args.checkpoint, args.adapter
        )
    except ValueError as e:  # the folder failed validation; nothing was written
        print(f"cohort: export failed: {e}", file=sys.stderr)
        return 1
    loads = (
        "PeftModel.from_pretrained on the base model, vLLM's LoRARequest"
        if args.adapter
        else ("AutoModelForCausalLM.from_pretrained and vllm")
    )
    print(f"exported {run} -> {out} (loads with {loads})")
    return 0


def cmd_plot(args) -> int:
    from cluster.export import find_run
    from cluster.plot import plot_run

    out = plot_run(find_run(args.run), Path(args.out) if args.out else None)
    print(f"plot: {out}")
    return 0


def cmd_doctor(args) -> int:
    from cluster.doctor import report

    text, ok = report()
    print(text)
    return 0 if ok else 1


COMMAND_FUNCTIONS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "export": cmd_export,
    "config": cmd_config,
    "plot": cmd_plot,
    "doctor": cmd_doctor,
}
