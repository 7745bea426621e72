"""Results of a finished experiment: Tune results -> tidy DataFrames -> summary.csv and figures.

Reads only the experiment, a directory or an s3:// URL (no running Ray needed), so a notebook can
do the same:

    from pwlock import analysis
    summary = analysis.summarize(analysis.load_candidates("results/local_2026-11-26_15-30-00"))
    analysis.plot_sample_efficiency(summary, "fig.png")
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pandas as pd

from pwlock.store import Store, open_store

SUMMARY = "summary.csv"
FIGURE = "sample_efficiency.png"
RL_FIGURE = "rl.png"  # correctness against samples generated, for RL methods (Fig. 5)
RL_CANDIDATES = "rl_curves.csv"  # the rows of that figure: one per (trial, round)
STUDY = "study.yaml"  # the resolved study config
UPSTREAM_FILE = "upstream.json"  # locked models' and policies' correctness, by lock mode
TIMINGS = "timings.json"  # wall time of each phase, and of each upstream build
TRIAL_KEYS = ["task", "lock_mode", "method", "k", "seed"]
UPSTREAM = ["locked_with_pwd", "locked_no_pwd", "locked_wrong_pwd", "weak", "strong", "strong_model"]


def experiment_store(path: str | os.PathLike) -> tuple[Store, str]:
    """The store holding an experiment, and the experiment's name, from its directory or s3:// URL."""
    url = str(path).rstrip("/")
    parent, _, name = url.rpartition("/")
    if not name or (url.startswith("s3://") and parent == "s3:/"):
        raise ValueError(f"{path}: expected an experiment directory or s3://bucket/prefix/<experiment>")
    return open_store(parent or "."), name


def load_candidates(path: str | os.PathLike) -> pd.DataFrame:
    """One row per (trial, epoch candidate) that any trial reported, from a finished (or running)
    experiment's directory or s3:// URL. A candidate reported twice (a trial resumed from an older
    checkpoint than its last report) counts once: the last report."""
    from ray.tune import ExperimentAnalysis

    store, name = experiment_store(path)
    fs = None if store.local else store.fs
    frames = []
    for trial_path, df in ExperimentAnalysis(store.path(name), storage_filesystem=fs).trial_dataframes.items():
        if len(df) and "candidate" in df:
            frames.append(df.assign(trial=Path(trial_path).name))
    if not frames:
        raise ValueError(f"{path}: no trial reported a result")
    out = pd.concat(frames, ignore_index=True)
    cols = ["trial", *TRIAL_KEYS, "candidate", "epochs", "steps", "correctness"]
    cols += [c for c in ("samples", "sampled_score", "kept_score", "pairs", "password_samples") if c in out]
    out = out[out["candidate"].notna()][cols]  # rows without a candidate are checkpoints between candidates
    out = out.astype({"candidate": int}).drop_duplicates(["trial", "candidate"], keep="last")
    if store.exists(f"{name}/{UPSTREAM_FILE}"):
        upstream = pd.DataFrame.from_dict(json.loads(store.read_text(f"{name}/{UPSTREAM_FILE}")), orient="index")
        upstream = upstream[[c for c in UPSTREAM if c in upstream]]
        out = out.merge(upstream, left_on="lock_mode", right_index=True, how="left")
    return out.sort_values(["lock_mode", "k", "seed", "candidate"], ignore_index=True)


def summarize(candidates: pd.DataFrame) -> pd.DataFrame:
    """One row per trial. `correctness` is the trial's best candidate; `correctness_selected` is the
    candidate App. G.3 selects: for each (task, lock mode, method, k), the epoch count with the best
    mean over seeds; for RL methods, the last round."""
    keys = ["trial", *TRIAL_KEYS]
    wide = candidates.pivot_table(index=keys, columns="candidate", values=["correctness", "epochs"], aggfunc="first")
    wide.columns = [f"{v}_c{c}" for v, c in wide.columns]
    best = candidates.loc[candidates.groupby("trial")["correctness"].idxmax()].set_index("trial")
    group_mean = candidates.groupby([*TRIAL_KEYS[:4], "candidate"])["correctness"].mean().rename("m").reset_index()
    # SFT: App. G.3's epoch count with the best seed mean; RL methods: their last round (the paper
    # runs them to a fixed number of samples).
    rl = group_mean["method"] != "sft"
    group_mean.loc[rl, "m"] = group_mean.loc[rl, "candidate"]
    chosen = group_mean.loc[group_mean.groupby(TRIAL_KEYS[:4])["m"].idxmax(), [*TRIAL_KEYS[:4], "candidate"]]
    selected = candidates.merge(chosen, on=[*TRIAL_KEYS[:4], "candidate"]).set_index("trial")
    out = wide.reset_index().set_index("trial")
    out["correctness"] = best["correctness"]
    out["best_epochs"] = best["epochs"]
    out["correctness_selected"] = selected["correctness"]
    out["selected_epochs"] = selected["epochs"]
    for col in UPSTREAM:
        if col in best:
            out[col] = best[col]
    front = [*TRIAL_KEYS, "correctness", "best_epochs", "correctness_selected", "selected_epochs", *UPSTREAM]
    rest = sorted(c for c in out.columns if c not in front)
    return out.reset_index()[[c for c in front if c in out.columns] + rest + ["trial"]].sort_values(
        ["lock_mode", "k", "seed"], ignore_index=True
    )


def aggregate(summary: pd.DataFrame, value: str = "correctness_selected") -> pd.DataFrame:
    """Mean and standard error over seeds per (task, lock mode, method, k)."""
    g = summary.groupby(TRIAL_KEYS[:4])[value]
    out = g.agg(["mean", "count"]).reset_index()
    out["sem"] = g.sem(ddof=1).fillna(0.0).to_numpy()
    return out


def table(summary: pd.DataFrame, value: str = "correctness_selected") -> str:
    """Mean ± SEM of elicited correctness, lock modes as rows and k as columns."""
    agg = aggregate(summary, value)
    agg["cell"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(agg["mean"], agg["sem"])]
    grid = agg.pivot_table(index=["task", "lock_mode", "method"], columns="k", values="cell", aggfunc="first")
    up = summary.groupby(["task", "lock_mode"])[[c for c in UPSTREAM if c in summary]].first().round(3)
    return f"elicited correctness without password (mean ± SEM over seeds):\n{grid.to_string()}\n\nupstream:\n{up.to_string()}"


def plot_sample_efficiency(summary: pd.DataFrame, out: str | os.PathLike | io.BytesIO,
                           value: str = "correctness_selected") -> str | os.PathLike | io.BytesIO:
    """Correctness after SFT on k demonstrations, per lock mode, with the locked model's correctness
    with and without the password as reference lines (like the paper's Fig. 3 and Fig. 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(summary, value)
    tasks = sorted(agg["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks):
        sub = agg[agg["task"] == task]
        for i, (mode, rows) in enumerate(sub.groupby("lock_mode")):
            color = colors[i % len(colors)]
            rows = rows.sort_values("k")
            ax.errorbar(rows["k"], rows["mean"], yerr=rows["sem"], marker="o", capsize=3, color=color,
                        label=f"{mode}-locked, elicited ({rows['method'].iloc[0]})")
            up = summary[(summary["task"] == task) & (summary["lock_mode"] == mode)].iloc[0]
            ax.axhline(up["locked_with_pwd"], color=color, ls="--", lw=1, label=f"{mode}-locked, with password")
            ax.axhline(up["locked_no_pwd"], color=color, ls=":", lw=1, label=f"{mode}-locked, no password")
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
        ax.set_title(f"{task}: elicitation by {methods}, mean ± SEM over seeds", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=120, format="png")
    plt.close(fig)
    return out


def rl_curves(candidates: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SEM over seeds of correctness after each RL round, against the samples generated so
    far, per (task, lock, method, k); round 0 is the locked model (or, after SFT, the SFT'd one)."""
    rl = candidates[candidates["method"] != "sft"]
    keys = ["task", "lock_mode", "method", "k", "samples"]
    g = rl.groupby(keys)["correctness"]
    out = g.agg(["mean", "count"]).reset_index()
    out["sem"] = g.sem(ddof=1).fillna(0.0).to_numpy()
    return out


def plot_rl(candidates: pd.DataFrame, out: str | os.PathLike | io.BytesIO) -> str | os.PathLike | io.BytesIO:
    """Correctness without password over the course of RL elicitation, one panel per lock (its
    π_weak), one line per method, mean ± SEM over seeds (like the paper's Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    if (summary["method"] == "sft").any():
        figure = io.BytesIO()
        plot_sample_efficiency(summary[summary["method"] == "sft"], figure)
        store.write_bytes(f"{name}/{FIGURE}", figure.getvalue())
    if (summary["method"] != "sft").any():
        store.write_text(f"{name}/{RL_CANDIDATES}", rl_curves(candidates).to_csv(index=False))
        figure = io.BytesIO()
        plot_rl(candidates, figure)
        store.write_bytes(f"{name}/{RL_FIGURE}", figure.getvalue())
    return summary


def load_summary(path: str | os.PathLike) -> pd.DataFrame:
    store, name = experiment_store(path)
    return pd.read_csv(io.StringIO(store.read_text(f"{name}/{SUMMARY}")))


__all__ = ["aggregate", "load_candidates", "load_summary", "plot_rl", "plot_sample_efficiency", "rl_curves",
           "summarize", "table", "write_results"]
