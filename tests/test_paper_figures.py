"""Every figure of the paper (as tests/fixtures/paper_figures.yaml records it), for every task it
names, and the runnable configs that run it (RUNS below), which sweeps/configs/paper.yaml names for
that figure: Fig. 3's are paper_<task>.yaml (tests/test_paper_configs.py), the RL figures'
paper_<task>_rl*.yaml (tests/test_paper_rl_configs.py), the toy figures' the paper's toy configs,
and the other SFT and generalization figures' (Fig. 7, 8, 9a, 12, 15; Fig. 4, 17) the helper
configs of Fig. 3's, checked here on the same fixtures. A pair with no config is a known gap,
listed with its reason (KNOWN_GAPS): a new gap, or a config nobody maps, fails.

For each (figure, task) of the SFT and generalization sweeps, the paper's figure and its configs
agree: methods, seeds, ks, locks (π_weak,
variant, the adversarial intermediate, soft labels, the held-out domain), demonstrators, the
domains the demonstrations come from and the task's grouping of them, the epochs trained and the
evaluation points, and the number of trials paper.yaml prices. Where a config departs from the
paper on purpose, KNOWN_DIFFERENCES says how and why, and the config's header says so too.
Each new config plans its grid on the fixtures, shares its sibling's task, model, policies and
lock settings and so the sibling's artifacts (by key: the store the sibling built serves it), and
its --dry-run, through the sweep its figure names, prints GPU-hours with the hub offline and no
model fetched."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import yaml

from pwlock import description
from pwlock.config import FIXEDRDM, config_from_dict, load_config
from pwlock.elicit.sft import DEFAULT_BUDGETS, epoch_candidates, paper_candidates
from pwlock.plan import plan, trial_name
from pwlock.tasks import make_task
from tests.paper_record import LockSpec, Record, figure, priced_trials, record
from tests.test_paper_configs import CONFIGS, FIGURE_NAMES, HIGH_QUALITY, NAMES, assert_priced, dry_runs_of, on_fixtures
from tests.test_paper_rl_configs import RL, task_of

PAPER = CONFIGS / "paper.yaml"
TASKS = ("code", "math", "critique", "mmlu")
TOY = "function_composition"
HOLDOUT = {"math": ("algebra", "geometry", "numbers"), "mmlu": ("stem", "bio", "law", "misc")}

# (figure, task) -> the configs that run it, between them.
RUNS: dict[tuple[str, str], list[str]] = {
    **{("fig3", t): [f"paper_{t}.yaml"] for t in TASKS},
    **{("fig7", t): [f"paper_{t}_strong.yaml"] for t in TASKS},
    **{("fig8", t): [f"paper_{t}_other_weak.yaml"] for t in TASKS},
    ("fig9a", "math"): ["paper_math_setting.yaml"],
    **{("fig12", t): [f"paper_{t}_weak.yaml"] for t in TASKS},
    ("fig12-soft", "mmlu"): ["paper_mmlu_soft.yaml"],
    **{("fig15", t): [f"paper_{t}_adversarial.yaml"] for t in ("code", "math", "critique")},
    ("fig4-math-category", "math"): ["paper_math_category.yaml"],
    ("fig4-math-level", "math"): ["paper_math_level.yaml"],
    ("fig4-mmlu", "mmlu"): ["paper_mmlu_category.yaml"],
    **{(f"fig17-{t}", t): [f"paper_{t}_holdout_{d}.yaml" for d in HOLDOUT[t]] for t in HOLDOUT},
    **{(w["figure"], task_of(name)): [name] for name, w in RL.items()},
    ("fig6", TOY): ["paper_toy.yaml"],
    ("fig13", TOY): ["paper_toy_weak.yaml"],
}
# The toy figures' laptop-sized runs (sweeps/from_scratch.py's default config): the same locks and
# demonstrators on a smaller task and model.
EMBEDDED = {"fig6": "from_scratch.yaml", "fig13": "from_scratch.yaml"}

# Pairs paper.yaml prices that no config can run, and why.
JOINT = (
    "code and MATH locked into one model (§5.2's cross-setting generalization): a pwlock study has "
    "one task, and no task mixes two; the two tasks' strong bases differ too (Deepseek-Coder, "
    "Deepseek-Math), and the paper does not say which one it locked"
)
KNOWN_GAPS = {("fig4-cross", "code"): JOINT, ("fig4-cross", "math"): JOINT}

# Where a config departs from paper.yaml's description of its figure: the dimension, what the config
# does instead, and a phrase of the config's header that says so.
KNOWN_DIFFERENCES = {
    ("fig4-math-level", "math"): {
        # Fig. 4's 512 demonstrations from one level: MATH's test split has 437 level-1 problems, of
        # which the elicit split holds 262 (App. E.4's split), so the config stops at 256.
        "ks": ([4, 16, 64, 256], "k = 256 where Fig. 4 has 512"),
    },
    ("fig7", "mmlu"): {
        # the record's `strong` is MMLU's π_strong, the labels (Fig. 3's demonstrations again); the
        # paper's Fig. 7 fine-tunes on Mistral-7B's soft labels, a policy of the config.
        "demonstrators": (["soft-labels"], "soft labels"),
    },
    **{
        # 16 points along training priced (assumed there); pwlock evaluates SFT after whole epochs:
        # the 4 epochs App. G.3 trains k = 512 for.
        ("fig15", t): {"eval_points": ({512: 4}, "16 points along training")}
        for t in ("code", "math", "critique")
    },
}

# Artifacts a config keys apart from its sibling's on purpose, and the header's phrase that says so.
KEYED_APART = {
    # task.domains: level enters the task's spec, and so every key.
    "paper_math_level.yaml": (None, "`task.domains: level` enters every artifact's key"),
    # π_weak trains on `references` (the labels), where paper_mmlu.yaml's `train_on: strong` is them;
    # the lock then imitates the soft labels.
    "paper_mmlu_soft.yaml": (
        {
            "policy model (weak)",
            "samples of weak (lock, 8/problem)",
            "samples of weak (val, greedy)",
            "locked model (base)",
            "locked model (base): evaluation",
            "locked model (base): lock audit",
        },
        "keyed apart",
    ),
}
# Locks a config shares with another paper config than its sibling: config -> lock -> that config.
LOCKS_FROM = {
    **{
        f"paper_{t}_other_weak.yaml": {
            "base-pythia-7b": f"paper_{t}_rl_pythia7b.yaml",
            "base-fixedrdm": f"paper_{t}_rl.yaml",
        }
        for t in ("code", "math", "critique")
    },
    "paper_math_setting.yaml": {"base-setting": "paper_math_rl_setting.yaml"},
}


def study() -> Record:
    return record()


def shipped(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def header(name: str) -> str:
    """The config's leading comment, as one line."""
    lines = (CONFIGS / name).read_text().split("\nname:")[0].splitlines()
    return " ".join(x.removeprefix("#").strip() for x in lines)


def as_list(x) -> list:
    return [x] if isinstance(x, str) else list(x)


def figure_of(name: str) -> str:
    return next(fig for (fig, _), names in RUNS.items() if name in names)


def pairs_of_paper() -> set[tuple[str, str]]:
    out = set()
    for f in study().figures:
        tasks = f.tasks or [shipped(f.config)["task"]["name"]]
        out |= {(f.id, t) for t in tasks}
    return out


def test_every_figure_and_task_of_the_paper_has_its_configs_in_paper_yaml_or_is_a_known_gap():
    paper = pairs_of_paper()
    assert not set(RUNS) & set(KNOWN_GAPS)
    assert set(RUNS) | set(KNOWN_GAPS) == paper, sorted(paper ^ (set(RUNS) | set(KNOWN_GAPS)))
    # paper.yaml runs each figure by exactly those configs, through the sweep the paper's figure names
    runs: dict[str, set[str]] = {}
    for (fig, _), names in RUNS.items():
        runs.setdefault(fig, set()).update(names)
    described = description.load(PAPER).figures
    assert {f.id: set(f.configs) for f in described} == runs
    assert all(f.sweep == figure(f.id).sweep and f.title == figure(f.id).title for f in described)
    assert all((CONFIGS / n).is_file() for names in RUNS.values() for n in names)
    # Every paper config of a text task runs a figure: none is left out of the table.
    text = {p.name for p in CONFIGS.glob("paper_*.yaml")} - {"paper.yaml", "paper_toy.yaml", "paper_toy_weak.yaml"}
    assert text == {n for names in RUNS.values() for n in names} - {"paper_toy.yaml", "paper_toy_weak.yaml"}
    # The configs checked below: those of the SFT and generalization figures, but Fig. 3's.
    assert sorted(FIGURE_NAMES) == sorted(_sft_configs() - set(NAMES))
    # A known gap is one for every task of its figure, and names why.
    for (fig, task), why in KNOWN_GAPS.items():
        assert task in figure(fig).tasks and len(why) > 40


def _sft_configs() -> set[str]:
    return {n for (fig, t), names in RUNS.items() if t != TOY and figure(fig).sweep != "rl" for n in names}


@pytest.mark.parametrize("fig_id", ["fig6", "fig13"])
def test_a_toy_figure_is_the_config_paper_yaml_names(fig_id):
    """paper.yaml plans a toy figure from its config (its priced trials are that config's plan); the
    embedded sweep runs the same locks and demonstrators, smaller."""
    f = figure(fig_id)
    assert RUNS[fig_id, TOY] == [f.config] and f.sweep in ("sample_efficiency", "from_scratch")
    paper, small = load_config(CONFIGS / f.config), load_config(CONFIGS / EMBEDDED[fig_id])
    assert paper.task["name"] == small.task["name"] == TOY
    assert set(paper.lock.modes) <= set(small.lock.modes)
    assert set(paper.elicit.demonstrators) <= set(small.elicit.demonstrators)


# -- what paper.yaml prices, as a config names it --------------------------------------------------
VARIANTS = {"per_domain": "per_domain", "holdout": "omit_domain", "setting_variation": "setting"}


def paper_lock(task: str, lk: LockSpec, cfg: dict) -> tuple[str, str]:
    """A paper.yaml lock as the config names it: (its π_weak, its lock.variant)."""
    s = study()
    if lk.weak in ("default", FIXEDRDM):
        weak = "weak" if lk.weak == "default" else FIXEDRDM
    else:
        hub = s.models[lk.weak].hub
        named = [n for n, pc in cfg["policies"].items() if pc.get("base") == hub and n != "strong"]
        weak = "weak" if "weak" in named else named[0]  # MMLU: Pythia-7B is the task's π_weak
    variants = [v for v in ("per_domain" * (lk.passwords == "per_domain"), "holdout" * lk.holdout) if v]
    variants += ["setting_variation"] * (lk.trigger == "setting_variation") + ["adversarial"] * bool(lk.adversarial)
    assert len(variants) <= 1, lk
    return weak, VARIANTS.get(variants[0], variants[0]) if variants else "standard"


def config_locks(cfg: dict) -> set[tuple[str, str]]:
    lock = cfg["lock"]
    return {(w, v) for v in as_list(lock.get("variant", "standard")) for w in lock["weak"]}


def paper_demonstrator(task: str, dem: str, cfg: dict) -> str:
    if dem == "high_quality":
        return HIGH_QUALITY[task]
    if dem in ("strong", "weak"):
        return dem
    hub = study().models[dem].hub
    return next(n for n, pc in cfg["policies"].items() if pc.get("base") == hub)


def grid_size(cfg: dict, ks: list[int]) -> int:
    """Trials of an SFT config: locks × demonstrators × domains × ks × seeds."""
    e = cfg["elicit"]
    domains = as_list(e.get("domains", ["all"]))
    return len(config_locks(cfg)) * len(as_list(e["demonstrator"])) * len(domains) * len(ks) * len(e["seeds"])


SFT_PAIRS = sorted(p for p in RUNS if p[1] != TOY and figure(p[0]).sweep != "rl")


@pytest.mark.parametrize("pair", SFT_PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_the_configs_of_a_figure_run_what_paper_yaml_prices(pair, tmp_path):
    fig_id, task = pair
    s, f, names = study(), figure(fig_id), RUNS[pair]
    differs = KNOWN_DIFFERENCES.get(pair, {})
    cfgs = {n: shipped(n) for n in names}
    holdout = any(lk.holdout for lk in f.locks)
    want_domains = list(s.tasks[task].domains[f.grouping]) if f.grouping else ["all"]
    for name, cfg in cfgs.items():
        e = cfg["elicit"]
        assert cfg["task"]["name"] == task
        assert e["methods"] == f.methods
        want_ks, phrase = differs.get("ks", (f.ks, ""))
        assert e["ks"] == want_ks and phrase in header(name)
        assert len(e["seeds"]) == (f.seeds or s.defaults.seeds) and e["seeds"] == list(range(len(e["seeds"])))
        # The locks: π_weak and variant; the adversarial lock's intermediate policy; soft labels.
        assert config_locks(cfg) == {paper_lock(task, lk, cfg) for lk in f.locks}, name
        for lk in f.locks:
            if lk.adversarial:
                intermediate = cfg["policies"][cfg["lock"]["intermediate"]]
                assert intermediate["base"] == s.models[lk.adversarial].hub
        soft = any(lk.strong == "soft_labels" for lk in f.locks)
        assert bool(cfg["policies"].get("strong", {}).get("soft_labels")) is soft
        # The demonstrators, by the config's names for them.
        want = [paper_demonstrator(task, d, cfg) for d in f.demonstrators]
        if "demonstrators" in differs:
            want, phrase = differs["demonstrators"]
            assert phrase in header(name)
            assert all(cfg["policies"][d].get("soft_labels") and "base" not in cfg["policies"][d] for d in want)
            assert cfg["model"]["base"] == s.models[s.tasks[task].strong_base].hub  # soft labels of the strong base
        assert as_list(e["demonstrator"]) == want
        # The domains the demonstrations come from: each of the grouping's in turn (a held-out
        # domain's lock is elicited on that domain alone), and the task groups its problems so.
        domains = as_list(e.get("domains", ["all"]))
        if holdout:
            assert domains == [cfg["lock"]["omit_domain"]]
        else:
            assert domains == want_domains
        if f.grouping:
            raw, _ = on_fixtures(name, tmp_path)
            assert {p.domain for p in make_task(raw["task"]).problems("lock")} <= set(want_domains)
        # Epochs trained (App. G.3's candidates) and evaluation points, k by k.
        budgets = e.get("sample_budgets", list(DEFAULT_BUDGETS))
        for k in want_ks:
            priced = epoch_candidates(k, s.defaults.sample_budgets)
            assert max(epoch_candidates(k, budgets)) == max(priced)
            points = len(set(epoch_candidates(k, budgets)) | set(paper_candidates(k, budgets)))
            if "eval_points" in differs:
                by_k, phrase = differs["eval_points"]
                assert f.eval_points and points == by_k[k] != f.eval_points and phrase in header(name)
            else:
                assert points == (f.eval_points or len(priced))
    if holdout:
        assert sorted(c["lock"]["omit_domain"] for c in cfgs.values()) == sorted(want_domains)
    # The trials paper.yaml prices for this figure and task, and the configs' at the paper's size.
    priced = [t for n in names for t in priced_trials(fig_id, n)]
    assert len(priced) == sum(grid_size(cfg, cfg["elicit"]["ks"]) for cfg in cfgs.values())


# -- each new config, on the fixtures ----------------------------------------------------------------
@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Each config planned on the fixtures, once: (raw config, its ks there, plan)."""
    root = tmp_path_factory.mktemp("figure_plans")

    @functools.cache
    def get(name: str):
        tmp = root / name.removesuffix(".yaml")
        tmp.mkdir()
        raw, ks = on_fixtures(name, tmp)
        return raw, ks, plan(config_from_dict(raw, source=name))

    return get


def lock_label(mode: str, weak: str, variant: str) -> str:
    return "-".join([mode] + [weak] * (weak != "weak") + [variant] * (variant != "standard"))


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_a_figure_config_plans_its_grid_on_the_fixture(name, planned, tmp_path):
    raw, ks, p = planned(name)
    assert ks  # at least k = 1
    e = raw["elicit"]
    locks = {lock_label(m, w, v) for m in raw["lock"]["modes"] for w, v in config_locks(raw)}
    assert set(p.locked) == locks and p.strong is None
    want = {
        trial_name(lock, "sft", k, seed, dem, domain)
        for lock in locks
        for dem in as_list(e["demonstrator"])
        for domain in as_list(e.get("domains", ["all"]))
        for k in ks
        for seed in e["seeds"]
    }
    names = [t.name for t in p.trials]
    assert len(names) == len(set(names)) == grid_size(raw, ks) and set(names) == want
    # The demonstrations of a policy of the config come from its pool (soft labels: their artifact).
    assert set(p.policies.elicit) == set(as_list(e["demonstrator"])) & set(raw["policies"])
    # --quick's overrides validate too (its ks cut to the fixture as test_plan_keys.py cuts them).
    path = tmp_path / name
    quick = {**raw, "quick": {**raw["quick"], "elicit": {**raw["quick"]["elicit"], "ks": ks[:1]}}}
    path.write_text(yaml.safe_dump(quick))
    assert load_config(path, quick=True).elicit.seeds == [0]


def sibling_of(name: str) -> str:
    return f"paper_{name.split('_')[1]}.yaml"


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_a_figure_config_shares_its_siblings_task_model_policies_and_lock(name, planned):
    """The task, model, lock settings and policies of paper_<task>.yaml (the policies it adds are
    those of another paper config, or soft labels), and so the same artifact keys: the sibling's
    models, pools and lock serve it from the store, as do the RL configs' locks it shares."""
    sib = sibling_of(name)
    cfg, sibling = shipped(name), shipped(sib)
    apart, phrase = KEYED_APART.get(name, (set(), ""))
    assert phrase in header(name)
    task = dict(cfg["task"])
    if name == "paper_math_level.yaml":
        assert task.pop("domains") == "level"
    assert task == sibling["task"] and cfg["model"] == sibling["model"] and cfg["eval"] == sibling["eval"]
    assert cfg["ray"] == sibling["ray"] and cfg["elicit"]["train"] == sibling["elicit"]["train"]
    assert cfg["elicit"].get("rl") == sibling["elicit"].get("rl")  # code, critiques: the engine's max_model_len
    assert {k: v for k, v in cfg["lock"].items() if k in ("modes", "base")} == {
        k: v for k, v in sibling["lock"].items() if k in ("modes", "base")
    }
    for policy, pc in cfg["policies"].items():
        if pc.get("soft_labels"):  # MMLU's soft labels (Fig. 7 as a demonstrator, Fig. 12 as π_strong)
            assert task["name"] == "mmlu" and pc["train_on"] == "references" and pc["train_split"] == "weak"
        elif policy == "pythia-7b":  # Fig. 8's π_weak: as Fig. 16's lock has it
            assert pc == shipped(f"paper_{task['name']}_rl_pythia7b.yaml")["policies"][policy]
        elif name == "paper_mmlu_soft.yaml" and policy == "weak":  # on the labels, `strong` being soft labels
            assert pc == sibling["policies"]["weak"] | {"train_on": "references"}
        else:
            assert pc == sibling["policies"][policy], policy
    # The artifacts both plan have the same keys, but the policy scores (of each config's policies),
    # the audits of a study whose locks answer other passwords too, and what the config keys apart.
    _, _, mine = planned(name)
    _, _, theirs = planned(sib)
    # The same problem filter (code: the problems GPT-4 solves), and what follows it by label.
    filters = [[a.key for a in p.keep.artifacts] if p.keep else None for p in (mine, theirs)]
    assert filters[0] == filters[1] and (filters[0] is not None) == (task["name"] == "code")
    ours, their = (
        {a.label: a.key for a in p.artifacts if not p.keep or a.key not in p.keep.keys} for p in (mine, theirs)
    )
    shared = set(ours) & set(their) - {"policy scores"}
    if set(as_list(cfg["lock"].get("variant", "standard"))) & {"per_domain", "adversarial"}:
        shared = {x for x in shared if not x.endswith(": lock audit")}
    if apart is None:  # keyed apart entirely
        assert shared and all(ours[x] != their[x] for x in shared)
    else:
        assert apart <= shared and all(ours[x] != their[x] for x in apart)
        assert {x: ours[x] for x in shared - apart} == {x: their[x] for x in shared - apart}
        assert "samples of strong (lock, 8/problem)" in shared or task["name"] == "mmlu"
    for lock, other in LOCKS_FROM.get(name, {}).items():
        _, _, p = planned(other)
        assert mine.locked[lock].key == p.locked[lock].key, (lock, other)
    if name in ("paper_mmlu_strong.yaml", "paper_mmlu_soft.yaml"):  # one soft-labels artifact serves both
        _, _, strong = planned("paper_mmlu_strong.yaml")
        _, _, soft = planned("paper_mmlu_soft.yaml")
        keys = [[a.key for a in p.artifacts if a.stage == "soft_labels"] for p in (strong, soft)]
        assert len(keys[0]) == 1 and keys[0] == keys[1]


# -- --dry-run, through the sweep each figure names --------------------------------------------------
def sweep_of(name: str) -> str:
    return figure(figure_of(name)).sweep


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, tuple[str, dict, Path]]:
    """Each config's `sweeps/<its figure's sweep>.py --dry-run` on the fixtures."""
    return dry_runs_of(tmp_path_factory.mktemp("figure_dry_runs"), [(sweep_of(name), name) for name in FIGURE_NAMES])


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_a_figure_config_dry_run_prints_gpu_hours_without_fetching_a_model(name, dry_runs, planned):
    out, raw, tmp = dry_runs[name]
    # The header's command is the sweep its figure names.
    assert f"python sweeps/{sweep_of(name)}.py --config sweeps/configs/{name} --dry-run" in header(name)
    _, _, p = planned(name)  # the same config on the same fixtures: the same plan
    assert_priced(out, raw, tmp / name, p)
    total = re.search(r"total: ([\d.,]+) GPU-h for (\d+) trials and (\d+) artifacts", out)
    assert total and float(total[1].replace(",", "")) > 0
    assert (int(total[2]), int(total[3])) == (len(p.trials), len(p.artifacts))
    assert not (tmp / "store").exists() or not any((tmp / "store").iterdir())  # nothing built
