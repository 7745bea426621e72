"""pwlock: password-locked models and the elicitation methods that try to unlock them.

Importing any part of pwlock first sets the defaults a local Ray needs, each only where the
environment has not set it: Ray stays on 127.0.0.1, sends no usage statistics and writes no auth
token; on a cluster (`ray job submit`, or RAY_ADDRESS set) the cluster's own settings rule. They
are set here, in the package, because Ray reads some of them when it is imported, and every
module of pwlock that imports ray runs after this file.
"""

import os as _os
from pathlib import Path as _Path

for _var, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps every Ray process on loopback
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}.items():
    _os.environ.setdefault(_var, _value)


def cache_root() -> _Path:
    """This machine's pwlock cache (PWLOCK_CACHE, default ~/.cache/pwlock): artifacts read from the
    store, converted models, files from PyPI packages, compiled sandbox programs."""
    return _Path(_os.environ.get("PWLOCK_CACHE", _Path.home() / ".cache" / "pwlock"))
