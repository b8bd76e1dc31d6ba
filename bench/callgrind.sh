#!/usr/bin/env bash
# Instructions and mallocs per DORA of one node, counted by valgrind's callgrind: repeatable on a
# noisy shared machine, where wall-clock rates are not.
#
# Starts its own redis-server (temp dir, a free port on 127.0.0.1) and one release node under
# callgrind, serving the relayed subnet 127.77.0.0/16 on a free UDP port of 127.0.0.1; warms up
# with W exchanges, zeroes the counters, drives N DORAs with hive-loadgen from relay 127.77.0.1
# (loopback only), dumps the counters, and stops everything it started.
#
#   bench/callgrind.sh [N] [RATE]      # defaults: 2000 DORAs at 100/s, after 200 of warm-up
#   TARGET=redis bench/callgrind.sh    # callgrind on redis-server instead (AOF everysec, hz 100,
#                                      # as bench/run.sh), the node running normally
#   REDIS_SERVER=path                  # another redis-server binary: Debian's has no symbols, so
#                                      # a profile of it names no function; one built from
#                                      # `apt-get source redis` with `make USE_SYSTEM_JEMALLOC=yes
#                                      # CFLAGS=-g` (libjemalloc-dev, liblzf-dev) runs the same code
#                                      # and does (KEEP=1, then callgrind_annotate --inclusive=yes)
#
# Prints: instructions per DORA (node, whole process: runtime and Redis client included),
# malloc+realloc+calloc calls per DORA and per message handled (DISCOVER and REQUEST: 2 a DORA), and Redis CPU per
# EVALSHA (from INFO commandstats). Needs valgrind, redis-server and the release binaries
# (cargo build --release --bins).
set -euo pipefail

N=${1:-2000}
RATE=${2:-100}
WARM=${WARM:-200}
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d /tmp/hive-callgrind.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"
}
rport=$(free_port SOCK_STREAM)
uport=$(free_port SOCK_DGRAM)

TARGET=${TARGET:-node}
case $TARGET in node|redis) ;; *) echo "TARGET is node or redis" >&2; exit 2 ;; esac
redis_cmd=("${REDIS_SERVER:-redis-server}" --port "$rport" --bind 127.0.0.1 --dir "$work" --save '' --daemonize no)
if [ "$TARGET" = redis ]; then
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-instr=no "${redis_cmd[@]}" \
        --appendonly yes --appendfsync everysec --auto-aof-rewrite-percentage 0 --hz 100 \
        >"$work/redis.log" 2>&1 &
    profiled=$!
else
    "${redis_cmd[@]}" --appendonly no >"$work/redis.log" 2>&1 &
fi
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.2; done

cat >"$work/node.json" <<EOF
{
  "hostname": "callgrind",
  "interface": "127.0.0.1",
  "port": $uport,
  "redis": "redis://127.0.0.1:$rport",
  "serverId": "127.0.0.1",
  "nodeName": "cg",
  "subnets": [
    { "subnet": "127.77.0.0/16", "router": "127.77.0.1", "dynStart": "127.77.1.0",
      "dynEnd": "127.77.255.254", "leaseTime": 3600 }
  ]
}
EOF

if [ "$TARGET" = node ]; then
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-instr=no \
        "$BIN/dhcp-hive-mind" serve --config "$work/node.json" >"$work/node.log" 2>&1 &
    profiled=$!
else
    "$BIN/dhcp-hive-mind" serve --config "$work/node.json" >"$work/node.log" 2>&1 &
fi
pids+=($!)
node=$!
# Ready: the node answers (callgrind starts slowly).
gen() {
    "$BIN/hive-loadgen" --server "127.0.0.1:$uport" --relay 127.77.0.1 --sockets 4 \
        --timeout 3 --json "$@"
}
for _ in $(seq 60); do
    out=$(gen --count 5 --rate 50 2>/dev/null || true)
    grep -q "\"completed\":5," <<<"$out" && break
    kill -0 "$node" 2>/dev/null || { cat "$work/node.log" >&2; exit 1; }
    sleep 1
done
grep -q '"completed":5,' <<<"$out" || { echo "node never answered" >&2; exit 1; }
gen --count "$WARM" --rate "$RATE" >"$work/warm.json"
redis-cli -p "$rport" config resetstat >/dev/null
callgrind_control --zero "$profiled" >/dev/null
gen --count "$N" --rate "$RATE" >"$work/run.json"
callgrind_control --dump=run "$profiled" >/dev/null
sleep 1
stats=$(redis-cli -p "$rport" info commandstats | tr -d '\r' | grep '^cmdstat_evalsha:' || true)

python3 - "$work" "$N" "$stats" "$TARGET" <<'PY'
import glob, json, re, sys
work, n, stats, target = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
run = json.load(open(f"{work}/run.json"))
# The dump taken after the run (one file per thread with --separate-threads=no: one file).
files = [f for f in glob.glob(f"{work}/cg.out*") if not f.endswith("cg.out")]
total, allocs, names = 0, 0, {}
for path in files:
    cfn = None
    for line in open(path, errors="replace"):
        if line.startswith("summary:"):
            total += int(line.split()[1])
            continue
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2).strip()
            if line.startswith("cfn="):
                cfn = names.get(m.group(1), "")
            continue
        # The node's allocator is mimalloc: Rust's allocations enter it by these names.
        if line.startswith("calls=") and cfn in ("malloc", "realloc", "calloc", "mi_malloc_aligned",
                                                 "mi_zalloc_aligned", "mi_realloc_aligned"):
            allocs += int(line.split("=")[1].split()[0])
done = run.get("completed", n)
print(json.dumps({k: run.get(k) for k in ("started", "completed", "incomplete_pct")}))
print(f"{target} instructions per DORA: {total / done:,.0f}")
if target == "node":
    print(f"allocations (malloc/realloc/calloc, mimalloc's included) per DORA: {allocs / done:.1f}, per message handled (2 a DORA): {allocs / done / 2:.1f}")
m = re.search(r"calls=(\d+),usec=(\d+)", stats)
if m:
    print(f"redis: {int(m.group(1))} EVALSHA, {int(m.group(2)) / int(m.group(1)):.1f} us CPU each")
PY
