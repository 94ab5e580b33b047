#!/usr/bin/env bash
# Run real Apache Kafka (KRaft) on 127.0.0.1 without Docker, from jars fetched from Maven Central
# with mvn: a single node (broker and controller in one process; dev and most tests), or a cluster of
# TOLLGATE_KAFKA_NODES nodes, each a combined broker and controller, where every topic (the internal
# ones too) has replication factor 3 and min.insync.replicas 2, for tests that kill brokers.
#
# Usage: compose/kafka.sh {fetch|start|wait|stop|kill|restart|status|reset|logs|bootstrap} [ID]
#
#   fetch            fetch the broker jars into $TOLLGATE_KAFKA_HOME/libs (idempotent)
#   start [ID]       fetch if needed, format storage on first use, start every node (or node ID) in
#                    the background and wait until it is ready (exit 0 if it is already up)
#   wait [SECONDS]   wait until every running node answers a Metadata request that lists every
#                    running node as a live broker (default 90 s); non-zero + log tail on failure
#   stop [ID]        SIGTERM, then SIGKILL after $TOLLGATE_KAFKA_STOP_TIMEOUT s (idempotent); every
#                    node at once, or node ID
#   kill ID          SIGKILL node ID: a crash, no shutdown hook (idempotent)
#   restart [ID]     stop + start
#   status [ID]      print state; exit 0 ready, 1 running but not answering, 3 stopped
#   reset            stop and delete the data dir (topics, offsets, logs)
#   logs [N] [ID]    tail node ID's broker log (default node 1)
#   bootstrap        print the bootstrap address(es), comma-separated (127.0.0.1:PORT,...)
#
# Node ids are 1..N. A cluster's node count and ports are recorded in its data dir at its first
# start, so later commands on that dir need only TOLLGATE_KAFKA_DATA:
#
#   TOLLGATE_KAFKA_NODES=3 TOLLGATE_KAFKA_DATA=/tmp/k3 compose/kafka.sh start
#   TOLLGATE_KAFKA_DATA=/tmp/k3 compose/kafka.sh kill 2; TOLLGATE_KAFKA_DATA=/tmp/k3 compose/kafka.sh start 2
#
# Environment (all optional):
#   TOLLGATE_KAFKA_VERSION       Kafka version to fetch/run        (default 4.3.1)
#   TOLLGATE_KAFKA_HOME          jar cache; libs/ goes below it   (default ~/.cache/tollgate/kafka-<version>)
#                                (Maven's own cache stays ~/.m2 unless TOLLGATE_MVN_ARGS says otherwise)
#   TOLLGATE_KAFKA_DATA          storage, config, pid, logs       (default /tmp/tollgate-kafka); a
#                                cluster keeps node ID's under node-ID/
#   TOLLGATE_KAFKA_NODES         number of nodes                   (default 1, or what the data dir records)
#   TOLLGATE_KAFKA_PORT          single node: PLAINTEXT port; controller uses PORT+1 (default 19092)
#                                cluster: node ID uses PORT+2*(ID-1) and the port after it; unset or
#                                0 = free ports picked at the first start (default)
#   TOLLGATE_KAFKA_HEAP_OPTS     JVM heap per node                 (default -Xms256m -Xmx512m;
#                                cluster -Xms128m -Xmx384m)
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
HOST=127.0.0.1
WAIT_TIMEOUT="${TOLLGATE_KAFKA_WAIT_TIMEOUT:-90}"
STOP_TIMEOUT="${TOLLGATE_KAFKA_STOP_TIMEOUT:-30}"
JAVA="${JAVA:-java}"

# A cluster's layout, written at its first start: one line per node, "ID PORT CONTROLLER_PORT".
LAYOUT="$DATA/cluster-layout"
CLUSTER_ID_FILE="$DATA/cluster-id"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

now_ms() { date +%s%3N; }

[[ "$WAIT_TIMEOUT" =~ ^[0-9]+$ ]] || die "TOLLGATE_KAFKA_WAIT_TIMEOUT must be whole seconds, got '$WAIT_TIMEOUT'"
[[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "TOLLGATE_KAFKA_STOP_TIMEOUT must be whole seconds, got '$STOP_TIMEOUT'"

if [[ -f "$LAYOUT" ]]; then
    NODES="$(grep -c . "$LAYOUT")"
    if [[ -n "${TOLLGATE_KAFKA_NODES:-}" && "$TOLLGATE_KAFKA_NODES" != "$NODES" ]]; then
        die "$DATA holds a $NODES-node cluster, not $TOLLGATE_KAFKA_NODES nodes (reset it, or use another TOLLGATE_KAFKA_DATA)"
    fi
else
    NODES="${TOLLGATE_KAFKA_NODES:-1}"
fi
[[ "$NODES" =~ ^[1-9]$ ]] || die "TOLLGATE_KAFKA_NODES must be 1 to 9, got '$NODES'"
if ((NODES == 1)); then
    HEAP_OPTS="${TOLLGATE_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
else
    HEAP_OPTS="${TOLLGATE_KAFKA_HEAP_OPTS:--Xms128m -Xmx384m}"
fi

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

# ----------------------------------------------------------------------------- nodes

# Node ID's ports and files, as globals the commands below use. A single node keeps everything
# directly in the data dir (as it always has); a cluster's node ID lives in node-ID/.
select_node() {
    local id="$1"
    [[ "$id" =~ ^[1-9]$ ]] && ((id <= NODES)) || die "no node '$id' (node ids are 1 to $NODES)"
    NODE_ID="$id"
    if ((NODES == 1)); then
        PORT="${TOLLGATE_KAFKA_PORT:-19092}"
        [[ "$PORT" =~ ^[0-9]+$ && "$PORT" -gt 0 ]] || die "TOLLGATE_KAFKA_PORT must be a port number, got '$PORT'"
        CONTROLLER_PORT="$((PORT + 1))"
        NODE_DIR="$DATA"
    else
        read -r _ PORT CONTROLLER_PORT < <(awk -v id="$id" '$1 == id' "$LAYOUT")
        [[ -n "${PORT:-}" ]] || die "$LAYOUT names no node $id"
        NODE_DIR="$DATA/node-$id"
    fi
    PID_FILE="$NODE_DIR/kafka.pid"
    CONFIG="$NODE_DIR/server.properties"
    LOG4J_CONFIG="$NODE_DIR/log4j2.properties"
    LOG_DIRS="$NODE_DIR/kraft-data"      # Kafka's own "log.dirs" (partition data + metadata log)
    SERVER_LOG="$NODE_DIR/server.log"    # log4j output
    STDOUT_LOG="$NODE_DIR/stdout.log"    # JVM stdout/stderr (GC warnings, crashes)
}

node_ids() { seq 1 "$NODES"; }

# The node ids a command names, in TARGETS: the one given, or every node.
set_targets() {
    if [[ -n "${1:-}" ]]; then
        select_node "$1"  # validates it
        TARGETS=("$1")
    else
        mapfile -t TARGETS < <(node_ids)
    fi
}

# Free ports for every node (client and controller), picked once and recorded in the layout.
write_layout() {
    [[ -f "$LAYOUT" ]] && return 0
    local base="${TOLLGATE_KAFKA_PORT:-0}" id ports=()
    [[ "$base" =~ ^[0-9]+$ ]] || die "TOLLGATE_KAFKA_PORT must be a port number or 0, got '$base'"
    if ((base == 0)); then
        command -v python3 >/dev/null 2>&1 || die "python3 is needed to pick free ports (or set TOLLGATE_KAFKA_PORT)"
        # Every socket stays bound until all are picked, so the ports are distinct.
        read -r -a ports < <(python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$((2 * NODES))")
    else
        for ((i = 0; i < 2 * NODES; i++)); do ports+=("$((base + i))"); done
    fi
    mkdir -p "$DATA"
    local tmp="$LAYOUT.tmp.$$"
    : >"$tmp"
    for id in $(node_ids); do
        echo "$id ${ports[2 * (id - 1)]} ${ports[2 * (id - 1) + 1]}" >>"$tmp"
    done
    mv "$tmp" "$LAYOUT"
}

quorum_voters() {
    if ((NODES == 1)); then
        echo "1@$HOST:$CONTROLLER_PORT"
        return
    fi
    awk -v host="$HOST" '{ printf "%s%s@%s:%s", (NR > 1 ? "," : ""), $1, host, $3 } END { print "" }' "$LAYOUT"
}

bootstrap_list() {
    local id out=()
    for id in $(node_ids); do
        select_node "$id"
        out+=("$HOST:$PORT")
    done
    (IFS=,; echo "${out[*]}")
}

# ----------------------------------------------------------------------------- process

# Prints the node's pid if its pid file points at a live kafka.Kafka process.
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

# How many nodes have a live process (a killed or stopped node is not expected to answer).
running_count() {
    local id n=0
    for id in $(node_ids); do
        select_node "$id"
        running_pid >/dev/null && n=$((n + 1))
    done
    echo "$n"
}

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Ask the broker for metadata over the wire (pure Python, no client library):
# ApiVersions v0, then Metadata v4 (the oldest version Kafka 4.x still serves).
# Ready = at least the expected number of (unfenced) brokers listed and a known controller.
PROBE_PY='
import socket, struct, sys
host, port, expected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

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
    if len(brokers) < expected or controller < 0:
        raise SystemExit(f"not ready: brokers={brokers} controller={controller}")
    print(f"ok cluster={cluster} brokers={sorted(brokers)}")
'

# Returns 0 when the selected node answers a metadata request listing at least $1 live brokers
# (default 1). Without python3, falls back to "port open + 'Kafka Server started' in the log".
probe() {
    local expected="${1:-1}"
    if command -v python3 >/dev/null 2>&1; then
        python3 -c "$PROBE_PY" "$HOST" "$PORT" "$expected" 2>/dev/null
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

# Wait until each of the given nodes answers and lists every running node as a live broker
# (a node just restarted must have rejoined: the others list it only once the controller unfenced it).
wait_nodes() {
    local timeout="$1"; shift
    local deadline=$((SECONDS + timeout)) out id expected
    for id in "$@"; do
        while :; do
            expected="$(running_count)"
            select_node "$id"
            if out="$(probe "$expected")"; then
                log "node $id ready on $HOST:$PORT ($out)"
                break
            fi
            # Fail fast if the broker we started has died.
            if [[ -f "$PID_FILE" ]] && ! running_pid >/dev/null; then
                log "node $id (pid $(cat "$PID_FILE" 2>/dev/null || echo '?')) exited before becoming ready"
                log_tail
                return 1
            fi
            if ((SECONDS >= deadline)); then
                log "node $id on $HOST:$PORT not ready after ${timeout}s (expected $expected live brokers)"
                log_tail
                return 1
            fi
            sleep 0.3
        done
    done
}

cmd_wait() {
    local timeout="${1:-$WAIT_TIMEOUT}"
    [[ "$timeout" =~ ^[0-9]+$ ]] || die "wait: timeout must be whole seconds, got '$timeout'"
    local id ids=()
    for id in $(node_ids); do
        select_node "$id"
        # A cluster waits for its running nodes; a single node for itself (or a broker on its port).
        if ((NODES == 1)) || running_pid >/dev/null; then ids+=("$id"); fi
    done
    ((${#ids[@]})) || die "no node is running"
    wait_nodes "$timeout" "${ids[@]}"
}

check_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found (Kafka 4.x needs Java 17+)"
    local v
    v="$("$JAVA" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    local major="${v%%.*}"
    [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || die "Kafka 4.x needs Java 17+, found '$v'"
}

write_config() {
    local replicas=1 min_isr=1
    if ((NODES > 1)); then
        replicas=$((NODES < 3 ? NODES : 3))
        min_isr=$((replicas - 1))
    fi
    cat >"$CONFIG" <<EOF
# Generated by compose/kafka.sh - KRaft node $NODE_ID of $NODES (broker+controller) for dev/tests.
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$(quorum_voters)
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$LOG_DIRS

# Replicas of every topic, the internal ones too (a single node: 1). With 3 replicas and 2 in sync
# required, an acks=all write survives any one node's death and is never acknowledged by one alone.
num.partitions=4
default.replication.factor=$replicas
min.insync.replicas=$min_isr
auto.create.topics.enable=true
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
EOF
    if ((NODES > 1)); then
        cat >>"$CONFIG" <<'EOF'
# Fail over within seconds: the active controller fences a node whose heartbeats stopped for 4 s
# (default 9 s: 500 ms beats, 2 s default) and so moves its leaderships and drops it from every ISR;
# until then acks=all writes to partitions it replicates wait for it.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=4000
# Never elect a replica that may lack acknowledged records (the default, stated: this log is money).
unclean.leader.election.enable=false
EOF
    fi
    cat >>"$CONFIG" <<'EOF'

# Modest resource use.
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
# Transcription uploads ride in their job records (eventlog/kafka.py record_bytes_max).
message.max.bytes=8388608
log.retention.check.interval.ms=300000
EOF
    cat >"$LOG4J_CONFIG" <<'EOF'
# Generated by compose/kafka.sh - everything goes to server.log in the node's dir.
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

# One cluster id for every node of the data dir, made once.
cluster_id() {
    if [[ ! -s "$CLUSTER_ID_FILE" ]]; then
        random_cluster_id >"$CLUSTER_ID_FILE.tmp.$$"
        mv "$CLUSTER_ID_FILE.tmp.$$" "$CLUSTER_ID_FILE"
    fi
    cat "$CLUSTER_ID_FILE"
}

format_storage() {
    if [[ -f "$LOG_DIRS/meta.properties" ]]; then
        return 0
    fi
    local cid
    if ((NODES == 1)); then cid="$(random_cluster_id)"; else cid="$(cluster_id)"; fi
    log "formatting $LOG_DIRS (cluster id $cid)"
    # Static quorum (controller.quorum.voters), so no --standalone needed.
    if ! "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$LOG4J_CONFIG" -Dkafka.logs.dir="$NODE_DIR" \
            -cp "$LIBS/*" kafka.tools.StorageTool format \
            -t "$cid" -c "$CONFIG" >"$NODE_DIR/format.log" 2>&1; then
        cat "$NODE_DIR/format.log" >&2
        die "kafka-storage format failed for node $NODE_ID"
    fi
}

# Start the selected node's JVM in the background (no wait). Returns 3 if it already runs, 4 if a
# broker not started by this script answers on a single node's port.
launch_node() {
    local pid
    if pid="$(running_pid)"; then
        log "node $NODE_ID already running (pid $pid)"
        return 3
    fi
    rm -f "$PID_FILE"
    if port_open "$PORT"; then
        if ((NODES == 1)) && probe >/dev/null; then
            log "a Kafka broker not started by this script already answers on $HOST:$PORT; using it"
            return 4
        fi
        die "port $PORT (node $NODE_ID) is in use by something that is not this node"
    fi
    port_open "$CONTROLLER_PORT" && die "controller port $CONTROLLER_PORT (node $NODE_ID) is already in use"

    mkdir -p "$NODE_DIR"
    write_config
    format_storage

    # Keep the previous run's log aside so a failure tail shows only this run.
    [[ -f "$SERVER_LOG" ]] && mv -f "$SERVER_LOG" "$SERVER_LOG.prev"
    # shellcheck disable=SC2086  # HEAP_OPTS is intentionally word-split
    nohup "$JAVA" $HEAP_OPTS \
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dkafka.logs.dir="$NODE_DIR" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
        -cp "$LIBS/*" kafka.Kafka "$CONFIG" \
        >"$STDOUT_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$PID_FILE"
    log "started Kafka $KAFKA_VERSION node $NODE_ID (pid $!) on $HOST:$PORT, data in $NODE_DIR"
}

do_start() {
    local ids=("$@") id rc launched=() t0
    check_java
    cmd_fetch
    mkdir -p "$DATA"
    ((NODES == 1)) || write_layout
    t0=$(now_ms)
    # A cluster's new nodes are formatted in parallel (a JVM each, seconds on a busy machine).
    if ((NODES > 1)); then
        local formats=() failed=0 pid
        cluster_id >/dev/null  # made once, before the formats read it
        for id in "${ids[@]}"; do
            select_node "$id"
            [[ -f "$LOG_DIRS/meta.properties" ]] && continue
            (mkdir -p "$NODE_DIR" && write_config && format_storage) &
            formats+=("$!")
        done
        for pid in "${formats[@]}"; do wait "$pid" || failed=1; done
        ((failed == 0)) || die "formatting the cluster's storage failed"
    fi
    # Every node at once: a controller quorum forms only once a majority of its voters runs.
    for id in "${ids[@]}"; do
        select_node "$id"
        rc=0
        launch_node || rc=$?
        case "$rc" in
            0) launched+=("$id") ;;
            3) ;;
            4) return 0 ;;
            *) return "$rc" ;;
        esac
    done
    if ! wait_nodes "$WAIT_TIMEOUT" "${ids[@]}"; then
        for id in "${launched[@]}"; do
            select_node "$id"
            running_pid >/dev/null || rm -f "$PID_FILE"
        done
        return 1
    fi
    ((${#launched[@]})) && log "start-to-ready $(( $(now_ms) - t0 )) ms"
    return 0
}

# The lock of a single node sits beside its data dir (as it always has); a cluster's inside it.
state_lock() {
    if ((NODES == 1)); then echo "$DATA.lock"; else echo "$DATA/.lock"; fi
}

cmd_start() {
    set_targets "${1:-}"
    mkdir -p "$DATA"
    with_lock "$(state_lock)" do_start "${TARGETS[@]}"
}

# Signal the given nodes at once and wait for every one to exit; SIGKILL what outlives the timeout.
signal_nodes() {
    local signal="$1" timeout="$2"; shift 2
    local id pid pids=() names=()
    for id in "$@"; do
        select_node "$id"
        if pid="$(running_pid)"; then
            pids+=("$pid")
            names+=("$id")
            log "$([[ "$signal" == KILL ]] && echo killing || echo stopping) node $id (pid $pid)"
            kill "-$signal" "$pid" 2>/dev/null || true
        else
            rm -f "$PID_FILE"
            log "node $id not running"
        fi
    done
    local deadline=$((SECONDS + timeout)) alive
    while :; do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        if ((SECONDS >= deadline)); then
            log "still alive after ${timeout}s, sending SIGKILL"
            for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
            sleep 0.5
            break
        fi
        sleep 0.1
    done
    for id in "${names[@]}"; do
        select_node "$id"
        rm -f "$PID_FILE"
    done
    ((${#names[@]})) && log "$([[ "$signal" == KILL ]] && echo killed || echo stopped) node(s) ${names[*]}"
    return 0
}

cmd_stop() {
    set_targets "${1:-}"
    signal_nodes TERM "$STOP_TIMEOUT" "${TARGETS[@]}"
}

cmd_kill() {
    [[ -n "${1:-}" ]] || die "kill: which node? (kill ID, ids 1 to $NODES)"
    set_targets "$1"
    signal_nodes KILL 10 "${TARGETS[@]}"
}

cmd_status() {
    local id pid out worst=0 rc expected
    set_targets "${1:-}"
    expected="$(running_count)"
    for id in "${TARGETS[@]}"; do
        select_node "$id"
        local name="running"
        ((NODES == 1)) || name="node $id running"
        if pid="$(running_pid)"; then
            if out="$(probe "$expected")"; then
                echo "$name pid=$pid version=$KAFKA_VERSION bootstrap=$HOST:$PORT data=$NODE_DIR ($out)"
                rc=0
            else
                echo "$name pid=$pid version=$KAFKA_VERSION bootstrap=$HOST:$PORT data=$NODE_DIR (not answering yet)"
                rc=1
            fi
        elif ((NODES == 1)) && out="$(probe)"; then
            echo "external broker answering on $HOST:$PORT ($out)"
            rc=0
        else
            local what="stopped"
            ((NODES == 1)) || what="node $id stopped"
            echo "$what (bootstrap=$HOST:$PORT data=$NODE_DIR libs=$LIBS$(libs_complete && echo ' fetched' || echo ' not fetched'))"
            rc=3
        fi
        ((rc > worst)) && worst=$rc
    done
    return "$worst"
}

cmd_reset() {
    cmd_stop
    rm -rf "$DATA"
    log "removed $DATA"
}

cmd_logs() {
    select_node "${2:-1}"
    tail -n "${1:-100}" "$SERVER_LOG"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    shift || true
    # A cluster that never started has no layout yet: only start makes one.
    if ((NODES > 1)) && [[ ! -f "$LAYOUT" ]]; then
        case "$cmd" in
            start|restart) ;;
            stop|reset|status|wait|kill|logs|bootstrap)
                [[ "$cmd" == reset ]] && { rm -rf "$DATA"; log "removed $DATA"; exit 0; }
                [[ "$cmd" == stop ]] && { log "not running"; exit 0; }
                [[ "$cmd" == status ]] && { echo "stopped ($NODES nodes, never started in $DATA)"; exit 3; }
                die "no cluster in $DATA yet (start it first)" ;;
        esac
    fi
    case "$cmd" in
        fetch) cmd_fetch ;;
        start) cmd_start "$@" ;;
        wait) cmd_wait "$@" ;;
        stop) cmd_stop "$@" ;;
        kill) cmd_kill "$@" ;;
        restart) cmd_stop "$@"; cmd_start "$@" ;;
        status) cmd_status "$@" ;;
        reset) cmd_reset ;;
        logs) cmd_logs "$@" ;;
        bootstrap) if ((NODES == 1)); then select_node 1; echo "$HOST:$PORT"; else bootstrap_list; fi ;;
        -h|--help|help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
