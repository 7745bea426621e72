"""Mistakes of --resume, --name and --storage are answered before the CLI imports torch,
transformers or Ray (seconds), and a refusal writes nothing. The real sweep script, run in one
child process where importing those fails: a mistake that reached them would end in that error
instead of its own message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import contextlib, io, json, runpy, sys

class Heavy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "ray", "vllm"):
            raise ModuleNotFoundError(name + ": imported before the mistake was answered")

sys.meta_path.insert(0, Heavy())
script, cases = sys.argv[1], json.loads(sys.argv[2])
out = []
for argv in cases:
    sys.argv, err = [script, *argv], io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def test_mistakes_are_answered_before_heavy_imports_and_write_nothing(tmp_path, monkeypatch):
    store, file = tmp_path / "store", tmp_path / "a-file"
    (store / "taken").mkdir(parents=True)
    (store / "taken" / "study.yaml").write_text("name: taken\n")
    file.write_text("not a directory")
    work = tmp_path / "cwd"
    work.mkdir()
    cases = {
        "--resume: name the experiment to finish with --name": ["--resume"],
        "--resume: runs the experiment's own config; drop --config / --quick": ["--resume", "--name", "x", "--quick"],
        f"{tmp_path}/missing/never: no experiment 'never' in the store": [
            *("--resume", "--name", "never", "--storage", str(tmp_path / "missing")),
        ],
        f"{store}/nope: no experiment 'nope' in the store": ["--resume", "--name", "nope", "--storage", str(store)],
        f"{store}/taken: an experiment of this name exists; pass --resume": [
            *("--quick", "--name", "taken", "--storage", str(store)),
        ],
        "storage 's3:/x/y': a malformed URL": ["--quick", "--storage", "s3:/x/y"],
        f"store {file}: is a file, not a directory": ["--quick", "--storage", str(file)],
        f"store {tmp_path}/no/such: its parent directory {tmp_path}/no does not exist": [
            *("--quick", "--storage", str(tmp_path / "no" / "such")),
        ],
    }
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.chdir(work)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT / "sweeps" / "sample_efficiency.py"), json.dumps(list(cases.values()))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    for (expected, argv), (code, stderr) in zip(cases.items(), json.loads(child.stdout.splitlines()[-1])):
        assert code == 2 and stderr.startswith(f"error: {expected}"), (argv, stderr)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
