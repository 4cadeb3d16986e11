#!/usr/bin/env bash
# The main job, from a fresh machine: set-up, then learn the subgrid stress of synthetic turbulence
# (the local closure; SAPSAN_MODEL=cnn3d for Sapsan's CNN3d) and evaluate it, tracked in MLflow (a local server is started on 127.0.0.1:5000 unless one runs there,
# or MLFLOW_TRACKING_URI points elsewhere).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
export PATH="$root/.venv/bin:$PATH"
export MLFLOW_DISABLE_TELEMETRY=true
exec cargo run --example quickstart -- "$@"
