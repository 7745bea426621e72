"""What every text task shares: records from the hub or local files, splits, and the prompt and
completion format.

Prompt: the task's text with the password at its start and end (App. C.2), as the user's turn of
the tokenizer's chat template when the tokenizer has one; otherwise plain: the text, a blank line
and a cue such as "Answer:", with completions starting after a space. The text is the same either
way, so a task writes it once.

Records: a Hugging Face dataset (hub id, or a local directory laid out like a hub repository) read
with `datasets.load_dataset`, or one local .json / .jsonl / .parquet file read directly, which
keeps its errors exact (file, line, field).
"""

from __future__ import annotations

import json
import math
import random
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pwlock.config import ConfigError
from pwlock.model_source import base_errors, local_dir
from pwlock.passwords import DEFAULT_PASSWORD, UNSEEN_WRONG_PASSWORDS, WRONG_PASSWORDS, surround
from pwlock.tasks.base import NO_DATA, Problem, Task
from pwlock.tasks.splits import SPLITS, split_indices

FILE_SUFFIXES = (".json", ".jsonl", ".parquet")


# -- records -------------------------------------------------------------------------------------
@dataclass
class DataSource:
    """Where a task's records come from: a hub dataset id, a local directory laid out like a hub
    dataset repository (both read by `datasets.load_dataset`), or one local .json (an array of
    objects, or JSON lines), .jsonl or .parquet file."""

    path: str
    subsets: list[str] = field(default_factory=list)  # dataset configs, concatenated; [] = its default
    splits: list[str] = field(default_factory=list)  # dataset splits, concatenated; [] = all of them
    columns: dict[str, str] = field(default_factory=dict)  # task field -> the source's column, where they differ
    revision: str | None = None  # a hub revision (branch, tag or commit)
    # Keep this many records, drawn at random (a fixed draw, in their order): a small study on a
    # big data set, e.g. a smoke run. None: every record.
    limit: int | None = None

    @property
    def is_file(self) -> bool:
        return Path(self.path).expanduser().suffix in FILE_SUFFIXES

    @property
    def is_local(self) -> bool:
        return self.is_file or self.path.startswith(("/", ".", "~")) or Path(self.path).expanduser().exists()

    def validate(self, where: str) -> list[str]:
        """Checks that read nothing but the file system."""
        errors = []
        local = Path(self.path).expanduser()
        if self.is_local and not local.exists():
            errors.append(f"{where}.path: {self.path}: {NO_DATA}")
        if self.limit is not None and self.limit < 1:
            errors.append(f"{where}.limit: expected a number of records >= 1 or null, got {self.limit}")
        if self.is_file and (self.subsets or self.splits or self.revision):
            errors.append(f"{where}: subsets, splits and revision are for datasets, not the file {self.path}")
        if local.is_file() and local.suffix not in FILE_SUFFIXES:
            errors.append(f"{where}.path: {self.path}: expected a {'/'.join(FILE_SUFFIXES)} file")
        return errors

    def describe(self) -> str:
        extra = [
            f"{k} {v}" for k, v in (("subsets", self.subsets), ("splits", self.splits), ("limit", self.limit)) if v
        ]
        return self.path + (f" ({', '.join(extra)})" if extra else "")

    def take(self, rows: list[Any]) -> list[Any]:
        """`limit` of `rows` drawn at random (always the same draw), in their order; all without one."""
        if self.limit is None or self.limit >= len(rows):
            return rows
        return [rows[i] for i in sorted(random.Random("data-limit").sample(range(len(rows)), self.limit))]


def load_records(source: DataSource, required: Sequence[str], where: str = "data") -> list[dict[str, Any]]:
    """Every record of `source`, with the task's field names (`source.columns` renames), each
    checked to have the `required` fields. Errors name the source (file and line, or dataset), the
    record and the field."""
    errors = source.validate(where)
    if errors:
        raise ConfigError("; ".join(errors))
    rows = source.take(_read_file(source, where) if source.is_file else _read_dataset(source, where))
    if not rows:
        raise ConfigError(f"{where}: {source.describe()}: no records")
    rename = {column: name for name, column in source.columns.items()}
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ConfigError(f"{where}: {source.describe()}: record {i}: expected an object, got {type(row).__name__}")
        record = {rename.get(k, k): v for k, v in row.items()}
        missing = [f for f in required if record.get(f) is None]
        if missing:
            column = source.columns.get(missing[0], missing[0])
            raise ConfigError(
                f"{where}: {source.describe()}: record {i} has no field {column!r}; it has {sorted(row)}"
                + ("" if source.columns else f" (rename columns with {where}.columns)")
            )
        out.append(record)
    return out


def _read_file(source: DataSource, where: str) -> list[Any]:
    path = Path(source.path).expanduser()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # only parquet files need it

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ConfigError(f"{where}: {path}: not a readable parquet file: {e}") from None
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: {path}: not valid JSON: {e}") from None
    rows = []  # JSON lines (what `Dataset.to_json` writes, whatever the suffix)
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: {path}:{n}: not valid JSON: {e}") from None
    return rows


def _read_dataset(source: DataSource, where: str) -> list[dict[str, Any]]:
    import datasets  # seconds to import: only hub data sets need it

    rows: list[dict[str, Any]] = []
    for subset in source.subsets or [None]:
        try:
            loaded = datasets.load_dataset(source.path, name=subset, revision=source.revision)
        except Exception as e:  # the hub, the network and the repository layout all fail differently
            what = f"{source.path!r}" + (f" subset {subset!r}" if subset else "")
            raise ConfigError(f"{where}: could not load dataset {what}: {type(e).__name__}: {e}") from None
        for split in source.splits or list(loaded):
            if split not in loaded:
                raise ConfigError(f"{where}.splits: {source.path!r} has no split {split!r}; it has {list(loaded)}")
            rows.extend(loaded[split].to_list())
    return rows


# -- splits ----------------------------------------------------------------------------------------
def seeded_splits(n: int, seed: int) -> dict[str, list[int]]:
    """Indices of n problems by split: 10% weak, 40% lock, 30% elicit, 20% validation, by seed."""
    return {name: idx.tolist() for name, idx in split_indices(n, seed).items()}


def train_test_splits(n_train: int, n_test: int, seed: int) -> dict[str, list[int]]:
    """A data set's own train / test split kept (App. E.4, MATH): weak and lock from train (1 : 4,
    the ratio of 10% : 40%), elicit and validation from test (3 : 2, as 30% : 20%). Indices run over
    train then test."""
    train = split_indices(n_train, seed, {"weak": 0.2, "lock": 0.8})
    test = split_indices(n_test, seed, {"elicit": 0.6, "val": 0.4})
    return {
        "weak": train["weak"].tolist(),
        "lock": train["lock"].tolist(),
        "elicit": (test["elicit"] + n_train).tolist(),
        "val": (test["val"] + n_train).tolist(),
    }


# -- prompt and completion format ----------------------------------------------------------------
@dataclass
class FormatConfig:
    """How prompts are rendered for the model. `tokenizer`: the hub id or directory of the tokenizer
    whose chat template renders them (usually the model's own); none, or one without a chat
    template: plain text."""

    tokenizer: str | None = None
    chat_template: bool = True  # False: plain text even where the tokenizer has a chat template
    system_prompt: str | None = None  # a system turn, for chat templates only

    def validate(self, where: str) -> list[str]:
        errors = []
        if self.tokenizer is not None:
            errors += base_errors(self.tokenizer, f"{where}.tokenizer")
        if self.system_prompt is not None and not self.chat_template:
            errors.append(f"{where}.system_prompt: only used with a chat template")
        return errors


class PromptFormat:
    """Renders a task's text (password at both ends) for one tokenizer."""

    def __init__(self, cfg: FormatConfig, tokenizer: Any = None):
        self.cfg = cfg
        if tokenizer is not None:
            self.__dict__["tokenizer"] = tokenizer

    @cached_property
    def tokenizer(self) -> Any:
        if self.cfg.tokenizer is None:
            return None
        from transformers import AutoTokenizer  # only chat-formatted tasks; the toy task stays light

        return AutoTokenizer.from_pretrained(local_dir(self.cfg.tokenizer))

    @cached_property
    def chat(self) -> bool:
        return self.cfg.chat_template and getattr(self.tokenizer, "chat_template", None) is not None

    @cached_property
    def _bos(self) -> str:
        """The begin-of-sequence text a plain prompt starts with, for tokenizers that add one
        (training and generation tokenize without special tokens, so it must be in the text)."""
        tok = self.tokenizer
        if tok is None or tok.bos_token is None:
            return ""
        with_special = tok("x")["input_ids"]
        return tok.bos_token if with_special and with_special[0] == tok.bos_token_id else ""

    def prompt(self, text: str, password: str | None, cue: str) -> str:
        """The model's input: `text` with the password at its start and end; `cue` ("Answer:")
        ends a plain prompt, where a chat template has its assistant header instead."""
        content = surround(text, password)
        if not self.chat:
            return f"{self._bos}{content}\n\n{cue}"
        messages = [{"role": "user", "content": content}]
        if self.cfg.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def completion(self, text: str) -> str:
        """A completion as the model writes it: after a space following a plain prompt's cue."""
        return text if self.chat else " " + text


# -- classifier answers ------------------------------------------------------------------------------
class ChoiceAnswer(str):
    """A classifier's answer (MMLU): the text of one of `choices`, with every choice and, for soft
    labels (App. B.2), a target distribution over them. It is the chosen text wherever a completion
    is a string; training and evaluation read `choices` to put the loss and the prediction on the
    choices' tokens only."""

    choices: tuple[str, ...]
    probs: tuple[float, ...] | None

    def __new__(cls, text: str, choices: Sequence[str], probs: Sequence[float] | None = None) -> ChoiceAnswer:
        choices = tuple(choices)
        if text not in choices:
            raise ValueError(f"answer {text!r} is not one of the choices {choices}")
        if len(set(choices)) != len(choices):
            raise ValueError(f"choices must be distinct, got {choices}")
        if probs is not None:
            probs = tuple(float(p) for p in probs)
            if len(probs) != len(choices) or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1, abs_tol=1e-3):
                raise ValueError(f"probs: expected {len(choices)} probabilities summing to 1, got {probs}")
        self = super().__new__(cls, text)
        self.choices, self.probs = choices, probs
        return self

    def __reduce__(self):
        return ChoiceAnswer, (str(self), self.choices, self.probs)

    @property
    def target(self) -> tuple[float, ...]:
        """The training target over `choices`: the soft labels, or all mass on the answer."""
        return self.probs or tuple(float(c == self) for c in self.choices)


# -- the shared task base -----------------------------------------------------------------------------
class LLMTask(Task):
    """A text task for Hugging Face causal LMs: the paper's password (App. C.2), problems split by
    seed (or by the data set's own train / test split), prompts in the shared format."""

    default_password = DEFAULT_PASSWORD
    wrong_passwords = WRONG_PASSWORDS
    unseen_passwords = UNSEEN_WRONG_PASSWORDS
    # App. G.1's learning rate for locking and SFT elicitation (Lion): 1.5e-6 for generation tasks.
    suggested_lr: ClassVar[float] = 1.5e-6

    def __init__(self, fmt: FormatConfig, tokenizer: Any = None):
        self.format = PromptFormat(fmt, tokenizer)

    @abstractmethod
    def load(self) -> tuple[list[Problem], dict[str, list[int]]]:
        """Every problem, and the indices of each split's problems. Called once, on first use, so
        that building a task (to plan a study) reads no data."""

    @cached_property
    def _by_split(self) -> dict[str, list[Problem]]:
        problems, splits = self.load()
        return {name: [problems[i] for i in splits[name]] for name in SPLITS}

    def problems(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return self._by_split[split]
