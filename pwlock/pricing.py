"""The price of a sweep's plan in GPU-hours, with pwlock.cost's price list: every upstream artifact
(0 if the store has it) and every trial, as the plan's stages and trials will run them; and the
plan described for people with its price (what --dry-run prints)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pwlock import problem_filter
from pwlock.analysis import FIGURE, GENERALIZATION_FIGURE, RL_FIGURE
from pwlock.artifacts import eval_problems
from pwlock.config import FIXEDRDM, ConfigError, ModelConfig, resolve_engine
from pwlock.cost import (
    CHARS_PER_TOKEN,
    KNOWN_ARCHS,
    KNOWN_PARAMS,
    Arch,
    Assumptions,
    Cost,
    DoesNotFit,
    Engine,
    Estimate,
    GpuMemory,
    Item,
    Model,
    Pricer,
    Tokens,
    TrialCosts,
    dpo_pairs,
)
from pwlock.elicit.base import Method
from pwlock.elicit.dpo import price_dpo_samples
from pwlock.evaluate import classifies
from pwlock.models import build_tiny_model, n_parameters, word_level_tokenizer
from pwlock.plan import STRONG_SPLITS, Plan, dpo_samples_of
from pwlock.stages import HOLDOUT_SIZE
from pwlock.store import Store
from pwlock.tasks import Task
from pwlock.train.sft import steps_per_epoch


def task_tokens(task: Task, password: str, sample: int = 200) -> Tokens:
    """Mean tokens of the task's own examples: words for tasks with a word-level vocabulary, else
    characters / CHARS_PER_TOKEN; a completion is capped at the task's `max_new_tokens`."""
    problems = task.problems("elicit")[:sample]
    count = (lambda s: len(s.split())) if task.vocabulary() is not None else (lambda s: len(s) / CHARS_PER_TOKEN)
    prompt = sum(count(task.prompt(p, password)) for p in problems) / len(problems)
    refs = [task.reference(p) for p in problems]
    if any(r is None for r in refs):
        raise ConfigError(f"task {task.name!r}: no reference answers to count tokens from")
    completion = min(task.max_new_tokens, sum(max(1, math.ceil(count(r))) for r in refs) / len(refs))
    return Tokens(prompt, completion + 1, completion + 1)


def evaluation_of(task: Task) -> str:
    """How the task is scored: a classifier's forward pass, a teacher-forced one, or generation."""
    if classifies(task, task.problems("val")[:1]):
        return "classify"
    return "forward" if task.exact_match else "generate"


def arch_of(config: Any) -> Arch:
    """A Hugging Face config's shape (a multimodal model's text part)."""
    config = getattr(config, "text_config", config)
    heads = config.num_attention_heads
    return Arch(
        config.num_hidden_layers,
        config.hidden_size,
        heads,
        getattr(config, "num_key_value_heads", None) or heads,
        getattr(config, "max_position_embeddings", None),
        getattr(config, "head_dim", None),
    )


def model_of(cfg_model: Any, task: Task) -> Model:
    """The study's model and its shape: a tiny one is built on the meta device and counted; a hub
    model pwlock knows from KNOWN_PARAMS / KNOWN_ARCHS; a local directory from its config."""
    bytes_per_param = {"float32": 4, "bfloat16": 2, "float16": 2}[cfg_model.dtype]
    if cfg_model.base == "tiny":
        with torch.device("meta"):
            model = build_tiny_model(cfg_model.tiny, word_level_tokenizer(task.vocabulary()), 0)
        return Model(n_parameters(model), bytes_per_param, arch_of(model.config))
    if cfg_model.base in KNOWN_PARAMS:
        return Model(KNOWN_PARAMS[cfg_model.base], bytes_per_param, KNOWN_ARCHS.get(cfg_model.base))
    if cfg_model.base.endswith(".gguf") and Path(cfg_model.base).expanduser().is_file():
        from gguf import GGUFReader  # only for a GGUF file: its tensors' shapes, memory-mapped

        reader = GGUFReader(Path(cfg_model.base).expanduser())
        return Model(sum(int(t.n_elements) for t in reader.tensors), bytes_per_param)
    if Path(cfg_model.base).expanduser().is_dir():
        from transformers import AutoConfig, AutoModelForCausalLM  # only for a local model directory

        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg_model.base))
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"model.base: {cfg_model.base}: cannot read its config to count parameters: {e}"
            ) from None
        return Model(sum(p.numel() for p in model.parameters()), bytes_per_param, arch_of(model.config))
    raise ConfigError(
        f"model.base: no parameter count known for {cfg_model.base!r}; known: {sorted(KNOWN_PARAMS)}, "
        "or name a local model directory or GGUF file"
    )


def policy_stage_cost(art: Any, by_key: dict[str, Any], price: Pricer, task: Task, tokens: Tokens) -> Cost:
    """A model policy's fine-tuning, a sample pool's generation (pwlock.policies) or soft labels'
    forward passes (pwlock.soft_labels); a pool read from a supplied file costs its stage's
    overhead only."""

    def model(base: str, dtype: str) -> Model:
        return model_of(ModelConfig(base=base, dtype=dtype), task)

    if art.spec.get("generator"):  # the stage's own engine (a policy's generator.vllm)
        price = price.with_engine(Engine.of(art.spec["generator"]["vllm"]))
    if art.stage == "policy_model":
        m, train = model(art.spec["base"], art.spec["dtype"]), art.spec["train"]
        n = len(task.problems(art.spec["split"])) * art.spec["samples"]
        return price.train(m, n, tokens, train["epochs"], train["batch_size"]) + price.overhead([m], [m])
    if art.stage == "soft_labels":  # one forward pass over each problem's prompt, every split's
        m = model(art.spec["base"], art.spec["dtype"])
        problems = sum(len(task.problems(s)) for s in art.spec["splits"])
        return Cost(generate_s=price.forward(m, problems, tokens.prompt + 1)) + price.overhead([m])
    if art.stage == "policy_dpo":  # iterated DPO's rounds: 2 samples per problem, one DPO epoch on the pairs
        m, d = model(art.spec["base"], art.spec["dtype"]), art.spec["dpo"]
        problems = min(d["problems"], len(task.problems(art.spec["split"])))
        engine = "hf" if art.spec["generator"]["backend"] == "hf" else "vllm"
        step = price.generate(m, 2 * problems, tokens, engine)
        step += price.dpo(m, dpo_pairs(problems, d["continuous_reward"]), tokens, d["train"]["batch_size"])
        return step * d["rounds"] + price.overhead([m], [m], engine=engine == "vllm")
    src = art.spec["source"]
    if "jsonl" in src:
        return price.overhead()
    m = model(by_key[src["model"]].spec["base"] if "model" in src else src["base"], src["dtype"])
    problems = len(eval_problems(task, art.spec["split"], art.spec["max_problems"]))
    draws = 1 if art.spec["temperature"] == 0 else art.spec["n"]
    engine = "hf" if art.spec["generator"]["backend"] == "hf" else "vllm"  # "auto" picks vLLM on a GPU
    return price.generate(m, problems * draws, tokens, engine) + price.overhead([m], engine=engine == "vllm")


@dataclass(frozen=True)
class _Sizes:
    """What a plan's task and model weigh, for its price: read once per estimate."""

    tokens: Tokens  # a reference example's
    model: Model  # model.base's
    evaluation: str  # how the task is scored (evaluation_of)
    n_eval: int  # problems an evaluation scores
    holdout: int  # problems a training's stop_at target is checked on
    n_lock: int  # problems of the splits π_strong's model trains on


def estimate_plan(
    p: Plan, store: Store | None = None, a: Assumptions | None = None, compare_engines: bool = True
) -> Estimate:
    """Price a sweep's plan: every upstream artifact (0 if `store` has it) and every trial."""
    a = a or Assumptions()
    cfg, task = p.cfg, p.task
    z = _Sizes(
        task_tokens(task, cfg.lock.password or task.default_password),
        model_of(cfg.model, task),
        evaluation_of(task),
        len(eval_problems(task, cfg.eval.split, cfg.eval.max_problems)),
        min(HOLDOUT_SIZE, len(task.problems("weak"))),
        sum(len(task.problems(s)) for s in STRONG_SPLITS),
    )
    cpu = cfg.ray.gpus_per_trial == 0
    artifacts = []
    for art in p.artifacts:
        c, note = _artifact_cost(p, art, Pricer(a), z)
        in_store = store is not None and store.has(art.key)
        artifacts.append(
            Item(art.key, art.label, c, cfg.ray.gpus_per_stage or 1.0, deps=art.deps, in_store=in_store, note=note)
        )
    est = Estimate(
        cfg.name,
        cfg.source,
        a,
        artifacts,
        _trials(p, a, z),
        cpu_study=cpu,
        evaluates_by_generation=z.evaluation == "generate",
    )
    est.check_fit()  # a trial that does not fit its GPU: refused (a CPU study has none to fit)
    if compare_engines and est.evaluates_by_generation:
        other = dataclasses.replace(a, evaluation_engine="vllm" if a.evaluation_engine == "hf" else "hf")
        est.other_engine_gpu_hours = estimate_plan(p, store, other, compare_engines=False).gpu_hours
    return est


def _artifact_cost(p: Plan, art: Any, price: Pricer, z: _Sizes) -> tuple[Cost, str]:
    """An upstream artifact's price as its stage builds it, and a note on it ("at most": a training
    that stops at its target)."""
    cfg, task, model, tokens = p.cfg, p.task, z.model, z.tokens
    if art.stage == "strong_model":
        c = price.train(model, z.n_lock, tokens, cfg.strong.train.epochs, cfg.strong.train.batch_size)
        stop = cfg.strong.stop_at
        c += price.evaluate(model, z.holdout, tokens, z.evaluation, cfg.strong.train.epochs) if stop else Cost()
        return c + price.overhead(saves=[model]), " (at most: stops at its target)" if stop else ""
    if art.stage == "locked_model":
        mode, weak = art.spec["mode"], art.spec.get("weak", "weak")
        train = cfg.lock.train_of(mode)
        # fixedrdm also trains π_strong's answers towards it, but for a classifier (its one
        # example per prompt already trains the one position towards it: pwlock.lock.weak_examples)
        per_problem = 3 if weak == FIXEDRDM and z.evaluation != "classify" else 2
        c = price.train(model, per_problem * len(task.problems("lock")), tokens, train.epochs, train.batch_size)
        stop = cfg.lock.stop_at
        c += price.evaluate(model, z.holdout, tokens, z.evaluation, 2 * train.epochs) if stop else Cost()
        loads = [model] if mode in ("sft", "base") else []
        return c + price.overhead(loads, [model]), " (at most: stops at its target)" if stop else ""
    if art.stage == "control_model":  # at most its lock's epochs (and π_strong's model's, for sft)
        train = cfg.lock.train_of(art.spec["mode"])
        c = price.train(model, 2 * len(task.problems("lock")), tokens, train.epochs, train.batch_size)
        if "strong_train" in art.spec:
            c += price.train(model, z.n_lock, tokens, cfg.strong.train.epochs, cfg.strong.train.batch_size)
        return c + price.overhead(saves=[model]), " (at most: its lock's epochs)"
    if art.stage in ("model_eval", "lock_audit"):  # an evaluation per condition (an audit's: per probe)
        engine = "hf" if art.engine is None else "vllm"  # where the stage decodes it (eval.engine)
        points = len(art.spec["conditions"])
        c = price.with_engine(Engine.of(art.engine)).evaluate(model, z.n_eval, tokens, z.evaluation, points, engine)
        return c + price.overhead([model], engine=art.engine is not None), ""
    if art.stage == "dpo_samples":  # plain DPO's rounds of samples, shared by its learning rates' trials
        stage = price.with_engine(Engine.of(art.spec["generator"]["vllm"]))  # the locked model's samples
        locked = tokens.locked(task.max_new_tokens, price.a.locked_new_tokens_share)
        return price_dpo_samples(stage, model, locked, art, len(task.problems("elicit"))), ""
    if art.stage in ("policy_model", "policy_dpo", "sample_pool", "soft_labels"):
        on = p.keep.every if p.keep is not None and art.key in p.keep.keys else task  # the filter's: all problems
        return policy_stage_cost(art, {b.key: b for b in p.artifacts}, price, on, tokens), ""
    if art.stage == "problem_filter":  # programs run in the sandbox, on every problem
        return problem_filter.price(price, art, p.keep.every, cfg.ray.cpus_per_stage), ""
    return price.overhead(), ""  # policy scores: the task's own policies, no model


def _trials(p: Plan, a: Assumptions, z: _Sizes) -> list[Item]:
    """Every trial priced by its method's entry, with the artifacts it needs and its GPU memory."""
    cfg, task, rl = p.cfg, p.task, p.cfg.elicit.rl
    trial_gpus = cfg.ray.gpus_per_trial or 1.0
    # Priced on a GPU per trial (trial_gpus), where "auto" is vLLM, as the driver resolves it there.
    # A trial's engine (RL's, or SFT's evaluation engine) has elicit.rl.generator.vllm's settings;
    # what it decodes is the locked model's (Assumptions.locked_new_tokens_share).
    trial_price = Pricer(a).with_engine(Engine.of(rl.generator.vllm))
    costs = TrialCosts(
        trial_price,
        z.model,
        z.tokens.locked(task.max_new_tokens, a.locked_new_tokens_share),
        z.evaluation,
        z.n_eval,
        len(task.problems("elicit")),
        cfg.elicit.train.batch_size,
        list(cfg.elicit.sample_budgets),
        rl,
        resolve_engine(rl.generator.backend, trial_gpus),
        resolve_engine(cfg.eval.engine, trial_gpus),  # SFT trials' evaluation
    )
    trials = []
    for t in p.trials:
        method = p.methods[t.method]
        c = method.price(costs, t.k, t.epoch_candidates)
        starts, evals = (p.locked, p.locked_eval) if t.lock_mode in p.locked else (p.controls, p.control_eval)
        deps = (p.policy_scores.key, starts[t.lock_mode].key, evals[t.lock_mode].key)
        deps += (p.strong_eval.key,) if p.strong_eval else ()
        if method.demonstrations and t.demonstrator in p.policies.elicit:  # a model's samples
            deps += (p.policies.elicit[t.demonstrator],)
        if method.samples_from == "locked":  # the lock's samples for this seed, drawn upstream
            deps += (p.setup.dpo_samples[dpo_samples_of(t.lock_mode, t.seed)],)
        figure = RL_FIGURE if method.rl else FIGURE if t.domain == "all" else GENERALIZATION_FIGURE
        memory = None if cfg.ray.gpus_per_trial == 0 else trial_memory(trial_price, z.model, method, cfg, c, trial_gpus)
        trials.append(Item(t.name, t.name, c, trial_gpus, (figure,), deps, memory=memory))
    return trials


def trial_memory(price: Pricer, model: Model, method: Method, cfg: Any, c: Cost, gpus: float) -> GpuMemory:
    """A trial's GPU memory: its model trained by the optimizers its method uses (DPO's
    elicit.rl.dpo_train, SFT's and expert iteration's elicit.train), DPO's frozen reference (the
    locked model, or iterated DPO's copy of the model at the round's start: elicit/dpo.py), and the
    engine it starts, if any (`c.engine_starts`)."""
    dpo = method.pairs
    trains = [cfg.elicit.rl.dpo_train] if dpo else []
    trains += [cfg.elicit.train] if not dpo or method.demonstrations == "rl" else []  # SFT before RL
    master = cfg.model.dtype == "bfloat16"
    kinds = [(t.optimizer, master and t.bf16_update == "master") for t in trains]
    return price.trial_memory(model, kinds, dpo, model if c.engine_starts else None, gpus)


def check_fit(p: Plan) -> None:
    """Refuse, before any work, a plan whose trials do not fit their GPU (DoesNotFit, with the
    numbers). A plan that cannot be priced (a hub model of unknown size) is not checked."""
    try:
        estimate_plan(p, compare_engines=False)
    except DoesNotFit:
        raise
    except ConfigError:
        pass


def describe(p: Plan, store: Store | None = None) -> str:
    """The plan for people: each artifact (with its price, and whether `store` has it), the guards,
    each trial, then the price of the whole."""
    try:
        est: Estimate | None = estimate_plan(p, store)
        hours = {i.id: f"  {i.gpu_hours:.3f} GPU-h" for i in est.artifacts + est.trials}
    except DoesNotFit:
        raise
    except ConfigError as e:  # e.g. a hub model of unknown size: the plan stands without its cost
        est, hours, why = None, {}, str(e)
    lines = [f"study {p.cfg.name!r} from {p.cfg.source}: task {p.task_spec['name']}"]
    lines += [p.keep.describe()] if p.keep is not None else []
    lines.append(f"upstream artifacts ({len(p.artifacts)}):")
    for a in p.artifacts:
        state = "" if store is None else ("  [in store, reused]" if store.has(a.key) else "  [to build]")
        lines.append(f"  {a.label:<36} {a.key}{hours.get(a.key, '')}{state}")
    g = p.cfg.guards
    lines.append(
        f"guards: lock gate {'on' if g.lock_gate else 'OFF'} (with - without password ≥ {g.min_password_gap}, "
        f"without ≤ π_weak + {g.max_over_weak}, wrong ≤ without + {g.max_wrong_over_no_pwd}); "
        f"leak guard {'on' if g.leak_guard else 'OFF'} (similarity ≥ {g.leak_similarity})"
    )
    ks = f"k {sorted(p.cfg.elicit.ks)} (SFT) × " if any(m.demonstrations for m in p.methods.values()) else ""
    lines.append(
        f"elicitation trials ({len(p.trials)}): locks {list(p.locked)} × methods {p.cfg.elicit.methods} × "
        f"{ks}seeds {p.cfg.elicit.seeds}"
    )
    batch = p.cfg.elicit.train.batch_size
    n_elicit = len(p.task.problems("elicit"))
    for t in p.trials:
        method = p.methods[t.method]
        if not method.rl:
            steps = [e * steps_per_epoch(t.k, batch) for e in t.epoch_candidates]
            lines.append(f"  {t.name:<40} epoch candidates {t.epoch_candidates} = steps {steps}{hours.get(t.name, '')}")
        else:
            per = method.samples_per_round(p.cfg.elicit.rl, n_elicit)
            lines.append(
                f"  {t.name:<40} {len(t.epoch_candidates)} rounds × {per} samples = "
                f"{len(t.epoch_candidates) * per} samples{hours.get(t.name, '')}"
            )
    lines += est.summary() if est else [f"cost estimate unavailable: {why}"]
    return "\n".join(lines)
