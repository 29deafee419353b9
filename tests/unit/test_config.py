"""Config loading: typed fields, documented fields, errors naming key and value, overrides."""

import copy
import dataclasses
import typing

import pytest
import yaml

from core import choices
from core.config import (
    Config,
    ConfigError,
    TrainerConfig,
    documented_yaml,
    field_docs,
    from_dict,
    load_config,
    validate,
)


def all_dataclasses(cls, seen=None):
    seen = seen if seen is not None else []
    if cls not in seen:
        seen.append(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(default):
                all_dataclasses(type(default), seen)
            elif isinstance(default, list) and default and dataclasses.is_dataclass(default[0]):
                all_dataclasses(type(default[0]), seen)
    return seen


def test_every_field_has_a_docstring():
    for cls in all_dataclasses(Config):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


@pytest.mark.parametrize("name", ["configs/demo.yaml", "configs/smoke.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(name)
    assert cfg.trainer.output_dir == f"runs/{cfg.experiment}"


def test_overrides_are_typed_and_nested():
    overrides = ["rollout.group_size=4", "learner.lr=1e-4", "model.gradient_checkpointing=true"]
    cfg = load_config("configs/smoke.yaml", overrides)
    assert cfg.rollout.group_size == 4 and cfg.learner.lr == 1e-4
    assert cfg.model.gradient_checkpointing is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.group_sise=4", "unknown config key rollout.group_sise (did you mean rollout.gr"),
        ("rollout.group_size=four", "rollout.group_size='four' must be of type int"),
        ("rollout.group_size=1", "rollout.group_size=1: GRPO needs at least 2"),
        ("learner.zero_stage=4", "learner.zero_stage=4"),
        ("model.rollout_dtype=fp8", "model.rollout_dtype='fp8' is not one of"),
        ("learner.micro_batch_size=7", "must divide evenly by world_size * micro_batch_size = 7"),
        ("algorithm.updates_per_batch=0", "algorithm.updates_per_batch=0: >= 1"),
        ("reward.accuracy_function=nope", "reward.accuracy_function='nope'"),
        ("trainer.mode=async", "'sync', 'one_step_off': async is not built: one_step_off alre"),
        ("trainer.mode=asink", "trainer.mode='asink' is not one of 'sync', 'one_step_off'"),
        ("trainer.mode=one_step_off", "set algorithm.sampler_correction to token_truncate"),
        ("learner.cpu_cores=one", "learner.cpu_cores='one': use core numbers like 1, 4-7"),
        ("cluster.push_timeout_s=0", "cluster.push_timeout_s=0.0: must be > 0 seconds (a push"),
        ("cluster.push_timeout_s=-5", "cluster.push_timeout_s=-5.0: must be > 0 seconds"),
        ("rollout", "override 'rollout' must look like key.sub=value"),
        ("learner.lora.rank=-1", "learner.lora.rank=-1: must be >= 0 (0 = no LoRA)"),
        ("learner.lora.dropout=1", "learner.lora.dropout=1.0: must be in [0, 1)"),
        ("learner.lora.push=delta", "learner.lora.push='delta' is not one of 'merged', 'adapt"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/smoke.yaml", [override])
    assert message in str(e.value)


def test_reward_function_needs_name_or_fn(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"reward": {"functions": [{"weight": 1.0}]}}))
    with pytest.raises(ConfigError, match=r"reward.functions\[0\].*exactly one of"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_documented_yaml_round_trips():
    cfg = load_config("configs/demo.yaml")
    text = documented_yaml(cfg)
    assert "# G: responses sampled per prompt" in text
    assert yaml.safe_load(text)["rollout"]["max_new_tokens"] == cfg.rollout.max_new_tokens


def test_validation_only_reads():
    """`validate` changes nothing; what is derived is filled in before, by the loader."""
    cfg = Config()
    before = copy.deepcopy(cfg)
    validate(cfg)
    assert cfg == before and cfg.trainer.output_dir == ""
    assert load_config(None).trainer.output_dir == "runs/experiment"


def test_a_section_given_in_part_keeps_its_own_defaults():
    """`data.eval` defaults to seed 1 (disjoint from train's 0); giving its size alone keeps it."""
    cfg = load_config(None, ["data.eval.size=8"])
    assert (cfg.data.eval.size, cfg.data.eval.seed) == (8, 1) and cfg.data.train.seed == 0


def test_trainer_mode_async_is_not_a_choice():
    assert typing.get_args(typing.get_type_hints(TrainerConfig)["mode"]) == ("sync", "one_step_off")
    with pytest.raises(ConfigError) as e:
        load_config(None, ["trainer.mode=async"])
    assert str(e.value).startswith("trainer.mode='async' is not one of 'sync', 'one_step_off'")
    assert str(e.value).endswith("Use trainer.mode=one_step_off")


def test_choice_tables_are_the_codes_tables():
    """One table per option: the schema's `Literal`s and the code's tables agree."""
    from cluster import data
    from learner import advantages, losses
    from reward import isolation, scoring

    assert tuple(advantages.ADVANTAGE_ESTIMATORS) == choices.ADVANTAGE_ESTIMATORS
    assert advantages.STD_NORMALIZATIONS == choices.STD_NORMALIZATIONS
    assert losses.LOSS_AGGREGATIONS == choices.LOSS_AGGREGATIONS
    assert losses.KL_ESTIMATORS == choices.KL_ESTIMATORS
    assert losses.RATIO_LEVELS == choices.RATIO_LEVELS
    assert losses.SAMPLER_CORRECTIONS == choices.SAMPLER_CORRECTIONS
    assert scoring.ON_FAILURE == choices.REWARD_ON_FAILURE
    assert isolation.LEVELS == choices.ISOLATION_LEVELS
    assert set(data.READERS) == set(choices.DATA_FORMATS)
    for op in choices.ARITHMETIC_OPERATIONS:
        src = from_dict(type(Config().data.train), {"operations": [op], "size": 1}, "data.train.")
        assert data.arithmetic_rows(src)  # every allowed operator is implemented
    for key, value in choices.NOT_BUILT:  # a value left out on purpose is refused with its reason
        with pytest.raises(ConfigError, match=f"{key}={value!r} is not one of"):
            load_config(None, [f"{key}={value}"])


def test_yaml_off_is_the_word_off_for_a_choice(tmp_path):
    # YAML 1.1 reads `off` as false: `reward.isolation: off` must still mean "off".
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  isolation: off\n")
    assert load_config(path).reward.isolation == "off"
    assert load_config("configs/smoke.yaml", ["reward.isolation=off"]).reward.isolation == "off"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["learner.lora.target_modules=[]"], "learner.lora.target_modules=[]: name at least one"),
        (
            ["learner.lora.push=adapter", "cluster.weight_transport=gloo"],
            "learner.lora.push='adapter': adapters go through Ray's object store, not cluster.we",
        ),
        (
            ["learner.lora.push=adapter", "learner.lora.rank=1024"],
            "learner.lora.rank=1024: vLLM serves adapters up to rank 512; push merged weights",
        ),
    ],
)
def test_lora_settings_that_cannot_work_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/smoke.yaml", ["learner.lora.rank=16", *overrides])
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("native_bf16", "overrides", "dtype"),
    [
        (False, [], "float32"),  # AVX2 or AVX-512 without BF16: bfloat16 would be converted
        (True, [], "bfloat16"),  # AVX-512 BF16 or AMX
        (False, ["cluster.use_gpu=true"], "bfloat16"),
        (True, ["model.rollout_dtype=float32"], "float32"),  # what the user wrote wins
    ],
)
def test_rollout_dtype_auto_follows_the_hardware(monkeypatch, native_bf16, overrides, dtype):
    monkeypatch.setattr("core.config.load.cpu_has_native_bf16", lambda: native_bf16)
    assert load_config("configs/demo.yaml", overrides).model.rollout_dtype == dtype
