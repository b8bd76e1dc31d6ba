#!/bin/sh
# Entry point of the dhcp-hive-mind image: runs the binary with the arguments given.
#
# One extra job, only when HIVE_SLOTS is set: several replicas that share ONE network namespace
# (docker-compose: the host's, or the `hive-net` container's) share UDP port 67 through
# SO_REUSEPORT, but each needs its own HTTP port and its own node name. `serve` then takes the
# first free slot N (0 <= N < HIVE_SLOTS) by holding a lock on $HIVE_SLOT_DIR/slot-N.lock for
# its whole life (the lock's descriptor is inherited by the node; the kernel drops it when the
# node exits, whatever the way), and runs with
#   HIVE_HTTP_LISTEN = ${HIVE_HTTP_HOST:-0.0.0.0}:$((HIVE_HTTP_BASE_PORT + N))
#   HIVE_NODE_NAME   = <host name>-N        (unless HIVE_NODE_NAME is set)
# and writes a Prometheus file_sd target, $HIVE_SLOT_DIR/targets-N.json, pointing at
# ${HIVE_SD_HOST}:port. Without HIVE_SLOTS (Kubernetes, plain `docker run`) it only execs.
#
# `probe` without --url probes this container's own node (the slot's port when it has one).
set -eu

BIN=${HIVE_ENTRYPOINT_BIN:-/usr/local/bin/dhcp-hive-mind}
STATE=${HIVE_STATE_FILE:-/tmp/dhcp-hive-mind.url}

# http://127.0.0.1:PORT/readyz for a listen address ADDR:PORT.
probe_url() {
    port=${1##*:}
    echo "http://127.0.0.1:${port}/readyz"
}

case "${1:-}" in
probe)
    if [ "$#" -eq 1 ]; then
        if [ -r "$STATE" ]; then
            exec "$BIN" probe --url "$(cat "$STATE")"
        elif [ -n "${HIVE_HTTP_LISTEN:-}" ]; then
            exec "$BIN" probe --url "$(probe_url "$HIVE_HTTP_LISTEN")"
        fi
    fi
    ;;
serve)
    if [ -n "${HIVE_SLOTS:-}" ]; then
        dir=${HIVE_SLOT_DIR:-/run/dhcp-hive-mind}
        base=${HIVE_HTTP_BASE_PORT:-9067}
        slot=""
        i=0
        while [ "$i" -lt "$HIVE_SLOTS" ]; do
            # Reopening fd 9 closes the previous slot's file, which drops a lock not kept.
            exec 9>>"$dir/slot-$i.lock"
            if flock -n 9; then
                slot=$i
                break
            fi
            i=$((i + 1))
        done
        if [ -z "$slot" ]; then
            echo "hive-entrypoint: all $HIVE_SLOTS slots in $dir are taken: raise HIVE_SLOTS (and the published HTTP port range)" >&2
            exit 1
        fi
        port=$((base + slot))
        export HIVE_HTTP_LISTEN="${HIVE_HTTP_HOST:-0.0.0.0}:$port"
        if [ -z "${HIVE_NODE_NAME:-}" ]; then
            HIVE_NODE_NAME="$(cat /proc/sys/kernel/hostname)-$slot"
            export HIVE_NODE_NAME
        fi
        # Forget the targets of slots nobody holds (replicas scaled away). A slot is checked
        # under its own lock, so a replica taking it now writes its target after this.
        j=0
        while [ "$j" -lt "$HIVE_SLOTS" ]; do
            if [ "$j" != "$slot" ] && [ -e "$dir/targets-$j.json" ]; then
                if (flock -n 8 && rm -f "$dir/targets-$j.json") 8>>"$dir/slot-$j.lock"; then :; fi
            fi
            j=$((j + 1))
        done
        if [ -n "${HIVE_SD_HOST:-}" ]; then
            tmp="$dir/.targets-$slot.json.tmp"
            printf '[{"targets": ["%s:%s"], "labels": {"node": "%s"}}]\n' \
                "$HIVE_SD_HOST" "$port" "$HIVE_NODE_NAME" >"$tmp"
            mv -f "$tmp" "$dir/targets-$slot.json"
        fi
        echo "hive-entrypoint: slot $slot: node $HIVE_NODE_NAME, HTTP on $HIVE_HTTP_LISTEN" >&2
    fi
    if [ -n "${HIVE_HTTP_LISTEN:-}" ]; then
        { probe_url "$HIVE_HTTP_LISTEN" >"$STATE"; } 2>/dev/null || true
    fi
    ;;
esac
exec "$BIN" "$@"
