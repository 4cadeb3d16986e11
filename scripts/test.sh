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
echo "[test] MLflow $(curl -s "$SERVER_URL/version" 2>/dev/null || true) at $SERVER_URL (store $SERVER_DIR)" >&2

cargo test --workspace "$@"
