"""Prompts: generated arithmetic problems or dataset rows, tokenised with the chat template.

Sources: the built-in `arithmetic` generator (the offline default), JSONL, Parquet and CSV
files, and Hugging Face `datasets` (a `save_to_disk` folder, or a hub name when online).

Guarantees: every format goes through one row check (`check_row`) and one bad-row handler
(`LoadReport.reject`): a row that is not valid JSON, has an undecodable byte, lacks a field,
has an empty prompt or is rejected by the chat template raises a `DataError` naming the file,
the row number (the line for JSONL and CSV, the 1-based row index for Parquet and Hugging Face
datasets) and the field, or with `data.on_bad_row: skip` is skipped and counted. Every `Prompt`
carries its token ids after the chat template (with the generation prompt); prompts longer than
`data.max_prompt_tokens` are dropped and counted, never cut. The training order is a seeded
shuffle, reshuffled each epoch. Not covered: streaming datasets larger than memory (rows are
read whole), and hub datasets without network.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import DataConfig, DataSourceConfig
from core.records import Prompt
from environments.tool_env import describe_tools


class DataError(ValueError):
    """A dataset row or file is unusable; the message names the file, row and field."""


@dataclass
class LoadReport:
    """What loading one source kept and dropped, for the console and `data_report.json`."""

    source: str = ""
    rows: int = 0
    kept: int = 0
    too_long: int = 0
    max_prompt_tokens: int = 0
    bad_rows: list[str] = field(default_factory=list)
    skip_bad: bool = False

    def reject(self, where: str, error: DataError) -> None:
        """The one bad-row policy: raise naming the place, or count and skip the row."""
        if not self.skip_bad:
            raise DataError(f"{where}: {error}") from None
        self.bad_rows.append(f"{where}: {error}")

    def summary(self) -> str:
        return (
            f"data.{self.source}: {self.rows} rows, kept {self.kept} prompts, dropped "
            f"{self.too_long} longer than data.max_prompt_tokens={self.max_prompt_tokens} and "
            f"{len(self.bad_rows)} bad rows"
        )


# ---------------------------------------------------------------------------------------------
# Reading: each format yields (row number, row dict or the DataError that row raised)

Record = tuple[int, "dict[str, Any] | DataError"]


def arithmetic_rows(src: DataSourceConfig) -> list[dict[str, Any]]:
    """`size` problems 'What is A op B?' with operands drawn from a generator seeded by `seed`."""
    rng = random.Random(src.seed)
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    rows = []
    for _ in range(src.size):
        a, b = (rng.randint(src.min_operand, src.max_operand) for _ in range(2))
        op = rng.choice(src.operations)
        rows.append({"prompt": f"What is {a} {op} {b}?", "answer": str(ops[op](a, b))})
    return rows


def _jsonl_records(path: Path, src: DataSourceConfig) -> Iterator[Record]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                # surrogateescape keeps undecodable bytes so that check_row names their field
                row = json.loads(raw.decode("utf-8", errors="surrogateescape"))
            except json.JSONDecodeError as e:
                yield number, DataError(f"not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(row, dict):
                yield number, DataError(f"a row must be a JSON object, got {type(row).__name__}")
                continue
            yield number, row


def _csv_records(path: Path, src: DataSourceConfig) -> Iterator[Record]:
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        if None in row:  # more cells than the header has columns
            columns = len(reader.fieldnames or [])
            cells = columns + len(row[None])
            yield reader.line_num, DataError(f"{cells} cells, the header has {columns} columns")
            continue
        yield reader.line_num, {k: v for k, v in row.items() if v is not None}


def _parquet_records(path: Path, src: DataSourceConfig) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for damaged files
        raise DataError(f"{path} is not a readable Parquet file: {e}") from None
    yield from enumerate(table.to_pylist(), start=1)


def _hf_records(path: Path, src: DataSourceConfig) -> Iterator[Record]:
    import datasets

    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(src.path, split=src.split)
    except Exception as e:  # no network, unknown name, damaged folder
        raise DataError(
            f"Hugging Face dataset {src.path!r} could not be loaded ({type(e).__name__}: {e}); "
            "give a `save_to_disk` folder, or a hub name on a machine with network"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise DataError(f"{path} has splits {list(ds)}, not split={src.split!r} (data.*.split)")
        ds = ds[src.split]
    for number, row in enumerate(ds, start=1):
        yield number, dict(row)


READERS = {
    "jsonl": _jsonl_records,
    "csv": _csv_records,
    "parquet": _parquet_records,
    "hf": _hf_records,
}
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def source_format(src: DataSourceConfig) -> str:
    """The format of `src.path`: as configured, or from the extension (a folder: `hf`)."""
    if src.format != "auto":
        return src.format
    path = Path(src.path)
    if path.is_dir():
        return "hf"
    if path.suffix.lower() in _EXTENSIONS:
        return _EXTENSIONS[path.suffix.lower()]
    if not path.exists() and "/" in src.path and not src.path.startswith((".", "/", "~")):
        return "hf"  # looks like a hub name: `owner/name`
    raise DataError(
        f"cannot tell the format of {src.path!r} from its name; set data.*.format to one of "
        f"{', '.join(READERS)}"
    )


def read_rows(src: DataSourceConfig, report: LoadReport) -> list[tuple[str, dict[str, Any]]]:
    """Checked rows of a file or dataset, each with where it came from (`file, row N`)."""
    fmt = source_format(src)
    path = Path(src.path).expanduser()
    if fmt != "hf" and not path.is_file():
        raise DataError(f"data file {path} does not exist (config key data.{report.source}.path)")
    rows = []
    for number, record in READERS[fmt](path, src):
        where = f"{src.path}, row {number}"
        report.rows += 1
        try:
            if isinstance(record, DataError):
                raise record
            rows.append((where, check_row(record, src)))
        except DataError as e:
            report.reject(where, e)
    return rows


# ---------------------------------------------------------------------------------------------
# Checking: the same rules for every format


def check_row(row: dict[str, Any], src: DataSourceConfig) -> dict[str, Any]:
    """The row as {prompt, answer, **fields}; a `DataError` names the first bad field."""
    wanted = [src.prompt_key, *([src.answer_key] if src.answer_key else []), *src.fields]
    for key in wanted:
        if key not in row or row[key] is None:
            raise DataError(f"missing field {key!r} (fields: {', '.join(map(str, row))})")
    row = {key: _decoded(value, key) for key, value in row.items()}
    prompt = row[src.prompt_key]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"field {src.prompt_key!r} must be a non-empty string or message list")
    elif isinstance(prompt, list):
        _check_messages(prompt, src.prompt_key)
    else:
        raise DataError(
            f"field {src.prompt_key!r} must be a non-empty string or message list, "
            f"got {type(prompt).__name__}"
        )
    taken = (src.prompt_key, src.answer_key)
    keys = src.fields or [k for k in row if k not in taken]
    answer = row[src.answer_key] if src.answer_key else ""
    return {**{k: row[k] for k in keys}, "prompt": prompt, "answer": str(answer)}


def _decoded(value: Any, key: str) -> Any:
    """`value` with bytes decoded as UTF-8; undecodable bytes (raw, or kept as lone surrogates
    by the text readers) raise an error naming field `key`."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"field {key!r}: undecodable byte 0x{value[e.start]:02x} at offset {e.start} "
                "(text must be UTF-8)"
            ) from None
    if isinstance(value, str):
        bad = next((i for i, ch in enumerate(value) if "\udc80" <= ch <= "\udcff"), None)
        if bad is not None:
            raise DataError(
                f"field {key!r}: undecodable byte 0x{ord(value[bad]) - 0xDC00:02x} at character "
                f"{bad} (the file must be UTF-8)"
            )
    elif isinstance(value, dict):
        return {k: _decoded(v, key) for k, v in value.items()}
    elif isinstance(value, list):
        return [_decoded(v, key) for v in value]
    return value


def _check_messages(messages: list, key: str) -> None:
    if not messages:
        raise DataError(f"field {key!r} must be a non-empty string or message list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise DataError(
                f"field {key!r}, message {i}: expected {{role, content}}, got {m!r:.80}"
            )
    if not any(m["role"] == "user" and m["content"] for m in messages):
        raise DataError(f"field {key!r}: no non-empty user message")


# ---------------------------------------------------------------------------------------------
# Prompts: rows -> chat template -> token ids


@dataclass
class SourceRows:
    """One source's checked rows, each with where it came from, read before the tokenizer is
    needed (so a bad file or row is reported before anything starts), and its report so far."""

    name: str
    src: DataSourceConfig
    rows: list[tuple[str, dict[str, Any]]]
    report: LoadReport


def read_source(
    name: str, src: DataSourceConfig, data: DataConfig, report: LoadReport | None = None
) -> SourceRows:
    """The checked rows of source `name` (`train` or `eval`); `report` is filled in."""
    report = report if report is not None else LoadReport()
    report.source, report.skip_bad = name, data.on_bad_row == "skip"
    report.max_prompt_tokens = data.max_prompt_tokens
    if src.generator == "arithmetic":
        generated = arithmetic_rows(src)
        rows = [(f"data.{name} (generated), row {i + 1}", r) for i, r in enumerate(generated)]
        report.rows = len(rows)
    else:
        rows = read_rows(src, report)
    return SourceRows(name, src, rows, report)


def tokenize_rows(
    source: SourceRows, data: DataConfig, tokenizer, tools: list[dict] | None = None
) -> list[Prompt]:
    """Tokenised prompts of `source`'s rows; its report (printed when something was dropped)
    says what was kept and dropped; `tools`: the JSON schemas of the tools the model may call
    (multi-turn)."""
    name, report = source.name, source.report
    template = chat_template(data)
    prompts = []
    for i, (where, row) in enumerate(source.rows):
        messages, text = _messages(row["prompt"], data)
        try:
            ids = render(tokenizer, messages, template, tools)
        except Exception as e:  # jinja2 raises TemplateError, templates raise their own
            report.reject(
                where,
                DataError(
                    f"field {source.src.prompt_key!r}: the chat template rejects this prompt "
                    f"({type(e).__name__}: {e})"
                ),
            )
            continue
        if len(ids) > data.max_prompt_tokens:
            report.too_long += 1
            continue
        extra = {k: v for k, v in row.items() if k not in ("prompt", "answer")}
        prompts.append(Prompt(f"{name}:{i}", text, ids, row["answer"], extra))
    report.kept = len(prompts)
    if report.too_long or report.bad_rows:
        print(report.summary())
    if not prompts:
        raise DataError(f"data.{name} has no usable prompt ({report.summary()})")
    return prompts


def load_prompts(
    name: str,
    src: DataSourceConfig,
    data: DataConfig,
    tokenizer,
    report: LoadReport | None = None,
    tools: list[dict] | None = None,
) -> list[Prompt]:
    """`read_source` then `tokenize_rows`: tokenised prompts of source `name`."""
    return tokenize_rows(read_source(name, src, data, report), data, tokenizer, tools)


def chat_template(data: DataConfig) -> str | None:
    """`data.chat_template` resolved: None (the tokenizer's), `none`, or the template text."""
    value = data.chat_template
    if not value or value == "none":
        return value or None
    if "{" not in value and Path(value).expanduser().is_file():
        return Path(value).expanduser().read_text()
    if "{" not in value:
        raise DataError(f"data.chat_template={value!r} is neither a template nor a file")
    return value


def render(
    tokenizer, messages: list[dict], template: str | None, tools: list[dict] | None = None
) -> list[int]:
    """Token ids of `messages` after the chat template, ending with the generation prompt. With
    `tools`, the template shows them; one that ignores tools gets them in the system message,
    in the hermes format (`environments.tool_env.describe_tools`)."""
    if template == "none":
        text = "\n\n".join(m["content"] for m in messages)
    else:

        def apply(messages: list[dict], tools: list[dict] | None) -> str:
            return tokenizer.apply_chat_template(
                messages,
                tools=tools,
                add_generation_prompt=True,
                tokenize=False,
                chat_template=template,
            )

        text = apply(messages, tools or None)
        if tools and text == apply(messages, None):
            messages = with_system(messages, describe_tools(tools))
            text = apply(messages, None)
    return tokenizer(text, add_special_tokens=template == "none")["input_ids"]


def with_system(messages: list[dict], text: str) -> list[dict]:
    """`messages` with `text` added to the system message (a new one first if none)."""
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": messages[0]["content"] + "\n\n" + text}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _messages(prompt: str | list, data: DataConfig) -> tuple[list[dict], str]:
    if isinstance(prompt, list):
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    else:
        text = data.prompt_template.format(prompt=prompt)
        messages = [{"role": "user", "content": text}]
    if data.few_shot:
        system = [m for m in messages[:1] if m["role"] == "system"]
        messages = [*system, *data.few_shot, *messages[len(system) :]]
    if data.system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": data.system_prompt}, *messages]
    return messages, text


def read_datasets(data: DataConfig) -> list[SourceRows]:
    """The train and eval sources' checked rows (`read_source`), in that order."""
    return [read_source(name, getattr(data, name), data) for name in ("train", "eval")]


def tokenize_datasets(
    sources: list[SourceRows],
    data: DataConfig,
    tokenizer,
    run_dir: Path | None = None,
    tools: list[dict] | None = None,
) -> list[list[Prompt]]:
    """Each source's prompts (`tokenize_rows`, showing `tools`, the tool schemas, when given);
    the load reports go to `<run_dir>/data_report.json`."""
    prompts = [tokenize_rows(source, data, tokenizer, tools) for source in sources]
    if run_dir is not None:
        summary = {source.name: asdict(source.report) for source in sources}
        (Path(run_dir) / "data_report.json").write_text(json.dumps(summary, indent=1))
    return prompts


def load_datasets(
    data: DataConfig, tokenizer, run_dir: Path | None = None, tools: list[dict] | None = None
) -> tuple[list[Prompt], list[Prompt]]:
    """Train and eval prompts: `read_datasets` then `tokenize_datasets`."""
    train, evals = tokenize_datasets(read_datasets(data), data, tokenizer, run_dir, tools)
    return train, evals


def steps_for_epochs(cfg, prompts: int) -> int:
    """Training steps that `data.epochs` passes over `prompts` training prompts take."""
    return max(1, math.ceil(cfg.data.epochs * prompts / cfg.rollout.prompts_per_step))


class PromptStream:
    """Endless iteration over the training prompts, epoch after epoch, in a seeded shuffle
    (reshuffled each epoch) or in file order."""

    def __init__(self, prompts: list[Prompt], seed: int, shuffle: bool = True):
        self.prompts, self.seed, self.shuffle = prompts, seed, shuffle
        self.epoch, self.index = 0, 0
        self.order = self._order()

    def _order(self) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def state(self) -> dict:
        """The position in the stream (epoch and index; the order follows from the seed)."""
        return {"epoch": self.epoch, "index": self.index, "size": len(self.prompts)}

    def restore(self, state: dict) -> None:
        """Continue from a `state()`; the prompts must be the same dataset."""
        if state["size"] != len(self.prompts):
            raise ValueError(
                f"the checkpoint was taken with {state['size']} training prompts, the data now "
                f"has {len(self.prompts)}: resume with the same data.train"
            )
        self.epoch, self.index = state["epoch"], state["index"]
        self.order = self._order()

    def upcoming(self) -> Iterator[Prompt]:
        """The prompts `next_batch` would return, one at a time, without moving the stream
        (`advance` moves it once the caller knows how many it used)."""
        ahead = PromptStream(self.prompts, self.seed, self.shuffle)
        ahead.epoch, ahead.index, ahead.order = self.epoch, self.index, self.order
        while True:
            yield ahead.next_batch(1)[0]

    def advance(self, n: int) -> None:
        """Move past `n` prompts."""
        self.next_batch(n)

    def next_batch(self, n: int) -> list[Prompt]:
        batch = []
        while len(batch) < n:
            if self.index == len(self.order):
                self.epoch, self.index = self.epoch + 1, 0
                self.order = self._order()
            batch.append(self.prompts[self.order[self.index]])
            self.index += 1
        return batch
