#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, the API docs (`cargo doc`, warnings fail), a
# private MLflow server on a free loopback port for the whole run (and a team server: 4 workers on
# a private PostgreSQL), `cargo test --workspace`, the tracking tests again on the team server, and
# the servers stopped again even when tests fail.
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
# Every server started below is stopped on exit, whatever happens.
trap 'server_stop; s3_stop; pg_server_stop' EXIT
server_start
export SAPSAN_TEST_TRACKING_URI="$SERVER_URL"
# The team set-up: an S3-compatible store (moto) on loopback and an MLflow server that keeps
# artifacts in it (--no-serve-artifacts); exports MLFLOW_S3_ENDPOINT_URL and placeholder AWS_*.
s3_start
s3_server_start
export SAPSAN_TEST_S3_TRACKING_URI="$S3_SERVER_URL" SAPSAN_TEST_S3_BUCKET="$S3_BUCKET"
echo "[test] S3 store at $MLFLOW_S3_ENDPOINT_URL, MLflow with artifacts in s3://$S3_BUCKET at $S3_SERVER_URL" >&2
echo "[test] MLflow $(curl -s "$SERVER_URL/version" 2>/dev/null || true) at $SERVER_URL (store $SERVER_DIR)" >&2
# The team server: MLflow with 4 workers on a private PostgreSQL cluster, proxied artifacts
# (tests/many_jobs.rs runs against it; the second pass below re-runs the tracking tests on it).
pg_server_start
export SAPSAN_TEST_TEAM_TRACKING_URI="$PG_SERVER_URL"
echo "[test] MLflow on PostgreSQL (4 workers) at $PG_SERVER_URL (store $PG_URI)" >&2

cargo test --workspace "$@"

# The whole suite only: the round-trip, seed-table and shared-server reliability tests again,
# against the team server (already built: this adds only their run time). The other
# reliability tests kill or restart a private server of their own and do not use this one.
if [ "$#" -eq 0 ]; then
  pg_pass_start=$SECONDS
  SAPSAN_TEST_TRACKING_URI="$PG_SERVER_URL" cargo test --workspace \
      --test tracking_roundtrip --test pipeline_seed_tables
  SAPSAN_TEST_TRACKING_URI="$PG_SERVER_URL" cargo test --workspace --test reliability_faults \
      eight_threads_80000_metrics_one_run_all_present_once
  echo "[test] the PostgreSQL pass took $((SECONDS - pg_pass_start)) s" >&2
fi
