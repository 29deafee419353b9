"""Prompts: generated arithmetic, JSONL rows, bad rows named by file and row, long prompts."""

import json

import pytest
from transformers import AutoTokenizer

from cluster.data import DataError, PromptStream, arithmetic_rows, load_prompts
from core.config import DataConfig, DataSourceConfig


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_arithmetic_is_seeded_and_correct():
    src = DataSourceConfig(size=50, seed=3, operations=["+", "-", "*"])
    rows = arithmetic_rows(src)
    assert rows == arithmetic_rows(src) and rows != arithmetic_rows(DataSourceConfig(seed=4))
    for row in rows:
        a, op, b = row["prompt"].removeprefix("What is ").removesuffix("?").split()
        assert str(eval(f"{a}{op}{b}")) == row["answer"]


def test_prompts_carry_chat_template_tokens(tok):
    data = DataConfig(prompt_template="{prompt} reply.", system_prompt="be brief")
    (p, *_) = load_prompts("train", DataSourceConfig(size=3), data, tok)
    assert p.id == "train:0" and p.text.endswith(" reply.")
    text = tok.decode(p.token_ids)
    assert text.startswith("<|system|>be brief<|end|><|user|>") and text.endswith("<|assistant|>")


def write_jsonl(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return DataSourceConfig(generator="", path=str(path), prompt_key="q", answer_key="a")


@pytest.mark.parametrize(
    "line, message",
    [
        (b"{not json", "row 2: not valid JSON"),
        (b'{"q": "hi"}', "row 2: missing field 'a'"),
        (b'{"q": "", "a": 1}', "row 2: field 'q' must be a non-empty string"),
        (b'{"q": "caf\xe9", "a": 1}', "row 2: field 'q': undecodable byte"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, tok, line, message):
    src = write_jsonl(tmp_path / "d.jsonl", [b'{"q": "what is 1+1?", "a": 2}', line])
    with pytest.raises(DataError) as e:
        load_prompts("train", src, DataConfig(), tok)
    assert str(tmp_path / "d.jsonl") in str(e.value) and message in str(e.value)
    kept = load_prompts("train", src, DataConfig(on_bad_row="skip"), tok)
    assert [p.answer for p in kept] == ["2"]


def test_long_prompts_are_dropped_not_cut(tmp_path, tok, capsys):
    rows = [json.dumps({"q": "x" * n, "a": 1, "topic": "t"}).encode() for n in (5, 500)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    prompts = load_prompts("train", src, DataConfig(max_prompt_tokens=64), tok)
    assert len(prompts) == 1 and prompts[0].fields == {"topic": "t"}
    assert "dropped 1 longer than data.max_prompt_tokens=64" in capsys.readouterr().out


def test_stream_reshuffles_each_epoch(tok):
    prompts = load_prompts("train", DataSourceConfig(size=4), DataConfig(), tok)
    stream = PromptStream(prompts, seed=0)
    epoch1, epoch2 = stream.next_batch(4), stream.next_batch(4)
    assert sorted(p.id for p in epoch1) == sorted(p.id for p in epoch2) == [p.id for p in prompts]
