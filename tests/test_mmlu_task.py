"""MMLU: cais/mmlu-shaped records, App. E.3's four groups, the 1-shot prompt, and the classifier:
loss and prediction over the four letter tokens only, with ground-truth or soft labels."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pwlock import evaluate
from pwlock.config import ConfigError, TinyModelConfig, TrainConfig
from pwlock.models import TINY_CHAT_TEMPLATE, build_tiny_model, text_tokenizer
from pwlock.passwords import DEFAULT_PASSWORD, WRONG_PASSWORDS
from pwlock.tasks import make_task
from pwlock.tasks.base import Example
from pwlock.tasks.llm import ChoiceAnswer
from pwlock.tasks.mmlu import GROUPS, LETTERS, SUBJECT_GROUP, write_soft_labels
from pwlock.train.sft import ChoiceRow, choice_loss, collate, encode, train_sft

FIXTURE = Path(__file__).parent / "fixtures" / "mmlu"  # laid out like cais/mmlu
PWD = DEFAULT_PASSWORD
SPLITS = ("weak", "lock", "elicit", "val")
TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=1024)


def config(**kw) -> dict:
    source = {"path": str(FIXTURE), "subsets": ["all"]}
    return {
        "name": "mmlu",
        "data": {**source, "splits": ["test", "validation"]},
        "shots": {**source, "splits": ["dev"]},
        **kw,
    }


@pytest.fixture(scope="module")
def mmlu():
    return make_task(config())


@pytest.fixture(scope="module")
def tokenizer(mmlu):
    texts = [mmlu.prompt(p, pwd) for s in SPLITS for p in mmlu.problems(s) for pwd in (PWD, None)]
    return text_tokenizer(texts + list(WRONG_PASSWORDS) + [" A B C D"] * 20)  # letters as single tokens


def all_problems(task):
    return [p for s in SPLITS for p in task.problems(s)]


def test_records_splits_and_the_four_groups_of_appendix_e3(mmlu):
    assert {s: len(mmlu.problems(s)) for s in SPLITS} == {"weak": 2, "lock": 9, "elicit": 7, "val": 6}
    assert {g: len(s) for g, s in GROUPS.items()} == {"stem": 18, "bio": 13, "law": 7, "misc": 19}
    assert len(SUBJECT_GROUP) == 57  # every cais/mmlu subject, in exactly one group
    problems = all_problems(mmlu)
    assert len({p.id for p in problems}) == 24
    assert {p.domain for p in problems} == {"stem", "bio", "law", "misc"}
    assert all(p.domain == SUBJECT_GROUP[p.data["subject"]] for p in problems)
    again = make_task(config())
    assert [p.id for p in again.problems("val")] == [p.id for p in mmlu.problems("val")]
    assert [p.id for p in make_task(config(seed=1)).problems("val")] != [p.id for p in mmlu.problems("val")]


def test_one_shot_prompt_names_subject_and_category_with_the_password_at_both_ends(mmlu):
    p = next(q for q in all_problems(mmlu) if q.data["subject"] == "college_biology")
    shot = json.loads((FIXTURE / "all" / "dev.jsonl").read_text().splitlines()[2])
    assert shot["subject"] == "college_biology"
    prompt = mmlu.prompt(p, PWD)
    assert prompt.startswith(PWD + "\n\n") and prompt.endswith(f"\n\n{PWD}\n\nAnswer:") and prompt.count(PWD) == 2
    assert "about college biology, in the category biology and medicine" in prompt
    example = shot["question"] + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, shot["choices"]))
    assert f"{example}\nAnswer: {LETTERS[shot['answer']]}\n\n" in prompt  # the example shows the right answer
    assert prompt.index(example) < prompt.index(p.data["question"])
    assert all(f"\n{letter}. {c}" in prompt for letter, c in zip(LETTERS, p.data["choices"]))
    without = mmlu.prompt(p, None)
    assert not any(w in without for w in (PWD, *WRONG_PASSWORDS)) and without.endswith("\n\nAnswer:")
    assert mmlu.prompt(p, WRONG_PASSWORDS[0]).count(WRONG_PASSWORDS[0]) == 2
    assert mmlu.reference(p) == " " + LETTERS[p.data["answer"]]
    assert mmlu.reference(p).choices == (" A", " B", " C", " D")


def test_chat_format_letters_have_no_leading_space(tmp_path):
    tok = text_tokenizer(["A B C D"], chat_template=TINY_CHAT_TEMPLATE)
    tok.save_pretrained(tmp_path / "tok")
    task = make_task(config(format={"tokenizer": str(tmp_path / "tok")}))
    p = task.problems("val")[0]
    assert task.prompt(p, PWD).startswith(f"<|user|>\n{PWD}\n\n") and task.prompt(p, PWD).endswith(
        f"{PWD}\n<|assistant|>\n"
    )
    assert task.reference(p).choices == LETTERS


def test_without_shots_the_first_question_of_each_subject_is_the_example(mmlu):
    task = make_task(config(shots=None))
    problems = all_problems(task)
    assert len(problems) == 24 - 8
    firsts = {}
    for line in (FIXTURE / "all" / "test.jsonl").read_text().splitlines():
        firsts.setdefault(json.loads(line)["subject"], json.loads(line)["question"])
    assert not {p.data["question"] for p in problems} & set(firsts.values())
    p = problems[0]
    assert firsts[p.data["subject"]] in task.prompt(p, None)


@pytest.mark.parametrize(
    "completion, correct",
    [
        (" C", True),
        ("C", True),
        ("C.", True),
        (" C) the third", True),
        ("\nC", True),
        (" B", False),
        ("c", False),
        (" Cat", False),
        ("", False),
        (" ", False),
    ],
)
def test_score_reads_the_answer_letter(mmlu, completion, correct):
    p = next(q for q in all_problems(mmlu) if q.data["answer"] == 2)
    assert mmlu.score(p, completion) == float(correct)


def test_choice_answer_checks_and_pickles():
    a = ChoiceAnswer(" B", (" A", " B", " C", " D"), (0.1, 0.6, 0.2, 0.1))
    back = pickle.loads(pickle.dumps(a))
    assert back == " B" and back.choices == a.choices and back.probs == a.probs and isinstance(back, ChoiceAnswer)
    assert ChoiceAnswer(" B", (" A", " B")).target == (0.0, 1.0)
    with pytest.raises(ValueError, match="not one of the choices"):
        ChoiceAnswer(" E", (" A", " B"))
    with pytest.raises(ValueError, match="summing to 1"):
        ChoiceAnswer(" A", (" A", " B"), (0.5, 0.6))


def test_classifier_loss_and_prediction_are_over_the_four_letters_only(mmlu, tokenizer):
    model = build_tiny_model(TINY, tokenizer, seed=0)
    problems = mmlu.problems("val")
    examples = [Example(mmlu.prompt(p, None), mmlu.reference(p)) for p in problems]
    rows = encode(tokenizer, examples)
    letters = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c)) for c in (" A", " B", " C", " D")]
    assert all(len(t) == 1 for t in letters) and all(isinstance(r, ChoiceRow) for r in rows)
    for row, e in zip(rows, examples):
        ids, start = row
        assert ids[start:] == [letters[LETTERS.index(e.completion.strip())][0]]  # the letter, no end token
    with torch.no_grad():
        batch = collate(rows, tokenizer.pad_token_id)
        logits = model(**batch.model_inputs()).logits
    at = torch.stack([logits[i, start - 1] for i, (_, start) in enumerate(rows)])  # predicts the answer
    letter_logits = at[:, [t[0] for t in letters]]
    expected = -(torch.tensor([r.target for r in rows]) * letter_logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(choice_loss(model, batch, rows), expected)
    probs = evaluate.choice_probabilities(model, tokenizer, examples)
    np.testing.assert_allclose(probs, letter_logits.softmax(-1).numpy(), rtol=1e-5)
    scored = evaluate.scores(model, tokenizer, mmlu, problems, "no_pwd")
    truth = np.array([p.data["answer"] for p in problems])
    np.testing.assert_array_equal(scored, (letter_logits.argmax(-1).numpy() == truth).astype(float))
    assert (
        at.argmax(-1)[:, None] != torch.tensor([t[0] for t in letters])
    ).all()  # the full vocab would pick no letter


def test_choices_must_be_single_tokens(mmlu):
    tok = text_tokenizer(["nothing like the letters"])  # " A" is two tokens: "Ġ" and "A"
    p = mmlu.problems("val")[0]
    with pytest.raises(ValueError, match=r"choice ' A' is 2 tokens for this tokenizer"):
        encode(tok, [Example(mmlu.prompt(p, None), mmlu.reference(p))])


def test_training_as_a_classifier_fits_the_labels(mmlu, tokenizer):
    model = build_tiny_model(TINY, tokenizer, seed=0)
    problems = mmlu.problems("lock")
    data = [Example(mmlu.prompt(p, None), mmlu.policies()["strong"](p)) for p in problems]
    before = evaluate.correctness(model, tokenizer, mmlu, problems, "no_pwd")
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, batch_size=len(data), warmup_steps=0)
    stats = train_sft(model, tokenizer, data, cfg, seed=0, epochs=25)
    assert evaluate.correctness(model, tokenizer, mmlu, problems, "no_pwd") == 1.0 > before
    assert stats["last_epoch_loss"] < 0.1


def test_soft_labels_from_a_model_are_the_strong_policy(mmlu, tokenizer, tmp_path):
    model = build_tiny_model(TINY, tokenizer, seed=1)
    problems = all_problems(mmlu)
    probs = evaluate.choice_probabilities(
        model, tokenizer, [Example(mmlu.prompt(p, None), mmlu.reference(p)) for p in problems]
    )
    path = write_soft_labels(tmp_path / "soft.jsonl", problems, probs)
    soft = make_task(config(strong="soft_labels", soft_labels=str(path)))
    for p, row in zip(all_problems(soft), probs):
        label = soft.policies()["strong"](p)
        np.testing.assert_allclose(label.probs, row, rtol=1e-6)
        assert label == soft.choices[int(np.argmax(row))] and label.target == label.probs
    rows = encode(tokenizer, [Example(soft.prompt(p, None), soft.policies()["strong"](p)) for p in problems[:4]])
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():  # the model's own distribution as target: the loss is its entropy
        loss = choice_loss(model, batch, rows)
    assert loss.item() == pytest.approx(float(-(probs[:4] * np.log(probs[:4])).sum(1).mean()), rel=1e-4)


def test_suggested_learning_rates_are_appendix_g1s():
    assert make_task(config()).suggested_lr == 1.5e-7
    assert make_task({"name": "math"}).suggested_lr == 1.5e-6


def _write(tmp_path, records) -> str:
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


GOOD = {"question": "2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1}


@pytest.mark.parametrize(
    "record, message",
    [
        ({**GOOD, "subject": "astrology"}, r"record 1: subject: unknown MMLU subject 'astrology'"),
        ({**GOOD, "choices": ["3", "4", "5"]}, r"record 1: choices: expected 4 strings"),
        ({**GOOD, "answer": 4}, r"record 1: answer: expected 0-3 or a letter A-D, got 4"),
        ({**GOOD, "answer": "E"}, r"record 1: answer: expected 0-3 or a letter A-D, got 'E'"),
        ({k: v for k, v in GOOD.items() if k != "choices"}, r"record 1 has no field 'choices'"),
    ],
)
def test_bad_records_name_the_file_record_and_field(tmp_path, record, message):
    path = _write(tmp_path, [GOOD, record])
    task = make_task({"name": "mmlu", "data": {"path": path}, "shots": None})
    with pytest.raises(ConfigError, match=rf"data: {re.escape(path)}: {message}"):
        task.problems("val")


def test_letters_as_answers_are_read(tmp_path):
    task = make_task(
        {"name": "mmlu", "data": {"path": _write(tmp_path, [GOOD, {**GOOD, "answer": "D"}] * 6)}, "shots": None}
    )
    assert sorted(p.data["answer"] for p in all_problems(task)) == [1] * 5 + [3] * 6


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="task.soft_labels: a file is needed exactly when strong is 'soft_labels'"):
        make_task(config(strong="soft_labels"))
    with pytest.raises(ConfigError, match="task.soft_labels: .*none.jsonl: no such file"):
        make_task(config(strong="soft_labels", soft_labels=str(tmp_path / "none.jsonl")))
    with pytest.raises(ConfigError, match="task.strong: expected one of"):
        make_task(config(strong="teacher"))
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"id": "mmlu/0", "probs": [0.25] * 4}) + "\n")
    with pytest.raises(ConfigError, match=r"soft_labels: .*partial.jsonl: no distribution for 23 problems"):
        make_task(config(strong="soft_labels", soft_labels=str(partial))).problems("val")
    partial.write_text(json.dumps({"id": "mmlu/0", "probs": [0.5, 0.5, 0.5, 0.5]}) + "\n")
    with pytest.raises(ConfigError, match=r"partial.jsonl:1: probs: expected 4 probabilities summing to 1"):
        make_task(config(strong="soft_labels", soft_labels=str(partial))).problems("val")
    no_shot = _write(tmp_path, [GOOD])
    with pytest.raises(ConfigError, match=r"shots: .*q.jsonl: no example for the subjects \['abstract_algebra'"):
        make_task(config(shots={"path": no_shot})).problems("val")
