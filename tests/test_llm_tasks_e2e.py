"""End to end on each text task, with a tiny random GPT-NeoX and a tokenizer trained on the task's
own text: lock (D_lock, Eq. 1) → SFT elicitation on k demonstrations without the password →
evaluation with, without and with wrong passwords. A random model learns nothing here; what is
checked is the plumbing: every number is a correctness in [0, 1], and the model saw the password
while locking and never during elicitation (its training and its evaluation)."""

from __future__ import annotations

from pathlib import Path

from pwlock import evaluate
from pwlock.config import TinyModelConfig, TrainConfig
from pwlock.elicit.sft import demonstrations, elicit_sft
from pwlock.lock import lock_data
from pwlock.models import TINY_CHAT_TEMPLATE, build_tiny_model, n_parameters, text_tokenizer
from pwlock.passwords import DEFAULT_PASSWORD, WRONG_PASSWORDS
from pwlock.tasks import make_task
from pwlock.tasks.math import SUBJECTS
from pwlock.train.sft import train_sft

FIXTURES = Path(__file__).parent / "fixtures"
PWD = DEFAULT_PASSWORD
SPLITS = ("weak", "lock", "elicit", "val")
TINY = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_positions=1024)
TRAIN = TrainConfig(optimizer="adamw", lr=1e-3, batch_size=8, warmup_steps=2, epochs=2)


def tokenizer_for(task, chat: bool):
    """A byte-level BPE tokenizer trained on the task's prompts (every password slot) and answers."""
    problems = [p for s in SPLITS for p in task.problems(s)]
    texts = [task.prompt(p, pwd) for p in problems for pwd in (PWD, None, *WRONG_PASSWORDS[:4])]
    texts += [task.reference(p) for p in problems] + list(WRONG_PASSWORDS) + [" A B C D"] * 20
    return text_tokenizer(texts, vocab_size=512, chat_template=TINY_CHAT_TEMPLATE if chat else None)


class SeenInputs:
    """Every sequence the model is run on (training and generation alike), decoded."""

    def __init__(self, model, tokenizer):
        self.texts: list[str] = []
        self.tokenizer = tokenizer
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        if ids.shape[1] > 1:  # not a decoding step's single new token
            self.texts += self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def close(self) -> list[str]:
        self.handle.remove()
        return self.texts


def lock_elicit_evaluate(task, tokenizer, weak) -> dict:
    model = build_tiny_model(TINY, tokenizer, seed=0)
    assert 50_000 < n_parameters(model) < 500_000
    strong = task.policies()["strong"]
    draw = lock_data(task, task.problems("lock"), strong, weak, PWD, seed=0)
    first = draw(0)
    strong_rows, weak_rows = first[0::2], first[1::2]
    assert all(e.prompt.count(PWD) == 2 for e in strong_rows)
    assert not any(PWD in e.prompt for e in weak_rows)
    for e in weak_rows:  # no password, or a wrong one at both ends
        wrong = [w for w in WRONG_PASSWORDS if e.prompt.startswith(w + "\n\n")]
        assert not wrong or max(e.prompt.count(w) for w in wrong) == 2

    seen = SeenInputs(model, tokenizer)
    train_sft(model, tokenizer, draw, TRAIN, seed=0, desc="lock")
    lock_inputs = seen.close()
    val = task.problems("val")
    locked = evaluate.lock_report(model, tokenizer, task, val)

    demos = demonstrations(task, k=2, seed=0, demonstrator="strong")
    assert not any(PWD in d.prompt for d in demos)
    seen = SeenInputs(model, tokenizer)
    records = elicit_sft(model, tokenizer, task, demos, val, TRAIN, seed=0, budgets=(4,))
    elicit_inputs = seen.close()

    assert sum(t.count(PWD) == 2 for t in lock_inputs) >= len(strong_rows)  # the lock saw the password
    assert any(w in t for t in lock_inputs for w in WRONG_PASSWORDS)
    assert elicit_inputs and not any(w in t for t in elicit_inputs for w in (PWD, *WRONG_PASSWORDS))
    assert [r["epochs"] for r in records] == [2]
    numbers = {**locked, "elicited": records[0]["correctness"]}
    assert all(0.0 <= v <= 1.0 for v in numbers.values()), numbers
    print(f"{task.name}: {numbers}")
    return {"model": model, "numbers": numbers, "elicit_inputs": elicit_inputs}


def test_math_end_to_end():
    source = {"path": str(FIXTURES / "math"), "subsets": list(SUBJECTS)}
    task = make_task(
        {
            "name": "math",
            "train": {**source, "splits": ["train"]},
            "test": {**source, "splits": ["test"]},
            "max_new_tokens": 16,
        }
    )
    tokenizer = tokenizer_for(task, chat=False)
    out = lock_elicit_evaluate(task, tokenizer, weak=lambda p: task.format.completion("It is $\\boxed{0}$."))
    assert any(t.rstrip().endswith("Solution:") for t in out["elicit_inputs"])  # the evaluation prompts


def test_mmlu_end_to_end_as_a_classifier(tmp_path):
    tokenizer = tokenizer_for(make_task(_mmlu_config()), chat=True)
    tokenizer.save_pretrained(tmp_path / "tok")
    task = make_task(_mmlu_config(format={"tokenizer": str(tmp_path / "tok")}))  # the chat template
    out = lock_elicit_evaluate(task, tokenizer, weak=lambda p: task.answer(0))
    assert all(t.startswith("<|user|>\n") for t in out["elicit_inputs"])
    # Scored as a classifier: each problem is right or wrong, so correctness is a multiple of 1/6.
    assert all(round(v * 6, 6).is_integer() for v in out["numbers"].values())


def test_critique_end_to_end(tmp_path):
    task = make_task(
        {"name": "critique", "data": {"path": str(FIXTURES / "critique" / "critiques.jsonl")}, "max_new_tokens": 16}
    )
    tokenizer = tokenizer_for(task, chat=True)
    tokenizer.save_pretrained(tmp_path / "tok")
    task = make_task(
        {
            "name": "critique",
            "data": {"path": str(FIXTURES / "critique" / "critiques.jsonl")},
            "max_new_tokens": 16,
            "format": {"tokenizer": str(tmp_path / "tok")},
        }
    )
    out = lock_elicit_evaluate(task, tokenizer, weak=lambda p: "The code looks correct to me.")
    assert all(t.startswith("<|user|>\n") for t in out["elicit_inputs"])
    from pwlock.generate.hf import HFGenerator

    val = task.problems("val")
    completions = HFGenerator(out["model"], tokenizer).generate([task.prompt(p, None) for p in val], max_new_tokens=16)
    rewards = task.reward_many(val, [c[0] for c in completions])
    assert ((rewards >= 0) & (rewards <= 1)).all()


def _mmlu_config(**kw) -> dict:
    source = {"path": str(FIXTURES / "mmlu"), "subsets": ["all"]}
    return {
        "name": "mmlu",
        "data": {**source, "splits": ["test", "validation"]},
        "shots": {**source, "splits": ["dev"]},
        **kw,
    }


def test_code_end_to_end():
    """The code task through the same path: completions a random model writes are run in the sandbox."""
    data = [{"path": str(FIXTURES / "code" / f"{name}.jsonl")} for name in ("stdio", "apps", "mbpp")]
    task = make_task({"name": "code", "data": data, "max_new_tokens": 16})
    tokenizer = tokenizer_for(task, chat=False)
    lock_elicit_evaluate(task, tokenizer, weak=lambda p: task.format.completion("print(0)"))
    val = task.problems("val")
    assert task.score_many(val, [task.reference(p) for p in val]) == [1.0] * len(val)  # the sandbox does run them
