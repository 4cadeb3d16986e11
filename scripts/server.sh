# Sourced helpers: private MLflow servers (and what they stand on) on free loopback ports, each
# started in a process group of its own and stopped with it. Every wait has a deadline.
#
# server_start [workers]    -> MLflow on SQLite with proxied artifacts: SERVER_URL, SERVER_PID,
#                              SERVER_DIR; server_stop stops it and removes the store.
# s3_start                  -> an S3-compatible store (moto's server mode) with bucket $S3_BUCKET;
#                              exports MLFLOW_S3_ENDPOINT_URL and placeholder AWS_* credentials.
# s3_server_start           -> (after s3_start) MLflow with --no-serve-artifacts and
#                              --default-artifact-root s3://$S3_BUCKET/mlruns: S3_SERVER_URL, ...;
#                              s3_stop stops both.
# pg_start / pg_stop        -> a private PostgreSQL cluster: PG_URI (a SQLAlchemy URI), PG_DIR.
# pg_server_start [workers] -> pg_start, then MLflow on it (default 4 workers, proxied artifacts):
#                              PG_SERVER_URL, ...; pg_server_stop stops the server, then the cluster.
S3_BUCKET=${S3_BUCKET:-sapsan-artifacts}

# free_port: prints a free TCP port on 127.0.0.1.
free_port() {
    "${SAPSAN_PYTHON:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL PID [SECONDS]: polls URL until it answers below 500 (default deadline 180 s) while
# PID lives; fails when PID dies or the deadline passes.
wait_http() {
    "${SAPSAN_PYTHON:-python3}" - "$1" "$2" "${3:-180}" <<'PY'
import sys, time, urllib.request, urllib.error, os
url, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.time() + limit
while time.time() < deadline:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        sys.exit(0)
    except urllib.error.HTTPError as e:
        if e.code < 500:
            sys.exit(0)
    except Exception:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    time.sleep(0.1)
sys.exit(1)
PY
}

# stop_group PID: SIGTERM to the process group, up to 10 s to end, then SIGKILL.
stop_group() {
    [ -n "${1:-}" ] || return 0
    kill -TERM -- "-$1" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$1" 2>/dev/null || true
}

# mlflow_start NAME WHAT WORKERS DEADLINE ARGS...: an MLflow server with `--workers WORKERS` and
# ARGS (its stores) in a fresh directory, whose store options may name it as @DIR@; sets
# ${NAME}_URL, ${NAME}_PID and ${NAME}_DIR and waits for /health (DEADLINE seconds). On failure
# prints the server's log (WHAT names it) and stops it.
mlflow_start() {
    local name=$1 what=$2 workers=$3 limit=$4 port dir pid
    shift 4
    port=$(free_port)
    dir=$(mktemp -d -t "sapsan-mlflow-XXXXXX")
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --host 127.0.0.1 --port "$port" \
        --workers "$workers" "${@//@DIR@/$dir}" >"$dir/server.log" 2>&1 &
    pid=$!
    printf -v "${name}_URL" 'http://127.0.0.1:%s' "$port"
    printf -v "${name}_PID" '%s' "$pid"
    printf -v "${name}_DIR" '%s' "$dir"
    if ! wait_http "http://127.0.0.1:$port/health" "$pid" "$limit"; then
        echo "[server] $what did not become ready at http://127.0.0.1:$port; its log:" >&2
        cat "$dir/server.log" >&2
        stop_group "$pid"
        rm -rf "$dir"
        printf -v "${name}_PID" '%s' ""
        printf -v "${name}_DIR" '%s' ""
        return 1
    fi
}

server_start() {
    mlflow_start SERVER MLflow "${1:-1}" 180 \
        --backend-store-uri "sqlite:///@DIR@/mlflow.db" --artifacts-destination "@DIR@/mlartifacts"
}

server_stop() {
    stop_group "${SERVER_PID:-}"
    SERVER_PID=
    [ -n "${SERVER_DIR:-}" ] && rm -rf "$SERVER_DIR"
    SERVER_DIR=
}

# ---- Object store (S3) ---------------------------------------------------------------------
# The team set-up where clients write and read artifacts in the bucket themselves
# (`--no-serve-artifacts --default-artifact-root s3://...`).
s3_start() {
    local py port
    py="${SAPSAN_PYTHON:-python3}"
    port=$(free_port)
    S3_DIR=$(mktemp -d -t sapsan-s3-XXXXXX)
    export MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$port"
    # moto accepts any credentials; these are placeholders, never real keys.
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
    setsid moto_server -H 127.0.0.1 -p "$port" >"$S3_DIR/moto.log" 2>&1 &
    S3_PID=$!
    if ! wait_http "$MLFLOW_S3_ENDPOINT_URL/moto-api/" "$S3_PID" ||
        ! "$py" -c 'import boto3, os, sys
boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"]).create_bucket(Bucket=sys.argv[1])' "$S3_BUCKET"; then
        echo "[server] the S3 store did not start at $MLFLOW_S3_ENDPOINT_URL; its log:" >&2
        cat "$S3_DIR/moto.log" >&2
        s3_stop
        return 1
    fi
}

s3_server_start() {
    mlflow_start S3_SERVER "MLflow (S3 artifacts)" 1 180 \
        --backend-store-uri "sqlite:///@DIR@/mlflow.db" \
        --no-serve-artifacts --default-artifact-root "s3://$S3_BUCKET/mlruns"
}

s3_stop() {
    stop_group "${S3_SERVER_PID:-}"
    stop_group "${S3_PID:-}"
    S3_SERVER_PID= S3_PID=
    [ -n "${S3_SERVER_DIR:-}" ] && rm -rf "$S3_SERVER_DIR"
    [ -n "${S3_DIR:-}" ] && rm -rf "$S3_DIR"
    S3_SERVER_DIR= S3_DIR=
}

# ---- PostgreSQL -------------------------------------------------------------------------------
# Debian's PostgreSQL (scripts/setup.sh installs it); initdb refuses root, so the cluster is made
# and run as the `postgres` user when this runs as root. fsync is off: the cluster is thrown away
# with the run. pg_ctl waits at most 60 s.
pg_start() {
    local port initdb as=()
    initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$initdb" ]; then
        echo "[server] PostgreSQL not found (/usr/lib/postgresql/*/bin/initdb): run bash scripts/setup.sh" >&2
        return 1
    fi
    PG_BIN=$(dirname "$initdb")
    port=$(free_port)
    PG_DIR=$(mktemp -d -t sapsan-pg-XXXXXX)
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$PG_DIR"
        as=(runuser -u postgres --)
    fi
    if ! "${as[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U sapsan --auth=trust -E UTF8 \
        >"$PG_DIR/initdb.log" 2>&1; then
        echo "[server] initdb failed; its log:" >&2
        cat "$PG_DIR/initdb.log" >&2
        pg_stop
        return 1
    fi
    if ! "${as[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null; then
        echo "[server] PostgreSQL did not start on port $port; its log:" >&2
        cat "$PG_DIR/postgres.log" >&2
        pg_stop
        return 1
    fi
    "${as[@]}" "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U sapsan mlflow || { pg_stop; return 1; }
    PG_URI="postgresql+psycopg2://sapsan@127.0.0.1:$port/mlflow"
}

pg_stop() {
    if [ -n "${PG_DIR:-}" ] && [ -f "$PG_DIR/data/postmaster.pid" ]; then
        local as=()
        [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
        "${as[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    [ -n "${PG_DIR:-}" ] && rm -rf "$PG_DIR"
    PG_DIR=
}

pg_server_start() {
    pg_start || return 1
    mlflow_start PG_SERVER "MLflow on PostgreSQL" "${1:-4}" 240 \
        --backend-store-uri "$PG_URI" --artifacts-destination "@DIR@/mlartifacts" || {
        pg_stop
        return 1
    }
}

pg_server_stop() {
    stop_group "${PG_SERVER_PID:-}"
    PG_SERVER_PID=
    [ -n "${PG_SERVER_DIR:-}" ] && rm -rf "$PG_SERVER_DIR"
    PG_SERVER_DIR=
    pg_stop
}
