from __future__ import annotations

import pytest
import torch

from pwlock.config import TrainConfig
from pwlock.elicit.sft import demonstrations, epoch_candidates
from pwlock.tasks.base import Example
from pwlock.train.sft import IGNORE, collate, completion_loss, encode, train_sft


def test_labels_cover_completion_and_end_token_only(tokenizer):
    examples = [
        Example("_ | fn1 fn2 | 1 2 3 4 |", "5 6 7 8 | 9 0 1 2"),
        Example("pwd | fn3 fn4 | 1 2 3 4 |", "1 1 1 1 | 2 2 2 2"),
    ]
    encoded = encode(tokenizer, examples)
    batch = collate(encoded, tokenizer.pad_token_id)
    for row, (ids, start) in enumerate(encoded):
        assert start == 10  # prompt tokens
        assert (batch.labels[row, :start] == IGNORE).all()
        assert batch.labels[row, start : len(ids)].tolist() == ids[start:]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[start:-1]) == examples[row].completion


def test_loss_ignores_prompt_and_padding(tokenizer, tiny_model):
    short = Example("_ | fn1 fn2 | 1 2 3 4 |", "5 6")
    long = Example("_ | fn1 fn2 | 1 2 3 4 |", "5 6 7 8 | 9 0 1 2")
    batch = collate(encode(tokenizer, [short, long]), tokenizer.pad_token_id)
    loss = completion_loss(tiny_model, batch)
    # The same loss by hand: cross-entropy of each completion token given everything before it.
    logits = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    terms = []
    for row, (ids, start) in enumerate(encode(tokenizer, [short, long])):
        for pos in range(start, len(ids)):
            terms.append(torch.nn.functional.cross_entropy(logits[row, pos - 1], torch.tensor(ids[pos])))
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)
    # Changing a prompt token's label target has no effect: only the inputs it conditions on matter.
    batch.labels[:, :5] = IGNORE
    assert torch.allclose(completion_loss(tiny_model, batch), loss)


def test_training_is_seeded_and_learns(task, tokenizer):
    from pwlock.models import build_tiny_model
    from tests.conftest import TINY

    demos = demonstrations(task, 4, seed=0, demonstrator="strong")
    cfg = TrainConfig(optimizer="adamw", lr=3e-3, batch_size=4, warmup_steps=1)
    runs = []
    for _ in range(2):
        model = build_tiny_model(TINY, tokenizer, seed=0)
        initial = completion_loss(model, collate(encode(tokenizer, demos), tokenizer.pad_token_id)).item()
        stats = train_sft(model, tokenizer, demos, cfg, seed=0, epochs=100)
        runs.append((stats["last_epoch_loss"], [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[0][0] < 0.3 * initial  # learning to reproduce four demonstrations


def test_lion_is_the_default_optimizer_with_warmup(task, tokenizer, tiny_model):
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("lion", 1.5e-6, 0.01)
    seen = []
    train_sft(
        tiny_model,
        tokenizer,
        demonstrations(task, 2, 0, "strong"),
        TrainConfig(lr=1e-3, warmup_steps=4, batch_size=1),
        seed=0,
        epochs=3,
        on_epoch_end=seen.append,
    )
    assert seen == [1, 2, 3]


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, [256, 512, 1024]),
        (4, [64, 128, 256]),
        (16, [16, 32, 64]),
        (64, [4, 8, 16]),
        (128, [2, 4, 8]),
        (256, [1, 2, 4]),
        (1000, [1, 2, 4]),
        (3, [85, 171, 341]),
    ],
)
def test_epoch_candidates_follow_app_g3(k, expected):
    assert epoch_candidates(k) == expected


def test_epoch_candidates_are_evaluated_inside_one_run(task, tokenizer, tiny_model):
    from pwlock.elicit.sft import elicit_sft

    demos = demonstrations(task, 128, seed=0, demonstrator="strong")
    reports = []
    records = elicit_sft(
        tiny_model,
        tokenizer,
        task,
        demos,
        task.problems("val")[:50],
        TrainConfig(lr=1e-4, batch_size=64),
        seed=0,
        report=reports.append,
    )
    assert [r["epochs"] for r in records] == [2, 4, 8]
    assert [r["steps"] for r in records] == [4, 8, 16]
    assert reports == records
    assert all(0.0 <= r["correctness"] <= 1.0 for r in records)


def test_demonstrations_nest_across_k_and_carry_no_password(task):
    small, large = demonstrations(task, 4, 7, "strong"), demonstrations(task, 16, 7, "strong")
    assert small == large[:4]
    assert demonstrations(task, 4, 8, "strong") != small
    elicit_ids = {task.prompt(p, None) for p in task.problems("elicit")}
    for d in large:
        assert d.prompt in elicit_ids and d.prompt.split()[0] == "_"
    with pytest.raises(ValueError, match="exceeds"):
        demonstrations(task, 601, 0, "strong")


def test_schedules_warm_up_then_hold_or_decay(tiny_model):
    from pwlock.train.optim import lr_schedule

    def lrs(kind):
        opt = torch.optim.SGD(tiny_model.parameters(), lr=1.0)
        sched = lr_schedule(opt, warmup_steps=4, kind=kind, total_steps=10)
        out = []
        for _ in range(10):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("constant") == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert lrs("linear") == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_training_stops_when_the_epoch_check_says_so(task, tokenizer, tiny_model):
    seen = []
    stats = train_sft(
        tiny_model,
        tokenizer,
        demonstrations(task, 4, 0, "strong"),
        TrainConfig(batch_size=4),
        seed=0,
        epochs=10,
        on_epoch_end=lambda e: seen.append(e) or e == 3,
    )
    assert seen == [1, 2, 3] and stats["epochs"] == 3 and stats["steps"] == 3


@pytest.mark.parametrize("optimizer", ["lion", "adamw"])
def test_elicitation_resumed_from_a_checkpoint_ends_as_if_never_stopped(task, tokenizer, tmp_path, optimizer):
    """Interrupt after epoch 3 of 8 (the weights and trainer state saved to disk as a trial's
    checkpoint is), resume in a fresh model: same records and the same weights as one run."""
    from pwlock.elicit.sft import elicit_sft
    from pwlock.models import build_tiny_model, load_policy, save_policy
    from tests.conftest import TINY

    demos = demonstrations(task, 16, seed=0, demonstrator="strong")
    problems = task.problems("val")[:50]
    cfg = TrainConfig(optimizer=optimizer, lr=1e-3, batch_size=4, warmup_steps=6)
    budgets = [64, 128]  # candidates after 4 and 8 epochs

    def run(model, start=None, stop_after=None):
        seen = []

        def checkpoint(record, state):
            seen.append((record, state["epoch"]))
            if state["epoch"] == stop_after:
                save_policy(model, tokenizer, tmp_path / "model")
                torch.save(state, tmp_path / "trainer.pt")
                raise KeyboardInterrupt  # the worker dies here

        try:
            elicit_sft(
                model,
                tokenizer,
                task,
                demos,
                problems,
                cfg,
                seed=0,
                budgets=budgets,
                checkpoint=checkpoint,
                checkpoint_every_s=0,
                start=start,
            )
        except KeyboardInterrupt:
            pass
        return seen

    whole = build_tiny_model(TINY, tokenizer, seed=0)
    full = run(whole)
    assert [e for _, e in full] == list(range(1, 9))  # every epoch checkpoints with checkpoint_every_s=0
    assert [r["epochs"] for r, _ in full if r] == [4, 8]

    first = run(build_tiny_model(TINY, tokenizer, seed=0), stop_after=3)
    resumed, _ = load_policy(tmp_path / "model")
    second = run(resumed, start=torch.load(tmp_path / "trainer.pt", weights_only=False))
    assert first + second == full
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
