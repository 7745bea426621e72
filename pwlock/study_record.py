"""An experiment's own config, as `--resume` runs it: `<experiment>/study.yaml` carries a hash of
itself in its first line, and `<experiment>/.study.json` keeps the config as it was written. A
study.yaml edited after the experiment started is refused on `--resume`, naming the fields that
differ: finishing the unfinished trials with another config would mix two studies in one summary.
To run the edited config, run it as a new experiment (`--config FILE --name NEW`); it reuses every
artifact the two configs share.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from pwlock.analysis import STUDY
from pwlock.config import ConfigError, StudyConfig, config_from_dict, to_dict
from pwlock.store import Store

ORIGINAL = ".study.json"
HEADER = "# pwlock sha256 of the rest of this file: "


def write_study(store: Store, experiment: str, cfg: StudyConfig) -> None:
    raw = to_dict(cfg)
    body = yaml.safe_dump(raw, sort_keys=False)
    store.write_text(f"{experiment}/{ORIGINAL}", json.dumps(raw, indent=1, default=str))
    store.write_text(f"{experiment}/{STUDY}", f"{HEADER}{_sha256(body)}\n{body}")


def read_study(store: Store, experiment: str) -> StudyConfig:
    """The config `experiment` was started with; ConfigError if there is none, or if its study.yaml
    was edited since (experiments from before the hash was written are taken as they are)."""
    rel = f"{experiment}/{STUDY}"
    if not store.exists(rel):
        raise ConfigError(
            f"{store.uri(experiment)}: no experiment {experiment!r} in the store (no {STUDY}): a driver "
            "stopped before its trials began leaves none; run the same command again without --resume "
            "(the upstream artifacts it built are reused)"
        )
    text = store.read_text(rel)
    first, _, body = text.partition("\n")
    raw = yaml.safe_load(text)
    if first.startswith(HEADER) and first.removeprefix(HEADER).strip() != _sha256(body):
        original = json.loads(store.read_text(f"{experiment}/{ORIGINAL}"))
        edited = json.loads(json.dumps(raw, default=str))
        changes = [f"{k}: {a!r} -> {b!r}" for k, a, b in _differences(original, edited)] or ["no field, only its text"]
        raise ConfigError(
            f"{store.uri(rel)} was edited after the experiment started ({'; '.join(changes)}); --resume "
            "finishes an experiment with the config it started with. Put the file back, or run the "
            "edited config as a new experiment (--config FILE --name NEW), which reuses the artifacts"
        )
    raw.pop("source", None)
    return config_from_dict(raw, source=store.uri(rel))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, before, after) for every leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [(path, a, b)]
