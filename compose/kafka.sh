#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, combined broker+controller)
# on 127.0.0.1 without Docker, from jars fetched from Maven Central with mvn.
#
# Usage: compose/kafka.sh {fetch|start|wait|stop|restart|status|reset|logs|bootstrap}
#
#   fetch            fetch the broker jars into $TOLLGATE_KAFKA_HOME/libs (idempotent)
#   start            fetch if needed, format storage on first use, start the broker
#                    in the background and wait until it is ready (exit 0 if it is
#                    already up)
#   wait [SECONDS]   wait until the broker accepts connections and answers a
#                    Metadata request (default 90 s); non-zero + log tail on failure
#   stop             SIGTERM, then SIGKILL after $TOLLGATE_KAFKA_STOP_TIMEOUT s (idempotent)
#   restart          stop + start
#   status           print state; exit 0 ready, 1 running but not answering, 3 stopped
#   reset            stop and delete the data dir (topics, offsets, logs)
#   logs [N]         tail the broker log
#   bootstrap        print the bootstrap address (127.0.0.1:PORT)
#
# Environment (all optional):
#   TOLLGATE_KAFKA_VERSION       Kafka version to fetch/run        (default 4.3.1)
#   TOLLGATE_KAFKA_HOME          jar cache; libs/ goes below it   (default ~/.cache/tollgate/kafka-<version>)
#                                (Maven's own cache stays ~/.m2 unless TOLLGATE_MVN_ARGS says otherwise)
#   TOLLGATE_KAFKA_DATA          storage, config, pid, logs       (default /tmp/tollgate-kafka)
#   TOLLGATE_KAFKA_PORT          PLAINTEXT port; controller uses PORT+1 (default 19092)
#   TOLLGATE_KAFKA_HEAP_OPTS     JVM heap                          (default -Xms256m -Xmx512m)
#   TOLLGATE_KAFKA_WAIT_TIMEOUT  readiness timeout in seconds      (default 90)
#   TOLLGATE_KAFKA_STOP_TIMEOUT  seconds before SIGKILL on stop    (default 30)
#   TOLLGATE_MVN_ARGS            extra mvn args, e.g. -Dmaven.repo.local=/tmp/m2
#   JAVA                         java binary                        (default: java on PATH)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/kafka/pom.xml"

KAFKA_VERSION="${TOLLGATE_KAFKA_VERSION:-4.3.1}"
KAFKA_HOME="${TOLLGATE_KAFKA_HOME:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/tollgate/kafka-$KAFKA_VERSION}"
LIBS="$KAFKA_HOME/libs"
DATA="${TOLLGATE_KAFKA_DATA:-/tmp/tollgate-kafka}"
PORT="${TOLLGATE_KAFKA_PORT:-19092}"
CONTROLLER_PORT="$((PORT + 1))"
HOST=127.0.0.1
HEAP_OPTS="${TOLLGATE_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
WAIT_TIMEOUT="${TOLLGATE_KAFKA_WAIT_TIMEOUT:-90}"
STOP_TIMEOUT="${TOLLGATE_KAFKA_STOP_TIMEOUT:-30}"
JAVA="${JAVA:-java}"

PID_FILE="$DATA/kafka.pid"
CONFIG="$DATA/server.properties"
LOG4J_CONFIG="$DATA/log4j2.properties"
LOG_DIRS="$DATA/kraft-data"      # Kafka's own "log.dirs" (partition data + metadata log)
SERVER_LOG="$DATA/server.log"    # log4j output
STDOUT_LOG="$DATA/stdout.log"    # JVM stdout/stderr (GC warnings, crashes)

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

now_ms() { date +%s%3N; }

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

# ----------------------------------------------------------------------------- fetch

libs_complete() { [[ -f "$LIBS/.complete" && "$(cat "$LIBS/.complete")" == "$KAFKA_VERSION" ]]; }

do_fetch() {
    if libs_complete; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found (apt-get install maven)"
    [[ -f "$POM" ]] || die "missing $POM"
    local tmp="$KAFKA_HOME/libs.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
    local t0; t0=$(now_ms)
    # mvn's output goes to a file (Debian's mvn prints stray ANSI resets even
    # with -q); it is shown only if the fetch fails.
    local mvn_log="$KAFKA_HOME/fetch.log"
    # shellcheck disable=SC2086  # TOLLGATE_MVN_ARGS is intentionally word-split
    if ! mvn -B -q -Dstyle.color=never -f "$POM" ${TOLLGATE_MVN_ARGS:-} \
            -Dkafka.version="$KAFKA_VERSION" \
            dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
        cat "$mvn_log" >&2
        rm -rf "$tmp"
        die "mvn dependency:copy-dependencies failed for kafka $KAFKA_VERSION (Maven Central reachable?)"
    fi
    [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar not fetched"; }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    echo "$KAFKA_VERSION" >"$LIBS/.complete"
    log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars in $(( ($(now_ms) - t0) / 1000 ))s"
}

cmd_fetch() {
    libs_complete && return 0
    with_lock "$KAFKA_HOME/.fetch.lock" do_fetch
}

# ----------------------------------------------------------------------------- process

# Prints the broker pid if the pid file points at a live kafka.Kafka process.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: it must be our broker.
    if [[ -r "/proc/$pid/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka' || return 1
    fi
    echo "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Ask the broker for metadata over the wire (pure Python, no client library):
# ApiVersions v0, then Metadata v4 (the oldest version Kafka 4.x still serves).
# Ready = at least one (unfenced) broker listed and a known controller.
PROBE_PY='
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])

def call(sock, api_key, api_version, corr, body=b""):
    client = b"tollgate-probe"
    hdr = struct.pack(">hhih", api_key, api_version, corr, len(client)) + client
    msg = hdr + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", recv(sock, 4))[0]
    data = recv(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise SystemExit("correlation id mismatch")
    return data[4:]

def recv(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    return buf

with socket.create_connection((host, port), timeout=3) as s:
    s.settimeout(5)
    r = call(s, 18, 0, 1)
    err, n = struct.unpack(">hi", r[:6])
    if err:
        raise SystemExit(f"ApiVersions error {err}")
    apis = {}
    for i in range(n):
        k, lo, hi = struct.unpack(">hhh", r[6 + 6 * i: 12 + 6 * i])
        apis[k] = (lo, hi)
    lo, hi = apis.get(3, (99, -1))
    if not lo <= 4 <= hi:
        print("ok (ApiVersions only)")
        raise SystemExit(0)
    # topics = [] (no topics), allow_auto_topic_creation = false
    r = call(s, 3, 4, 2, struct.pack(">ib", 0, 0))
    off = 4
    (nb,) = struct.unpack_from(">i", r, off); off += 4
    brokers = []
    for _ in range(nb):
        node, hl = struct.unpack_from(">ih", r, off); off += 6
        h = r[off:off + hl].decode(); off += hl
        (p, rl) = struct.unpack_from(">ih", r, off); off += 6
        off += max(rl, 0)
        brokers.append(f"{node}@{h}:{p}")
    (cl,) = struct.unpack_from(">h", r, off); off += 2
    cluster = r[off:off + cl].decode() if cl >= 0 else None; off += max(cl, 0)
    (controller,) = struct.unpack_from(">i", r, off)
    if not brokers or controller < 0:
        raise SystemExit(f"not ready: brokers={brokers} controller={controller}")
    print(f"ok cluster={cluster} controller={controller} brokers={brokers}")
'

# Returns 0 when the broker answers a metadata request. Without python3, falls
# back to "port open + 'Kafka Server started' in the log".
probe() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c "$PROBE_PY" "$HOST" "$PORT" 2>/dev/null
    else
        port_open "$PORT" && grep -q 'Kafka Server started' "$SERVER_LOG" 2>/dev/null && echo "ok (log)"
    fi
}

log_tail() {
    local n="${1:-40}"
    if [[ -f "$SERVER_LOG" ]]; then
        echo "----- tail -n $n $SERVER_LOG" >&2
        tail -n "$n" "$SERVER_LOG" >&2 || true
    fi
    if [[ -s "$STDOUT_LOG" ]]; then
        echo "----- tail -n 20 $STDOUT_LOG" >&2
        tail -n 20 "$STDOUT_LOG" >&2 || true
    fi
}

cmd_wait() {
    local timeout="${1:-$WAIT_TIMEOUT}"
    [[ "$timeout" =~ ^[0-9]+$ ]] || die "wait: timeout must be whole seconds, got '$timeout'"
    local deadline=$((SECONDS + timeout)) out
    while :; do
        if out="$(probe)"; then
            log "ready on $HOST:$PORT ($out)"
            return 0
        fi
        # Fail fast if the broker we started has died.
        if [[ -f "$PID_FILE" ]] && ! running_pid >/dev/null; then
            log "broker process $(cat "$PID_FILE" 2>/dev/null || echo '?') exited before becoming ready"
            log_tail
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "broker on $HOST:$PORT not ready after ${timeout}s"
            log_tail
            return 1
        fi
        sleep 0.3
    done
}

check_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Kafka 4.x needs Java 17+)"
    local v
    v="$("$JAVA" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    local major="${v%%.*}"
    [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || die "Kafka 4.x needs Java 17+, found '$v'"
}

write_config() {
    cat >"$CONFIG" <<EOF
# Generated by compose/kafka.sh - single-node KRaft broker+controller for dev/tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$LOG_DIRS

# Single node: every internal topic has replication factor 1.
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Modest resource use.
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
# Transcription uploads ride in their job records (ledger/log/kafka.py record_bytes_max).
message.max.bytes=8388608
log.retention.check.interval.ms=300000
EOF
    cat >"$LOG4J_CONFIG" <<'EOF'
# Generated by compose/kafka.sh - everything goes to server.log in the data dir.
status = warn
name = tollgate-kafka

appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3

rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE

logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
EOF
}

random_cluster_id() {
    # Same format as org.apache.kafka.common.Uuid.randomUuid(): 16 random bytes,
    # url-safe base64 without padding, never starting with '-'.
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s); break'
    else
        "$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid
    fi
}

format_storage() {
    if [[ -f "$LOG_DIRS/meta.properties" ]]; then
        return 0
    fi
    local cid
    cid="$(random_cluster_id)"
    log "formatting $LOG_DIRS (cluster id $cid)"
    # Static quorum (controller.quorum.voters), so no --standalone needed.
    if ! "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$LOG4J_CONFIG" -Dkafka.logs.dir="$DATA" \
            -cp "$LIBS/*" kafka.tools.StorageTool format \
            -t "$cid" -c "$CONFIG" >"$DATA/format.log" 2>&1; then
        cat "$DATA/format.log" >&2
        die "kafka-storage format failed"
    fi
}

do_start() {
    local pid
    if pid="$(running_pid)"; then
        log "broker already running (pid $pid)"
        cmd_wait
        return
    fi
    rm -f "$PID_FILE"
    if port_open "$PORT"; then
        if probe >/dev/null; then
            log "a Kafka broker not started by this script already answers on $HOST:$PORT; using it"
            return 0
        fi
        die "port $PORT is in use by something that is not a Kafka broker"
    fi
    port_open "$CONTROLLER_PORT" && die "controller port $CONTROLLER_PORT is already in use"

    check_java
    cmd_fetch
    mkdir -p "$DATA"
    write_config
    format_storage

    # Keep the previous run's log aside so a failure tail shows only this run.
    [[ -f "$SERVER_LOG" ]] && mv -f "$SERVER_LOG" "$SERVER_LOG.prev"
    local t0; t0=$(now_ms)
    # shellcheck disable=SC2086  # HEAP_OPTS is intentionally word-split
    nohup "$JAVA" $HEAP_OPTS \
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dkafka.logs.dir="$DATA" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
        -cp "$LIBS/*" kafka.Kafka "$CONFIG" \
        >"$STDOUT_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$PID_FILE"
    log "started Kafka $KAFKA_VERSION (pid $!) on $HOST:$PORT, data in $DATA"
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
    log "stopping broker (pid $pid)"
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
            echo "running pid=$pid version=$KAFKA_VERSION bootstrap=$HOST:$PORT data=$DATA ($out)"
            return 0
        fi
        echo "running pid=$pid version=$KAFKA_VERSION bootstrap=$HOST:$PORT data=$DATA (not answering yet)"
        return 1
    fi
    if out="$(probe)"; then
        echo "external broker answering on $HOST:$PORT ($out)"
        return 0
    fi
    echo "stopped (bootstrap=$HOST:$PORT data=$DATA libs=$LIBS$(libs_complete && echo ' fetched' || echo ' not fetched'))"
    return 3
}

cmd_reset() {
    cmd_stop
    rm -rf "$DATA"
    log "removed $DATA"
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
        reset) cmd_reset ;;
        logs) tail -n "${1:-100}" "$SERVER_LOG" ;;
        bootstrap) echo "$HOST:$PORT" ;;
        -h|--help|help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
