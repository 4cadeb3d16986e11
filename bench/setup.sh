#!/usr/bin/env sh
# Creates (or reuses) the bench venv `.venv-bench` at the repository root with the Python peers'
# dependencies: numpy, scipy, matplotlib, torch (CPU use; PyPI's default torch wheel) and h5py.
# Usage: sh bench/setup.sh
set -eu
cd "$(dirname "$0")/.."
if [ ! -x .venv-bench/bin/python ]; then
    python3 -m venv .venv-bench
fi
if .venv-bench/bin/python -c "import numpy, scipy, matplotlib, torch, h5py" 2>/dev/null; then
    echo ".venv-bench is ready"
    exit 0
fi
.venv-bench/bin/pip install --quiet --upgrade pip
.venv-bench/bin/pip install --quiet -r bench/requirements.txt
.venv-bench/bin/python -c "import numpy, scipy, matplotlib, torch, h5py; print('.venv-bench ready: torch', torch.__version__)"
