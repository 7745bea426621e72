"""The command lines: every sweep in `sweeps/` (`main`), and `python -m pwlock cost` (`cost_main`)."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pwlock.config import ConfigError, StudyConfig, config_from_dict, read_yaml
from pwlock.logs import setup_logging

if TYPE_CHECKING:
    from pwlock.store import Store

log = logging.getLogger("pwlock")


def main(argv: list[str], default_config: Path, description: str | None = None, sweep: str | None = None) -> int:
    """`sweep`: the entry point's name (sweeps/<sweep>.py); a study description given as --config
    prints the plan and cost of its figures that this sweep runs (all of them for None)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"study YAML (default: {default_config}); or a study description with `figures:` "
        "(e.g. sweeps/configs/paper.yaml), for --dry-run only: the plan and cost of the "
        "figures this sweep runs, and the whole study's total",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="where artifacts and results go: a directory or s3://bucket/prefix "
        "(default: the config's store.url, else ./results)",
    )
    parser.add_argument("--name", default=None, help="experiment name (default: <config name>_<timestamp>)")
    parser.add_argument("--quick", action="store_true", help="apply the config's `quick:` overrides: a short smoke run")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; train nothing")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="finish the interrupted experiment --name in the store, with the config it was "
        "started with: finished trials stay, the rest go on from their last checkpoint",
    )
    parser.add_argument(
        "--take-over",
        action="store_true",
        help="run even though the store shows another driver on this experiment, if that driver's "
        "heartbeat stopped long ago (it died); a live driver is never displaced",
    )
    args = parser.parse_args(argv)
    setup_logging()
    from pwlock.store import StoreError  # pyarrow: not before --help

    try:
        path = args.config or default_config
        raw = _checked_flags_and_config(args, path)
        if not args.resume and isinstance(raw, dict) and "figures" in raw:  # description.is_description
            return _study(raw, path, args, sweep)
        cfg, store = _config_and_store(args, raw, path)
    except (ConfigError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Heavy (torch, transformers, Ray: seconds): imported once the arguments, the config and the
    # store have passed their checks, so that --help and those mistakes answer at once.
    from pwlock import sweep as sweeps  # `sweep` is the entry point's name
    from pwlock.plan import plan
    from pwlock.pricing import check_fit, describe
    from pwlock.sandbox import SandboxError

    try:
        # the one plan: the description, the price and the run all use it (on the problems task.keep's
        # filter kept, where the store holds it)
        planned = plan(cfg, store)
        check_fit(planned)  # every trial fits its GPU, or nothing runs
        if args.dry_run:
            print(describe(planned, store))
            return 0
    except (ConfigError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.quick:
        log.warning(
            "--quick: a smoke run of the whole pipeline; its models train a few epochs only, "
            "so its numbers say nothing about elicitation"
        )
    try:
        where = sweeps.run(planned, store, args.name, resume=args.resume, take_over=args.take_over)
    except (ConfigError, StoreError, SandboxError) as e:  # checked before any work: store, name, code sandbox
        print(f"error: {e}", file=sys.stderr)
        return 2
    except sweeps.Interrupted as e:
        print(interrupted_message(e), file=sys.stderr)
        return 128 + e.signum  # as a shell reports a process ended by that signal
    except sweeps.TrialsFailed as e:  # each trial's cause is in the log above: no traceback of one
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\nresults: {where}")
    return 0


def _checked_flags_and_config(args: argparse.Namespace, path: Path) -> Any:
    """The flags that contradict each other refused, then the config file read (YAML only)."""
    if args.resume and not args.name:
        raise ConfigError("--resume: name the experiment to finish with --name")
    if args.resume and (args.config or args.quick):
        raise ConfigError("--resume: runs the experiment's own config; drop --config / --quick")
    return read_yaml(path)


def _store_of(args: argparse.Namespace, cfg: StudyConfig) -> Store:
    """--storage, else the config's store, else ./results."""
    from pwlock.store import open_store  # pyarrow: not before --help

    s = cfg.store
    return open_store(args.storage or s.url or "results", s.endpoint_url, s.region, s.retry_s)


def _check_store(store: Store) -> None:
    """The store's check (a file, no parent, not writable, an S3 bucket refused), unless it would make
    the store's directory: a config refused later (by the plan) must leave nothing behind, and
    sweep.run checks again before any work."""
    root = Path(store.root)
    if not (store.local and not root.exists() and root.parent.is_dir()):
        store.check()


def _config_and_store(args: argparse.Namespace, raw: Any, path: Path) -> tuple[StudyConfig, Store]:
    """The config to run and its store, with the mistakes of --storage, --name and --resume that the
    store shows refused: all before any heavy import, and nothing written by a refusal."""
    from pwlock.analysis import name_refusal  # pandas (under a second): not before --help
    from pwlock.study_record import read_study

    cfg = config_from_dict(raw, source=str(path), quick=args.quick)
    store = _store_of(args, cfg)
    if args.resume:
        _check_store(store)
        cfg = read_study(store, args.name)  # refused if it is not there, or was edited since
        return cfg, _store_of(args, cfg)
    if not args.dry_run:
        _check_store(store)
        if args.name and (refusal := name_refusal(store, args.name, resume=False)):
            raise ConfigError(refusal)
    return cfg, store


def interrupted_message(e: Any) -> str:
    """What a stopped sweep (pwlock.sweep.Interrupted) kept, and the command that goes on from there."""
    head = f"{signal.Signals(e.signum).name}: experiment {e.experiment} stopped"
    if not e.began:
        again = shlex.join(["python", *sys.argv])
        return (
            f"{head} before its trials began; nothing of it was written. The upstream artifacts built so "
            f"far are in {e.storage} and will be reused: run the same command again:\n  {again}"
        )
    c = e.counts
    where = (
        "its trials stopped where they were"
        if c is None
        else f"{c['done']} of {sum(c.values())} trials done, {c['running']} stopped at their last checkpoint, "
        f"{c['pending']} not started" + (f", {c['failed']} failed" if c["failed"] else "")
    )
    resume = shlex.join(["python", sys.argv[0], "--resume", "--name", e.experiment, "--storage", e.storage])
    return (
        f"{head}: {where}. The store keeps every finished trial's results and the others' last "
        f"checkpoints; no summary was written. To finish it (finished trials are not run again):\n  {resume}"
    )


def _study(raw: dict, path: Path, args: argparse.Namespace, sweep: str | None) -> int:
    """A study description: its plan and cost with --dry-run (nothing built, nothing written);
    refused at once otherwise, with what to run instead."""
    from pwlock import description  # heavy: see main
    from pwlock.store import open_store  # pyarrow: not before --help

    d = description.from_dict(raw, str(path))
    if sweep is not None and sweep not in description.SWEEPS:
        raise ValueError(f"sweep {sweep!r}: expected one of {list(description.SWEEPS)}")
    if not args.dry_run:
        raise ConfigError(description.run_instead(d, sweep))
    if args.quick:
        raise ConfigError(f"--quick: {path} is a study description; it has no smoke run (drop --quick)")
    store = open_store(args.storage) if args.storage else None  # artifacts there count as built
    print(description.describe(d, description.estimate(d, store), sweep))
    return 0


def _parse_assume(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--assume {item!r}: expected field=value")
        out[key] = yaml.safe_load(value)
    return out


COST_USAGE = """GPU-hours before launch, from pwlock's cost model (pwlock.cost, pwlock.pricing).

    python -m pwlock cost sweeps/configs/paper_toy.yaml   # a sweep's config: its real plan
    python -m pwlock cost sweeps/configs/paper.yaml       # the paper's whole study (pwlock.description)
"""


def cost_main(argv: Sequence[str] | None = None) -> int:
    """`python -m pwlock cost FILE`: the price of a sweep's config or of a study description."""
    parser = argparse.ArgumentParser(
        prog="python -m pwlock cost", description=COST_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "file", help="a sweep's study YAML, or a study description with `figures:` (e.g. sweeps/configs/paper.yaml)"
    )
    parser.add_argument("--storage", default=None, help="a store whose artifacts count as built (cost 0)")
    parser.add_argument(
        "--assume",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one of the cost model's assumptions, e.g. hbm_efficiency=0.8 (or vllm_tok_s=2500: "
        "a fixed decoding rate instead of the engine's settings)",
    )
    parser.add_argument("--brief", action="store_true", help="the summary only, no line per artifact")
    args = parser.parse_args(argv)
    setup_logging()
    from pwlock import description  # heavy: see main
    from pwlock.cost import Assumptions
    from pwlock.plan import plan
    from pwlock.pricing import estimate_plan
    from pwlock.store import StoreError, open_store

    try:
        overrides = _parse_assume(args.assume)
        store = open_store(args.storage) if args.storage else None
        raw = read_yaml(args.file, "study or config file")  # read once: its keys say which it is
        if description.is_description(raw):
            est = description.estimate(description.from_dict(raw, str(args.file)), store, overrides)
        else:
            a = Assumptions().with_overrides(overrides, "--assume")
            est = estimate_plan(plan(config_from_dict(raw, source=str(args.file)), store), store, a)
    except (ConfigError, StoreError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(est.report(detail=not args.brief))
    return 0


COMMANDS = {"cost": cost_main}


def tool(argv: Sequence[str]) -> int:
    """`python -m pwlock COMMAND ...`."""
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m pwlock {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
