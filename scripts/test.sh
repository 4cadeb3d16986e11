#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, the API docs (`cargo doc`, warnings fail), a
# private MLflow server on a free loopback port for the whole run, `cargo test --workspace`, and the
# server stopped again even when tests fail.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh

export MLFLOW_DISABLE_TELEMETRY=true
# Tests that auto-start servers find `mlflow` here; tests that judge results use this interpreter.
export PATH="$root/.venv/bin:$PATH"
export SAPSAN_PYTHON="$root/.venv/bin/python"

# The API docs as docs.rs builds them: every warning (a broken intra-doc link, a missing doc on
# the public API) fails the suite. Only our crates are documented (--no-deps); skipped when the
# command names a test, as in `bash scripts/test.sh --test cli`.
if [ "$#" -eq 0 ]; then
  RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
fi

# shellcheck source=scripts/server.sh
source scripts/server.sh
server_start
trap server_stop EXIT
export SAPSAN_TEST_TRACKING_URI="$SERVER_URL"
# The team set-up: an S3-compatible store (moto) on loopback and an MLflow server that keeps
# artifacts in it (--no-serve-artifacts); exports MLFLOW_S3_ENDPOINT_URL and placeholder AWS_*.
s3_start
trap 'server_stop; s3_stop' EXIT
s3_server_start
export SAPSAN_TEST_S3_TRACKING_URI="$S3_SERVER_URL" SAPSAN_TEST_S3_BUCKET="$S3_BUCKET"
echo "[test] S3 store at $MLFLOW_S3_ENDPOINT_URL, MLflow with artifacts in s3://$S3_BUCKET at $S3_SERVER_URL" >&2
echo "[test] MLflow $(curl -s "$SERVER_URL/version" 2>/dev/null || true) at $SERVER_URL (store $SERVER_DIR)" >&2

cargo test --workspace "$@"
