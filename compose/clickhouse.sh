#!/usr/bin/env bash
# Run a real single-node ClickHouse server (HTTP + native TCP) on 127.0.0.1 without Docker and
# without a ClickHouse download: tollgate/clickhouse_server.py runs the clickhouse-local that ships
# in the chdb-core wheel (already a dependency) and opens its HTTP and native listeners. (`tollgate dev`
# runs the same file as its child; this script runs it for the roles, the tests and a SQL client.)
#
# Usage: compose/clickhouse.sh {start|wait|stop|restart|status|reset|logs|url|tcp}
#
#   start            start the server in the background and wait until /ping answers; print its
#                    URL on stdout (exit 0 and print the URL if it is already running)
#   wait [SECONDS]   wait until /ping answers (default 60 s); non-zero + log tail on failure
#   stop             SIGTERM (clean shutdown), then SIGKILL after $TOLLGATE_CLICKHOUSE_STOP_TIMEOUT s
#                    (idempotent)
#   restart          stop + start
#   status           print state; exit 0 ready, 1 running but not answering, 3 stopped
#   reset            stop and delete the data dir (databases, logs)
#   logs [N]         tail the server log
#   url              print the HTTP URL (http://127.0.0.1:PORT), e.g. for TOLLGATE_CLICKHOUSE_URL
#   tcp              print the native protocol address (127.0.0.1:PORT)
#
# Environment (all optional):
#   TOLLGATE_CLICKHOUSE_DATA          config, database files, logs, pid  (default /tmp/tollgate-clickhouse)
#   TOLLGATE_CLICKHOUSE_HTTP_PORT     HTTP port                          (default 18123)
#   TOLLGATE_CLICKHOUSE_TCP_PORT      native protocol port               (default 19000)
#                                     0 = pick a free port at start; the ports in use are recorded in
#                                     $TOLLGATE_CLICKHOUSE_DATA/ports and printed by `url` / `tcp`
#   TOLLGATE_CLICKHOUSE_LOG_LEVEL     server log level                   (default information)
#   TOLLGATE_CLICKHOUSE_WAIT_TIMEOUT  readiness timeout in seconds       (default 60)
#   TOLLGATE_CLICKHOUSE_STOP_TIMEOUT  seconds before SIGKILL on stop     (default 30)
#   TOLLGATE_PYTHON                   interpreter with chdb-core         (default <repo>/.venv/bin/python)
#
# Databases: `default` persists (clickhouse-local's Overlay over an Atomic database); CREATE DATABASE
# makes Atomic databases, which persist too. One user, `default`, no password: loopback only.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$SCRIPT_DIR")"
SERVER_PY="$REPO/tollgate/clickhouse_server.py"  # standard library + chdb-core: runs by path

DATA="${TOLLGATE_CLICKHOUSE_DATA:-/tmp/tollgate-clickhouse}"
HTTP_PORT="${TOLLGATE_CLICKHOUSE_HTTP_PORT:-18123}"
TCP_PORT="${TOLLGATE_CLICKHOUSE_TCP_PORT:-19000}"
HOST=127.0.0.1
LOG_LEVEL="${TOLLGATE_CLICKHOUSE_LOG_LEVEL:-information}"
WAIT_TIMEOUT="${TOLLGATE_CLICKHOUSE_WAIT_TIMEOUT:-60}"
STOP_TIMEOUT="${TOLLGATE_CLICKHOUSE_STOP_TIMEOUT:-30}"
PYTHON="${TOLLGATE_PYTHON:-$REPO/.venv/bin/python}"

PID_FILE="$DATA/clickhouse.pid"
PORTS_FILE="$DATA/ports"                        # written by clickhouse_server.py: http_port=, tcp_port=
SERVER_LOG="$DATA/log/clickhouse-server.log"    # ClickHouse's own log
ERROR_LOG="$DATA/log/clickhouse-server.err.log" # warnings and errors only
STDOUT_LOG="$DATA/stdout.log"                   # the Python entry point + clickhouse-local stderr

log() { printf 'clickhouse.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

now_ms() { date +%s%3N; }

for var in HTTP_PORT TCP_PORT WAIT_TIMEOUT STOP_TIMEOUT; do
    [[ "${!var}" =~ ^[0-9]+$ ]] || die "TOLLGATE_CLICKHOUSE_$var must be a whole number, got '${!var}'"
done

# Serialise concurrent invocations (e.g. parallel test workers) on a lock file.
with_lock() {
    local lockfile="$1"; shift
    if command -v flock >/dev/null 2>&1; then
        mkdir -p "$(dirname "$lockfile")"
        (
            flock -w 600 9 || die "timed out waiting for lock $lockfile"
            "$@"
        ) 9>"$lockfile"
    else
        "$@"
    fi
}

# ----------------------------------------------------------------------------- process

# Prints the server pid if the pid file points at a live clickhouse_server.py process.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: it must be our server.
    if [[ -r "/proc/$pid/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'clickhouse_server\.py' || return 1
    fi
    echo "$pid"
}

# The port in use: from the ports file while our server runs (covers port 0), else as configured.
effective_port() {
    local key="$1" configured="$2" value=""
    if [[ -f "$PORTS_FILE" ]] && running_pid >/dev/null; then
        value="$(sed -n "s/^${key}=\([0-9][0-9]*\)$/\1/p" "$PORTS_FILE")"
    fi
    echo "${value:-$configured}"
}

http_port() { effective_port http_port "$HTTP_PORT"; }
tcp_port() { effective_port tcp_port "$TCP_PORT"; }

# Alive and not a zombie: an orphaned server is reaped by PID 1 only some time after it exits.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ -r "/proc/$1/stat" ]] || return 0
    local state
    state="$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Returns 0 (and prints ClickHouse's answer) when GET /ping on the port answers "Ok.".
probe() {
    local port="$1" out
    [[ "$port" != 0 ]] || return 1
    if command -v curl >/dev/null 2>&1; then
        out="$(curl -sf --max-time 2 "http://$HOST:$port/ping" 2>/dev/null)" || return 1
    else
        out="$(
            exec 3<>"/dev/tcp/$HOST/$port" || exit 1
            printf 'GET /ping HTTP/1.0\r\nHost: %s\r\n\r\n' "$HOST" >&3
            timeout 2 cat <&3 | tail -n 1
        )" 2>/dev/null || return 1
    fi
    [[ "$out" == Ok.* ]] || return 1
    echo "$out"
}

log_tail() {
    local n="${1:-40}"
    if [[ -s "$STDOUT_LOG" ]]; then
        echo "----- tail -n 20 $STDOUT_LOG" >&2
        tail -n 20 "$STDOUT_LOG" >&2 || true
    fi
    if [[ -s "$ERROR_LOG" ]]; then
        echo "----- tail -n $n $ERROR_LOG" >&2
        tail -n "$n" "$ERROR_LOG" >&2 || true
    fi
}

cmd_wait() {
    local timeout="${1:-$WAIT_TIMEOUT}"
    [[ "$timeout" =~ ^[0-9]+$ ]] || die "wait: timeout must be whole seconds, got '$timeout'"
    local deadline=$((SECONDS + timeout)) port
    while :; do
        port="$(http_port)"
        if probe "$port" >/dev/null; then
            log "ready on http://$HOST:$port (native $HOST:$(tcp_port))"
            return 0
        fi
        # Fail fast if the server we started has died.
        if [[ -f "$PID_FILE" ]] && ! running_pid >/dev/null; then
            log "server process $(cat "$PID_FILE" 2>/dev/null || echo '?') exited before becoming ready"
            log_tail
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "server on http://$HOST:$port not ready after ${timeout}s"
            log_tail
            return 1
        fi
        sleep 0.1
    done
}

check_python() {
    [[ -x "$PYTHON" ]] || command -v "$PYTHON" >/dev/null 2>&1 \
        || die "python not found at $PYTHON (run bin/setup, or set TOLLGATE_PYTHON)"
    "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("chdb") is None)' 2>/dev/null \
        || die "$PYTHON cannot import chdb-core (pip install chdb-core)"
}

do_start() {
    local pid
    if pid="$(running_pid)"; then
        log "server already running (pid $pid)"
        cmd_wait
        echo "http://$HOST:$(http_port)"
        return
    fi
    rm -f "$PID_FILE" "$PORTS_FILE"
    local port
    for port in "$HTTP_PORT" "$TCP_PORT"; do
        [[ "$port" == 0 ]] && continue
        if port_open "$port"; then
            if probe "$port" >/dev/null; then
                die "port $port already answers as a ClickHouse server not started from $DATA (stop it, or pick other ports)"
            fi
            die "port $port is already in use"
        fi
    done
    [[ "$HTTP_PORT" == 0 || "$HTTP_PORT" != "$TCP_PORT" ]] || die "HTTP and TCP ports must differ (both $HTTP_PORT)"

    check_python
    mkdir -p "$DATA"
    # Keep the previous run's output aside so a failure tail shows only this run.
    [[ -f "$STDOUT_LOG" ]] && mv -f "$STDOUT_LOG" "$STDOUT_LOG.prev"
    local t0; t0=$(now_ms)
    # The server's working directory is the data dir (clickhouse-local reads config.xml from it).
    nohup "$PYTHON" "$SERVER_PY" \
        --data-dir "$DATA" --host "$HOST" --http-port "$HTTP_PORT" --tcp-port "$TCP_PORT" \
        --log-level "$LOG_LEVEL" --stop-timeout "$STOP_TIMEOUT" \
        >"$STDOUT_LOG" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    log "started ClickHouse (pid $pid), data in $DATA"
    # The ports file appears before the listeners open (port 0 is resolved first). Until python has
    # exec'd, the child's cmdline is still this shell's: test liveness only, not running_pid.
    local deadline=$((SECONDS + WAIT_TIMEOUT))
    while [[ ! -f "$PORTS_FILE" ]]; do
        if ! alive "$pid"; then
            log "server process exited during startup"
            log_tail
            rm -f "$PID_FILE"
            return 1
        fi
        ((SECONDS < deadline)) || { log "no $PORTS_FILE after ${WAIT_TIMEOUT}s"; log_tail; return 1; }
        sleep 0.05
    done
    if ! cmd_wait; then
        running_pid >/dev/null || rm -f "$PID_FILE"
        return 1
    fi
    log "start-to-ready $(( $(now_ms) - t0 )) ms"
    echo "http://$HOST:$(http_port)"
}

cmd_start() {
    mkdir -p "$DATA"
    with_lock "$DATA.lock" do_start
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    log "stopping server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            log "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.1
    done
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid out port
    port="$(http_port)"
    if pid="$(running_pid)"; then
        if out="$(probe "$port")"; then
            echo "running pid=$pid url=http://$HOST:$port native=$HOST:$(tcp_port) data=$DATA ($out)"
            return 0
        fi
        echo "running pid=$pid url=http://$HOST:$port native=$HOST:$(tcp_port) data=$DATA (not answering yet)"
        return 1
    fi
    if out="$(probe "$port")"; then
        echo "external server answering on http://$HOST:$port ($out), none running from $DATA"
        return 3
    fi
    [[ "$port" != 0 ]] || port="<free port chosen at start>"
    echo "stopped (url=http://$HOST:$port data=$DATA)"
    return 3
}

cmd_reset() {
    cmd_stop
    rm -rf "$DATA"
    log "removed $DATA"
}

cmd_url() {
    local port; port="$(http_port)"
    [[ "$port" != 0 ]] || die "not running: with TOLLGATE_CLICKHOUSE_HTTP_PORT=0 the port is chosen at start"
    echo "http://$HOST:$port"
}

cmd_tcp() {
    local port; port="$(tcp_port)"
    [[ "$port" != 0 ]] || die "not running: with TOLLGATE_CLICKHOUSE_TCP_PORT=0 the port is chosen at start"
    echo "$HOST:$port"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
        start) cmd_start ;;
        wait) cmd_wait "$@" ;;
        stop) cmd_stop ;;
        restart) cmd_stop; cmd_start ;;
        status) cmd_status ;;
        reset) cmd_reset ;;
        logs) tail -n "${1:-100}" "$SERVER_LOG" ;;
        url) cmd_url ;;
        tcp) cmd_tcp ;;
        -h|--help|help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
