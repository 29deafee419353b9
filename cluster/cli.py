"""The `cohort` command line (also `python -m cluster`, what a Ray job runs).

Commands: `train CONFIG [key=value ...]` runs an experiment; `config CONFIG [key=value ...]`
prints the resolved config with every field's documentation. More commands (eval, export,
plot, doctor) arrive with the datasets/CLI issue.
"""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError, documented_yaml, load_config

EXAMPLES = """examples:
  cohort train configs/demo.yaml
  cohort train configs/demo.yaml rollout.group_size=4 trainer.steps=5
  cohort config configs/demo.yaml learner.lr=3e-6
  python -m cluster train configs/smoke.yaml      (what `ray job submit` runs)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cohort", description="GRPO training of language models on Ray, vLLM and DeepSpeed.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("train", "run a GRPO experiment from a YAML config"),
        ("config", "print the resolved config with each field's documentation"),
    ]:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        p.add_argument("config", help="experiment YAML, e.g. configs/demo.yaml")
        p.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.steps=5")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"cohort: config error: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(documented_yaml(cfg))
        return 0
    from cluster.ray_setup import secure_local_defaults

    secure_local_defaults(cfg)  # before the driver imports ray
    from cluster.data import DataError
    from cluster.driver import train
    from cluster.health import RunStopped

    try:
        train(cfg)
    except (ConfigError, DataError) as e:
        print(f"cohort: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"cohort: run stopped: {e}", file=sys.stderr)
        return 3
    return 0
