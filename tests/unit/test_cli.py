"""The `cohort` command line: config printing, errors with exit code 2, help with examples."""

import pytest

from cluster.cli import main


def test_config_prints_documented_resolved_config(capsys):
    assert main(["config", "configs/demo.yaml", "rollout.group_size=4"]) == 0
    out = capsys.readouterr().out
    assert "group_size: 4" in out and "# G: responses sampled per prompt" in out


def test_bad_override_exits_2_naming_the_key(capsys):
    assert main(["train", "configs/demo.yaml", "rollout.temperature=hot"]) == 2
    assert "rollout.temperature='hot' must be of type float" in capsys.readouterr().err


def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "config" in out and "cohort train configs/demo.yaml" in out
