"""Experiment configuration: one YAML file loaded into a tree of typed dataclasses.

Where things are:

- the sections, each with its fields (type, default, one docstring per field) and its `check`:
  `inputs.py` (`model`, `data`), `generation.py` (`rollout`, `reward`), `training.py`
  (`learner`, `algorithm`), `run.py` (`trainer`, `cluster`, `logging`, the root `Config` and
  `validate`); `checks.py` says how a section checks itself;
- `load.py`: YAML -> dotted overrides -> dataclasses -> `resolve` (the one step that fills values
  in) -> `validate` (which only reads);
- `introspect.py`: field docstrings and types, the config as YAML (`cohort config`, the run's
  config.yaml, docs/config.md);
- the valid values of options that the code implements from a table: `core/choices.py`.

Guarantees: loading rejects unknown keys, wrong types and out-of-range values with a
`ConfigError` naming the dotted key and the value. Not covered here: checks that need the
cluster (free CPUs/GPUs), which the driver does when it places actors, and `trainer.steps` from
`data.epochs`, which needs the dataset (the driver sets it before saving the run's config.yaml).
"""

from core.config.generation import (
    EnvironmentConfig,
    RewardConfig,
    RewardFunctionConfig,
    RolloutConfig,
    reward_function_name,
)
from core.config.inputs import DataConfig, DataSourceConfig, ModelConfig
from core.config.introspect import documented_yaml, dump_yaml, field_docs, field_types, to_dict
from core.config.load import apply_override, from_dict, load_config, resolve
from core.config.run import ClusterConfig, Config, LoggingConfig, TrainerConfig, validate
from core.config.training import AlgorithmConfig, LearnerConfig, LoraConfig, parse_cores
from core.errors import ConfigError

__all__ = [
    "AlgorithmConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DataSourceConfig",
    "EnvironmentConfig",
    "LearnerConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "RewardConfig",
    "RewardFunctionConfig",
    "RolloutConfig",
    "TrainerConfig",
    "apply_override",
    "documented_yaml",
    "dump_yaml",
    "field_docs",
    "field_types",
    "from_dict",
    "load_config",
    "parse_cores",
    "resolve",
    "reward_function_name",
    "to_dict",
    "validate",
]
