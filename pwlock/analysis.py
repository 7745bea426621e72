"""Results of a finished experiment: Tune results -> tidy DataFrames -> summary.csv and figures.

Reads only the experiment, a directory or an s3:// URL (no running Ray needed), so a notebook can
do the same:

    from pwlock import analysis
    summary = analysis.summarize(analysis.load_candidates("results/local_2026-11-26_15-30-00"))
    analysis.plot_sample_efficiency(summary, "fig.png")

Tune's own APIs read an experiment too, with none of pwlock's code (pwlock.tune_names): one row per
trial, its last result and its config, `config/run/name` (the trial's name less Tune's id) and its
lock's baselines (`config/run/locked_no_pwd`, `weak`, `strong`, ...: upstream.json's numbers; an
adversarial lock's `locked_second_pwd` and `intermediate` too).
`Tuner.restore` finds the trainable by its name, `elicitation_trial`; on S3 pass
`storage_filesystem=` (pwlock.store.open_store(url).fs) to both, and the bucket/prefix path:

    from ray import tune
    df = tune.ExperimentAnalysis("results/local_2026-11-26_15-30-00").dataframe()
    def elicitation_trial(config): ...
    grid = tune.Tuner.restore("results/local_2026-11-26_15-30-00", elicitation_trial).get_results()
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pyarrow import fs as pafs

from pwlock.config import CONTROL_SUFFIX
from pwlock.store import Store, open_store

SUMMARY = "summary.csv"
FIGURE = "sample_efficiency.png"
RL_FIGURE = "rl.png"  # correctness against samples generated, for RL methods (Fig. 5)
RL_CANDIDATES = "rl_curves.csv"  # the rows of that figure: one per (trial, round)
STUDY = "study.yaml"  # the resolved study config
UPSTREAM_FILE = "upstream.json"  # locked models' and policies' correctness, by lock mode
TIMINGS = "timings.json"  # wall time of each phase, and of each upstream build
GENERALIZATION_FIGURE = "generalization.png"  # demonstrations from one domain (Fig. 4, 10, 17)
TRIAL_KEYS = ["task", "lock_mode", "method", "demonstrator", "domain", "k", "seed"]
GROUP = TRIAL_KEYS[:-1]  # what seeds repeat
BY_DOMAIN = "correctness_by_domain/"  # a candidate's correctness on each domain's problems (Tune's flattening)
OTHER = "other_domains"  # mean of the per-domain correctness of the domains not trained on (Fig. 4)
UPSTREAM = ["locked_with_pwd", "locked_no_pwd", "locked_wrong_pwd", "weak", "strong", "strong_model"]
# An adversarial lock's (App. B.3.2) beside those: its correctness with the second password, and its
# intermediate policy's own, which the second password was trained to show (other locks lack both)
SECOND = ["locked_second_pwd", "intermediate"]
# lock.seeds: the label a lock's replicates share (`lock_mode` is the replicate's own) and its seed
REPLICATE = ["lock", "lock_seed"]
LR = "lr"  # the learning rate of a method run once per rate (DPO: elicit.rl.dpo_lr_scales)


def experiment_store(path: str | os.PathLike) -> tuple[Store, str]:
    """The store holding an experiment, and the experiment's name, from its directory or s3:// URL."""
    url = str(path).rstrip("/")
    parent, _, name = url.rpartition("/")
    if not name or (url.startswith("s3://") and parent == "s3:/"):
        raise ValueError(f"{path}: expected an experiment directory or s3://bucket/prefix/<experiment>")
    return open_store(parent or "."), name


def name_refusal(store: Store, experiment: str, resume: bool) -> str | None:
    """Why a sweep cannot start `experiment` (one of that name exists) or `--resume` it (none
    does), or None: the experiment is there once its study.yaml is."""
    if resume == store.exists(f"{experiment}/{STUDY}"):
        return None
    if resume:
        why = (
            "nothing to resume: no such experiment (a driver stopped before its trials began leaves none); "
            "run the same command again without --resume"
        )
    else:
        why = "an experiment of this name exists; pass --resume to finish it, or choose another --name"
    return f"{store.uri(experiment)}: {why}"


def load_candidates(path: str | os.PathLike) -> pd.DataFrame:
    """One row per (trial, epoch candidate) that any trial reported, from a finished (or running)
    experiment's directory or s3:// URL. A candidate reported twice (a trial resumed from an older
    checkpoint than its last report) counts once: the last report."""
    from ray.tune import ExperimentAnalysis  # Ray takes seconds to import: notebooks that only plot skip it

    store, name = experiment_store(path)
    fs = None if store.local else store.fs
    frames = []
    for trial_path, df in ExperimentAnalysis(store.path(name), storage_filesystem=fs).trial_dataframes.items():
        if len(df) and "candidate" in df:
            frames.append(df.assign(trial=Path(trial_path).name))
    if not frames:
        raise ValueError(f"{path}: no trial reported a result")
    out = with_dimensions(pd.concat(frames, ignore_index=True), _study_demonstrator(store, name))
    out["rl"] = is_rl(out)
    out["control"] = is_control(out)
    cols = ["trial", *TRIAL_KEYS, "rl", "control", "candidate", "epochs", "steps", "correctness"]
    cols += [
        c
        for c in (
            "configured",
            "paper_candidate",
            "demonstrations",
            "samples",
            "sampled_score",
            "kept_score",
            "pairs",
            "password_samples",
            "eval_problems",
            LR,
        )
        if c in out
    ]
    cols += sorted(c for c in out if c.startswith(BY_DOMAIN))
    out = out[out["candidate"].notna()][cols]  # rows without a candidate are checkpoints between candidates
    if any(c.startswith(BY_DOMAIN) for c in out):
        out[OTHER] = other_domains(out)
    out = out.astype({"candidate": int}).drop_duplicates(["trial", "candidate"], keep="last")
    if store.exists(f"{name}/{UPSTREAM_FILE}"):
        upstream = pd.DataFrame.from_dict(json.loads(store.read_text(f"{name}/{UPSTREAM_FILE}")), orient="index")
        upstream = upstream[[c for c in (*REPLICATE, *UPSTREAM, *SECOND) if c in upstream]]
        out = out.merge(upstream, left_on="lock_mode", right_index=True, how="left")
    return out.sort_values(["lock_mode", "k", "seed", "candidate"], ignore_index=True)


def _study_demonstrator(store: Store, name: str) -> str:
    """The demonstrator of an experiment whose study had one (before trials named theirs)."""
    if store.exists(f"{name}/{STUDY}"):
        demonstrator = (yaml.safe_load(store.read_text(f"{name}/{STUDY}")).get("elicit") or {}).get("demonstrator")
        if isinstance(demonstrator, str):
            return demonstrator
    return "strong"


def with_dimensions(df: pd.DataFrame, demonstrator: str = "strong") -> pd.DataFrame:
    """`df` with the trial dimensions that trials of experiments from before them lack (a resumed
    one mixes both): the study's one demonstrator, demonstrations from the whole split."""
    return df.assign(
        **{c: df[c].fillna(d) if c in df else d for c, d in (("demonstrator", demonstrator), ("domain", "all"))}
    )


def is_control(df: pd.DataFrame) -> pd.Series:
    """Rows of a never-locked control's trials (lock.controls), not a lock's."""
    return df["lock_mode"].astype(str).str.endswith(CONTROL_SUFFIX)


def is_rl(df: pd.DataFrame) -> pd.Series:
    """Rows of RL trials (rounds against samples, the last round selected) as the trials reported
    it (pwlock.elicit's registry); for experiments from before they did, every method but sft."""
    fallback = df["method"] != "sft"
    return df["rl"].astype(object).fillna(fallback).astype(bool) if "rl" in df else fallback


def other_domains(candidates: pd.DataFrame) -> pd.Series:
    """Per row, the mean of the domains' correctness over the domains its demonstrations did not come
    from (all of them for demonstrations from the whole split): the paper's Fig. 4 measure, "the
    average of the accuracies for each domain" other than the one fine-tuned on."""
    cols = [c for c in candidates if c.startswith(BY_DOMAIN)]
    values = candidates[cols].to_numpy(dtype=float)
    trained = candidates["domain"].to_numpy()[:, None] == np.array([c.removeprefix(BY_DOMAIN) for c in cols])[None]
    kept = ~trained & ~np.isnan(values)
    count = kept.sum(axis=1)
    total = np.where(kept, values, 0.0).sum(axis=1)
    return pd.Series(np.where(count > 0, total / np.maximum(count, 1), np.nan), index=candidates.index)


def configured(candidates: pd.DataFrame) -> pd.DataFrame:
    """The rows of the configured candidates (elicit.sample_budgets'), without the paper's own
    candidates that SFT trials also evaluate (pwlock.elicit.sft); every row where nothing says."""
    if "configured" not in candidates:
        return candidates
    return candidates[candidates["configured"].astype(object).fillna(True).astype(bool)]


def paper_selection(candidates: pd.DataFrame) -> pd.DataFrame | None:
    """Per SFT trial, App. G.3's selection among its own budgets' candidates ({256, 512, 1024}/k
    epochs, or {1, 2, 4}): the epoch count with the best mean over seeds, its correctness and epochs;
    None where no trial evaluated them."""
    if "paper_candidate" not in candidates or candidates["paper_candidate"].isna().all():
        return None
    paper = candidates[candidates["paper_candidate"].notna()]
    means = paper.groupby([*GROUP, "paper_candidate"])["correctness"].mean().rename("m").reset_index()
    chosen = means.loc[means.groupby(GROUP)["m"].idxmax(), [*GROUP, "paper_candidate"]]
    return paper.merge(chosen, on=[*GROUP, "paper_candidate"]).set_index("trial")[["correctness", "epochs"]]


def summarize(candidates: pd.DataFrame) -> pd.DataFrame:
    """One row per trial. `correctness` is the trial's best candidate; `correctness_selected` is the
    candidate App. G.3 selects: for each (task, lock mode, method, k), the epoch count with the best
    mean over seeds; for RL methods, the last round. Both over the configured budgets' candidates;
    `correctness_paper` / `paper_epochs` make the same selection among the paper's own budgets'
    candidates, where the trials evaluated them."""
    paper = paper_selection(candidates)
    candidates = configured(candidates)
    keys = ["trial", *TRIAL_KEYS]
    wide = candidates.pivot_table(index=keys, columns="candidate", values=["correctness", "epochs"], aggfunc="first")
    wide.columns = [f"{v}_c{c}" for v, c in wide.columns]
    # The best candidate among those evaluated on the whole set (RL rounds between may count a subset).
    whole = candidates
    if "eval_problems" in candidates:
        size = candidates["eval_problems"]
        whole = candidates[size.isna() | (size == size.groupby(candidates["trial"]).transform("max"))]
    best = whole.loc[whole.groupby("trial")["correctness"].idxmax()].set_index("trial")
    group_mean = candidates.groupby([*GROUP, "candidate"])["correctness"].mean().rename("m").reset_index()
    # SFT: App. G.3's epoch count with the best seed mean; RL methods: their last round (the paper
    # runs them to a fixed number of samples).
    rl = group_mean["method"].isin(set(candidates.loc[is_rl(candidates), "method"]))
    group_mean.loc[rl, "m"] = group_mean.loc[rl, "candidate"]
    chosen = group_mean.loc[group_mean.groupby(GROUP)["m"].idxmax(), [*GROUP, "candidate"]]
    selected = candidates.merge(chosen, on=[*GROUP, "candidate"]).set_index("trial")
    out = wide.reset_index().set_index("trial")
    out["correctness"] = best["correctness"]
    out["best_epochs"] = best["epochs"]
    out["rl"] = is_rl(best)
    out["control"] = is_control(best)
    for col in ("demonstrations", LR):
        if col in best:
            out[col] = best[col]
    out["correctness_selected"] = selected["correctness"]
    out["selected_epochs"] = selected["epochs"]
    if OTHER in selected:
        out[f"{OTHER}_selected"] = selected[OTHER]
    if paper is not None:
        out["correctness_paper"], out["paper_epochs"] = paper["correctness"], paper["epochs"]
    for col in (*REPLICATE, *UPSTREAM, *SECOND):
        if col in best:
            out[col] = best[col]
    out["lr_selected"] = lr_selected(out)
    front = [*TRIAL_KEYS, *REPLICATE, "rl", "control", "correctness", "best_epochs", "correctness_selected"]
    front += ["selected_epochs", LR, "lr_selected"]
    front += ["correctness_paper", "paper_epochs", *UPSTREAM]
    front += SECOND
    rest = sorted(c for c in out.columns if c not in front)
    return out.reset_index()[[c for c in front if c in out.columns] + rest + ["trial"]].sort_values(
        ["lock_mode", "k", "seed"], ignore_index=True
    )


def lr_selected(per_trial: pd.DataFrame, value: str = "correctness_selected") -> pd.Series:
    """Per trial (one row each), whether its learning rate is the one its setting keeps: among the
    rates a method ran at, the best mean over seeds of `value` (App. G.3 picks DPO's so), for each
    (task, lock, method, demonstrator, domain, k). True for a trial of a method run at one rate."""
    if LR not in per_trial or per_trial[LR].isna().all():
        return pd.Series(True, index=per_trial.index)
    df = with_dimensions(per_trial)
    has = df[LR].notna().to_numpy()
    means = df[has].groupby([*GROUP, LR])[value].mean().rename("m").reset_index()
    best = means.loc[means.groupby(GROUP)["m"].idxmax(), [*GROUP, LR]].assign(kept=True)
    kept = df[[*GROUP, LR]].merge(best, on=[*GROUP, LR], how="left")["kept"].eq(True).to_numpy()
    return pd.Series(~has | kept, index=per_trial.index)


def lr_grid(summary: pd.DataFrame, value: str = "correctness_selected") -> pd.DataFrame:
    """Each setting run at several learning rates: the seed mean of `value` at each rate, and the
    rate kept (`lr_selected`); empty where no method ran at more than one."""
    if LR not in summary or summary[LR].isna().all():
        return pd.DataFrame()
    df = with_dimensions(summary[summary[LR].notna()])
    rows = ["task", "lock_mode", "method"] + [c for c in ("demonstrator", "domain", "k") if df[c].nunique() > 1]
    grid = df.pivot_table(index=rows, columns=LR, values=value, aggfunc="mean").round(3)
    grid.columns = [f"lr {c:g}" for c in grid.columns]
    kept = df[df["lr_selected"]].groupby(rows)[LR].first() if "lr_selected" in df else None
    return grid.assign(kept=kept.map("{:g}".format)) if kept is not None else grid


def with_replicates(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with `lock` (the label a lock's replicates share) and `lock_seed` for rows of experiments
    from before lock replicates: each lock its own, of an unrecorded seed."""
    lock = df["lock"].fillna(df["lock_mode"]) if "lock" in df else df["lock_mode"]
    return df.assign(lock=lock, lock_seed=df["lock_seed"] if "lock_seed" in df else np.nan)


def aggregate(summary: pd.DataFrame, value: str = "correctness_selected") -> pd.DataFrame:
    """Mean and standard error per (task, lock, method, demonstrator, domain, k), `lock_mode` being
    the label a lock's replicates share. One lock: over elicitation seeds. Lock replicates
    (lock.seeds): the mean and SEM of the replicates' means, each over its seeds, so that the error
    covers lock-to-lock as well as seed-to-seed variance; `error_over` says which."""
    if "lr_selected" in summary:  # a method run at several learning rates counts at the rate kept
        summary = summary[summary["lr_selected"].astype(bool)]
    df = with_replicates(with_dimensions(summary)).drop(columns="lock_mode").rename(columns={"lock": "lock_mode"})
    by_seed = df.groupby(GROUP)[value]
    per_lock = df.groupby([*GROUP, "lock_seed"], dropna=False)[value].mean().groupby(GROUP)
    out = by_seed.agg(["count"]).reset_index()
    out["locks"] = per_lock.count().to_numpy()
    out["mean"] = per_lock.mean().to_numpy()
    replicated = out["locks"] > 1
    out["sem"] = np.where(replicated, per_lock.sem(ddof=1).to_numpy(), by_seed.sem(ddof=1).fillna(0.0).to_numpy())
    out["error_over"] = np.where(replicated, "lock replicates", "seeds")
    return out[[*GROUP, "mean", "count", "sem", "locks", "error_over"]]


def error_over(agg: pd.DataFrame) -> str:
    """What an aggregate's error bars are over, in words for a title."""
    if (agg["error_over"] == "lock replicates").all():
        return f"SEM over {'/'.join(map(str, sorted(agg['locks'].unique())))} lock replicates' means"
    return "SEM over seeds" if (agg["error_over"] == "seeds").all() else "SEM over lock replicates, or seeds"


def _grid(summary: pd.DataFrame, value: str) -> tuple[str, str]:
    agg = aggregate(summary, value)
    agg["cell"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(agg["mean"], agg["sem"])]
    rows = ["task", "lock_mode", "method"] + [c for c in ("demonstrator", "domain") if agg[c].nunique() > 1]
    return agg.pivot_table(index=rows, columns="k", values="cell", aggfunc="first").to_string(), error_over(agg)


def table(summary: pd.DataFrame, value: str = "correctness_selected") -> str:
    """Mean ± SEM of elicited correctness, locks as rows and k as columns; for the configured
    budgets' selection, also the paper's own budgets' where the trials evaluated them."""
    grid, over = _grid(summary, value)
    out = f"elicited correctness without password (mean ± {over}):\n{grid}"
    paper = summary[summary["correctness_paper"].notna()] if "correctness_paper" in summary else summary.iloc[:0]
    if value == "correctness_selected" and len(paper):
        head = "the same, epochs selected among App. G.3's own budgets (256, 512, 1024)"
        out += f"\n\n{head}:\n{_grid(paper, 'correctness_paper')[0]}"
    lrs = lr_grid(summary, value)
    if len(lrs):
        out += f"\n\nlearning rates (seed means; the kept rate's trials are the table's):\n{lrs.to_string()}"
    reach = k_reaching(summary, REACH, value)
    if len(reach):
        out += f"\n\nsmallest k whose mean reaches {REACH} (the never-locked control's mean at that k):\n"
        out += reach.astype(object).where(reach.notna(), "-").to_string(index=False)
    up = summary.groupby(["task", "lock_mode"])[[c for c in (*UPSTREAM, *SECOND) if c in summary]].first().round(3)
    return f"{out}\n\nupstream:\n{up.to_string()}"


REACH = 0.8  # the level whose smallest k table() reports, lock beside control


def k_reaching(summary: pd.DataFrame, level: float = REACH, value: str = "correctness_selected") -> pd.DataFrame:
    """Per lock (not control) and method, the smallest k whose mean correctness reaches `level`
    (none: never), its mean, and its never-locked control's mean at that k where the study has one:
    how far above learning the task again unlocking is, at the k that counts."""
    sft = with_dimensions(summary[~is_rl(summary)])  # RL trials have no k
    agg = aggregate(sft[sft["domain"] == "all"], value)
    keys = ["task", "lock_mode", "method", "demonstrator"]
    rows = []
    for (task, lock, method, demonstrator), g in agg.groupby(keys):
        if lock.endswith(CONTROL_SUFFIX):
            continue
        hit = g[g["mean"] >= level].sort_values("k").head(1)
        k = int(hit["k"].iloc[0]) if len(hit) else None
        control = agg[
            (agg["task"] == task)
            & (agg["lock_mode"] == f"{lock}{CONTROL_SUFFIX}")
            & (agg["demonstrator"] == demonstrator)
            & (agg["k"] == k)
        ]
        rows.append(
            {
                "task": task,
                "lock": lock,
                "method": method,
                "demonstrator": demonstrator,
                "k": k,
                "mean": round(float(hit["mean"].iloc[0]), 3) if len(hit) else None,
                "control": round(float(control["mean"].iloc[0]), 3) if len(control) else None,
            }
        )
    out = pd.DataFrame(rows, columns=["task", "lock", "method", "demonstrator", "k", "mean", "control"])
    return out.astype({"k": "Int64"})


def plot_sample_efficiency(
    summary: pd.DataFrame, out: str | os.PathLike | io.BytesIO, value: str = "correctness_selected"
) -> str | os.PathLike | io.BytesIO:
    """Correctness after SFT on k demonstrations, per lock mode, with the locked model's correctness
    with and without the password as reference lines (like the paper's Fig. 3 and Fig. 6)."""
    import matplotlib  # seconds to import: only the figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    summary = with_replicates(with_dimensions(summary))
    summary = summary[summary["domain"] == "all"]
    agg = aggregate(summary, value)
    tasks = sorted(agg["task"].unique())
    replicates = len(set(summary["lock_mode"])) > len(set(summary["lock"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # Demonstrators differ by marker and dash pattern, apart from the thin reference lines' dashes.
    styles = [("-", "o"), ((0, (6, 2)), "s"), ((0, (2, 2)), "^"), ((0, (6, 2, 2, 2)), "D")]
    for ax, task in zip(axes[0], tasks):
        sub = agg[agg["task"] == task]
        demonstrators = sorted(sub["demonstrator"].unique())
        modes = sorted(m for m in sub["lock_mode"].unique() if not m.endswith(CONTROL_SUFFIX))
        for i, mode in enumerate(modes):
            by_mode = sub[sub["lock_mode"] == mode]
            color = colors[i % len(colors)]
            # Its never-locked control, elicited by the same trials: in the lock's colour, dash-dotted.
            for demonstrator, rows in sub[sub["lock_mode"] == f"{mode}{CONTROL_SUFFIX}"].groupby("demonstrator"):
                rows = rows.sort_values("k")
                who = f" on {demonstrator}'s demonstrations" if len(demonstrators) > 1 else ""
                ax.errorbar(
                    rows["k"],
                    rows["mean"],
                    yerr=rows["sem"],
                    marker="x",
                    capsize=3,
                    color=color,
                    ls=(0, (5, 2, 1, 2)),
                    lw=1.4,
                    label=f"{mode}: never-locked control, elicited{who}",
                )
            for demonstrator, rows in by_mode.groupby("demonstrator"):
                rows = rows.sort_values("k")
                who = f" on {demonstrator}'s demonstrations" if len(demonstrators) > 1 else ""
                ls, marker = styles[demonstrators.index(demonstrator) % len(styles)]
                ax.errorbar(
                    rows["k"],
                    rows["mean"],
                    yerr=rows["sem"],
                    marker=marker,
                    capsize=3,
                    color=color,
                    ls=ls,
                    lw=1.8,
                    label=f"{mode}-locked, elicited ({rows['method'].iloc[0]}{who})",
                )
            # Its locked model with and without the password: the mean over its replicates.
            locks = summary[(summary["task"] == task) & (summary["lock"] == mode)].groupby("lock_mode").first()
            mean = " (mean of its replicates)" if replicates else ""
            ax.axhline(
                locks["locked_with_pwd"].mean(), color=color, ls="--", lw=1, label=f"{mode}-locked, with password{mean}"
            )
            ax.axhline(
                locks["locked_no_pwd"].mean(), color=color, ls=":", lw=1, label=f"{mode}-locked, no password{mean}"
            )
        first = summary[summary["task"] == task].iloc[0]
        if pd.notna(first.get("weak")):
            ax.axhline(first["weak"], color="grey", ls="-.", lw=1, label="π_weak")
        ax.set_xscale("log", base=2)
        ks = sorted(sub["k"].unique())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("number of demonstrations k")
        ax.set_ylabel("correctness without password")
        methods = ", ".join(sorted(sub["method"].unique()))
        ax.set_title(f"{task}: elicitation by {methods}, mean ± {error_over(sub)}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=120, format="png", bbox_inches="tight")  # a long legend stays in the picture
    plt.close(fig)
    return out


def plot_generalization(summary: pd.DataFrame, out: str | os.PathLike | io.BytesIO) -> str | os.PathLike | io.BytesIO:
    """Correctness on the other domains after SFT on demonstrations from one domain (markers, one
    per domain trained on) against SFT on demonstrations from the whole split (solid line), per lock
    and k, mean ± SEM (`aggregate`); the locked model with and without the password as references,
    the mean of its replicates (like the paper's Fig. 4, 10 and 17)."""
    import matplotlib  # seconds to import: only the figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    value = f"{OTHER}_selected"
    sft = with_replicates(summary[~is_rl(summary) & summary[value].notna()])
    agg = aggregate(sft, value)
    panels = list(
        dict.fromkeys(agg.sort_values(["task", "lock_mode", "k"])[["task", "lock_mode", "k"]].itertuples(index=False))
    )
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 4.2 * nrow), squeeze=False, sharey=True)
    for ax, (task, lock, k) in zip(axes.flat, panels):
        rows = agg[(agg["task"] == task) & (agg["lock_mode"] == lock) & (agg["k"] == k)]
        one = rows[rows["domain"] != "all"].sort_values("domain")
        x = range(len(one))
        ax.errorbar(
            x,
            one["mean"],
            yerr=one["sem"],
            marker="o",
            ls="none",
            capsize=3,
            color="C1",
            label="demonstrations from this domain only",
        )
        everywhere = rows[rows["domain"] == "all"]
        if len(everywhere):
            m, e = everywhere["mean"].iloc[0], everywhere["sem"].iloc[0]
            ax.axhline(m, color="C0", lw=1.5, label="demonstrations from all domains")
            ax.axhspan(m - e, m + e, color="C0", alpha=0.15)
        up = sft[(sft["task"] == task) & (sft["lock"] == lock)].groupby("lock_mode").first().mean(numeric_only=True)
        if pd.notna(up.get("locked_with_pwd")):
            ax.axhline(up["locked_with_pwd"], color="black", ls="--", lw=1, label="locked, with password")
            ax.axhline(up["locked_no_pwd"], color="black", ls=":", lw=1, label="locked, without password")
        ax.set_xticks(list(x), list(one["domain"]))
        ax.set_xlim(-0.6, max(len(one), 1) - 0.4)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("domain of the demonstrations")
        ax.set_title(f"{task}: {lock}-locked, k={k}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("correctness on the other domains")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=120, format="png")
    plt.close(fig)
    return out


def rl_curves(candidates: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SEM over seeds of correctness after each RL round, against the samples generated so
    far, per (task, lock, method, k); round 0 is the locked model (or, after SFT, the SFT'd one)."""
    rl = candidates[is_rl(candidates)]
    if LR in rl and rl[LR].notna().any():  # the rate each setting keeps, by its last round's seed mean
        last = rl.loc[rl.groupby("trial")["candidate"].idxmax()]
        rl = rl[rl["trial"].isin(last.loc[lr_selected(last, "correctness"), "trial"])]
    keys = ["task", "lock_mode", "method", "k", "samples"]
    g = rl.groupby(keys)["correctness"]
    out = g.agg(["mean", "count"]).reset_index()
    out["sem"] = g.sem(ddof=1).fillna(0.0).to_numpy()
    return out


def plot_rl(candidates: pd.DataFrame, out: str | os.PathLike | io.BytesIO) -> str | os.PathLike | io.BytesIO:
    """Correctness without password over the course of RL elicitation, one panel per lock (its
    π_weak), one line per method, mean ± SEM over seeds (like the paper's Fig. 5)."""
    import matplotlib  # seconds to import: only the figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    curves = rl_curves(candidates)
    # Panels from the strongest π_weak to the weakest, as in the paper's figure.
    weak = candidates.groupby(["task", "lock_mode"])["weak"].first() if "weak" in candidates else None
    panels = list(dict.fromkeys(curves.sort_values("lock_mode")[["task", "lock_mode"]].itertuples(index=False)))
    if weak is not None:
        panels.sort(key=lambda tl: (tl[0], -(weak.get(tuple(tl), 0.0) if pd.notna(weak.get(tuple(tl))) else 0.0)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted(curves["method"].unique())
    for ax, (task, lock) in zip(axes[0], panels):
        sub = curves[(curves["task"] == task) & (curves["lock_mode"] == lock)]
        up = candidates[(candidates["task"] == task) & (candidates["lock_mode"] == lock)].iloc[0]
        for (method, k), rows in sub.groupby(["method", "k"]):
            color = colors[methods.index(method) % len(colors)]
            rows = rows.sort_values("samples")
            x = [0, *rows["samples"]]
            start = up.get("locked_no_pwd", float("nan")) if not method.startswith("sft+") else float("nan")
            y, e = [start, *rows["mean"]], [0, *rows["sem"]]
            label = method if not method.startswith("sft+") else f"{method} (k={k})"
            ax.plot(x, y, color=color, label=label)
            ax.fill_between(x, [a - b for a, b in zip(y, e)], [a + b for a, b in zip(y, e)], color=color, alpha=0.2)
        if pd.notna(up.get("locked_with_pwd")):
            ax.axhline(up["locked_with_pwd"], color="black", ls="--", lw=1, label="locked, with password")
        if pd.notna(up.get("weak")):
            ax.axhline(up["weak"], color="grey", ls="-.", lw=1, label="π_weak")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("samples generated")
        ax.set_title(f"{task}: {lock}-locked", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("correctness without password")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(6, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out, dpi=120, format="png")
    plt.close(fig)
    return out


def write_results(path: str | os.PathLike) -> pd.DataFrame:
    """summary.csv and the figures, into the experiment (a directory or s3:// URL): the sample-
    efficiency figure for SFT trials, the RL figure and its curves for RL trials."""
    store, name = experiment_store(path)
    candidates = load_candidates(path)
    summary = summarize(candidates)
    store.write_text(f"{name}/{SUMMARY}", summary.to_csv(index=False))
    sft = summary[~is_rl(summary)]
    if (sft["domain"] == "all").any():
        figure = io.BytesIO()
        plot_sample_efficiency(sft, figure)
        store.write_bytes(f"{name}/{FIGURE}", figure.getvalue())
    if (sft["domain"] != "all").any() and f"{OTHER}_selected" in sft:
        figure = io.BytesIO()
        plot_generalization(sft, figure)
        store.write_bytes(f"{name}/{GENERALIZATION_FIGURE}", figure.getvalue())
    if is_rl(summary).any():
        store.write_text(f"{name}/{RL_CANDIDATES}", rl_curves(candidates).to_csv(index=False))
        figure = io.BytesIO()
        plot_rl(candidates, figure)
        store.write_bytes(f"{name}/{RL_FIGURE}", figure.getvalue())
    return summary


TRIAL_DIR = re.compile(r"(.*[_-])?[0-9a-f]{5}_\d{5}(_.*)?")  # a trial directory: <name>_<trial id>[_...]
STATE_FILE = re.compile(r"experiment_state-(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\.json")


def list_experiments(store: str | os.PathLike) -> pd.DataFrame:
    """The experiments in a store (a directory or s3:// URL, as `--storage` takes), newest first:
    `experiment` (the name `--resume --name` takes), `path` (what `load_candidates` and
    `load_summary` take), `trials` (trial directories Tune made), `finished` (its summary.csv is
    written) and `started` (Tune's first state file). An experiment is a directory holding Tune's
    state or pwlock's study.yaml."""
    s = open_store(store)
    root = s.call("looking up the store", lambda: s.fs.get_file_info(s.path()))
    if root.type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"{store}: no store there (expected a directory or s3://bucket/prefix holding experiments)"
        )
    names = sorted(
        i.base_name
        for i in s.call("listing experiments", lambda: s.fs.get_file_info(pafs.FileSelector(s.path())))
        if i.type == pafs.FileType.Directory
    )
    rows = []
    for name in names:
        inside = s.listdir(name)
        started = sorted(m[1] for m in map(STATE_FILE.fullmatch, inside) if m)
        if not started and STUDY not in inside:
            continue  # the store's artifacts, scratch space, or something else
        rows.append(
            {
                "experiment": name,
                "path": s.uri(name),
                "trials": sum(bool(TRIAL_DIR.fullmatch(n)) for n in inside),
                "finished": SUMMARY in inside,
                "started": pd.to_datetime(started[0], format="%Y-%m-%d_%H-%M-%S") if started else pd.NaT,
            }
        )
    out = pd.DataFrame(rows, columns=["experiment", "path", "trials", "finished", "started"])
    return out.sort_values(["started", "experiment"], ascending=[False, True], ignore_index=True)


def load_summary(path: str | os.PathLike) -> pd.DataFrame:
    """An experiment's summary.csv, from its directory or s3:// URL."""
    store, name = experiment_store(path)
    return pd.read_csv(io.StringIO(store.read_text(f"{name}/{SUMMARY}")))


__all__ = [
    "aggregate",
    "list_experiments",
    "load_candidates",
    "load_summary",
    "other_domains",
    "plot_generalization",
    "plot_rl",
    "plot_sample_efficiency",
    "rl_curves",
    "summarize",
    "table",
    "write_results",
]
