"""bf16 Lion keeps the paper's ±1.5e-6 steps; packed batches train like padded ones; checkpointing
where it pays changes memory, not gradients."""

from __future__ import annotations

import pytest
import torch
from lion_pytorch import Lion
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from pwlock.config import ConfigError, config_from_dict
from pwlock.train.batching import IGNORE, VARLEN, max_step_tokens, pack, padding_fraction
from pwlock.train.checkpointing import CheckpointPlan, checkpoint_layers, decoder_layers, layers_to_keep
from pwlock.train.optim import BF16Lion, make_optimizer, stochastic_round
from pwlock.train.sft import collate, completion_loss

LR = 1.5e-6  # App. G.1


def lion_drift(make, steps: int, n: int = 20_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights like a trained model's (N(0, 0.02)) after `steps` Lion steps on a fixed sequence of
    random gradients; returns the start (fp32) and the end (fp32)."""
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(n, generator=gen) * 0.02
    grads = [torch.randn(n, generator=gen) for _ in range(steps)]
    param, opt = make(w0)
    for g in grads:
        param.grad = g.to(param.dtype)
        opt.step()
    return w0, param.detach().float()


def fp32_lion(w0):
    p = torch.nn.Parameter(w0.clone())
    return p, Lion([p], lr=LR, weight_decay=0.0)


def bf16(opt_cls, **kw):
    def make(w0):
        p = torch.nn.Parameter(w0.to(torch.bfloat16))
        return p, opt_cls([p], lr=LR, weight_decay=0.0, **kw)

    return make


def kept(w0: torch.Tensor, end: torch.Tensor, ref_end: torch.Tensor) -> float:
    """How much of fp32 Lion's movement a run reproduces: projection of its drift on fp32's drift.
    The bf16 start is the rounded w0, so drifts are measured from there."""
    start = w0.to(torch.bfloat16).float()
    ref = ref_end - w0
    return float(((end - start) * ref).sum() / (ref * ref).sum())


def test_bf16_lion_moves_weights_as_fp32_lion_does():
    torch.manual_seed(0)
    w0, ref_end = lion_drift(fp32_lion, steps=50)
    _, end = lion_drift(bf16(BF16Lion, bf16_update="stochastic"), steps=50)
    assert kept(w0, end, ref_end) == pytest.approx(1.0, abs=0.03)
    _, plain_end = lion_drift(bf16(Lion), steps=50)
    assert kept(w0, plain_end, ref_end) < 0.1  # round-to-nearest drops most steps


def test_master_weights_move_as_fp32_lion_and_bf16_weights_follow():
    torch.manual_seed(0)
    w0, ref_end = lion_drift(fp32_lion, steps=50)
    masters = []

    def make(w):
        p, opt = bf16(BF16Lion, bf16_update="master")(w)
        masters.append((p, opt))
        return p, opt

    _, end = lion_drift(make, steps=50)
    p, opt = masters[0]
    master = opt.state[p]["master"]
    assert master.dtype == torch.float32
    assert kept(w0, master, ref_end) == pytest.approx(1.0, abs=0.03)
    # The bf16 weights are the master's rounding: never more than half a bf16 spacing away.
    assert ((end - master).abs() <= master.abs() * 2.0**-8 + 1e-12).all()


def test_one_step_changes_weights_by_lr_in_expectation():
    """Over many draws of the rounding, one stochastic step's mean change is fp32 Lion's for every
    weight; plain bf16 changes only the ~2% of weights whose spacing is below lr."""
    n, draws = 4_000, 400
    gen = torch.Generator().manual_seed(1)
    w0 = (torch.randn(n, generator=gen) * 0.02).to(torch.bfloat16)
    grad = torch.randn(n, generator=gen).to(torch.bfloat16)
    intended = -LR * torch.sign(grad.float())  # first step: momentum is zero
    torch.manual_seed(1)
    mean = torch.zeros(n)
    for _ in range(draws):
        p = torch.nn.Parameter(w0.clone())
        p.grad = grad
        BF16Lion([p], lr=LR, betas=(0.9, 0.99), weight_decay=0.0).step()
        mean += (p.detach().float() - w0.float()) / draws
    assert float((mean * intended).sum() / (intended * intended).sum()) == pytest.approx(1.0, abs=0.03)
    # Per weight: a draw moves by one bf16 spacing with probability lr / spacing, so the mean of
    # `draws` draws is within a few standard errors of -lr * sign.
    spacing = (w0.float().abs() * 2.0**-7).clamp(min=LR)
    err = (spacing * LR / draws).sqrt()
    assert ((mean - intended).abs() < 5 * err + 1e-9).float().mean() > 0.99

    p = torch.nn.Parameter(w0.clone())
    p.grad = grad
    Lion([p], lr=LR, weight_decay=0.0).step()
    changed = float((p.detach() != w0).float().mean())
    assert 0.005 < changed < 0.05


def test_stochastic_round_is_unbiased_and_exact_on_bf16_values():
    torch.manual_seed(0)
    x = torch.randn(50_000) * 0.02
    mean = torch.stack([stochastic_round(x).float() for _ in range(256)]).mean(0)
    spacing = x.abs() * 2.0**-7
    assert float(((mean - x) / spacing).abs().mean()) < 0.05
    exact = x.to(torch.bfloat16)
    assert torch.equal(stochastic_round(exact.float()), exact)


def test_fp32_weights_get_lion_pytorch_update_unchanged():
    torch.manual_seed(0)
    w, g = torch.randn(1000), torch.randn(1000)
    results = []
    for opt_cls in (Lion, BF16Lion):
        p = torch.nn.Parameter(w.clone())
        opt = opt_cls([p], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
        for _ in range(3):
            p.grad = g.clone()
            opt.step()
        results.append(p.detach())
    assert torch.equal(results[0], results[1])


def test_master_weights_resume_from_state_dict():
    torch.manual_seed(0)
    w = (torch.randn(500) * 0.02).to(torch.bfloat16)
    grads = [torch.randn(500).to(torch.bfloat16) for _ in range(4)]

    def run(resume_after: int | None):
        p = torch.nn.Parameter(w.clone())
        opt = make_optimizer([p], "lion", LR, (0.9, 0.99), 0.01, bf16_update="master")
        for i, g in enumerate(grads):
            if i == resume_after:
                state = opt.state_dict()
                p = torch.nn.Parameter(p.detach().clone())
                opt = make_optimizer([p], "lion", LR, (0.9, 0.99), 0.01, bf16_update="master")
                opt.load_state_dict(state)
            p.grad = g
            torch.manual_seed(i)  # the momentum's stochastic rounding
            opt.step()
        return p.detach(), opt.state[p]["master"]

    straight, resumed = run(None), run(2)
    assert torch.equal(straight[0], resumed[0]) and torch.equal(straight[1], resumed[1])
    assert straight[1].dtype == torch.float32


def test_bad_bf16_update_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"lock\.sft\.bf16_update"):
        config_from_dict(
            {"name": "x", "task": {"name": "function_composition"}, "lock": {"sft": {"bf16_update": "fp8"}}}
        )
    with pytest.raises(ValueError, match="bf16_update"):
        BF16Lion([torch.nn.Parameter(torch.zeros(2))], lr=LR, betas=(0.9, 0.99), weight_decay=0.0, bf16_update="x")


# --- packing --------------------------------------------------------------------------------------


def tiny_models():
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    neox = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
    )
    return {"llama": llama, "gpt_neox": neox}


def examples(seed: int = 0) -> list[tuple[list[int], int]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(2, 50, (n,), generator=gen).tolist(), start)
        for n, start in [(7, 3), (15, 5), (4, 2), (11, 0), (30, 12)]
    ]


def test_pack_lays_examples_back_to_back():
    enc = examples()
    batch = pack(enc)
    total = sum(len(ids) for ids, _ in enc)
    assert batch.input_ids.shape == (1, total)
    assert batch.cu_seq_lens.tolist() == [0, 7, 22, 26, 37, 67] and batch.max_length == 30
    offset = 0
    for ids, start in enc:
        assert batch.input_ids[0, offset : offset + len(ids)].tolist() == ids
        assert batch.position_ids[0, offset : offset + len(ids)].tolist() == list(range(len(ids)))
        labels = batch.labels[0, offset : offset + len(ids)].tolist()
        assert labels[: max(start, 1)] == [IGNORE] * max(start, 1) and labels[max(start, 1) :] == ids[max(start, 1) :]
        offset += len(ids)
    with pytest.raises(ValueError, match="at least one example"):
        pack([])


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("attention", ["sdpa", VARLEN])
def test_packed_batch_gives_the_padded_loss_and_gradients(arch, attention):
    model = tiny_models()[arch]
    enc = examples()
    padded = completion_loss(model, collate(enc, pad_id=0))
    padded.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_attn_implementation(attention)  # VARLEN off a GPU runs its per-example reference path
    packed = completion_loss(model, pack(enc))
    packed.backward()
    assert packed.item() == pytest.approx(padded.item(), abs=1e-5)
    for p, g in zip(model.parameters(), want):
        assert torch.allclose(p.grad, g, atol=1e-5)


def test_padding_fraction_and_step_bounds():
    assert padding_fraction([10, 10, 10, 10], 2) == 0.0
    assert padding_fraction([10, 30, 20, 20], 2) == pytest.approx(1 - 80 / 100)
    assert max_step_tokens([5, 9, 3, 7], 2, packed=True) == 16
    assert max_step_tokens([5, 9, 3, 7], 2, packed=False) == 18


def test_train_sft_packed_matches_padded(task, tokenizer):
    from pwlock.config import TrainConfig
    from pwlock.elicit.sft import demonstrations
    from pwlock.models import build_tiny_model
    from pwlock.train.sft import train_sft
    from tests.conftest import TINY

    demos = demonstrations(task, 8, seed=0, demonstrator="strong")
    weights = []
    for packing in (False, True):
        model = build_tiny_model(TINY, tokenizer, seed=0)
        cfg = TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, warmup_steps=1, packing=packing)
        train_sft(model, tokenizer, demos, cfg, seed=0, epochs=2)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*weights))


# --- checkpointing --------------------------------------------------------------------------------


def test_checkpointing_some_layers_changes_no_gradient():
    model = tiny_models()["llama"]
    model.train()
    enc = examples()
    grads = []
    for n in (0, 1, 2):
        checkpoint_layers(model, n)
        assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [i < n for i in range(2)]
        model.zero_grad()
        completion_loss(model, pack(enc)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0], other))


def test_checkpoint_plan_modes_off_a_gpu():
    model = tiny_models()["gpt_neox"]
    assert CheckpointPlan(model, "auto").kept == 2  # nothing to plan on the CPU: keep every layer
    plan = CheckpointPlan(model, "all")
    assert plan.kept == 0 and all(layer.gradient_checkpointing for layer in decoder_layers(model))
    assert CheckpointPlan(model, "none").kept == 2


def test_layers_to_keep_fits_the_budget():
    # 7B-like: 41 GB static, 1.2 MB/token fixed, 0.28 MB/token per kept layer, 8,192 tokens, 68 GB.
    keep = layers_to_keep(41e9, 1.2e6, 0.28e6, 8192, 68e9, 30)
    assert keep == 7
    assert 41e9 + 8192 * (1.2e6 + keep * 0.28e6) <= 68e9 < 41e9 + 8192 * (1.2e6 + (keep + 1) * 0.28e6)
    assert layers_to_keep(70e9, 1.2e6, 0.28e6, 8192, 68e9, 30) == 0
    assert layers_to_keep(1e9, 1e3, 1e3, 8192, 68e9, 16) == 16


# --- the GPU benchmark's code paths, on tiny shapes --------------------------------------------------


@pytest.mark.slow
def test_gpu_trainer_benchmark_tiny_mode(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "gpu_trainer.py"),
            "--tiny",
            "--shapes",
            "tiny-neox",
            "--warmup",
            "3",
            "--steps",
            "1",
            "--spread-steps",
            "4",
            "--json",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads((tmp_path / "r.json").read_text()) if "variant" in r}
    assert not [r for r in rows.values() if "error" in r]
    assert rows["baseline: plain loop"]["kept"] < 0.1  # plain bf16 Lion
    assert rows["pwlock stochastic"]["kept"] == pytest.approx(1.0, abs=0.15)
    assert rows["pwlock master"]["kept_fp32_master"] == pytest.approx(1.0, abs=0.01)
    assert rows["pwlock spread padded"]["padding_share"] > 0.2 and rows["pwlock spread packed"]["padding_share"] == 0.0
    assert rows["pwlock spread packed"]["loss"] == pytest.approx(rows["pwlock spread padded"]["loss"], abs=1e-2)
