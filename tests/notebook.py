"""Execute notebooks/analysis.ipynb against an experiment, as a user's Jupyter would."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analysis.ipynb"


def run_analysis_notebook(experiment: str, timeout: int = 300) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["PWLOCK_EXPERIMENT"] = experiment  # the kernel inherits it
    try:
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
        ).execute()
    finally:
        del os.environ["PWLOCK_EXPERIMENT"]
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, list[bytes]]:
    """All text the notebook printed or displayed, and its PNG images."""
    import base64

    text, images = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                text.append(out["text"])
            data = out.get("data", {})
            text.append(data.get("text/plain", ""))
            if "image/png" in data:
                images.append(base64.b64decode(data["image/png"]))
    return "\n".join(text), images
