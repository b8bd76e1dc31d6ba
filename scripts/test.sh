#!/usr/bin/env bash
# Runs every test ring: format and lint checks, unit tests, integration tests against real
# redis-server processes, and namespace tests with real DHCP clients (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets -- --test-threads=2
# Deploy files (compose, Helm, Prometheus rules, dashboard), offline; the dashboard and alerts are
# checked against the /metrics scrape that the integration tests just took.
HIVE_METRICS_FILE=target/tmp/metrics.txt HIVE_BIN=target/debug/dhcp-hive-mind scripts/validate-deploy.sh
