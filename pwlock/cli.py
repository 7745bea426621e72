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
    parser.add_argument("--config", type=Path, default=default_config, help=f"study YAML (default: {default_config})")
    parser.add_argument("--storage", default="results", help="where artifacts and results go (default: ./results)")
    parser.add_argument("--name", default=None, help="experiment name (default: <config name>_<timestamp>)")
    parser.add_argument("--quick", action="store_true", help="apply the config's `quick:` overrides: a short smoke run")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; train nothing")
    args = parser.parse_args(argv)
    setup_logging()

    from pwlock import sweep
    from pwlock.store import open_store

    try:
        cfg = load_config(args.config, quick=args.quick)
        plan = sweep.plan(cfg)
        store = open_store(args.storage)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(sweep.describe(plan, store))
        return 0
    if args.quick:
        log.warning("--quick: a smoke run of the whole pipeline; its models train a few epochs only, "
                    "so its numbers say nothing about elicitation")
    exp_dir = sweep.run(cfg, args.storage, args.name)
    print(f"\nresults: {exp_dir}")
    return 0
