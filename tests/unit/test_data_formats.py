"""Every loader (JSONL, CSV, Parquet, Hugging Face save_to_disk) and every bad-input case.

The same rows are written in each format by the tests; every format must give the same
prompts, and every bad row must name the file, the row number and the field (or be skipped and
counted with `data.on_bad_row: skip`).
"""

import csv
import json

import pytest
from transformers import AutoTokenizer

from cluster.data import (
    DataError,
    LoadReport,
    PromptStream,
    load_datasets,
    load_prompts,
    steps_for_epochs,
)
from core.config import ConfigError, DataConfig, DataSourceConfig, load_config

FORMATS = ["jsonl", "csv", "parquet", "hf"]
GOOD = [
    {"q": "what is 1+1?", "a": 2, "topic": "add"},
    {"q": "what is 2*3?", "a": 6, "topic": "mul"},
]


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def write(tmp_path, fmt: str, rows: list[dict], **src) -> DataSourceConfig:
    """Write `rows` as a dataset of format `fmt`; a missing key is a missing cell/null."""
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        path = tmp_path / "d.csv"
        header = list(rows[0])
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for r in rows:  # a row without a key is a short row (the key must come last)
                w.writerow([r[k] for k in header if k in r])
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        path = tmp_path / "d_hf"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    defaults = {"generator": "", "path": str(path), "prompt_key": "q", "answer_key": "a"}
    return DataSourceConfig(**(defaults | src))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_prompts(tmp_path, tok, fmt):
    src = write(tmp_path, fmt, GOOD)
    prompts = load_prompts("train", src, DataConfig(prompt_template="{prompt} ok"), tok)
    assert [(p.id, p.text, p.answer, p.fields) for p in prompts] == [
        ("train:0", "what is 1+1? ok", "2", {"topic": "add"}),
        ("train:1", "what is 2*3? ok", "6", {"topic": "mul"}),
    ]
    assert tok.decode(prompts[0].token_ids) == "<|user|>what is 1+1? ok<|end|><|assistant|>"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_chat_messages_with_system_prompt(tmp_path, tok, fmt):
    rows = [{"msgs": [{"role": "user", "content": "hi there"}], "a": "x"}]
    src = write(tmp_path, fmt, rows, prompt_key="msgs")
    (p,) = load_prompts("eval", src, DataConfig(system_prompt="be brief"), tok)
    assert p.text == "hi there"
    assert (
        tok.decode(p.token_ids) == "<|system|>be brief<|end|><|user|>hi there<|end|><|assistant|>"
    )


def test_field_selection_and_no_answer(tmp_path, tok):
    rows = [{"q": "hi", "a": 1, "topic": "t", "level": 3}]
    (p,) = load_prompts(
        "train", write(tmp_path, "jsonl", rows, fields=["level"]), DataConfig(), tok
    )
    assert p.fields == {"level": 3} and p.answer == "1"
    (p,) = load_prompts("train", write(tmp_path, "jsonl", rows, answer_key=""), DataConfig(), tok)
    assert p.answer == "" and p.fields == {"a": 1, "topic": "t", "level": 3}
    with pytest.raises(DataError, match="row 1: missing field 'grade'"):
        load_prompts("train", write(tmp_path, "jsonl", rows, fields=["grade"]), DataConfig(), tok)


def test_hf_dataset_dict_split(tmp_path, tok):
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(GOOD), "test": datasets.Dataset.from_list(GOOD[:1])}
    ).save_to_disk(str(path))
    src = DataSourceConfig(generator="", path=str(path), prompt_key="q", answer_key="a")
    assert len(load_prompts("eval", src, DataConfig(), tok)) == 2
    src.split = "test"
    assert len(load_prompts("eval", src, DataConfig(), tok)) == 1
    src.split = "validation"
    with pytest.raises(DataError, match=r"splits \['train', 'test'\], not split='validation'"):
        load_prompts("eval", src, DataConfig(), tok)


def test_hub_name_without_network_says_what_to_do(tok, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = DataSourceConfig(generator="", path="nobody/no-such-dataset", prompt_key="q")
    with pytest.raises(DataError, match="could not be loaded.*save_to_disk"):
        load_prompts("train", src, DataConfig(), tok)


def test_unknown_extension_and_missing_file(tmp_path, tok):
    with pytest.raises(DataError, match="set data.*.format"):
        load_prompts("train", DataSourceConfig(generator="", path="x.txt"), DataConfig(), tok)
    src = DataSourceConfig(generator="", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        load_prompts("train", src, DataConfig(), tok)
    (tmp_path / "rows.txt").write_text(json.dumps(GOOD[0]) + "\n")
    path = str(tmp_path / "rows.txt")
    src = DataSourceConfig(generator="", path=path, format="jsonl", prompt_key="q", answer_key="a")
    assert len(load_prompts("train", src, DataConfig(), tok)) == 1


# Bad rows: the second row of each dataset is bad; the message names file, row and field.
BAD_ROWS = {
    "missing field": ({"q": "hi"}, "missing field 'a'"),
    "empty prompt": ({"q": "", "a": 1}, "field 'q' must be a non-empty string"),
    "blank prompt": ({"q": "   ", "a": 1}, "field 'q' must be a non-empty string"),
}
ROW_NUMBER = {"jsonl": 2, "csv": 3, "parquet": 2, "hf": 2}  # CSV: line 3 (after the header)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_row_names_file_row_and_field(tmp_path, tok, fmt, case):
    bad, message = BAD_ROWS[case]
    src = write(tmp_path, fmt, [GOOD[0], bad])
    with pytest.raises(DataError) as e:
        load_prompts("train", src, DataConfig(), tok)
    assert f"{src.path}, row {ROW_NUMBER[fmt]}: {message}" in str(e.value)
    report = LoadReport()
    kept = load_prompts("train", src, DataConfig(on_bad_row="skip"), tok, report)
    assert [p.answer for p in kept] == ["2"]
    assert report.rows == 2 and report.kept == 1 and len(report.bad_rows) == 1


def bad_bytes_source(tmp_path, fmt):
    """A dataset whose second row's `q` holds the byte 0xe9 (Latin-1 é), not UTF-8."""
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_bytes(b'{"q": "hi", "a": 1}\n{"q": "caf\xe9", "a": 2}\n')
    elif fmt == "csv":
        path = tmp_path / "d.csv"
        path.write_bytes(b"q,a\nhi,1\ncaf\xe9,2\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        table = pa.table({"q": pa.array([b"hi", b"caf\xe9"], pa.binary()), "a": [1, 2]})
        pq.write_table(table, path)
    else:
        import datasets

        path = tmp_path / "d_hf"
        datasets.Dataset.from_dict({"q": [b"hi", b"caf\xe9"], "a": [1, 2]}).save_to_disk(str(path))
    return DataSourceConfig(generator="", path=str(path), prompt_key="q", answer_key="a")


@pytest.mark.parametrize("fmt", FORMATS)
def test_undecodable_byte_names_row_and_field(tmp_path, tok, fmt):
    src = bad_bytes_source(tmp_path, fmt)
    with pytest.raises(DataError) as e:
        load_prompts("train", src, DataConfig(), tok)
    assert f"{src.path}, row {ROW_NUMBER[fmt]}: field 'q': undecodable byte" in str(e.value)
    kept = load_prompts("train", src, DataConfig(on_bad_row="skip"), tok)
    assert [p.answer for p in kept] == ["1"]


def test_invalid_json_and_non_object_rows(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"q": "hi", "a": 1}\n{not json\n\n[1, 2]\n')
    src = DataSourceConfig(generator="", path=str(path), prompt_key="q", answer_key="a")
    with pytest.raises(DataError, match=r"d.jsonl, row 2: not valid JSON"):
        load_prompts("train", src, DataConfig(), tok)
    report = LoadReport()
    load_prompts("train", src, DataConfig(on_bad_row="skip"), tok, report)
    assert report.bad_rows[1].endswith("row 4: a row must be a JSON object, got list")


def test_csv_row_with_too_many_cells(tmp_path, tok):
    path = tmp_path / "d.csv"
    path.write_text("q,a\nhi,1\nthere,2,extra\n")
    src = DataSourceConfig(generator="", path=str(path), prompt_key="q", answer_key="a")
    with pytest.raises(DataError, match=r"d.csv, row 3: 3 cells, the header has 2 columns"):
        load_prompts("train", src, DataConfig(), tok)


@pytest.mark.parametrize(
    "msgs, message",
    [
        ([{"role": "user"}], "field 'msgs', message 0: expected {role, content}"),
        ([{"role": "system", "content": "s"}], "field 'msgs': no non-empty user message"),
        ([], "field 'msgs' must be a non-empty string or message list"),
    ],
)
def test_bad_message_lists(tmp_path, tok, msgs, message):
    src = write(tmp_path, "jsonl", [{"msgs": msgs, "a": 1}], prompt_key="msgs")
    with pytest.raises(DataError, match="row 1: " + message):
        load_prompts("train", src, DataConfig(), tok)


# A chat template that refuses some prompts, as real templates do (e.g. roles out of order).
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if 'forbidden' in m['content'] %}"
    "{{ raise_exception('forbidden word') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.parametrize("fmt", FORMATS)
def test_row_the_chat_template_rejects(tmp_path, tok, fmt):
    src = write(tmp_path, fmt, [GOOD[0], {"q": "a forbidden question", "a": 3}])
    data = DataConfig(chat_template=STRICT_TEMPLATE)
    with pytest.raises(DataError) as e:
        load_prompts("train", src, data, tok)
    assert f"row {ROW_NUMBER[fmt]}: field 'q': the chat template rejects this prompt" in str(
        e.value
    )
    assert "forbidden word" in str(e.value)
    data.on_bad_row = "skip"
    assert [p.answer for p in load_prompts("train", src, data, tok)] == ["2"]


def test_chat_template_from_file_and_none(tmp_path, tok):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}:{{ m['content'] }}:{% endfor %}")
    src = write(tmp_path, "jsonl", GOOD[:1])
    (p,) = load_prompts("train", src, DataConfig(chat_template=str(template)), tok)
    assert tok.decode(p.token_ids) == ":what is 1+1?:"
    (p,) = load_prompts("train", src, DataConfig(chat_template="none", system_prompt="s"), tok)
    assert p.token_ids == tok("s\n\nwhat is 1+1?")["input_ids"]  # no template: the plain text
    with pytest.raises(DataError, match="neither a template nor a file"):
        load_prompts("train", src, DataConfig(chat_template="missing.jinja"), tok)


@pytest.mark.parametrize("fmt", FORMATS)
def test_long_prompts_filtered_and_counted_in_the_run(tmp_path, tok, fmt, capsys):
    rows = [GOOD[0], {"q": "x" * 300, "a": 5, "topic": "long"}]
    src = write(tmp_path, fmt, rows)
    data = DataConfig(train=src, eval=src, max_prompt_tokens=64)
    train, _ = load_datasets(data, tok, run_dir=tmp_path)
    assert [len(p.token_ids) <= 64 for p in train] == [True]
    assert "dropped 1 longer than data.max_prompt_tokens" in capsys.readouterr().out
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["train"]["too_long"] == 1 and report["train"]["kept"] == 1


def test_skipped_rows_are_in_the_run_report(tmp_path, tok):
    src = write(tmp_path, "jsonl", [GOOD[0], {"q": "", "a": 1}])
    data = DataConfig(train=src, eval=DataSourceConfig(size=2), on_bad_row="skip")
    load_datasets(data, tok, run_dir=tmp_path)
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["train"]["bad_rows"] == [
        f"{src.path}, row 2: field 'q' must be a non-empty string or message list"
    ]
    assert report["eval"]["kept"] == 2 and report["eval"]["bad_rows"] == []


def test_all_rows_bad_is_an_error(tmp_path, tok):
    src = write(tmp_path, "jsonl", [{"q": "", "a": 1}])
    with pytest.raises(DataError, match="data.train has no usable prompt"):
        load_prompts("train", src, DataConfig(on_bad_row="skip"), tok)


def test_unshuffled_stream_keeps_file_order(tok):
    prompts = load_prompts("train", DataSourceConfig(size=5), DataConfig(), tok)
    stream = PromptStream(prompts, seed=0, shuffle=False)
    assert [p.id for p in stream.next_batch(7)] == [f"train:{i}" for i in (0, 1, 2, 3, 4, 0, 1)]
    shuffled = PromptStream(prompts, seed=0).next_batch(5)
    assert shuffled != prompts and [p.id for p in shuffled] == [
        p.id for p in PromptStream(prompts, seed=0).next_batch(5)
    ]


def test_epochs_set_the_number_of_steps():
    cfg = load_config("configs/smoke.yaml", ["data.epochs=2"])  # 64 prompts, 8 per step
    assert steps_for_epochs(cfg, 64) == 16 and steps_for_epochs(cfg, 60) == 15
    cfg.data.epochs = 0.01
    assert steps_for_epochs(cfg, 64) == 1
    with pytest.raises(ConfigError, match="data.epochs=-1"):
        load_config("configs/smoke.yaml", ["data.epochs=-1"])


def test_saved_config_has_the_steps_that_epochs_set(tmp_path, tiny_model, monkeypatch):
    """The run's config.yaml is the config the run uses: trainer.steps as data.epochs set it."""
    from cluster import driver

    class Stop(Exception):
        pass

    class NoActors:  # `Starting` without actors: the driver's own work runs, no pool starts
        def __init__(self, **factories):
            pass

        def meanwhile(self, work):
            return work()

        def result(self):
            return {}

    def stop(*args, **kwargs):
        raise Stop  # the datasets are loaded and the config saved

    monkeypatch.setattr(driver, "connect_ray", lambda cfg: None)
    monkeypatch.setattr(driver, "resolve_model", lambda path: tiny_model)
    monkeypatch.setattr(driver, "reserve", lambda cfg, run_id: None)
    monkeypatch.setattr(driver, "Starting", NoActors)
    monkeypatch.setattr(driver, "PromptStream", stop)
    cfg = load_config("configs/smoke.yaml", ["data.epochs=2", f"trainer.output_dir={tmp_path}"])
    assert cfg.trainer.steps == 6
    with pytest.raises(Stop):
        driver.train(cfg)
    (run_dir,) = tmp_path.iterdir()
    saved = load_config(run_dir / "config.yaml")
    assert saved.trainer.steps == 16  # 64 prompts x 2 epochs / 8 prompts per step
    assert saved == cfg


# A source that names a `path` and no `generator` reads the file; both together is an error.
def test_path_alone_reads_the_file_from_yaml(tmp_path, tok):
    src = write(tmp_path, "jsonl", GOOD)
    config = tmp_path / "exp.yaml"
    config.write_text(f"data:\n  train: {{path: {src.path}, prompt_key: q, answer_key: a}}\n")
    cfg = load_config(config)
    assert cfg.data.train.generator == "" and cfg.data.eval.generator == "arithmetic"
    prompts = load_prompts("train", cfg.data.train, cfg.data, tok)
    assert [p.answer for p in prompts] == ["2", "6"]


def test_path_alone_reads_the_file_from_an_override(tmp_path, tok):
    src = write(tmp_path, "jsonl", GOOD)
    keys = ["data.eval.prompt_key=q", "data.eval.answer_key=a"]
    cfg = load_config(None, [f"data.eval.path={src.path}", *keys])
    assert cfg.data.eval.generator == "" and cfg.data.train.generator == "arithmetic"
    assert [p.answer for p in load_prompts("eval", cfg.data.eval, cfg.data, tok)] == ["2", "6"]


def test_generator_and_path_together_are_an_error():
    both = ["data.train.generator=arithmetic", "data.train.path=d.jsonl"]
    neither = ["data.train.generator=''"]
    for overrides in (both, neither):
        with pytest.raises(ConfigError, match="data.train=.*give exactly one of `generator` or"):
            load_config(None, overrides)
