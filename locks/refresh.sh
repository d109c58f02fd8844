#!/usr/bin/env bash
# Recompile the locks from pyproject.toml's ranges and the pins in locks/*.in. Run `make test-latest`
# first (it proves the newest releases the ranges allow), then `make lock`, then `make test` on the new
# CPU lock (and `make test-gpu` on a GPU machine for the GPU lock), and commit pyproject + locks together.
#   CPU: Linux x86_64, Python 3.11 (the CI machine);  GPU: Linux x86_64, Python 3.12 (the GPU image's).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
common=(--no-header --annotation-style line --python-platform x86_64-manylinux_2_28)
"$UV" pip compile pyproject.toml --extra dev --find-links /opt/wheels -c locks/cpu.in \
    --python-version 3.11 "${common[@]}" -o locks/cpu.txt
"$UV" pip compile pyproject.toml --extra gpu --extra dev -c locks/gpu.in \
    --python-version 3.12 "${common[@]}" -o locks/gpu.txt
