#!/usr/bin/env bash
# Installs what the hive and its tests need from Debian, if missing: Redis, the real DHCP
# clients (dhclient, udhcpc, dhcpcd), a real relay agent (dhcrelay), perfdhcp (kea-admin), Kea's
# DHCPv4 server and ISC dhcpd, tcpdump and iproute2.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have redis-server || need+=(redis-server)
have redis-cli || need+=(redis-tools)
[ "${1:-}" = "--server-only" ] || {
    have dhclient || need+=(isc-dhcp-client)
    have dhcrelay || [ -x /usr/sbin/dhcrelay ] || need+=(isc-dhcp-relay)
    have udhcpc || need+=(udhcpc)
    # dhcpcd-base is the daemon alone, without the `dhcpcd` package's service: installing it
    # starts nothing that could manage the host's interfaces (the tests run their own).
    have dhcpcd || [ -x /usr/sbin/dhcpcd ] || need+=(dhcpcd-base)
    have perfdhcp || need+=(kea-admin)
    # Kea's DHCPv4 server and ISC dhcpd: the migration tests take over their leases. Their
    # services are not started on install (policy-rc.d below).
    have kea-dhcp4 || [ -x /usr/sbin/kea-dhcp4 ] || need+=(kea-dhcp4-server)
    have dhcpd || [ -x /usr/sbin/dhcpd ] || need+=(isc-dhcp-server)
    have tcpdump || need+=(tcpdump)
    have promtool || need+=(prometheus)
    have openssl || need+=(openssl)
    have ip || need+=(iproute2)
}
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -q >&2
    # isc-dhcp-relay's package starts its service when installed, and fails the install where
    # that service cannot start (no relay configured, no systemd): the tests run their own
    # dhcrelay. Where the machine has no policy-rc.d, one that forbids starting services is put
    # in place for the install and removed after it.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        trap '$SUDO rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
# A system redis-server that Debian may have started on 6379 (where the machine's own policy lets
# it) is left alone: the hive and the tests start their own.
