# Sourced helpers: start a private MLflow server on a free loopback port, stop its process group.
# server_start [workers]  -> sets SERVER_URL, SERVER_PID, SERVER_DIR; waits (polling) until /health is OK.
# server_stop             -> stops the whole process group and removes the store.
server_start() {
    local workers=${1:-1} port py
    py="${SAPSAN_PYTHON:-python3}"
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    SERVER_DIR=$(mktemp -d -t sapsan-mlflow-XXXXXX)
    SERVER_URL="http://127.0.0.1:$port"
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --host 127.0.0.1 --port "$port" \
        --backend-store-uri "sqlite:///$SERVER_DIR/mlflow.db" \
        --artifacts-destination "$SERVER_DIR/mlartifacts" --workers "$workers" \
        >"$SERVER_DIR/server.log" 2>&1 &
    SERVER_PID=$!
    # Poll /health; give up after 180 s with the server's log.
    if ! "$py" - "$SERVER_URL" "$SERVER_PID" <<'PY'
import sys, time, urllib.request, os
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 180
while time.time() < deadline:
    try:
        if urllib.request.urlopen(url + "/health", timeout=2).read().strip() == b"OK":
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
    then
        echo "[server] MLflow did not become ready at $SERVER_URL; its log:" >&2
        cat "$SERVER_DIR/server.log" >&2
        server_stop
        return 1
    fi
}

server_stop() {
    if [ -n "${SERVER_PID:-}" ]; then
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
    [ -n "${SERVER_DIR:-}" ] && rm -rf "$SERVER_DIR"
    SERVER_DIR=
}

# ---- Object store (S3) ---------------------------------------------------------------------
# An S3-compatible store (moto's server mode) and an MLflow server that keeps artifacts in it:
# the team set-up (`--no-serve-artifacts --default-artifact-root s3://...`), where clients write
# and read artifacts in the bucket themselves.
# s3_start           -> starts moto on a free loopback port, creates bucket $S3_BUCKET; exports
#                       MLFLOW_S3_ENDPOINT_URL and dummy AWS_* credentials; sets S3_PID, S3_DIR.
# s3_server_start    -> (after s3_start) an MLflow server with --no-serve-artifacts and
#                       --default-artifact-root s3://$S3_BUCKET/mlruns; sets S3_SERVER_URL,
#                       S3_SERVER_PID, S3_SERVER_DIR.
# s3_stop            -> stops both (process groups) and removes their directories.
S3_BUCKET=${S3_BUCKET:-sapsan-artifacts}

# wait_http URL PID WHAT: polls URL until it answers below 500 (deadline 180 s) while PID lives.
wait_http() {
    "${SAPSAN_PYTHON:-python3}" - "$1" "$2" <<'PY'
import sys, time, urllib.request, urllib.error, os
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 180
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

s3_start() {
    local py port
    py="${SAPSAN_PYTHON:-python3}"
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
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
    local port py
    py="${SAPSAN_PYTHON:-python3}"
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    S3_SERVER_DIR=$(mktemp -d -t sapsan-mlflow-s3-XXXXXX)
    S3_SERVER_URL="http://127.0.0.1:$port"
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --host 127.0.0.1 --port "$port" \
        --backend-store-uri "sqlite:///$S3_SERVER_DIR/mlflow.db" \
        --no-serve-artifacts --default-artifact-root "s3://$S3_BUCKET/mlruns" --workers 1 \
        >"$S3_SERVER_DIR/server.log" 2>&1 &
    S3_SERVER_PID=$!
    if ! wait_http "$S3_SERVER_URL/health" "$S3_SERVER_PID"; then
        echo "[server] MLflow (S3 artifacts) did not become ready at $S3_SERVER_URL; its log:" >&2
        cat "$S3_SERVER_DIR/server.log" >&2
        s3_stop
        return 1
    fi
}

s3_stop() {
    local pid
    for pid in "${S3_SERVER_PID:-}" "${S3_PID:-}"; do
        [ -n "$pid" ] || continue
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    S3_SERVER_PID= S3_PID=
    [ -n "${S3_SERVER_DIR:-}" ] && rm -rf "$S3_SERVER_DIR"
    [ -n "${S3_DIR:-}" ] && rm -rf "$S3_DIR"
    S3_SERVER_DIR= S3_DIR=
}

# ---- PostgreSQL -------------------------------------------------------------------------------
# A private PostgreSQL cluster on loopback, and an MLflow server on it: the team-server set-up
# (several workers, proxied artifacts) in the tests. Debian's PostgreSQL (scripts/setup.sh installs
# it); initdb refuses root, so the cluster is made and run as the `postgres` user when this runs as
# root. fsync is off: the cluster is thrown away with the run.
# pg_start              -> sets PG_URI (a SQLAlchemy URI for MLflow), PG_DIR, PG_BIN; waits until
#                          the database accepts connections (pg_ctl -w, 60 s).
# pg_stop               -> stops the cluster and removes its directory.
# pg_server_start [workers] -> pg_start, then an MLflow server on it (default 4 workers) with
#                          proxied artifacts: sets PG_SERVER_URL, PG_SERVER_PID, PG_SERVER_DIR.
# pg_server_stop        -> stops that server, then the cluster.
pg_start() {
    local py port initdb as=()
    py="${SAPSAN_PYTHON:-python3}"
    initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$initdb" ]; then
        echo "[server] PostgreSQL not found (/usr/lib/postgresql/*/bin/initdb): run bash scripts/setup.sh" >&2
        return 1
    fi
    PG_BIN=$(dirname "$initdb")
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
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
    local workers=${1:-4} port py
    py="${SAPSAN_PYTHON:-python3}"
    pg_start || return 1
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    PG_SERVER_DIR=$(mktemp -d -t sapsan-mlflow-pg-XXXXXX)
    PG_SERVER_URL="http://127.0.0.1:$port"
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --host 127.0.0.1 --port "$port" \
        --backend-store-uri "$PG_URI" \
        --artifacts-destination "$PG_SERVER_DIR/mlartifacts" --workers "$workers" \
        >"$PG_SERVER_DIR/server.log" 2>&1 &
    PG_SERVER_PID=$!
    if ! "$py" - "$PG_SERVER_URL" "$PG_SERVER_PID" <<'PY'
import sys, time, urllib.request, os
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 240
while time.time() < deadline:
    try:
        if urllib.request.urlopen(url + "/health", timeout=2).read().strip() == b"OK":
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
    then
        echo "[server] MLflow on PostgreSQL did not become ready at $PG_SERVER_URL; its log:" >&2
        cat "$PG_SERVER_DIR/server.log" >&2
        pg_server_stop
        return 1
    fi
}

pg_server_stop() {
    if [ -n "${PG_SERVER_PID:-}" ]; then
        kill -TERM -- "-$PG_SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$PG_SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$PG_SERVER_PID" 2>/dev/null || true
        PG_SERVER_PID=
    fi
    [ -n "${PG_SERVER_DIR:-}" ] && rm -rf "$PG_SERVER_DIR"
    PG_SERVER_DIR=
    pg_stop
}
