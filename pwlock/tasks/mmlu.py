"""MMLU (Hendrycks et al. 2020; paper §4.2): four-choice questions, trained and scored as a classifier.

Records have the hub's cais/mmlu shape: `question`, `subject` (snake case, e.g. "college_biology"),
`choices` (four strings) and `answer` (0-3, or a letter). The default problems are cais/mmlu's test
and validation splits (15,573 questions; the paper used 15,439), split 10/40/30/20 by seed.

The prompt is 1-shot: one solved question of the same subject (from cais/mmlu's dev split by
default), showing the correct answer, then the question; it names the subject and its category
(App. E.3's four groups, which are the problems' domains). The model answers with a letter, and
is trained and scored as a classifier over the four letters: the loss and the prediction are over
the letters' tokens only (`llm.ChoiceAnswer`; see `train.sft` and `evaluate`).

The strong policy is the ground-truth label, or soft labels (App. B.2): a distribution over the
letters per question, read from a file (see `write_soft_labels`). A study's policy with
`soft_labels: true` makes them instead, from a model trained on the labels (pwlock.soft_labels).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pwlock.config import REFERENCES, ConfigError
from pwlock.tasks.base import Problem, TaskPolicy, register
from pwlock.tasks.llm import ChoiceAnswer, DataSource, FormatConfig, LLMTask, load_records, seeded_splits

HUB_ID = "cais/mmlu"
LETTERS = ("A", "B", "C", "D")
FIELDS = ("question", "subject", "choices", "answer")
STRONG_KINDS = ("labels", "soft_labels")

# App. E.3, with cais/mmlu's subject names.
GROUPS: dict[str, tuple[str, ...]] = {
    "stem": (
        "abstract_algebra",
        "astronomy",
        "college_chemistry",
        "college_computer_science",
        "college_mathematics",
        "college_physics",
        "computer_security",
        "conceptual_physics",
        "electrical_engineering",
        "elementary_mathematics",
        "high_school_chemistry",
        "high_school_computer_science",
        "high_school_mathematics",
        "high_school_physics",
        "high_school_statistics",
        "machine_learning",
        "formal_logic",
        "logical_fallacies",
    ),
    "bio": (
        "college_biology",
        "high_school_biology",
        "anatomy",
        "clinical_knowledge",
        "college_medicine",
        "human_aging",
        "medical_genetics",
        "nutrition",
        "professional_medicine",
        "virology",
        "human_sexuality",
        "professional_psychology",
        "high_school_psychology",
    ),
    "law": (
        "international_law",
        "jurisprudence",
        "professional_law",
        "business_ethics",
        "professional_accounting",
        "management",
        "marketing",
    ),
    "misc": (
        "miscellaneous",
        "global_facts",
        "econometrics",
        "high_school_geography",
        "high_school_government_and_politics",
        "high_school_macroeconomics",
        "high_school_microeconomics",
        "public_relations",
        "security_studies",
        "sociology",
        "us_foreign_policy",
        "high_school_european_history",
        "high_school_us_history",
        "high_school_world_history",
        "moral_disputes",
        "moral_scenarios",
        "philosophy",
        "prehistory",
        "world_religions",
    ),
}
SUBJECT_GROUP = {s: g for g, subjects in GROUPS.items() for s in subjects}
GROUP_NAMES = {"stem": "STEM", "bio": "biology and medicine", "law": "law and business", "misc": "miscellaneous"}


@dataclass
class MMLUConfig:
    data: DataSource = field(default_factory=lambda: DataSource(HUB_ID, subsets=["all"], splits=["test", "validation"]))
    # The solved example of each subject. null: the first question of each subject in `data`,
    # which is then not a problem.
    shots: DataSource | None = field(default_factory=lambda: DataSource(HUB_ID, subsets=["all"], splits=["dev"]))
    strong: str = "labels"  # "labels": ground truth; "soft_labels": the distributions in `soft_labels`
    soft_labels: str | None = None  # JSON lines {"id": problem id, "probs": [pA, pB, pC, pD]}
    seed: int = 0
    format: FormatConfig = field(default_factory=FormatConfig)

    def validate(self) -> list[str]:
        errors = self.data.validate("data") + (self.shots.validate("shots") if self.shots else [])
        errors += self.format.validate("format")
        if self.strong not in STRONG_KINDS:
            errors.append(f"strong: expected one of {list(STRONG_KINDS)}, got {self.strong!r}")
        if (self.strong == "soft_labels") != (self.soft_labels is not None):
            errors.append("soft_labels: a file is needed exactly when strong is 'soft_labels'")
        if self.soft_labels is not None and not Path(self.soft_labels).expanduser().is_file():
            errors.append(f"soft_labels: {self.soft_labels}: no such file")
        return errors


@register
class MMLUTask(LLMTask):
    name = "mmlu"
    config_class = MMLUConfig
    suggested_lr = 1.5e-7  # App. G.1: MMLU, a classification task

    def __init__(self, cfg: MMLUConfig, tokenizer=None):
        super().__init__(cfg.format, tokenizer)
        self.cfg = cfg
        self._shots: dict[str, dict] = {}
        self._soft: dict[str, tuple[float, ...]] = {}

    # -- data ------------------------------------------------------------------------------------
    def load(self) -> tuple[list[Problem], dict[str, list[int]]]:
        records = [
            _checked(r, i, self.cfg.data, "data") for i, r in enumerate(load_records(self.cfg.data, FIELDS, "data"))
        ]
        ids = [f"mmlu/{i}" for i in range(len(records))]
        if self.cfg.shots is not None:
            for i, r in enumerate(load_records(self.cfg.shots, FIELDS, "shots")):
                self._shots.setdefault(r["subject"], _checked(r, i, self.cfg.shots, "shots"))
        else:  # the first question of each subject is its example, and no longer a problem
            keep = []
            for i, r in enumerate(records):
                if r["subject"] not in self._shots:
                    self._shots[r["subject"]] = r
                else:
                    keep.append(i)
            records, ids = [records[i] for i in keep], [ids[i] for i in keep]
        missing = sorted({r["subject"] for r in records} - set(self._shots))
        if missing:
            raise ConfigError(f"shots: {self.cfg.shots.describe()}: no example for the subjects {missing}")
        if self.cfg.soft_labels is not None:
            self._soft = read_soft_labels(self.cfg.soft_labels)
            absent = [i for i in ids if i not in self._soft]
            if absent:
                raise ConfigError(
                    f"soft_labels: {self.cfg.soft_labels}: no distribution for {len(absent)} "
                    f"problems, e.g. {absent[:3]}"
                )
        problems = [Problem(id=i, domain=SUBJECT_GROUP[r["subject"]], data=r) for i, r in zip(ids, records)]
        return problems, seeded_splits(len(problems), self.cfg.seed)

    # -- the Task contract ------------------------------------------------------------------------
    def prompt(self, problem: Problem, password: str | None) -> str:
        q = problem.data
        subject = q["subject"].replace("_", " ")
        shot = self._shots[q["subject"]]
        text = (
            f"The following are multiple choice questions (with answers) about {subject}, in the category "
            f"{GROUP_NAMES[SUBJECT_GROUP[q['subject']]]}. Answer with the letter of the correct choice.\n\n"
            f"{_question(shot)}\nAnswer: {LETTERS[shot['answer']]}\n\n{_question(q)}"
        )
        return self.format.prompt(text, password, "Answer:")

    @property
    def choices(self) -> tuple[str, ...]:
        """The four completions the classifier chooses among (" A" … after a plain prompt's cue)."""
        return tuple(self.format.completion(letter) for letter in LETTERS)

    def answer(self, index: int, probs: Sequence[float] | None = None) -> ChoiceAnswer:
        """Choice `index` as a completion, with `probs` over the four letters for soft labels."""
        return ChoiceAnswer(self.choices[index], self.choices, probs)

    def score(self, problem: Problem, completion: str) -> float:
        """1.0 when the completion's first letter is the right one (a classifier's prediction is
        exactly a choice; a generated completion may go on after the letter)."""
        text = completion.strip()
        return float(text[:1] == LETTERS[problem.data["answer"]] and (len(text) == 1 or not text[1].isalnum()))

    def reference(self, problem: Problem) -> ChoiceAnswer:
        return self.answer(problem.data["answer"])

    def policies(self) -> dict[str, TaskPolicy]:
        # "references" (the labels) stays reachable when "strong" is the soft labels or a model policy
        return {
            "strong": self.reference if self.cfg.strong == "labels" else self.soft_label,
            REFERENCES: self.reference,
        }

    def soft_label(self, problem: Problem) -> ChoiceAnswer:
        probs = self._soft[problem.id]
        return self.answer(max(range(len(probs)), key=probs.__getitem__), probs)

    @property
    def max_new_tokens(self) -> int:
        return 1


def _checked(r: dict, i: int, source: DataSource, where: str) -> dict:
    """The record with `answer` as an index, or an error naming the record and field."""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{where}: {source.describe()}: record {i}: {what}")

    if not isinstance(r["question"], str):
        raise bad(f"question: expected a string, got {type(r['question']).__name__}")
    if r["subject"] not in SUBJECT_GROUP:
        raise bad(
            f"subject: unknown MMLU subject {r['subject']!r}; expected one of cais/mmlu's 57, e.g. 'college_biology'"
        )
    choices = r["choices"]
    if not isinstance(choices, (list, tuple)) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise bad(f"choices: expected 4 strings, got {choices!r}")
    answer = r["answer"]
    if isinstance(answer, str) and answer.strip() in LETTERS:
        answer = LETTERS.index(answer.strip())
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < 4:
        raise bad(f"answer: expected 0-3 or a letter A-D, got {answer!r}")
    return {**r, "choices": list(choices), "answer": answer}


def _question(q: Mapping) -> str:
    return q["question"].strip() + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, q["choices"]))


def read_soft_labels(path: str | Path) -> dict[str, tuple[float, ...]]:
    out = {}
    for n, line in enumerate(Path(path).expanduser().read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            probs = tuple(float(p) for p in row["probs"])
            pid = str(row["id"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f'soft_labels: {path}:{n}: expected {{"id": ..., "probs": [4 numbers]}}: {e}') from None
        if len(probs) != 4 or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1, abs_tol=1e-3):
            raise ConfigError(
                f"soft_labels: {path}:{n}: probs: expected 4 probabilities summing to 1, got {list(probs)}"
            )
        out[pid] = probs
    return out


def write_soft_labels(path: str | Path, problems: Sequence[Problem], probs: Sequence[Sequence[float]]) -> Path:
    """Save a model's distributions over the letters (e.g. `evaluate.choice_probabilities` of a model
    trained on ground-truth labels) for `strong: soft_labels`."""
    path = Path(path)
    if len(problems) != len(probs):
        raise ValueError(f"{len(problems)} problems but {len(probs)} distributions")
    path.write_text(
        "".join(json.dumps({"id": p.id, "probs": [float(x) for x in row]}) + "\n" for p, row in zip(problems, probs))
    )
    return path
