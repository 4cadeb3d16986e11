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
