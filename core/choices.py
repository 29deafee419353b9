"""The valid values of the config options whose code keeps a table of them: one table per option.

The config schema (the section modules of `core/config/`) builds its `Literal` types from these
tuples, and the code that implements an option checks its own table against the same tuple, so a
value can never be accepted by the config and unknown to the code, or the other way round.
Options implemented by plain comparisons (`model.rollout_dtype`, `trainer.mode`, ...) keep their
`Literal` in the schema, their one table. Plain tuples: importing this module loads nothing.
"""

ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")
"""`algorithm.advantage_estimator`; `learner/advantages.py` `ADVANTAGE_ESTIMATORS` maps each."""
STD_NORMALIZATIONS = ("group", "batch", "none")
"""`algorithm.std_normalization`; `learner/advantages.py`."""
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
"""`algorithm.loss_aggregation`; `learner/losses.py` `aggregate_loss`."""
KL_ESTIMATORS = ("k1", "k2", "k3")
"""`algorithm.kl_estimator`; `learner/losses.py`."""
RATIO_LEVELS = ("token", "sequence")
"""`algorithm.ratio_level`; `learner/losses.py`."""
SAMPLER_CORRECTIONS = ("none", "token_truncate", "sequence_mask")
"""`algorithm.sampler_correction`; `learner/losses.py` `sampler_correction`."""
REWARD_ON_FAILURE = ("exclude", "score")
"""`reward.on_failure`; `reward/scoring.py` `ON_FAILURE`."""
ISOLATION_LEVELS = ("strict", "best_effort", "off")
"""`reward.isolation`; `reward/isolation.py` `LEVELS`."""
DATA_FORMATS = ("jsonl", "parquet", "csv", "hf")
"""`data.*.format` besides `auto`; `cluster/data.py` `READERS` has one reader each."""
ARITHMETIC_OPERATIONS = ("+", "-", "*")
"""`data.*.operations` of the `arithmetic` generator; `cluster/data.py` `arithmetic_rows`."""

NOT_BUILT = {
    ("trainer.mode", "async"): "async is not built: one_step_off already overlaps generation "
    "with training fully (a step takes max(generate, train)); deeper lookahead would only add "
    "staleness. Use trainer.mode=one_step_off",
}
"""Values that were considered and left out on purpose, with the reason, keyed by
(dotted key, value): the loader adds the reason to its "is not one of" error."""
