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
    assert not stderr(nb), f"the notebook wrote to stderr (red blocks in Jupyter): {stderr(nb)}"
    return nb


def stderr(nb: nbformat.NotebookNode) -> list[str]:
    """What the notebook's cells wrote to stderr."""
    return [out["text"] for cell in nb.cells for out in cell.get("outputs", []) if out.get("name") == "stderr"]


def displayed(nb: nbformat.NotebookNode, last_line: str) -> str:
    """The plain-text display of the cell whose code ends with `last_line` (a table as Jupyter shows it)."""
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and c.source.strip().splitlines()[-1] == last_line]
    return "\n".join(out.get("data", {}).get("text/plain", "") for out in cell.outputs)


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
