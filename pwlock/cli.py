"""The command line shared by every sweep in `sweeps/`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pwlock import runtime  # noqa: F401  (Ray's local defaults, before anything imports ray)
from pwlock.config import ConfigError, load_config
from pwlock.logs import setup_logging

log = logging.getLogger("pwlock")


def main(argv: list[str], default_config: Path, description: str | None = None) -> int:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help=f"study YAML (default: {default_config})")
    parser.add_argument("--storage", default=None,
                        help="where artifacts and results go: a directory or s3://bucket/prefix "
                             "(default: the config's store.url, else ./results)")
    parser.add_argument("--name", default=None, help="experiment name (default: <config name>_<timestamp>)")
    parser.add_argument("--quick", action="store_true", help="apply the config's `quick:` overrides: a short smoke run")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; train nothing")
    parser.add_argument("--resume", action="store_true",
                        help="finish the interrupted experiment --name in the store, with the config it was "
                             "started with: finished trials stay, the rest go on from their last checkpoint")
    args = parser.parse_args(argv)
    setup_logging()

    from pwlock import sweep
    from pwlock.store import StoreError, open_store

    try:
        if args.resume and not args.name:
            raise ConfigError("--resume: name the experiment to finish with --name")
        if args.resume and (args.config or args.quick):
            raise ConfigError("--resume: runs the experiment's own config; drop --config / --quick")
        def store_of(cfg):  # --storage, else the config's store, else ./results
            return open_store(args.storage or cfg.store.url or "results", cfg.store.endpoint_url, cfg.store.region,
                              cfg.store.retry_s)

        cfg = load_config(args.config or default_config, quick=args.quick)
        store = store_of(cfg)
        if args.resume:
            store.check()
            cfg = sweep.load_experiment_config(store, args.name)
            store = store_of(cfg)
        plan = sweep.plan(cfg)
        if args.dry_run:
            print(sweep.describe(plan, store))
            return 0
    except (ConfigError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.quick:
        log.warning("--quick: a smoke run of the whole pipeline; its models train a few epochs only, "
                    "so its numbers say nothing about elicitation")
    try:
        where = sweep.run(cfg, store, args.name, resume=args.resume)
    except (ConfigError, StoreError) as e:  # checked by run before Ray starts: the store, the experiment name
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nresults: {where}")
    return 0
