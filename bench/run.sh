#!/usr/bin/env bash
# The hive against Kea, in one run, on one machine: see bench/README.md.
#
# Two network namespaces joined by a veth pair (both ends created inside the namespaces; the
# host's interfaces are never touched), the servers in one, the load generator in the other.
# Every packet stays on that veth or on the namespaces' own loopbacks. Everything started is
# stopped and everything created is removed by the EXIT trap, also on failure or Ctrl-C.
#
#   bench/run.sh [--tool perfdhcp|loadgen|both]
#                [--servers hive1,hive3,kea-memfile,kea-pgsql,kea-capped]
#                [--rounds N] [--period SECONDS] [--out FILE] [--keep] [--no-build]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=both
SERVERS=hive1,hive3,kea-memfile,kea-pgsql,kea-capped
ROUNDS=3
PERIOD=5
OUT=
KEEP=0
NO_BUILD=0
while [ $# -gt 0 ]; do
    case $1 in
        --tool) TOOLS=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --period) PERIOD=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-build) NO_BUILD=1; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $TOOLS in
    both) TOOLS="perfdhcp loadgen" ;;
    perfdhcp|loadgen) ;;
    *) echo "bench/run.sh: --tool perfdhcp, loadgen or both" >&2; exit 2 ;;
esac
[ "$ROUNDS" -ge 1 ] || { echo "bench/run.sh: --rounds must be >= 1" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh: needs root (network namespaces)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench/run.sh: needs 2 CPUs (server on core 1, load on core 0)" >&2; exit 1; }

# --- The search: rates are raised in steps of PERIOD seconds; a step passes when at most
# MAX_INCOMPLETE % of its exchanges stay without an ACK and the generator sent at least
# GEN_KEEPUP % of the rate asked (else the generator, not the server, is the limit). With
# hive-loadgen, whose DORA/s runs to the last ACK, the server must also have kept up: at least
# SERVER_KEEPUP % of the rate asked completed per second. A server that queues what it cannot
# serve (the hive asks for a 4 MiB socket buffer) otherwise passes a step it could not sustain,
# its backlog answered within the 1 s timeout after the step's sending ended.
START_RATE=${START_RATE:-1000}
MIN_RATE=${MIN_RATE:-100}
MAX_RATE=${MAX_RATE:-200000}
REFINE_STEPS=${REFINE_STEPS:-8}
# Then the gap between the last pass and the first failure is halved until it is at most this
# share of the rate found: two maxima (two generators, two runs) are then compared to a few
# percent, not to one refine step (1,000/s, 12 %, between 8,000 and 16,000).
RESOLUTION_PCT=${RESOLUTION_PCT:-4}
MAX_INCOMPLETE=${MAX_INCOMPLETE:-1.0}
GEN_KEEPUP=${GEN_KEEPUP:-95}
SERVER_KEEPUP=${SERVER_KEEPUP:-95}
FILL_LEASES=${FILL_LEASES:-60000}
# Kea's own multi-threading (Kea 2.2 has it off by default). On for the SQL backend, where
# threads hide the database round trips; one core either way.
KEA_MT_MEMFILE=${KEA_MT_MEMFILE:-false}
KEA_MT_PGSQL=${KEA_MT_PGSQL:-true}
KEA_THREADS=${KEA_THREADS:-4}
# kea-capped: Kea memfile held to this share of its core (a CPU cgroup), so that its maximum
# lies below what perfdhcp can drive from its core: the two generators are compared on it.
KEA_CAP_PCT=${KEA_CAP_PCT:-40}
# perfdhcp processes per step, each from its own relay address (see load()).
PERFDHCP_PROCS=${PERFDHCP_PROCS:-3}

# --- Addresses. They exist only inside the two namespaces made here: the server end of the
# veth has 10.77.0.1, the client end the relay addresses 10.77.0.101-108; the pool is the rest
# of 10.77.0.0/16. Replies go to the relay addresses (giaddr), never anywhere else.
NET=10.77
SERVER_IP=$NET.0.1
RELAY_IP=$NET.0.101
RELAYS=8
POOL_FIRST=$NET.1.0
POOL_LAST=$NET.255.254
LEASE_TIME=3600
SERVER_CPU=1
LOAD_CPU=0
# The benchmark's processes run at this niceness, so that whatever else runs on the machine
# (builds, editors) disturbs the measurement less. Servers and load alike.
NICE=${NICE:--10}

ID=$$
NS_S=hbench-s-$ID
NS_C=hbench-c-$ID
WORK=$(mktemp -d /tmp/hive-bench.XXXXXX)
chmod 755 "$WORK"
LOG=$WORK/run.log

say() { echo "[bench $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# Every process this script starts runs inside one of its two namespaces (servers through
# `spawn`, load through `in_c`), so the processes to end are exactly those `ip netns pids`
# lists: nothing outside them is ever signalled, even if a pid of an earlier, ended process
# has been reused by then.
cleanup() {
    local rc=$?
    set +e
    local ns pid
    for ns in "$NS_S" "$NS_C"; do
        ip netns list | grep -qw "$ns" || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    done
    sleep 1
    for ns in "$NS_S" "$NS_C"; do
        ip netns list | grep -qw "$ns" || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        # Removing the namespace removes the veth pair and the addresses with it.
        ip netns del "$ns"
    done
    wait 2>/dev/null
    [ -z "${policy:-}" ] || rm -f "$policy"
    [ -z "$CAP_CGROUP" ] || rmdir "$CAP_CGROUP" 2>/dev/null
    if [ "$KEEP" = 1 ]; then
        echo "bench: logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Tools: Debian packages, installed when missing.
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have redis-server || need+=(redis-server)
have redis-cli || need+=(redis-tools)
have perfdhcp || need+=(kea-admin)
have kea-admin || need+=(kea-admin)
have kea-dhcp4 || need+=(kea-dhcp4-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
have psql || need+=(postgresql-client)
have ip || need+=(iproute2)
have taskset || need+=(util-linux)
have python3 || need+=(python3)
have ss || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
    say "installing: ${need[*]}"
    # Debian starts a package's service on install (a system Kea, PostgreSQL, Redis): this
    # benchmark uses none of them and starts its own inside its namespace, so it asks
    # invoke-rc.d not to start them (policy-rc.d exit 101), unless a policy is already there.
    policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
    fi
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2 \
        || { [ -z "$policy" ] || rm -f "$policy"; exit 1; }
    [ -z "$policy" ] || rm -f "$policy"
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

# --- Build.
if [ "$NO_BUILD" = 0 ]; then
    say "building (release)"
    (cd "$ROOT" && cargo build --release --bins >&2)
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HIVE=$TARGET/release/dhcp-hive-mind
LOADGEN=$TARGET/release/hive-loadgen
[ -x "$HIVE" ] && [ -x "$LOADGEN" ] || { say "no binaries in $TARGET/release"; exit 1; }

# --- Topology.
say "namespaces $NS_S (servers, CPU $SERVER_CPU) and $NS_C (load, CPU $LOAD_CPU), work dir $WORK"
ip netns add "$NS_S"
ip netns add "$NS_C"
ip -n "$NS_S" link add vs type veth peer name vc netns "$NS_C"
ip -n "$NS_S" addr add "$SERVER_IP/16" dev vs
for i in $(seq 0 $((RELAYS - 1))); do ip -n "$NS_C" addr add "$NET.0.$((101 + i))/16" dev vc; done
for ns in "$NS_S" "$NS_C"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_S" link set vs up
ip -n "$NS_C" link set vc up

in_s() { ip netns exec "$NS_S" "$@"; }
in_c() { ip netns exec "$NS_C" "$@"; }

# Each side receives on its own core. A veth hands a packet to its peer on the sending CPU, so
# without steering the load generator's receive path (its sockets, its wake-ups) runs on the
# server's core and is charged to the server, and the other way round: two machines don't
# work that way, and a generator that blocks on its socket for every reply (perfdhcp) costs
# the server more than one that reads in ticks. Receive packet steering moves each end's
# receive processing to its own side's core. BENCH_RPS=0 turns it off.
if [ "${BENCH_RPS:-1}" = 1 ]; then
    rps_to() { # namespace device cpu
        local q
        for q in $(ip netns exec "$1" sh -c "ls -d /sys/class/net/$2/queues/rx-*"); do
            ip netns exec "$1" sh -c "printf %x $((1 << $3)) > $q/rps_cpus"
        done
    }
    rps_to "$NS_S" vs "$SERVER_CPU"
    rps_to "$NS_C" vc "$LOAD_CPU"
    say "receive steering: vs -> CPU $SERVER_CPU, vc -> CPU $LOAD_CPU"
fi
sleep 1
# Starts a server-side process in the background, on the server CPU, and records its pid in
# SPAWNED. `exec` all the way down (ip netns exec and taskset exec too), so the pid
# is the server's own: stopping it stops the server, and /proc/<pid> is its CPU and memory.
spawn() {
    ( exec ip netns exec "$NS_S" nice -n "$NICE" taskset -c "$SERVER_CPU" "$@" ) &
    SPAWNED=$!
}

# Waits until `cond` (a command) succeeds, up to $2 seconds.
wait_for() {
    local what=$1 limit=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || { say "timed out waiting for $what"; return 1; }
        sleep 0.1
    done
}
udp67_bound() { [ -n "$(in_s ss -Hulnp 'sport = :67' 2>/dev/null)" ]; }

# /proc/<pid>/stat utime+stime in seconds, summed.
cpu_of() {
    local t=0 pid v
    for pid in "$@"; do
        v=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        t=$((t + v))
    done
    awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}
# Busy time of the server core (user, system, interrupts), in seconds: what the server side
# costs its core in all, with the kernel's receive work for its datagrams (softirq), which is
# charged to whatever process it interrupts, or to none when the core was idle.
core_busy() {
    awk -v c="cpu$SERVER_CPU" -v hz="$(getconf CLK_TCK)" \
        '$1 == c { printf "%.3f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat
}
# Datagrams the server namespace's kernel dropped because a UDP socket's receive buffer was
# full (RcvbufErrors): a server too slow for a burst, whatever its average rate.
rcvbuf_errors() { in_s awk '/^Udp: [0-9]/ { print $6; exit }' /proc/net/snmp; }
# The same on the generator's side: replies its sockets had no room for (a generator too slow
# to read them, not a server too slow to answer).
gen_rcvbuf_errors() { in_c awk '/^Udp: [0-9]/ { print $6; exit }' /proc/net/snmp; }
ns_pids() { ip netns pids "$NS_S" 2>/dev/null | tr '\n' ' '; }
hwm_mib() {
    local m=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        [ "${v:-0}" -gt "$m" ] && m=$v
    done
    awk -v k="$m" 'BEGIN { printf "%.1f", k / 1024 }'
}

# --- Servers. Each kind has start / reset (empty lease store before every step) / stop, and
# sets DHCP_PIDS (the DHCP server processes, for CPU and RSS).
DHCP_PIDS=()
STORE_PIDS=()

start_redis() {
    mkdir -p "$WORK/redis"
    # As deployed (docker-compose.yml): AOF on, fsync every second, hz 100. No automatic AOF rewrite
    # during the run, as Kea memfile runs without its lease file cleanup (lfc-interval 0): a
    # rewrite forks a child that compacts the file on the same pinned core, which in one step
    # turned a 0.6 ms average DISCOVER-OFFER into 14 ms (p99 195 ms).
    spawn redis-server --port 6379 --bind 127.0.0.1 --dir "$WORK/redis" --save "" \
        --appendonly yes --appendfsync everysec --auto-aof-rewrite-percentage 0 --hz 100 \
        --daemonize no --logfile "$WORK/redis/redis.log"
    STORE_PIDS=("$SPAWNED")
    wait_for redis 10 in_s redis-cli ping
}
redis() { in_s redis-cli "$@"; }

start_hive() {
    local nodes=$1
    cat > "$WORK/hive.json" <<EOF
{
  "hostname": "bench-hive",
  "interface": "vs",
  "port": 67,
  "redis": "redis://127.0.0.1:6379",
  "serverId": "$SERVER_IP",
  "subnets": [
    { "subnet": "$NET.0.0/16", "dynStart": "$POOL_FIRST", "dynEnd": "$POOL_LAST",
      "leaseTime": $LEASE_TIME, "router": "$SERVER_IP" }
  ]
}
EOF
    start_redis
    start_nodes "$nodes"
}
start_nodes() {
    local nodes=$1 i
    DHCP_PIDS=()
    for i in $(seq 1 "$nodes"); do
        spawn env HIVE_NODE_NAME="n$i" HIVE_HTTP_LISTEN="127.0.0.1:$((9066 + i))" RUST_LOG=info \
            "$HIVE" serve --config "$WORK/hive.json" \
            > "$WORK/hive-n$i.log" 2>&1
        DHCP_PIDS+=("$SPAWNED")
    done
    for i in $(seq 1 "$nodes"); do
        wait_for "hive node n$i" 20 grep -q "serving" "$WORK/hive-n$i.log"
    done
}
hive_ready() {
    local i
    for i in $(seq 1 ${#DHCP_PIDS[@]}); do
        in_s "$HIVE" probe --url "http://127.0.0.1:$((9066 + i))/readyz" || return 1
    done
}
# A step that overloaded the hive may have left a node not ready (Redis timeouts): the next
# step starts when every node is ready again.
reset_hive() { redis flushall >/dev/null; wait_for "hive readiness" 20 hive_ready; }
stop_hive() { stop_pids "${DHCP_PIDS[@]}" "${STORE_PIDS[@]}"; rm -rf "$WORK/redis"; }

# Whether a pid is a live process in the server namespace (never signal anything else).
ours() { [ "$(ip netns identify "$1" 2>/dev/null)" = "$NS_S" ]; }
stop_pids() {
    local pid
    for pid in "$@"; do if ours "$pid"; then kill "$pid" 2>/dev/null || true; fi; done
    for pid in "$@"; do
        for _ in $(seq 1 50); do ours "$pid" || break; sleep 0.1; done
        if ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
}

kea_config() {
    local db=$1 mt=$2
    cat <<EOF
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "vs" ], "dhcp-socket-type": "udp" },
    "lease-database": $db,
    "multi-threading": { "enable-multi-threading": $mt, "thread-pool-size": $KEA_THREADS,
                         "packet-queue-size": 64 },
    "valid-lifetime": $LEASE_TIME,
    "subnet4": [ { "subnet": "$NET.0.0/16", "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ],
                   "option-data": [ { "name": "routers", "data": "$SERVER_IP" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN",
                   "output_options": [ { "output": "$WORK/kea.log" } ] } ]
} }
EOF
}
KEA_KIND=
start_kea_process() {
    spawn env KEA_PIDFILE_DIR="$WORK" KEA_LOCKFILE_DIR="$WORK" kea-dhcp4 -c "$WORK/kea.json" \
        >> "$WORK/kea.out" 2>&1
    DHCP_PIDS=("$SPAWNED")
    [ "$KEA_CAPPED" = 0 ] || echo "$SPAWNED" > "$CAP_CGROUP/cgroup.procs"
    wait_for kea-dhcp4 20 udp67_bound
}
# A CPU cgroup holding its processes to KEA_CAP_PCT % of one core (cgroup v2 or v1), made
# once, removed by the EXIT trap.
CAP_CGROUP=
KEA_CAPPED=0
cap_cgroup() {
    [ -z "$CAP_CGROUP" ] || return 0
    # A short period (10 ms): throttled for most of a long one, Kea would leave its socket
    # buffer to overflow in bursts, which hurts the burstier generator more.
    local quota=$((KEA_CAP_PCT * 100))
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        CAP_CGROUP=/sys/fs/cgroup/hive-bench-$$
        echo +cpu > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
        mkdir "$CAP_CGROUP"
        echo "$quota 10000" > "$CAP_CGROUP/cpu.max"
    elif [ -d /sys/fs/cgroup/cpu ]; then
        CAP_CGROUP=/sys/fs/cgroup/cpu/hive-bench-$$
        mkdir "$CAP_CGROUP"
        echo 10000 > "$CAP_CGROUP/cpu.cfs_period_us"
        echo "$quota" > "$CAP_CGROUP/cpu.cfs_quota_us"
    else
        echo "bench: no CPU cgroup controller here: kea-capped cannot run" >&2
        exit 1
    fi
}
start_kea() {
    KEA_KIND=$1
    if [ "$KEA_KIND" = memfile ]; then
        kea_config "{ \"type\": \"memfile\", \"persist\": true, \"lfc-interval\": 0, \"name\": \"$WORK/kea-leases4.csv\" }" \
            "$KEA_MT_MEMFILE" > "$WORK/kea.json"
        STORE_PIDS=()
    else
        start_pgsql
        kea_config '{ "type": "postgresql", "name": "kea", "user": "kea", "password": "kea", "host": "127.0.0.1", "port": 5432 }' \
            "$KEA_MT_PGSQL" > "$WORK/kea.json"
    fi
    start_kea_process
}
reset_kea() {
    stop_pids "${DHCP_PIDS[@]}"
    if [ "$KEA_KIND" = memfile ]; then
        rm -f "$WORK"/kea-leases4.csv*
    else
        PGPASSWORD=kea in_s psql -q -h 127.0.0.1 -U kea -d kea -c 'TRUNCATE lease4' >/dev/null
    fi
    start_kea_process
}
stop_kea() {
    stop_pids "${DHCP_PIDS[@]}"
    if [ "$KEA_KIND" != memfile ]; then
        # SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for sessions to end).
        local pm
        pm=$(head -1 "$WORK/pg/postmaster.pid" 2>/dev/null || true)
        if [ -n "$pm" ] && ours "$pm"; then kill -INT "$pm" 2>/dev/null || true; fi
        stop_pids "${STORE_PIDS[@]}"
    fi
    rm -rf "$WORK/pg" "$WORK"/kea-leases4.csv*
}

start_pgsql() {
    mkdir -p "$WORK/pg" "$WORK/pgsock"
    chown postgres: "$WORK/pg" "$WORK/pgsock"
    chmod 700 "$WORK/pg"
    runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres >"$WORK/initdb.log" 2>&1
    # PostgreSQL as Debian ships it: fsync and synchronous commit on, as a lease store needs.
    spawn setpriv --reuid=postgres --regid=postgres --init-groups "$PGBIN/postgres" \
        -D "$WORK/pg" -k "$WORK/pgsock" -c listen_addresses=127.0.0.1 -p 5432 > "$WORK/pg.log" 2>&1
    wait_for postgresql 30 in_s "$PGBIN/pg_isready" -q -h 127.0.0.1 -p 5432
    in_s psql -q -h 127.0.0.1 -U postgres -c "CREATE USER kea PASSWORD 'kea'" \
        -c "CREATE DATABASE kea OWNER kea" >/dev/null
    in_s kea-admin db-init pgsql -u kea -p kea -n kea -h 127.0.0.1 > "$WORK/kea-admin.log" 2>&1
    # The postmaster and its children: the store's processes (ip netns pids: only ours).
    STORE_PIDS=()
    local pid
    for pid in $(ns_pids); do
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ]; then STORE_PIDS+=("$pid"); fi
    done
}

start_server() {
    case $1 in
        hive1) start_hive 1 ;;
        hive3) start_hive 3 ;;
        kea-memfile) KEA_CAPPED=0; start_kea memfile ;;
        kea-pgsql) KEA_CAPPED=0; start_kea pgsql ;;
        kea-capped) cap_cgroup; KEA_CAPPED=1; start_kea memfile ;;
    esac
}
reset_server() { case $1 in hive*) reset_hive ;; kea-*) reset_kea ;; esac; }
stop_server() { case $1 in hive*) stop_hive ;; kea-*) stop_kea ;; esac; }

# --- One load step: `tool rate seconds` (count 0), or `tool rate 0 count`. Prints FIELDS.
load() {
    local tool=$1 rate=$2 secs=$3 count=${4:-0} out=$WORK/step.out
    if [ "$tool" = perfdhcp ]; then
        # Relay mode (a unicast server address: perfdhcp sets giaddr to its -l address and
        # sends from port 67), unique clients (-R), late answers waited for 1 s (-W) so that
        # the last ones of the period are not lost. PERFDHCP_PROCS processes, each from its
        # own relay address at its share of the rate: a hive's SO_REUSEPORT group hashes a
        # relay's datagrams to one node, so one relay alone would keep 2 of 3 nodes idle.
        # (perfdhcp's -J, a list of server addresses, breaks its relay mode: no reply is
        # counted.)
        local i outs=() pids=() p_rate period=$secs args
        for i in $(seq 0 $((PERFDHCP_PROCS - 1))); do
            p_rate=$(( (rate + PERFDHCP_PROCS - 1 - i) / PERFDHCP_PROCS ))
            if [ "$count" -gt 0 ]; then
                period=$(( count / rate + 5 ))
                args=(-n $(( (count + PERFDHCP_PROCS - 1 - i) / PERFDHCP_PROCS )) -p "$period")
            else
                args=(-p "$secs")
            fi
            # A MAC base of its own (-b; -R randomizes the last 3 bytes): the processes would
            # otherwise play the very same clients with the same xids (-s does not change
            # that), and a hive rightly answers one copy of an exchange, not three.
            in_c nice -n "$NICE" taskset -c "$LOAD_CPU" python3 "$ROOT/bench/benchlib.py" timed "$out.$i.cpu" perfdhcp -4 -r "$p_rate" "${args[@]}" \
                -R 16777215 -b "mac=02:$(printf %02x $((RANDOM % 256))):$(printf %02x "$i"):00:00:00" -d 1 \
                -W 1000000 -l "$NET.0.$((101 + i))" "$SERVER_IP" > "$out.$i" 2>&1 &
            pids+=($!)
            outs+=("$out.$i")
        done
        for i in "${pids[@]}"; do wait "$i" || true; done
        python3 "$ROOT/bench/benchlib.py" perfdhcp "$period" "${outs[@]}"
        cat "${outs[@]}" > "$out"
    else
        local bound=(--duration "$secs")
        [ "$count" -gt 0 ] && bound=(--count "$count")
        in_c nice -n "$NICE" taskset -c "$LOAD_CPU" python3 "$ROOT/bench/benchlib.py" timed "$out.cpu" "$LOADGEN" --server "$SERVER_IP:67" --relay "$RELAY_IP" \
            --sockets "$RELAYS" --rate "$rate" "${bound[@]}" --timeout 1 --json > "$out" 2>&1 || true
        python3 "$ROOT/bench/benchlib.py" loadgen "$out"
    fi
    cat "$out" >> "$WORK/load.log"
}

STEPS=$WORK/steps.tsv
EXTRA=$WORK/extra.tsv
printf 'server\ttool\tkind\tround\trate\tpass\toffered\tdora\tincomplete\tdo_avg\tdo_max\tra_avg\tra_max\tstarted\tcompleted\tgen_cpu\tcpu_node_s\tcpu_server_s\tevalsha\tcommands\trcvbuf_drops\tgen_rcvbuf_drops\tcpu_core_s\n' > "$STEPS"
printf 'server\ttool\thalf_do_avg\trss_mib\tleases\n' > "$EXTRA"

# Waits (up to 15 s) until the server side is idle: less than 2 % of its core over 200 ms. A
# step that overloaded a server leaves a backlog in its socket buffer and in flight (the hive
# asks for 4 MiB of buffer: thousands of datagrams); the next step must not measure that.
wait_quiet() {
    local end=$((SECONDS + 15)) a b
    local -a pids
    while [ $SECONDS -lt $end ]; do
        read -r -a pids <<< "$(ns_pids)"
        a=$(cpu_of "${pids[@]}")
        sleep 0.2
        b=$(cpu_of "${pids[@]}")
        if awk -v a="$a" -v b="$b" 'BEGIN { exit !(b - a < 0.004) }'; then return 0; fi
    done
    say "  server side still busy after 15 s; measuring anyway"
}

# Runs one measured step and appends it to STEPS; returns 0 (pass), 1 (server failed), 2
# (generator could not keep up).
step() {
    local server=$1 tool=$2 kind=$3 round=$4 rate=$5
    wait_quiet
    reset_server "$server"
    local all_before node_before
    local -a all
    read -r -a all <<< "$(ns_pids)"
    node_before=$(cpu_of "${DHCP_PIDS[@]}")
    all_before=$(cpu_of "${all[@]}")
    local core_before
    core_before=$(core_busy)
    case $server in hive*) redis config resetstat >/dev/null ;; esac
    local drops_before gen_drops_before
    drops_before=$(rcvbuf_errors)
    gen_drops_before=$(gen_rcvbuf_errors)
    local f
    f=$(load "$tool" "$rate" "$PERIOD")
    local node_after all_after
    node_after=$(cpu_of "${DHCP_PIDS[@]}")
    all_after=$(cpu_of "${all[@]}")
    local core_after
    core_after=$(core_busy)
    local ev=- cmds=-
    case $server in hive*)
        # INFO commandstats counts EVALSHA calls AND every command the scripts run inside
        # (Redis 7): both are reported. The benchmark's own commands and the nodes' health
        # pings are not the DHCP traffic's and are left out.
        read -r ev cmds < <(redis info commandstats | tr -d '\r' | awk -F'[:=,]' '
            /^cmdstat_/ { name = substr($1, 9); calls = $3
                          if (name == "evalsha") ev += calls
                          if (name !~ /^(config|info|ping|flushall)/) all += calls }
            END { printf "%d %d\n", ev, all }')
        ;;
    esac
    local drops=$(( $(rcvbuf_errors) - drops_before ))
    local gen_drops=$(( $(gen_rcvbuf_errors) - gen_drops_before ))
    local cpu_node cpu_all
    cpu_node=$(awk -v a="$node_after" -v b="$node_before" 'BEGIN { printf "%.3f", a - b }')
    cpu_all=$(awk -v a="$all_after" -v b="$all_before" 'BEGIN { printf "%.3f", a - b }')
    local cpu_core
    cpu_core=$(awk -v a="$core_after" -v b="$core_before" 'BEGIN { printf "%.3f", a - b }')
    local offered inc pass
    offered=$(cut -f1 <<< "$f")
    inc=$(cut -f3 <<< "$f")
    local done_rate sk=0
    done_rate=$(cut -f2 <<< "$f")
    [ "$tool" = loadgen ] && sk=$SERVER_KEEPUP
    pass=$(awk -v o="$offered" -v d="$done_rate" -v r="$rate" -v i="$inc" -v mi="$MAX_INCOMPLETE" \
        -v k="$GEN_KEEPUP" -v sk="$sk" \
        'BEGIN { if (o < r * k / 100) print "gen"; else if (i > mi) print 0;
                 else if (d < r * sk / 100) print "behind"; else print 1 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$tool" "$kind" "$round" "$rate" \
        "$pass" "$f" "$cpu_node" "$cpu_all" "$ev" "$cmds" "$drops" "$gen_drops" "$cpu_core" >> "$STEPS"
    say "  $server/$tool round $round: $rate/s -> $(printf '%.0f' "$done_rate") DORA/s, incomplete $(printf '%.2f' "$inc") %, $(case $pass in 1) echo pass ;; 0) echo FAIL ;; behind) echo "FAIL (server behind the rate)" ;; gen) echo "generator limit" ;; esac)$([ "$drops" -eq 0 ] || echo ", server socket drops $drops")$([ "$gen_drops" -eq 0 ] || echo ", generator socket drops $gen_drops")"
    case $pass in 1) return 0 ;; gen) return 2 ;; *) return 1 ;; esac
}

# One round of the step-up search; sets FOUND to the highest passing rate. (Not run in a
# subshell: a step may restart the server, and the new pids must be known here.)
search_round() {
    local server=$1 tool=$2 round=$3 r=$START_RATE lo=0 hi=0 rc
    while :; do
        rc=0; step "$server" "$tool" search "$round" "$r" || rc=$?
        if [ $rc -eq 0 ]; then lo=$r; r=$((r * 2)); [ $r -le "$MAX_RATE" ] || { FOUND=$lo; return; }
        elif [ $rc -eq 2 ]; then FOUND=$lo; return
        else hi=$r; break
        fi
    done
    if [ $lo -eq 0 ]; then
        while [ $r -gt "$MIN_RATE" ]; do
            r=$((r / 2))
            rc=0; step "$server" "$tool" search "$round" "$r" || rc=$?
            if [ $rc -eq 0 ]; then lo=$r; break; fi
            hi=$r
        done
        [ $lo -gt 0 ] || { FOUND=0; return; }
    fi
    local inc=$(( (hi - lo) / REFINE_STEPS ))
    [ $inc -ge 1 ] || inc=1
    r=$((lo + inc))
    while [ $r -lt $hi ]; do
        rc=0; step "$server" "$tool" search "$round" "$r" || rc=$?
        [ $rc -ne 2 ] || { FOUND=$lo; return; }
        [ $rc -eq 0 ] || { hi=$r; break; }
        lo=$r; r=$((r + inc))
    done
    while [ $(( (hi - lo) * 100 )) -gt $(( lo * RESOLUTION_PCT )) ]; do
        r=$(( (lo + hi) / 2 ))
        [ $r -gt $lo ] && [ $r -lt $hi ] || break
        rc=0; step "$server" "$tool" search "$round" "$r" || rc=$?
        [ $rc -ne 2 ] || break
        if [ $rc -eq 0 ]; then lo=$r; else hi=$r; fi
    done
    FOUND=$lo
}

median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
# The median of decimal figures (delays in ms); "-" when there are none.
median_ms() { tr ' ' '\n' | grep -E '^[0-9.]+$' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

START=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
SOURCE="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' with uncommitted changes')"
[ "$NO_BUILD" = 0 ] || SOURCE="binaries of $(date -u -r "$HIVE" '+%Y-%m-%d %H:%M UTC') in $TARGET/release (--no-build; the tree is now at $SOURCE)"
for tool in $TOOLS; do
    # Rounds interleaved: round 1 of every server, then round 2 of every server, each on a
    # server started afresh. This machine's speed drifts over minutes (a round moves by up to
    # 30 %); back-to-back rounds of one server would put a slow phase on one server only, and
    # its ratios to the others with it. The report also gives each ratio round by round.
    declare -A MAXES=()
    for round in $(seq 1 "$ROUNDS"); do
        for server in ${SERVERS//,/ }; do
            say "== $server with $tool: round $round, starting"
            start_server "$server"
            search_round "$server" "$tool" "$round"
            say "== $server/$tool round $round: max $FOUND DORA/s"
            MAXES[$server]="${MAXES[$server]:-} $FOUND"
            stop_server "$server"
        done
    done
    declare -A MED=() HALF_DOS=()
    for server in ${SERVERS//,/ }; do
        read -ra maxes <<< "${MAXES[$server]}"
        MED[$server]=$(echo "${maxes[@]}" | median)
        say "== $server/$tool: median max ${MED[$server]} DORA/s (rounds: ${maxes[*]})"
    done
    # The delay at half the maximum: one step per round, interleaved over the servers like the
    # rounds, the median reported (a single step can land in a slow phase).
    for round in $(seq 1 "$ROUNDS"); do
        for server in ${SERVERS//,/ }; do
            [ "${MED[$server]}" -gt 0 ] || continue
            start_server "$server"
            step "$server" "$tool" half "$round" "$((MED[$server] / 2))" || true
            HALF_DOS[$server]="${HALF_DOS[$server]:-} $(tail -1 "$STEPS" | cut -f10)"
            stop_server "$server"
        done
    done
    for server in ${SERVERS//,/ }; do
        med=${MED[$server]}
        start_server "$server"
        half_do=-
        if [ "$med" -gt 0 ]; then
            read -ra half_dos <<< "${HALF_DOS[$server]}"
            half_do=$(echo "${half_dos[@]}" | median_ms)
            say "== $server/$tool: D-O average at half the maximum ($((med / 2))/s): median $half_do ms (steps: ${half_dos[*]})"
        fi
        leases=-
        case $server in
            hive*|kea-memfile)
                if [ "$med" -gt 0 ]; then
                    # Peak memory at the maximum rate with FILL_LEASES leases in the store:
                    # fresh DHCP server processes (so that VmHWM is this step's, not that of
                    # an overloaded search step), then FILL_LEASES exchanges at the median
                    # maximum. hive-loadgen whatever the search's tool: it stops after exactly
                    # that many exchanges.
                    case $server in
                        hive*) stop_pids "${DHCP_PIDS[@]}"; start_nodes "${#DHCP_PIDS[@]}"; reset_hive ;;
                        *) reset_server "$server" ;;
                    esac
                    load loadgen "$med" 0 "$FILL_LEASES" > /dev/null
                    case $server in
                        hive*) leases=$(redis eval "return #redis.call('keys', ARGV[1])" 0 '*:lease:*') ;;
                        kea-memfile) leases=$(grep '^10\.' "$WORK/kea-leases4.csv" | cut -d, -f1 | sort -u | wc -l) ;;
                    esac
                fi
                ;;
        esac
        rss=$(hwm_mib "${DHCP_PIDS[@]}")
        printf '%s\t%s\t%s\t%s\t%s\n' "$server" "$tool" "$half_do" "$rss" "$leases" >> "$EXTRA"
        stop_server "$server"
    done
done

{
    echo "## Run of $START on $(hostname): $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
    echo
    echo "Load average of the machine (1/5/15 min) at the start: $LOAD_BEFORE; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Source: $SOURCE."
    echo
    echo "Rounds: $ROUNDS, step period: $PERIOD s, pass: <= $MAX_INCOMPLETE % incomplete, the generator >= $GEN_KEEPUP % of the rate, and with hive-loadgen the server >= $SERVER_KEEPUP % of it; servers (incl. Redis/PostgreSQL) on CPU $SERVER_CPU, load on CPU $LOAD_CPU."
    echo "Kea $(kea-dhcp4 -v 2>/dev/null | head -1), perfdhcp $(perfdhcp -v 2>&1 | head -1 | sed "s/^VERSION: //"), $(redis-server --version | awk '{print $1, $2, $3}'), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}')."
    echo
    python3 "$ROOT/bench/benchlib.py" report "$STEPS" "$EXTRA" "$PERIOD"
} > "$WORK/report.md"
cat "$WORK/report.md"
if [ -n "$OUT" ]; then
    cp "$WORK/report.md" "$OUT"
    cp "$STEPS" "${OUT%.md}.steps.tsv"
fi
