#!/usr/bin/env bash
# Installs what sapsan-rs needs on a fresh Debian machine, and nothing twice:
#   - libhdf5-dev + pkg-config (the HDF5 data module links against libhdf5), openssl (TLS test CA),
#   - postgresql (the team-server tests run MLflow on a private PostgreSQL cluster),
#   - a project-local Python venv `.venv` with mlflow[auth]==3.17.2 (the tracking server, its
#     basic-auth app for the security tests, and the official Python client that the integration
#     tests use as the judge). The `auth` extra adds Flask-WTF and costs about 8 s more;
#     psycopg2-binary lets the server use PostgreSQL.
# Safe to run again: every step checks first.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MLFLOW_VERSION=3.17.2

say() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root to run: $*  (run this script as root or install the packages by hand)"; exit 1
    fi
}

# 1. System packages.
missing=()
for pkg in libhdf5-dev pkg-config openssl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt-get"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# PostgreSQL: any version Debian ships (12 has 15); only its binaries are used, no system cluster.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    say "installing postgresql with apt-get"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
fi

# 2. Rust toolchain.
command -v cargo >/dev/null || { say "cargo not found: install Rust from https://rustup.rs"; exit 1; }

# 3. Python venv with MLflow.
venv="$root/.venv"
if ! "$venv/bin/python" -c "import mlflow, flask_wtf, sys; sys.exit(mlflow.__version__ != '$MLFLOW_VERSION')" 2>/dev/null; then
    py=$(command -v python3 || true)
    [ -n "$py" ] || { say "python3 not found: install it (apt-get install python3 python3-venv)"; exit 1; }
    say "creating $venv with mlflow[auth]==$MLFLOW_VERSION (about a minute)"
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "mlflow[auth]==$MLFLOW_VERSION"
fi
# 4. The object-store tests: an S3-compatible server (moto's server mode) and boto3, with which
#    MLflow's Python client reads artifacts from S3.
if ! "$venv/bin/python" -c "import boto3, moto, flask_cors" 2>/dev/null || [ ! -x "$venv/bin/moto_server" ]; then
    say "installing moto[server] and boto3 into $venv (the S3 store of the tests)"
    "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]" boto3
fi
if ! "$venv/bin/python" -c "import psycopg2" 2>/dev/null; then
    say "adding psycopg2-binary to $venv (MLflow's PostgreSQL driver)"
    "$venv/bin/pip" install -q --disable-pip-version-check psycopg2-binary
fi
say "ready: $("$venv/bin/mlflow" --version)"
