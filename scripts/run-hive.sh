#!/usr/bin/env bash
# Runs a local hive: a redis-server with its data (AOF on) in ./run/redis, and 3 nodes sharing
# port 1067 on loopback with config/hive-local.json. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --server-only
NODES=${NODES:-3}
CONFIG=${CONFIG:-config/hive-local.json}
REDIS_PORT=${REDIS_PORT:-6390}
mkdir -p run/redis

cargo build --release --locked
# Each child in a session of its own: Ctrl-C reaches only this script, whose trap stops them
# with one TERM each (a node takes a second signal as "exit now, unfinished").
setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$PWD/run/redis" \
    --appendonly yes --appendfsync everysec --save "" --daemonize no \
    --logfile "$PWD/run/redis/redis.log" &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

for i in $(seq 1 "$NODES"); do
    HIVE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" HIVE_NODE_NAME="node$i" \
        setsid target/release/dhcp-hive-mind serve --config "$CONFIG" &
    pids+=($!)
done
echo "hive: $NODES nodes on udp/1067 (loopback), redis on 127.0.0.1:$REDIS_PORT; Ctrl-C stops" >&2
wait -n "${pids[@]}"
