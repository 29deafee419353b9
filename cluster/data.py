"""Prompts: built-in generated arithmetic problems or JSONL rows, tokenised with the chat template.

Guarantees: every `Prompt` carries its token ids after the tokenizer's chat template (with the
generation prompt); prompts longer than `data.max_prompt_tokens` are dropped and counted, never
cut; a malformed JSONL row raises an error naming the file, the row number and the field, or is
skipped and counted with `data.on_bad_row: skip`; the training order is a seeded shuffle,
reshuffled each epoch. Not covered yet: Parquet, CSV and Hugging Face datasets (issue 5).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.config import DataConfig, DataSourceConfig
from rollout.records import Prompt


class DataError(ValueError):
    """A dataset row or file is unusable; the message names the file, row and field."""


@dataclass
class LoadReport:
    """What loading kept and dropped, for the run log."""

    kept: int = 0
    too_long: int = 0
    bad_rows: list[str] = field(default_factory=list)


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


def jsonl_rows(path: Path, src: DataSourceConfig, report: LoadReport, skip_bad: bool) -> list[dict]:
    """Rows of a JSONL file with the prompt and answer fields checked."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist (config key data.*.path)")
    rows = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = _parse_row(raw, src)
            except DataError as e:
                if not skip_bad:
                    raise DataError(f"{path}, row {number}: {e}") from None
                report.bad_rows.append(f"{path}:{number}: {e}")
                continue
            rows.append(row)
    return rows


def _parse_row(raw: bytes, src: DataSourceConfig) -> dict[str, Any]:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"undecodable byte at offset {e.start} (the file must be UTF-8)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise DataError("a row must be a JSON object")
    for key in (src.prompt_key, src.answer_key):
        if key not in row:
            raise DataError(f"missing field {key!r} (fields: {', '.join(row)})")
    prompt = row[src.prompt_key]
    if not prompt or not isinstance(prompt, (str, list)):
        raise DataError(f"field {src.prompt_key!r} must be a non-empty string or message list")
    others = {k: v for k, v in row.items() if k not in (src.prompt_key, src.answer_key)}
    return {**others, "prompt": prompt, "answer": str(row[src.answer_key])}


def load_prompts(name: str, src: DataSourceConfig, data: DataConfig, tokenizer) -> list[Prompt]:
    """Build tokenised prompts for source `name` (`train` or `eval`)."""
    report = LoadReport()
    if src.generator == "arithmetic":
        rows = arithmetic_rows(src)
    else:
        rows = jsonl_rows(Path(src.path), src, report, skip_bad=data.on_bad_row == "skip")
    prompts = []
    for i, row in enumerate(rows):
        messages, text = _messages(row["prompt"], data)
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if len(ids) > data.max_prompt_tokens:
            report.too_long += 1
            continue
        extra = {k: v for k, v in row.items() if k not in ("prompt", "answer")}
        prompts.append(Prompt(f"{name}:{i}", text, ids, row["answer"], extra))
    report.kept = len(prompts)
    if report.too_long or report.bad_rows:
        print(
            f"data.{name}: kept {report.kept} prompts, dropped {report.too_long} longer than "
            f"data.max_prompt_tokens={data.max_prompt_tokens} and {len(report.bad_rows)} bad rows"
        )
    if not prompts:
        raise DataError(f"data.{name} has no usable prompt (see the counts above)")
    return prompts


def _messages(prompt: str | list, data: DataConfig) -> tuple[list[dict], str]:
    if isinstance(prompt, list):
        messages = list(prompt)
        text = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    else:
        text = data.prompt_template.format(prompt=prompt)
        messages = [{"role": "user", "content": text}]
    if data.system_prompt and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": data.system_prompt}, *messages]
    return messages, text


class PromptStream:
    """Endless seeded-shuffle iteration over the training prompts, epoch after epoch."""

    def __init__(self, prompts: list[Prompt], seed: int):
        self.prompts, self.seed = prompts, seed
        self.epoch, self.index = 0, 0
        self.order = self._order()

    def _order(self) -> list[int]:
        order = list(range(len(self.prompts)))
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

    def next_batch(self, n: int) -> list[Prompt]:
        batch = []
        while len(batch) < n:
            if self.index == len(self.order):
                self.epoch, self.index = self.epoch + 1, 0
                self.order = self._order()
            batch.append(self.prompts[self.order[self.index]])
            self.index += 1
        return batch
