//! Ring 4 of STYLE.md "Tests in rings": the real binary, three nodes sharing port 67, and real
//! DHCP clients (ISC dhclient, busybox udhcpc, Kea perfdhcp) in network namespaces, one of them
//! behind a real relay agent (ISC dhcrelay) on a routed link; plus a packet capture that checks
//! the hive answers every broadcast once.
//!
//! Each test builds its own world ([`Lab`]): a server namespace `hs-<id>` holding a veth end
//! `hv-<id>` (192.0.2.1/24), its own redis-server on loopback and three nodes; a client
//! namespace `hc-<id>` holding the peer `hw-<id>`. `<id>` is the pid plus a counter, so tests run
//! in parallel. Links are created inside the namespaces, never in the host's; packets stay on
//! the veth and on the namespaces' loopbacks, addresses are from 192.0.2.0/24 (RFC 5737).
//! Every namespace, link and process is removed by a guard's `Drop`, also when a test panics;
//! a panicking test prints the tail of every log first.
//!
//! These tests need root (for `ip netns`) and the tools; a missing one fails the test with a
//! message naming the package, it never skips.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};

/// A command line of mixed strings and paths, as an array of `OsString`.
macro_rules! argv {
    ($($arg:expr),* $(,)?) => { [$(OsString::from($arg)),*] };
}

pub(crate) const HIVE_BIN: &str = env!("CARGO_BIN_EXE_dhcp-hive-mind");
pub(crate) const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub(crate) const SUBNET: &str = "192.0.2.0/24";
const LEASE_TIME: u32 = 60;
/// T1, shorter than the default lease/2 so that dhclient renews within a few seconds; seeing
/// dhclient schedule its renewal by it proves option 58 reaches the client.
pub(crate) const RENEWAL_TIME: u32 = 10;
/// Each test has its own namespace, so its loopback has every port free: no port hunting.
const REDIS_PORT: &str = "16379";
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const POLL: Duration = Duration::from_millis(50);
/// Bound for one short command (`ip`, `redis-cli`, `kill`).
pub(crate) const COMMAND_LIMIT: Duration = Duration::from_secs(10);

/// The dynamic pool of the test's one subnet.
#[derive(Clone, Copy)]
pub(crate) struct Pool {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

/// 100 addresses, for the single-client tests.
pub(crate) const SMALL_POOL: Pool = Pool {
    first: Ipv4Addr::new(192, 0, 2, 100),
    last: Ipv4Addr::new(192, 0, 2, 199),
};

/// 241 addresses, room for perfdhcp's 200 clients.
const LARGE_POOL: Pool = Pool {
    first: Ipv4Addr::new(192, 0, 2, 10),
    last: Ipv4Addr::new(192, 0, 2, 250),
};

impl Pool {
    pub(crate) fn range(self) -> RangeInclusive<Ipv4Addr> {
        self.first..=self.last
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// dhclient: DORA with every configured option, the lease in Redis, a renewal at T1 that
/// refreshes the TTL, a RELEASE that removes the lease, and the same address after a fresh boot.
#[test]
fn dhclient_binds_renews_releases_and_gets_its_address_back() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    let mac = lab.client_mac();
    let dh = Dhclient::new(&lab);

    let mut client = dh.start(&lab, "dhclient");
    let (at, bound) = dh
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(20));
    let ip = assert_client_config(&bound, SMALL_POOL);
    let first = assert_bound(&lab, ip, &mac, "netns-dhclient");

    // dhclient takes T1 from option 58 and randomizes it to (3 T1 + 3) / 4 plus
    // ((random % T1) + 3) / 4, i.e. 8..=11 s for T1 = 10 (23..=31 s for the default T1 of
    // 30 s: the range tells that option 58 arrived). It logs the line after the BOUND hook.
    client.wait_log("renewal in ", Duration::from_secs(5));
    let scheduled = renewal_in(&client.log()).expect("dhclient logs its renewal time");
    // (3 T1 + 3) / 4 is 3/4 T1 rounded up; a second may pass before the line is logged.
    let t1 = u64::from(RENEWAL_TIME);
    let earliest = (3 * t1).div_ceil(4) - 1;
    assert!(
        (earliest..=t1 + 1).contains(&scheduled),
        "renewal in {scheduled} s does not follow T1 = {RENEWAL_TIME} s"
    );
    let limit = Duration::from_secs(u64::from(RENEWAL_TIME) + 10);
    let (at, renew) = dh.events.wait(&mut client, &["RENEW"], at + 1, limit);
    assert_renewed(&lab, &renew, ip, &mac, &first);

    dh.release(&lab.client, &mut client, || lab.lease(ip).is_none());

    // A fresh boot: no lease file, no address. The hive remembers the client (sticky).
    let _ = fs::remove_file(&dh.leases);
    lab.client
        .ip(&["addr", "flush", "dev", &lab.client_if, "scope", "global"]);
    let mut again = dh.start(&lab, "dhclient-again");
    let (_, rebound) = dh
        .events
        .wait(&mut again, &["BOUND"], at + 1, Duration::from_secs(20));
    assert_eq!(
        assert_client_config(&rebound, SMALL_POOL),
        ip,
        "same address after release"
    );
    let back = lab.lease(ip).expect("the lease after the second boot");
    assert_eq!(
        (back.mac.as_str(), back.state.as_str()),
        (mac.as_str(), "bound")
    );
    assert_ttl_fresh(&back);
    lab.assert_alive();
}

/// A client of the server the hive replaced keeps its address: dhclient starts with a lease
/// from another server in its lease file, for an address the hive has no record of and would
/// not give first, and asks for it at boot (INIT-REBOOT, RFC 2131 3.2). The hive, authoritative,
/// grants it back (how the hive re-learns the leases of a server it takes over from, or leases
/// that Redis lost), and Redis then has the lease.
#[test]
fn dhclient_with_a_lease_from_the_replaced_server_keeps_its_address() {
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    let mac = lab.client_mac();
    let dh = Dhclient::new(&lab);
    let ip = Ipv4Addr::new(192, 0, 2, 177);
    assert!(lab.lease(ip).is_none());
    // The old server's lease, valid for years (2037-01-01 is a Thursday: dhclient's day 4).
    fs::write(
        &dh.leases,
        format!(
            "lease {{\n  interface \"{}\";\n  fixed-address {ip};\n  \
             option subnet-mask 255.255.255.0;\n  option dhcp-server-identifier 192.0.2.254;\n  \
             option dhcp-lease-time 86400;\n  renew 4 2037/01/01 00:00:00;\n  \
             rebind 4 2037/01/01 00:00:00;\n  expire 4 2037/01/01 00:00:00;\n}}\n",
            dh.interface
        ),
    )
    .expect("write the old server's lease");

    let mut client = dh.start(&lab, "dhclient-migrated");
    let (_, event) = dh.events.wait(
        &mut client,
        &["REBOOT", "BOUND"],
        0,
        Duration::from_secs(20),
    );
    // BOUND would mean a NAK and a new address through DISCOVER.
    assert_eq!(event["reason"], "REBOOT", "{event:?}");
    assert_eq!(assert_client_config(&event, SMALL_POOL), ip, "{event:?}");
    assert_bound(&lab, ip, &mac, "netns-dhclient");
    lab.assert_alive();
}

/// Moving from Kea with its leases (`leases import-kea`): see [`takeover`].
#[test]
fn dhclient_renews_its_kea_lease_from_the_hive_after_an_import() {
    takeover(OldServer::Kea);
}

/// Moving from ISC dhcpd with its leases (`leases import-dhcpd`): see [`takeover`].
#[test]
fn dhclient_renews_its_dhcpd_lease_from_the_hive_after_an_import() {
    takeover(OldServer::Dhcpd);
}

/// The DHCP server the hive replaces, as Debian packages it.
#[derive(Clone, Copy)]
enum OldServer {
    /// Kea 2.2 with its memfile lease backend.
    Kea,
    /// ISC dhcpd 4.4.
    Dhcpd,
}

impl OldServer {
    /// Starts the server in the lab's server namespace, on the lab's veth, serving the lab's
    /// subnet from a pool inside the hive's (away from the hive's first free address, .100)
    /// with the lab's lease time, T1 and options. Returns it, its lease file, and the `leases`
    /// subcommand that imports that file.
    fn start(self, lab: &Lab) -> (Proc, PathBuf, &'static str) {
        let dir = lab.dir.path();
        match self {
            Self::Kea => {
                let leases = dir.join("kea-leases4.csv");
                let config = serde_json::json!({ "Dhcp4": {
                    "interfaces-config": { "interfaces": [lab.server_if] },
                    "lease-database": { "type": "memfile", "persist": true, "lfc-interval": 0,
                                        "name": leases.display().to_string() },
                    "valid-lifetime": LEASE_TIME,
                    "renew-timer": RENEWAL_TIME,
                    "rebind-timer": LEASE_TIME * 7 / 8,
                    "subnet4": [{
                        "subnet": SUBNET,
                        "pools": [{ "pool": "192.0.2.150 - 192.0.2.159" }],
                        "option-data": [
                            { "name": "routers", "data": SERVER_IP.to_string() },
                            { "name": "domain-name-servers", "data": "192.0.2.53, 192.0.2.54" },
                            { "name": "domain-name", "data": "hive.test" },
                        ],
                    }],
                    "loggers": [{ "name": "kea-dhcp4", "severity": "INFO", "output_options":
                                  [{ "output": dir.join("kea.log").display().to_string() }] }],
                }});
                let path = dir.join("kea.json");
                fs::write(&path, config.to_string()).expect("write kea.json");
                // Kea's pid and lock files go to the test's directory, not /run/kea.
                let d = dir.display().to_string();
                let kea = lab.server.spawn(
                    "kea-dhcp4",
                    &argv![tool("kea-dhcp4"), "-c", &path],
                    &dir.join("kea-dhcp4.out"),
                    &[
                        ("KEA_PIDFILE_DIR", d.as_str()),
                        ("KEA_LOCKFILE_DIR", d.as_str()),
                    ],
                );
                (kea, leases, "import-kea")
            }
            Self::Dhcpd => {
                let leases = dir.join("dhcpd.leases");
                fs::write(&leases, "").expect("create dhcpd.leases");
                let path = dir.join("dhcpd.conf");
                fs::write(
                    &path,
                    format!(
                        "default-lease-time {LEASE_TIME};\nmax-lease-time {LEASE_TIME};\n\
                         authoritative;\n\
                         option domain-name \"hive.test\";\n\
                         option domain-name-servers 192.0.2.53, 192.0.2.54;\n\
                         subnet 192.0.2.0 netmask 255.255.255.0 {{\n\
                         \x20 range 192.0.2.150 192.0.2.159;\n\
                         \x20 option routers {SERVER_IP};\n\
                         \x20 option dhcp-renewal-time {RENEWAL_TIME};\n\
                         \x20 option dhcp-rebinding-time {};\n}}\n",
                        LEASE_TIME * 7 / 8
                    ),
                )
                .expect("write dhcpd.conf");
                // In the foreground (`-f`), logging to its stderr (`-d`): the guard ends it.
                let dhcpd = lab.server.spawn(
                    "dhcpd",
                    &argv![
                        tool("dhcpd"),
                        "-4",
                        "-f",
                        "-d",
                        "-cf",
                        &path,
                        "-lf",
                        &leases,
                        "-pf",
                        dir.join("dhcpd.pid"),
                        &lab.server_if
                    ],
                    &dir.join("dhcpd.out"),
                    &[],
                );
                (dhcpd, leases, "import-dhcpd")
            }
        }
    }
}

/// Moving from another server with its leases: the old server grants dhclient a lease and
/// stops; its lease file is imported into the hive's Redis; the hive starts with the old
/// server's address as its server identifier, and dhclient's renewal at T1 (a unicast to that
/// address) is ACKed with the same address as a lease the hive knew (`renewed`, not re-learned
/// as `recovered`).
fn takeover(old: OldServer) {
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    lab.stop_nodes();
    let mac = lab.client_mac();
    let (mut server, leases, import) = old.start(&lab);

    let dh = Dhclient::new(&lab);
    let mut client = dh.start(&lab, "dhclient-takeover");
    let (at, bound) = dh
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(20));
    let ip = assert_client_config(&bound, SMALL_POOL);
    assert!(
        (150..=159).contains(&ip.octets()[3]),
        "the old server's address: {bound:?}"
    );
    server.stop("TERM", Duration::from_secs(10));
    assert!(lab.lease(ip).is_none(), "the hive knows nothing of it yet");

    let out = lab.server.run(
        &argv![
            HIVE_BIN,
            "leases",
            import,
            "--config",
            lab.dir.path().join("config.json"),
            &leases
        ],
        COMMAND_LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("imported 1 of 1 leases"),
        "{}",
        text(&out)
    );
    let imported = lab.lease(ip).expect("the imported lease");
    assert_eq!(
        (imported.mac.as_str(), imported.state.as_str()),
        (mac.as_str(), "bound"),
        "{imported:?}"
    );

    lab.start_nodes("-after");
    let (_, renew) = dh.events.wait(
        &mut client,
        &["RENEW"],
        at + 1,
        Duration::from_secs(u64::from(RENEWAL_TIME) + 15),
    );
    assert_eq!(assert_client_config(&renew, SMALL_POOL), ip, "{renew:?}");
    let renewed = lab.lease(ip).expect("the lease after the renewal");
    assert_eq!(renewed.mac, mac);
    assert_ttl_fresh(&renewed);
    assert!(
        renewed.expires_at > imported.expires_at,
        "{imported:?} -> {renewed:?}"
    );
    let acked = lab.nodes.iter().any(|n| {
        n.log().lines().any(|l| {
            l.contains("reply=\"ack\"") && l.contains(&ip.to_string()) && l.contains("renewed")
        })
    });
    assert!(acked, "a node ACKed the renewal of a lease it knew");
    lab.assert_alive();
}

/// udhcpc: DORA, SIGUSR1 renews (by unicast) and refreshes the TTL, SIGUSR2 releases, and a
/// restarted client gets the same address.
#[test]
fn udhcpc_binds_renews_releases_and_gets_its_address_back() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    let mac = lab.client_mac();
    let ud = Udhcpc::new(&lab);

    let mut client = ud.start(&lab, "udhcpc", &[]);
    let (at, bound) = ud
        .events
        .wait(&mut client, &["bound"], 0, Duration::from_secs(20));
    let ip = assert_client_config(&bound, SMALL_POOL);
    assert_eq!(bound["serverid"], SERVER_IP.to_string(), "{bound:?}");
    let first = assert_bound(&lab, ip, &mac, "netns-udhcpc");

    // udhcpc renews with the xid of its DORA; the hive's exchange claims tell a SELECTING
    // REQUEST from a RENEWING one, so whichever node the unicast reaches answers it. The wait
    // lets the TTL run down, so the renewal is seen refreshing it.
    sleep(Duration::from_secs(2));
    let aged = lab.lease(ip).expect("the lease before the renewal");
    let (at, renew) = udhcpc_renew(&ud, &mut client, at + 1);
    assert_eq!(
        assert_client_config(&renew, SMALL_POOL),
        ip,
        "renewal keeps the address"
    );
    let renewed = lab.lease(ip).expect("the lease after the renewal");
    assert_ttl_fresh(&renewed);
    assert!(
        renewed.pttl_ms > aged.pttl_ms + 1_500 && renewed.expires_at > first.expires_at,
        "renewal refreshed the TTL: {aged:?} -> {renewed:?}"
    );

    udhcpc_release(&ud, &mut client, at + 1, || lab.lease(ip).is_none());
    assert!(
        client.log().contains("entering released state"),
        "{}",
        client.log()
    );
    client.stop("TERM", Duration::from_secs(5));

    let from = ud.events.read().len();
    let mut again = ud.start(&lab, "udhcpc-again", &[]);
    let (_, rebound) = ud
        .events
        .wait(&mut again, &["bound"], from, Duration::from_secs(20));
    assert_eq!(
        assert_client_config(&rebound, SMALL_POOL),
        ip,
        "same address after release"
    );
    let back = lab.lease(ip).expect("the lease after the restart");
    assert_eq!(
        (back.mac.as_str(), back.state.as_str()),
        (mac.as_str(), "bound")
    );
    assert_ttl_fresh(&back);
    lab.assert_alive();
}

/// SIGUSR1: udhcpc renews by unicast to the hive's identifier, and the renewal is answered (no
/// fall-back to broadcast). The renew event, and its index.
fn udhcpc_renew(ud: &Udhcpc, client: &mut Proc, from: usize) -> (usize, Event) {
    client.signal("USR1");
    let renew = ud
        .events
        .wait(client, &["renew"], from, Duration::from_secs(10));
    let log = client.log();
    assert!(
        log.contains("sending renew to server 192.0.2.1") && !log.contains("broadcasting renew"),
        "the unicast renewal is answered (no fall-back to broadcast):\n{log}"
    );
    renew
}

/// SIGUSR2: udhcpc releases, and `gone` says when its lease has left Redis.
fn udhcpc_release(ud: &Udhcpc, client: &mut Proc, from: usize, mut gone: impl FnMut() -> bool) {
    client.signal("USR2");
    ud.events
        .wait(client, &["deconfig"], from, Duration::from_secs(10));
    wait_until(
        "the lease key to go after RELEASE",
        Duration::from_secs(5),
        || gone().then_some(()),
    );
}

/// The relayed subnet of the relay tests (RFC 5737; it exists only inside their namespaces).
const RELAYED: &str = "198.51.100.0/24";
/// The relay's address on the host's link: giaddr, and the host's router.
const RELAY_IP: &str = "198.51.100.1";

/// A host behind a real relay agent: the lab's client namespace routes between the hive's link
/// (192.0.2.2) and a link of its own (198.51.100.1) to a third namespace, the host, and runs
/// ISC dhcrelay between the two (`-a`: it adds option 82, its circuit id the downstream
/// interface's name). The lab's config serves 198.51.100.0/24 beside its own subnet.
struct RelayedHost {
    host: Netns,
    /// The host's interface.
    host_if: String,
    /// The relay's interface on the host's link (its name is the circuit id).
    down: String,
    relay: Proc,
}

impl RelayedHost {
    fn lab() -> Lab {
        Lab::with_subnets(
            SMALL_POOL,
            vec![serde_json::json!({
                "subnet": RELAYED,
                "router": RELAY_IP,
                "dynStart": "198.51.100.100",
                "dynEnd": "198.51.100.199",
                "leaseTime": LEASE_TIME,
                "renewalTime": RENEWAL_TIME,
                "dns": ["198.51.100.53"],
                "domainName": "relayed.test",
            })],
        )
    }

    fn new(lab: &Lab) -> Self {
        let id = lab.client.name.trim_start_matches("hc-").to_owned();
        let router = &lab.client;
        router.ip(&["addr", "add", "192.0.2.2/24", "dev", &lab.client_if]);
        let forward = router.run(
            &argv![tool("sysctl"), "-w", "net.ipv4.ip_forward=1"],
            COMMAND_LIMIT,
        );
        assert!(forward.status.success(), "sysctl: {}", text(&forward));
        lab.server
            .ip(&["route", "add", RELAYED, "via", "192.0.2.2"]);
        let host = Netns::new(&format!("hh-{id}"));
        let (down, host_if) = (format!("hd-{id}"), format!("hx-{id}"));
        router.ip(&[
            "link", "add", &down, "type", "veth", "peer", "name", &host_if, "netns", &host.name,
        ]);
        router.ip(&["addr", "add", &format!("{RELAY_IP}/24"), "dev", &down]);
        router.ip(&["link", "set", &down, "up"]);
        host.ip(&["link", "set", &host_if, "up"]);
        let mut relay = router.spawn(
            "dhcrelay",
            &argv![
                tool("dhcrelay"),
                "-4",
                "-d",
                "-a",
                "-pf",
                lab.dir.path().join("dhcrelay.pid"),
                "-id",
                &down,
                "-iu",
                &lab.client_if,
                SERVER_IP.to_string(),
            ],
            &lab.dir.path().join("dhcrelay.log"),
            &[],
        );
        relay.wait_log("Sending on", Duration::from_secs(10));
        Self {
            host,
            host_if,
            down,
            relay,
        }
    }

    fn mac(&self) -> String {
        self.host.mac(&self.host_if)
    }

    /// A dhclient for the host's interface (its files in the lab's directory).
    fn dhclient(&self, lab: &Lab) -> Dhclient {
        let mut dh = Dhclient::new(lab);
        dh.interface = self.host_if.clone();
        dh
    }

    /// Starts a client in the host namespace, logging to `<what>.log` in the lab's directory.
    fn spawn(&self, lab: &Lab, what: &str, argv: &[OsString]) -> Proc {
        let log = lab.dir.path().join(format!("{what}.log"));
        self.host.spawn(what, argv, &log, &[])
    }

    /// Fails if the relay, a node or Redis died during the test.
    fn assert_alive(&mut self, lab: &mut Lab) {
        self.relay.check_alive();
        lab.assert_alive();
    }

    /// Checks the record of a lease bound through the relay; returns its `expires_at`.
    fn assert_relayed_lease(&self, lab: &Lab, ip: Ipv4Addr) -> String {
        assert!(
            (Ipv4Addr::new(198, 51, 100, 100)..=Ipv4Addr::new(198, 51, 100, 199)).contains(&ip),
            "{ip} is not from the relay's pool"
        );
        let record = lab.record(RELAYED, ip);
        assert_eq!(
            record.get("state").map(String::as_str),
            Some("bound"),
            "{record:?}"
        );
        assert_eq!(
            record.get("relay_ip").map(String::as_str),
            Some(RELAY_IP),
            "{record:?}"
        );
        // dhcrelay -a names its downstream interface in the circuit id (RFC 3046 sub-option 1).
        let circuit = self
            .down
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(record.get("circuit_id"), Some(&circuit), "{record:?}");
        assert_eq!(record.get("mac"), Some(&self.mac()), "{record:?}");
        record["expires_at"].clone()
    }
}

/// DHCPDECLINE from udhcpc (`-a`: it ARP-pings the address of an ACK before it uses it,
/// RFC 2131 2.2): another host on the link holds the pool's first address, which the hive
/// offers (ping check off, its default). udhcpc sees the other host answer, declines, and
/// starts again with a DISCOVER; the hive puts the address on probation and gives the client
/// another one, which it binds.
#[test]
fn udhcpc_declines_an_address_in_use_and_binds_another() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    let mac = lab.client_mac();
    let squatted = *SMALL_POOL.range().start();
    let squatter = lab.squatter(squatted);

    let ud = Udhcpc::new(&lab);
    let mut client = ud.start(&lab, "udhcpc-decline", &["-a"]);
    let (_, bound) = ud
        .events
        .wait(&mut client, &["bound"], 0, Duration::from_secs(30));
    let log = client.log();
    assert!(
        log.contains(&format!("select for {squatted}"))
            && log.contains("offered address is in use"),
        "udhcpc was given the first address, found it taken and declined it:\n{log}"
    );
    let ip = assert_client_config(&bound, SMALL_POOL);
    assert_declined_then_bound(&lab, squatted, ip, &mac, "netns-udhcpc");
    drop(squatter);
    client.stop("TERM", Duration::from_secs(10));
    lab.assert_alive();
}

/// Through a real relay agent on a routed link ([`RelayedHost`]): dhclient gets an address of
/// the relay's subnet with that subnet's options, the lease records the relay and its circuit
/// id, the renewal goes by unicast across the router (and is answered by unicast back), and the
/// RELEASE frees the lease.
#[test]
fn dhclient_behind_a_real_relay_binds_renews_and_releases() {
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = RelayedHost::lab();
    let mut behind = RelayedHost::new(&lab);
    let dh = behind.dhclient(&lab);
    let mut client = behind.spawn(&lab, "dhclient", &dh.command(&["-d"]));
    let (at, bound) = dh
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(20));
    let ip: Ipv4Addr = bound["ip"].parse().expect("dhclient's address");
    assert_eq!(bound["routers"], RELAY_IP, "{bound:?}");
    assert_eq!(bound["domain"], "relayed.test", "{bound:?}");
    let first = behind.assert_relayed_lease(&lab, ip);

    // RENEWING is a unicast to the server identifier, across the router; the ACK comes back
    // by unicast to the client's address.
    behind
        .host
        .ip(&["route", "add", "default", "via", RELAY_IP]);
    let limit = Duration::from_secs(u64::from(RENEWAL_TIME) + 10);
    let (_, renew) = dh.events.wait(&mut client, &["RENEW"], at + 1, limit);
    assert_eq!(renew["ip"], ip.to_string(), "renewal keeps the address");
    let renewed = lab.record(RELAYED, ip);
    assert!(
        renewed["expires_at"] > first,
        "renewal moved expires_at: {first} -> {renewed:?}"
    );

    dh.release(&behind.host, &mut client, || {
        lab.record(RELAYED, ip).is_empty()
    });
    behind.assert_alive(&mut lab);
}

/// A client that moved: dhclient behind the relay still holds a lease of the hive's other
/// subnet (192.0.2.150, in its lease file), so it starts in INIT-REBOOT and asks for that
/// address through the relay. RFC 2131 4.3.2: the address is on the wrong network for the
/// relay's link, so the hive NAKs, and the client starts over and binds an address there.
#[test]
fn dhclient_that_moved_behind_the_relay_is_refused_and_binds_there() {
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = RelayedHost::lab();
    let mut behind = RelayedHost::new(&lab);
    let dh = behind.dhclient(&lab);
    fs::write(
        &dh.leases,
        format!(
            "lease {{\n  interface \"{}\";\n  fixed-address 192.0.2.150;\n  \
             option subnet-mask 255.255.255.0;\n  option dhcp-server-identifier {SERVER_IP};\n  \
             renew 4 2037/01/01 00:00:00;\n  rebind 4 2037/01/01 00:00:00;\n  \
             expire 4 2037/01/01 00:00:00;\n}}\n",
            behind.host_if
        ),
    )
    .expect("write the old lease");
    let mut client = behind.spawn(&lab, "dhclient", &dh.command(&["-d"]));
    let (_, bound) = dh
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(30));
    let ip: Ipv4Addr = bound["ip"].parse().expect("dhclient's address");
    let text = client.log();
    assert!(
        text.contains("DHCPREQUEST for 192.0.2.150") && text.contains("DHCPNAK from"),
        "the old address was asked for and refused first:\n{text}"
    );
    behind.assert_relayed_lease(&lab, ip);
    assert!(
        lab.lease(Ipv4Addr::new(192, 0, 2, 150)).is_none(),
        "no lease of the old address was written"
    );
    behind.assert_alive(&mut lab);
}

/// busybox udhcpc behind the same real relay: DORA through dhcrelay, a unicast renewal across
/// the router (SIGUSR1) that is answered without a fall-back to broadcast, and a RELEASE
/// (SIGUSR2) that frees the lease.
#[test]
fn udhcpc_behind_a_real_relay_binds_renews_and_releases() {
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = RelayedHost::lab();
    let mut behind = RelayedHost::new(&lab);
    let mut ud = Udhcpc::new(&lab);
    ud.interface = behind.host_if.clone();
    let mut client = behind.spawn(&lab, "udhcpc", &ud.command(&[]));
    let (at, bound) = ud
        .events
        .wait(&mut client, &["bound"], 0, Duration::from_secs(20));
    let ip: Ipv4Addr = bound["ip"].parse().expect("udhcpc's address");
    assert_eq!(bound["routers"], RELAY_IP, "{bound:?}");
    assert_eq!(bound["serverid"], SERVER_IP.to_string(), "{bound:?}");
    let first = behind.assert_relayed_lease(&lab, ip);

    behind
        .host
        .ip(&["route", "add", "default", "via", RELAY_IP]);
    // expires_at has a resolution of a second.
    sleep(Duration::from_millis(1100));
    let (at, renew) = udhcpc_renew(&ud, &mut client, at + 1);
    assert_eq!(renew["ip"], ip.to_string(), "renewal keeps the address");
    let renewed = lab.record(RELAYED, ip);
    assert!(
        renewed["expires_at"] > first,
        "renewal moved expires_at: {first} -> {renewed:?}"
    );

    udhcpc_release(&ud, &mut client, at + 1, || {
        lab.record(RELAYED, ip).is_empty()
    });
    client.stop("TERM", Duration::from_secs(5));
    behind.assert_alive(&mut lab);
}

/// On the wire: three nodes share port 67 and all see every broadcast, yet each DISCOVER gets
/// exactly one OFFER and each REQUEST one ACK, all naming the one server identifier, each
/// unicast to the client's new address or broadcast as its broadcast bit asks.
#[test]
fn three_nodes_answer_each_broadcast_once_on_the_wire() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    let sockets = lab.server.run(
        &argv![tool("ss"), "-H", "-uln", "sport = :67"],
        COMMAND_LIMIT,
    );
    assert_eq!(
        text(&sockets).lines().filter(|l| l.contains(":67")).count(),
        NODES.len(),
        "one socket per node on port 67:\n{}",
        text(&sockets)
    );

    let capture = Capture::start(&lab);

    // Three one-shot DORAs (-q: exit once bound), each with a new xid; the last asks for
    // broadcast replies (-B), the others leave the broadcast bit clear.
    let ud = Udhcpc::new(&lab);
    let rounds = 3;
    for round in 0..rounds {
        let args: &[&str] = if round == rounds - 1 {
            &["-q", "-n", "-B"]
        } else {
            &["-q", "-n"]
        };
        let out = lab.client.run(&ud.command(args), Duration::from_secs(20));
        assert!(out.status.success(), "udhcpc -q: {}", text(&out));
    }
    let seen = capture.finish();
    let mut by_xid: BTreeMap<u32, Vec<&Seen>> = BTreeMap::new();
    for s in &seen {
        by_xid.entry(s.msg.xid()).or_default().push(s);
    }
    let count = |v: &[&Seen], t: MessageType| v.iter().filter(|s| s.kind == Some(t)).count();
    let mut addresses = HashSet::new();
    let mut exchanges = 0;
    let (mut unicast, mut broadcast) = (0, 0);
    for (xid, packets) in &by_xid {
        exchanges += 1;
        let summary = summarize(packets);
        let (d, o) = (
            count(packets, MessageType::Discover),
            count(packets, MessageType::Offer),
        );
        let (r, a) = (
            count(packets, MessageType::Request),
            count(packets, MessageType::Ack),
        );
        // A client that waited over a second would retransmit its DISCOVER; the node that
        // claimed the exchange answers each copy, the others none: still one OFFER per copy.
        assert!(d >= 1, "xid {xid:#010x}: no DISCOVER\n{summary}");
        assert_eq!(o, d, "xid {xid:#010x}: one OFFER per DISCOVER\n{summary}");
        assert_eq!(a, r, "xid {xid:#010x}: one ACK per REQUEST\n{summary}");
        assert!(a >= 1, "xid {xid:#010x}: no ACK\n{summary}");
        assert_eq!(
            count(packets, MessageType::Nak),
            0,
            "xid {xid:#010x}: NAK\n{summary}"
        );
        for reply in packets.iter().filter(|s| s.is_reply()) {
            assert_eq!(
                (reply.src, reply.sport, reply.dport),
                (SERVER_IP, 67, 68),
                "{summary}"
            );
            // RFC 2131 section 4.1: with the broadcast bit clear, the reply goes to the
            // address the client is given, at its hardware address (a neighbour entry the
            // node made), not to everyone on the link; with it set, to everyone.
            if reply.msg.flags().broadcast() {
                broadcast += 1;
                assert_eq!(
                    (reply.dst, reply.dst_mac),
                    (Ipv4Addr::BROADCAST, [0xff; 6]),
                    "xid {xid:#010x}: broadcast asked for\n{summary}"
                );
            } else {
                unicast += 1;
                assert_eq!(
                    (reply.dst, &reply.dst_mac[..]),
                    (reply.msg.yiaddr(), &reply.msg.chaddr()[..6]),
                    "xid {xid:#010x}: unicast to yiaddr\n{summary}"
                );
            }
            assert!(
                matches!(reply.kind, Some(MessageType::Offer | MessageType::Ack)),
                "xid {xid:#010x}: unexpected reply\n{summary}"
            );
            assert_eq!(
                reply.msg.opts().get(OptionCode::ServerIdentifier),
                Some(&DhcpOption::ServerIdentifier(SERVER_IP)),
                "xid {xid:#010x}: option 54\n{summary}"
            );
            addresses.insert(reply.msg.yiaddr());
        }
    }
    assert_eq!(exchanges, rounds, "one exchange (xid) per round");
    assert!(
        unicast >= 4 && broadcast >= 2,
        "two rounds unicast, one broadcast: {unicast} unicast and {broadcast} broadcast replies"
    );
    assert_eq!(
        addresses.len(),
        1,
        "every OFFER and ACK of every round named the client's one address: {addresses:?}"
    );
    let ip = addresses.into_iter().next().expect("one address");
    assert!(SMALL_POOL.range().contains(&ip), "{ip}");
    lab.assert_alive();
}

/// A node without CAP_NET_ADMIN cannot make the neighbour entry that a unicast to a client
/// without an address needs: it says so once, and broadcasts those replies, so the client
/// (broadcast bit clear) still binds.
#[test]
fn a_node_without_net_admin_broadcasts_to_new_clients() {
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    for node in &mut lab.nodes {
        node.stop("TERM", Duration::from_secs(10));
    }
    // Root keeps no capability that is in neither its bounding nor its inheritable set.
    let config_path = lab.dir.path().join("config.json");
    let mut node = lab.server.spawn(
        "n-no-net-admin",
        &argv![
            tool("setpriv"),
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
            "--",
            HIVE_BIN,
            "serve",
            "--config",
            &config_path
        ],
        &lab.dir.path().join("n-no-net-admin.log"),
        &[
            ("HIVE_NODE_NAME", "n1"),
            ("HIVE_HTTP_LISTEN", "127.0.0.1:9101"),
            ("RUST_LOG", "info,dhcp_hive_mind=debug"),
            ("NO_COLOR", "1"),
        ],
    );
    node.wait_log("serving", Duration::from_secs(20));
    lab.nodes = vec![node];

    let capture = Capture::start(&lab);
    let ud = Udhcpc::new(&lab);
    for _ in 0..2 {
        let out = lab
            .client
            .run(&ud.command(&["-q", "-n"]), Duration::from_secs(20));
        assert!(out.status.success(), "udhcpc -q: {}", text(&out));
    }
    let seen = capture.finish();
    let replies: Vec<&Seen> = seen.iter().filter(|s| s.is_reply()).collect();
    let summary = summarize(&replies);
    assert!(replies.len() >= 4, "two DORAs:\n{summary}");
    for reply in &replies {
        assert!(!reply.msg.flags().broadcast(), "{summary}");
        assert_eq!(
            (reply.dst, reply.dst_mac),
            (Ipv4Addr::BROADCAST, [0xff; 6]),
            "broadcast for want of a neighbour entry\n{summary}"
        );
    }
    let log = lab.nodes[0].log();
    assert_eq!(
        log.matches("the kernel refuses neighbour entries").count(),
        1,
        "one warning:\n{log}"
    );
    lab.assert_alive();
}

/// perfdhcp: 200 simulated clients, 200 exchanges a second for 10 s, broadcast (relayed from
/// 192.0.2.2) to all three nodes: no drop, no duplicate answer, one bound lease per client.
#[test]
fn perfdhcp_completes_every_exchange_against_three_nodes() {
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(LARGE_POOL);
    lab.client
        .ip(&["addr", "add", "192.0.2.2/24", "dev", &lab.client_if]);
    let clients = 200;
    let args = argv![
        tool("perfdhcp"),
        "-4",
        "-r",
        "200",
        "-p",
        "10",
        "-R",
        clients.to_string(),
        // An exchange is lost only if unanswered for 5 s (default 1 s): on a loaded CI host
        // a debug build can take over a second, and a late answer is not a lost one. A
        // second answer to one exchange still shows, as an orphan.
        "-d",
        "5",
        // After the period, wait up to 5 s (in us) for the answers in flight; without it
        // the last REQUEST, sent just before the end, counts as a drop.
        "-W",
        "5000000",
        // One thread: in multi-thread mode perfdhcp's receiver can see an answer before its
        // sender has recorded the request, and counts it as an orphan plus a drop.
        "-g",
        "single",
        // With an interface and no server address, perfdhcp broadcasts (as a relay at
        // 192.0.2.2): every node sees every message.
        "-l",
        &lab.client_if,
    ];
    let capture = Capture::start(&lab);
    let out = lab.client.run(&args, Duration::from_secs(40));
    let report = text(&out);
    // On the wire, no exchange answered twice (perfdhcp would count it as an orphan; the
    // capture says whether an orphan was the hive's doing). tcpdump may miss packets under
    // load, never invent them.
    let seen = capture.finish();
    let twice = answered_twice(&seen);
    let mut problems = Vec::new();
    if !twice.is_empty() {
        problems.push(format!(
            "{} exchanges answered more than once, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        ));
    }
    if !out.status.success() {
        problems.push(format!("exit status {}", out.status));
    }
    for section in ["DISCOVER-OFFER", "REQUEST-ACK"] {
        let stats = perfdhcp_stats(&report, section);
        let get = |k: &str| {
            *stats
                .get(k)
                .unwrap_or_else(|| panic!("{section}: no `{k}` in\n{report}"))
        };
        if get("sent packets") < 1_000 {
            problems.push(format!("{section}: too little load"));
        }
        if get("received packets") != get("sent packets") {
            problems.push(format!("{section}: received != sent"));
        }
        for zero in [
            "drops",
            "orphans",
            "rejected leases",
            "non unique addresses",
        ] {
            if get(zero) != 0 {
                problems.push(format!("{section}: {zero} {}", get(zero)));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "perfdhcp: {problems:?}\n{report}\nthe nodes' drops by reason: {:?}\n\
         capture: {} DHCP messages, {} from the hive",
        lab.drop_reasons(),
        seen.len(),
        seen.iter().filter(|s| s.is_reply()).count()
    );

    // Redis: every lease bound, in the pool, and no client holding two addresses.
    let leases = lab.all_leases();
    assert!(
        (180..=clients).contains(&leases.len()),
        "{} leases for {clients} clients",
        leases.len()
    );
    let mut macs = HashSet::new();
    for (ip, mac, state) in &leases {
        assert!(LARGE_POOL.range().contains(ip), "{ip} outside the pool");
        assert_eq!(state, "bound", "{ip}");
        assert!(macs.insert(mac.clone()), "{mac} holds two addresses");
    }
    lab.assert_alive();
}

// ---------------------------------------------------------------------------------------------
// Assertions shared by the client tests

/// Checks what the client script recorded from an ACK and returns the address.
pub(crate) fn assert_client_config(ev: &Event, pool: Pool) -> Ipv4Addr {
    let ip: Ipv4Addr = ev["ip"]
        .parse()
        .unwrap_or_else(|_| panic!("no address in {ev:?}"));
    assert!(pool.range().contains(&ip), "{ip} outside the pool: {ev:?}");
    assert_eq!(ev["mask"], "255.255.255.0", "{ev:?}");
    assert_eq!(ev["routers"], SERVER_IP.to_string(), "{ev:?}");
    assert_eq!(ev["dns"], "192.0.2.53 192.0.2.54", "{ev:?}");
    assert_eq!(ev["domain"], "hive.test", "{ev:?}");
    assert_eq!(ev["lease"], LEASE_TIME.to_string(), "{ev:?}");
    ip
}

/// Redis has the lease of `ip` just granted: bound to `mac` with `hostname`, its TTL fresh.
pub(crate) fn assert_bound(lab: &Lab, ip: Ipv4Addr, mac: &str, hostname: &str) -> Lease {
    let lease = lab.lease(ip).expect("a lease in Redis after the ACK");
    assert_eq!(
        lease.mac, mac,
        "lease mac is the client's veth MAC: {lease:?}"
    );
    assert_eq!(lease.hostname, hostname, "{lease:?}");
    assert_eq!(lease.state, "bound", "{lease:?}");
    assert_ttl_fresh(&lease);
    lease
}

/// After a client declined `squatted` (in use by another host) and bound `ip` instead: the
/// lease of `ip` is bound to the client in Redis, `squatted` is on probation, and a node logged
/// the client's DECLINE. The client's hook runs after its ARP probe of `ip` (2 to 5 s after
/// the ACK): the TTL is checked to within 10 s.
pub(crate) fn assert_declined_then_bound(
    lab: &Lab,
    squatted: Ipv4Addr,
    ip: Ipv4Addr,
    mac: &str,
    hostname: &str,
) {
    assert_ne!(
        ip, squatted,
        "the client bound an address nobody else holds"
    );
    let lease = lab.lease(ip).expect("a lease in Redis after the ACK");
    assert_eq!(
        (
            lease.mac.as_str(),
            lease.hostname.as_str(),
            lease.state.as_str()
        ),
        (mac, hostname, "bound"),
        "{lease:?}"
    );
    let full = i64::from(LEASE_TIME) * 1000;
    assert!(
        (full - 10_000..=full).contains(&lease.pttl_ms),
        "TTL within 10 s of {LEASE_TIME} s: {lease:?}"
    );
    let declined = lab
        .lease(squatted)
        .expect("a record for the declined address");
    assert_eq!(declined.state, "declined", "{declined:?}");
    let logged = lab.nodes.iter().any(|n| {
        n.log()
            .lines()
            .any(|l| l.contains("outcome=\"declined\"") && l.contains(mac))
    });
    assert!(logged, "a node logged the client's DECLINE");
}

/// A renewal the client's script recorded (`renew`) kept `ip`, and Redis has the lease bound to
/// `mac` again: a fresh TTL, and an `expires_at` later than the `first` grant's. Returns it.
pub(crate) fn assert_renewed(
    lab: &Lab,
    renew: &Event,
    ip: Ipv4Addr,
    mac: &str,
    first: &Lease,
) -> Lease {
    assert_eq!(
        assert_client_config(renew, SMALL_POOL),
        ip,
        "renewal keeps the address"
    );
    let renewed = lab.lease(ip).expect("the lease after the renewal");
    assert_eq!(renewed.mac, mac);
    assert_ttl_fresh(&renewed);
    assert!(
        renewed.expires_at > first.expires_at,
        "renewal moved expires_at: {first:?} -> {renewed:?}"
    );
    renewed
}

/// The key's TTL is the lease time, read within 2 s of the ACK.
pub(crate) fn assert_ttl_fresh(lease: &Lease) {
    let full = i64::from(LEASE_TIME) * 1000;
    assert!(
        (full - 2_000..=full).contains(&lease.pttl_ms),
        "TTL within 2 s of {LEASE_TIME} s: {lease:?}"
    );
}

/// dhclient's "renewal in N seconds" (the first one).
pub(crate) fn renewal_in(log: &str) -> Option<u64> {
    let rest = &log[log.find("renewal in ")? + "renewal in ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The "key: number" lines of one "***Statistics for: <section>***" block of perfdhcp.
fn perfdhcp_stats(report: &str, section: &str) -> HashMap<String, u64> {
    let head = format!("***Statistics for: {section}***");
    report
        .lines()
        .skip_while(|l| l.trim() != head)
        .skip(1)
        .take_while(|l| !l.starts_with("***"))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The lab: namespaces, Redis and three nodes

/// One test's world. Fields drop in order: nodes and Redis stop before their namespace goes,
/// the directory (logs, config, Redis data) last.
pub(crate) struct Lab {
    pub(crate) nodes: Vec<Proc>,
    redis: Proc,
    pub(crate) client: Netns,
    pub(crate) server: Netns,
    pub(crate) dir: tempfile::TempDir,
    server_if: String,
    pub(crate) client_if: String,
    key_prefix: String,
}

impl Lab {
    pub(crate) fn new(pool: Pool) -> Self {
        Self::with_subnets(pool, Vec::new())
    }

    /// A lab whose config also has `extra` subnets (config objects), after its own.
    pub(crate) fn with_subnets(pool: Pool, extra: Vec<serde_json::Value>) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // pid + counter: unique among tests running now; at most 13 characters with "hv-", so
        // the link names fit IFNAMSIZ.
        let id = format!(
            "{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("netns-{id}-"))
            .tempdir()
            .expect("temp dir");
        let server = Netns::new(&format!("hs-{id}"));
        let client = Netns::new(&format!("hc-{id}"));
        let (server_if, client_if) = (format!("hv-{id}"), format!("hw-{id}"));
        // Created inside the server namespace with the peer placed straight into the client's:
        // the host's namespace never holds either end.
        server.ip(&[
            "link",
            "add",
            &server_if,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &client.name,
        ]);
        server.ip(&["addr", "add", "192.0.2.1/24", "dev", &server_if]);
        server.ip(&["link", "set", &server_if, "up"]);
        client.ip(&["link", "set", &client_if, "up"]);

        let data = dir.path().join("redis");
        fs::create_dir(&data).expect("redis dir");
        let mut redis = server.spawn(
            "redis-server",
            &argv![
                tool("redis-server"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
                "--port",
                REDIS_PORT,
                "--dir",
                &data,
                "--daemonize",
                "no",
            ],
            &dir.path().join("redis.log"),
            &[],
        );
        wait_until(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                redis.check_alive();
                let out = server.run(&redis_cli(&["PING"]), COMMAND_LIMIT);
                (text(&out).trim() == "PONG").then_some(())
            },
        );

        let key_prefix = format!("nt{id}");
        let mut config = serde_json::json!({
            "hostname": "hive.test",
            "interface": server_if,
            "port": 67,
            "redis": format!("redis://127.0.0.1:{REDIS_PORT}"),
            "serverId": SERVER_IP.to_string(),
            "keyPrefix": key_prefix,
            "subnets": [{
                "subnet": SUBNET,
                "router": SERVER_IP.to_string(),
                "dynStart": pool.first.to_string(),
                "dynEnd": pool.last.to_string(),
                "leaseTime": LEASE_TIME,
                "renewalTime": RENEWAL_TIME,
                "dns": ["192.0.2.53", "192.0.2.54"],
                "domainName": "hive.test",
            }],
        });
        if let Some(subnets) = config["subnets"].as_array_mut() {
            subnets.extend(extra);
        }
        fs::write(dir.path().join("config.json"), config.to_string()).expect("write config");

        let mut lab = Self {
            nodes: Vec::new(),
            redis,
            client,
            server,
            dir,
            server_if,
            client_if,
            key_prefix,
        };
        lab.start_nodes("");
        lab
    }

    /// Starts the three nodes on the lab's config, and waits until each serves. Their logs
    /// are `<name><suffix>.log`.
    pub(crate) fn start_nodes(&mut self, suffix: &str) {
        let config_path = self.dir.path().join("config.json");
        for (i, name) in NODES.iter().enumerate() {
            let http = format!("127.0.0.1:{}", 9101 + i);
            self.nodes.push(self.server.spawn(
                name,
                &argv![HIVE_BIN, "serve", "--config", &config_path],
                &self.dir.path().join(format!("{name}{suffix}.log")),
                &[
                    ("HIVE_NODE_NAME", *name),
                    // Distinct ports, should the node serve HTTP by default one day.
                    ("HIVE_HTTP_LISTEN", http.as_str()),
                    ("RUST_LOG", "info,dhcp_hive_mind=debug"),
                    ("NO_COLOR", "1"),
                ],
            ));
        }
        for node in &mut self.nodes {
            node.wait_log("serving", Duration::from_secs(20));
        }
    }

    /// Stops the nodes (SIGTERM: each finishes what it has in flight).
    pub(crate) fn stop_nodes(&mut self) {
        for mut node in self.nodes.drain(..) {
            node.stop("TERM", Duration::from_secs(10));
        }
    }

    /// Fails if a node or Redis died during the test.
    pub(crate) fn assert_alive(&mut self) {
        for node in &mut self.nodes {
            node.check_alive();
        }
        self.redis.check_alive();
    }

    /// How many messages each node dropped, by reason, from its debug lines; for failure
    /// messages (a drop is `dropped ... reason="<why>"`).
    fn drop_reasons(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for node in &self.nodes {
            for line in node.log().lines() {
                let reason = line
                    .split_once("reason=\"")
                    .and_then(|(_, rest)| rest.split('"').next());
                if let Some(reason) = reason {
                    *counts.entry(format!("{} {reason}", node.what)).or_insert(0) += 1;
                }
            }
        }
        counts
    }

    /// Another host on the client's link, holding `ip`: a namespace of its own on a macvlan
    /// of the server's veth end (frames from the client reach it, the hive's own do not). Its
    /// kernel answers an ARP probe for `ip` (RFC 5227), as a host that uses the address
    /// without a lease would. The namespace, and the macvlan with it, go when the guard drops.
    pub(crate) fn squatter(&self, ip: Ipv4Addr) -> Netns {
        let host = Netns::new(&format!("{}-sq", self.server.name));
        let link = format!("{}s", self.server_if);
        self.server.ip(&[
            "link",
            "add",
            "name",
            &link,
            "link",
            &self.server_if,
            "type",
            "macvlan",
            "mode",
            "bridge",
        ]);
        self.server.ip(&["link", "set", &link, "netns", &host.name]);
        host.ip(&["addr", "add", &format!("{ip}/24"), "dev", &link]);
        host.ip(&["link", "set", &link, "up"]);
        host
    }

    /// The client veth's MAC, as the hive writes it (lower-case, colons).
    pub(crate) fn client_mac(&self) -> String {
        self.client.mac(&self.client_if)
    }

    /// One redis-cli command in the server namespace; its stdout.
    fn redis(&self, args: &[&str]) -> String {
        let out = self.server.run(&redis_cli(args), COMMAND_LIMIT);
        assert!(out.status.success(), "redis-cli {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn lease_key(&self, ip: Ipv4Addr) -> String {
        format!("{}:{{{SUBNET}}}:lease:{ip}", self.key_prefix)
    }

    /// Every field of the lease record of `ip` in `subnet` (empty when there is no record).
    pub(crate) fn record(&self, subnet: &str, ip: Ipv4Addr) -> HashMap<String, String> {
        let key = format!("{}:{{{subnet}}}:lease:{ip}", self.key_prefix);
        let out = self.redis(&["HGETALL", &key]);
        let v: Vec<&str> = out.lines().collect();
        v.chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
            .collect()
    }

    /// The lease record of `ip`, or None if there is no key. One script, so that the TTL and
    /// the fields are of the same moment (a RELEASE may land between two commands).
    pub(crate) fn lease(&self, ip: Ipv4Addr) -> Option<Lease> {
        let key = self.lease_key(ip);
        let script = "local t = redis.call('PTTL', KEYS[1]) \
            if t == -2 then return {t} end \
            local f = redis.call('HMGET', KEYS[1], 'mac', 'hostname', 'state', 'expires_at') \
            return {t, f[1], f[2], f[3], f[4]}";
        let out = self.redis(&["EVAL", script, "1", &key]);
        // One line per value; a missing or empty field is an empty line.
        let v: Vec<&str> = out.strip_suffix('\n').unwrap_or(&out).split('\n').collect();
        let pttl_ms: i64 = v[0]
            .parse()
            .unwrap_or_else(|_| panic!("PTTL of {key}: {out:?}"));
        if pttl_ms == -2 {
            return None;
        }
        assert_eq!(v.len(), 5, "{key}: {out:?}");
        Some(Lease {
            mac: v[1].to_owned(),
            hostname: v[2].to_owned(),
            state: v[3].to_owned(),
            expires_at: v[4]
                .parse()
                .unwrap_or_else(|_| panic!("expires_at of {key}: {out:?}")),
            pttl_ms,
        })
    }

    /// Every lease of the subnet as (ip, mac, state), read in one script call.
    pub(crate) fn all_leases(&self) -> Vec<(Ipv4Addr, String, String)> {
        let script = "local r = {} \
            for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
              r[#r + 1] = k \
              r[#r + 1] = redis.call('HGET', k, 'mac') or '' \
              r[#r + 1] = redis.call('HGET', k, 'state') or '' \
            end return r";
        let pattern = format!("{}:{{{SUBNET}}}:lease:*", self.key_prefix);
        let out = self.redis(&["EVAL", script, "0", &pattern]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len() % 3, 0, "{out}");
        lines
            .chunks(3)
            .map(|c| {
                let ip = c[0].rsplit(':').next().and_then(|s| s.parse().ok());
                let ip = ip.unwrap_or_else(|| panic!("lease key {}", c[0]));
                (ip, c[1].to_owned(), c[2].to_owned())
            })
            .collect()
    }
}

/// The lease record's fields that the tests check.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) mac: String,
    pub(crate) hostname: String,
    pub(crate) state: String,
    pub(crate) expires_at: u64,
    pub(crate) pttl_ms: i64,
}

fn redis_cli(args: &[&str]) -> Vec<OsString> {
    let mut v = Vec::from(argv![
        tool("redis-cli"),
        "-h",
        "127.0.0.1",
        "-p",
        REDIS_PORT
    ]);
    v.extend(args.iter().map(Into::into));
    v
}

// ---------------------------------------------------------------------------------------------
// Clients

/// What a client's hook script recorded, one line per event: `reason=..|ip=..|..`.
pub(crate) type Event = HashMap<String, String>;

pub(crate) struct Events(pub(crate) PathBuf);

impl Events {
    fn read(&self) -> Vec<Event> {
        fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                l.split('|')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }

    /// The first event at index `from` or later whose reason is one of `reasons`, with its
    /// index. Fails if the client exits or `limit` passes first.
    pub(crate) fn wait(
        &self,
        client: &mut Proc,
        reasons: &[&str],
        from: usize,
        limit: Duration,
    ) -> (usize, Event) {
        let what = format!("{} to report {reasons:?}", client.what);
        wait_until(&what, limit, || {
            client.check_alive();
            self.read()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, e)| {
                    e.get("reason")
                        .is_some_and(|r| reasons.contains(&r.as_str()))
                })
        })
    }
}

/// Writes an executable hook script.
pub(crate) fn write_script(path: &Path, body: &str) {
    fs::write(path, body).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

/// ISC dhclient with its own config, lease file, pid file and hook script.
pub(crate) struct Dhclient {
    pub(crate) conf: PathBuf,
    leases: PathBuf,
    pid: PathBuf,
    pub(crate) script: PathBuf,
    pub(crate) events: Events,
    interface: String,
}

impl Dhclient {
    pub(crate) fn new(lab: &Lab) -> Self {
        let d = lab.dir.path();
        let me = Self {
            conf: d.join("dhclient.conf"),
            leases: d.join("dhclient.leases"),
            pid: d.join("dhclient.pid"),
            script: d.join("dhclient-script"),
            events: Events(d.join("dhclient.events")),
            interface: lab.client_if.clone(),
        };
        fs::write(
            &me.conf,
            "send host-name \"netns-dhclient\";\n\
             request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers;\n\
             initial-interval 1;\n",
        )
        .expect("write dhclient.conf");
        // Applying the address lets the renewal go by unicast from it, as on a real host.
        write_script(
            &me.script,
            &format!(
                "#!/bin/sh\n\
                 printf 'reason=%s|ip=%s|mask=%s|routers=%s|dns=%s|domain=%s|lease=%s\\n' \
                 \"$reason\" \"$new_ip_address\" \"$new_subnet_mask\" \"$new_routers\" \
                 \"$new_domain_name_servers\" \"$new_domain_name\" \"$new_dhcp_lease_time\" >> '{events}'\n\
                 case \"$reason\" in\n\
                 BOUND|RENEW|REBIND|REBOOT) {ip} addr replace \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" ;;\n\
                 EXPIRE|FAIL|RELEASE|STOP) {ip} addr flush dev \"$interface\" scope global ;;\n\
                 esac\n\
                 exit 0\n",
                events = me.events.0.display(),
                ip = tool("ip").display(),
            ),
        );
        me
    }

    /// `dhclient <extra> -v -cf .. -lf .. -pf .. -sf .. <interface>`.
    fn command(&self, extra: &[&str]) -> Vec<OsString> {
        let mut v = Vec::from(argv![tool("dhclient")]);
        v.extend(extra.iter().map(Into::into));
        for (flag, path) in [
            ("-cf", &self.conf),
            ("-lf", &self.leases),
            ("-pf", &self.pid),
            ("-sf", &self.script),
        ] {
            v.push(flag.into());
            v.push(path.into());
        }
        v.push("-v".into());
        v.push(self.interface.clone().into());
        v
    }

    /// `dhclient -r` in `ns` stops the running `client` (by its pid file) and sends a RELEASE;
    /// `gone` says when the lease has left Redis.
    fn release(&self, ns: &Netns, client: &mut Proc, mut gone: impl FnMut() -> bool) {
        let out = ns.run(&self.command(&["-r"]), Duration::from_secs(20));
        assert!(out.status.success(), "dhclient -r: {}", text(&out));
        client.wait_exit(Duration::from_secs(5));
        wait_until(
            "the lease key to go after RELEASE",
            Duration::from_secs(5),
            || gone().then_some(()),
        );
    }

    /// A dhclient in the foreground (`-d`), so that it stays our child and its guard ends it.
    pub(crate) fn start(&self, lab: &Lab, what: &str) -> Proc {
        let log = lab.dir.path().join(format!("{what}.log"));
        lab.client.spawn(what, &self.command(&["-d"]), &log, &[])
    }
}

/// busybox udhcpc with its hook script.
pub(crate) struct Udhcpc {
    pub(crate) script: PathBuf,
    pub(crate) events: Events,
    pub(crate) interface: String,
}

impl Udhcpc {
    pub(crate) fn new(lab: &Lab) -> Self {
        let d = lab.dir.path();
        let me = Self {
            script: d.join("udhcpc-script"),
            events: Events(d.join("udhcpc.events")),
            interface: lab.client_if.clone(),
        };
        // udhcpc's names differ from dhclient's: $subnet is the mask, $mask the prefix length.
        write_script(
            &me.script,
            &format!(
                "#!/bin/sh\n\
                 printf 'reason=%s|ip=%s|mask=%s|routers=%s|dns=%s|domain=%s|lease=%s|serverid=%s\\n' \
                 \"$1\" \"$ip\" \"$subnet\" \"$router\" \"$dns\" \"$domain\" \"$lease\" \"$serverid\" >> '{events}'\n\
                 case \"$1\" in\n\
                 bound|renew) {ip} addr replace \"$ip/$mask\" dev \"$interface\" ;;\n\
                 deconfig) {ip} addr flush dev \"$interface\" scope global ;;\n\
                 esac\n\
                 exit 0\n",
                events = me.events.0.display(),
                ip = tool("ip").display(),
            ),
        );
        me
    }

    /// `udhcpc -f -i <if> -s <script> -t 5 -T 1 -A 1 -x hostname:netns-udhcpc <extra>`.
    pub(crate) fn command(&self, extra: &[&str]) -> Vec<OsString> {
        let mut v = Vec::from(argv![
            tool("udhcpc"),
            "-f",
            "-i",
            &self.interface,
            "-s",
            &self.script,
            "-t",
            "5",
            // udhcpc's own default: a loaded CI host can take over a second to answer.
            "-T",
            "3",
            "-A",
            "1",
            "-x",
            "hostname:netns-udhcpc",
        ]);
        v.extend(extra.iter().map(Into::into));
        v
    }

    pub(crate) fn start(&self, lab: &Lab, what: &str, extra: &[&str]) -> Proc {
        let log = lab.dir.path().join(format!("{what}.log"));
        lab.client.spawn(what, &self.command(extra), &log, &[])
    }
}

// ---------------------------------------------------------------------------------------------
// Packet capture

/// tcpdump on the server's veth, writing DHCP (both ports) to a pcap file.
struct Capture {
    tcpdump: Proc,
    pcap: PathBuf,
}

impl Capture {
    /// Starts tcpdump and waits until it listens.
    fn start(lab: &Lab) -> Self {
        let pcap = lab.dir.path().join("dhcp.pcap");
        let mut tcpdump = lab.server.spawn(
            "tcpdump",
            &argv![
                tool("tcpdump"),
                // Stay root rather than become the tcpdump user: the directory is root's.
                "-Z",
                "root",
                "-i",
                &lab.server_if,
                "-n",
                // Without it packets wait in the kernel's ring for a block to fill or time out.
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-w",
                &pcap,
                "udp port 67 or udp port 68",
            ],
            &lab.dir.path().join("tcpdump.log"),
            &[],
        );
        tcpdump.wait_log("listening on", Duration::from_secs(10));
        Self { tcpdump, pcap }
    }

    /// Stops the capture (after a moment for late answers) and decodes it.
    fn finish(mut self) -> Vec<Seen> {
        sleep(Duration::from_millis(500));
        self.tcpdump.stop("INT", Duration::from_secs(5));
        read_pcap(&self.pcap)
    }
}

/// (xid, type, count) of every reply type the hive sent more than once for one xid.
fn answered_twice(seen: &[Seen]) -> Vec<(u32, Option<MessageType>, usize)> {
    let mut replies: BTreeMap<(u32, u8), (Option<MessageType>, usize)> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.is_reply()) {
        let code = s.kind.map_or(0, u8::from);
        replies.entry((s.msg.xid(), code)).or_insert((s.kind, 0)).1 += 1;
    }
    replies
        .into_iter()
        .filter(|(_, (_, n))| *n > 1)
        .map(|((xid, _), (kind, n))| (xid, kind, n))
        .collect()
}

/// One DHCP message from the capture.
struct Seen {
    src: Ipv4Addr,
    /// Destination IP and Ethernet addresses.
    dst: Ipv4Addr,
    dst_mac: [u8; 6],
    sport: u16,
    dport: u16,
    kind: Option<MessageType>,
    msg: Message,
}

impl Seen {
    /// A BOOTREPLY, i.e. from the hive (perfdhcp, a relay, sends from port 67 too).
    fn is_reply(&self) -> bool {
        self.msg.opcode() == Opcode::BootReply
    }
}

fn summarize(packets: &[&Seen]) -> String {
    packets
        .iter()
        .map(|s| {
            format!(
                "  {}:{} -> {}:{} {:?} yiaddr {}\n",
                s.src,
                s.sport,
                s.dst,
                s.dport,
                s.kind,
                s.msg.yiaddr()
            )
        })
        .collect()
}

/// Reads a classic pcap file of Ethernet frames and decodes the DHCP in each UDP datagram.
/// Anything that is not IPv4/UDP is skipped (the capture filter lets only DHCP through); a
/// datagram on the DHCP ports that does not decode fails the test.
fn read_pcap(path: &Path) -> Vec<Seen> {
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(data.len() >= 24, "{}: no pcap header", path.display());
    let le = match data[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("{}: not a pcap file", path.display()),
    };
    let word = |at: usize| {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(word(20), 1, "link type Ethernet");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = word(at + 8) as usize;
        let end = (at + 16 + len).min(data.len());
        if let Some(s) = decode_frame(&data[at + 16..end]) {
            out.push(s);
        }
        at = end;
    }
    out
}

fn decode_frame(frame: &[u8]) -> Option<Seen> {
    // Ethernet II carrying IPv4.
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.len() < ihl + 8 || ip[9] != 17 {
        return None;
    }
    // The IP total length bounds the datagram: short frames carry Ethernet padding.
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let udp = &ip[ihl..total];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let dst_mac = <[u8; 6]>::try_from(&frame[..6]).expect("6 bytes");
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let msg = Message::decode(&mut Decoder::new(&udp[8..]))
        .unwrap_or_else(|e| panic!("undecodable DHCP from {src}:{sport}: {e}"));
    Some(Seen {
        src,
        dst,
        dst_mac,
        sport,
        dport,
        kind: msg.opts().msg_type(),
        msg,
    })
}

// ---------------------------------------------------------------------------------------------
// Guards and helpers

/// A network namespace; deleted on drop, after ending any process still inside it (all of them
/// were started by this test: the name is unique to it).
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    pub(crate) fn new(name: &str) -> Self {
        if Path::new("/run/netns").join(name).exists() {
            // Same pid and counter as a test run that was killed before its guards ran: the
            // namespace is that run's leftover.
            eprintln!("netns {name}: removing a stale namespace of an earlier, killed run");
            drop(Self {
                name: name.to_owned(),
            });
        }
        let out = run_bounded(
            Command::new(tool("ip")).args(["netns", "add", name]),
            COMMAND_LIMIT,
        );
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed: the netns tests need root (CAP_SYS_ADMIN, \
             CAP_NET_ADMIN): {}",
            text(&out)
        );
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`, which must succeed.
    pub(crate) fn ip(&self, args: &[&str]) {
        let out = run_bounded(
            Command::new(tool("ip"))
                .arg("-n")
                .arg(&self.name)
                .args(args),
            COMMAND_LIMIT,
        );
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            text(&out)
        );
    }

    fn command(&self, argv: &[OsString]) -> Command {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.name]).args(argv);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HIVE_") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// The MAC of interface `dev` inside, as the hive writes it (lower-case, colons).
    pub(crate) fn mac(&self, dev: &str) -> String {
        let out = self.run(
            &argv![tool("ip"), "-j", "link", "show", "dev", dev],
            COMMAND_LIMIT,
        );
        let links: serde_json::Value = serde_json::from_str(&text(&out)).expect("ip -j output");
        links[0]["address"]
            .as_str()
            .expect("link address")
            .to_lowercase()
    }

    /// Runs a command inside to completion (bounded by `limit`).
    pub(crate) fn run(&self, argv: &[OsString], limit: Duration) -> Output {
        run_bounded(&mut self.command(argv), limit)
    }

    /// Starts a long-running process inside. `ip netns exec` execs the program, so the child's
    /// pid is the program's own.
    pub(crate) fn spawn(
        &self,
        what: &str,
        argv: &[OsString],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = self.command(argv);
        cmd.envs(env.iter().copied());
        Proc::spawn(what, cmd, log)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: this runs during unwinding too.
        let ip = tool_path("ip").unwrap_or_else(|| PathBuf::from("ip"));
        let kill = tool_path("kill").unwrap_or_else(|| PathBuf::from("kill"));
        let pids = Command::new(&ip)
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            eprintln!("netns {}: killing leftover process {pid}", self.name);
            let _ = Command::new(&kill).args(["-KILL", pid]).status();
        }
        match Command::new(&ip)
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            other => eprintln!("netns {}: cannot delete: {other:?}", self.name),
        }
    }
}

/// A child process with its stdout and stderr in one log file; ended on drop (SIGTERM, then
/// SIGKILL), and its log tail printed if the test is failing.
pub(crate) struct Proc {
    pub(crate) what: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(what: &str, mut cmd: Command, log: &Path) -> Self {
        let file = fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let file2 = file.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null()).stdout(file).stderr(file2);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Self {
            what: what.to_owned(),
            child,
            log: log.to_path_buf(),
            status: None,
        }
    }

    /// The log so far (ANSI colour codes removed).
    pub(crate) fn log(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &fs::read(&self.log).unwrap_or_default(),
        ))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Fails the test if the process is gone.
    fn check_alive(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited ({status}):\n{}", self.what, self.log());
        }
    }

    /// Waits for `needle` in the log; fails if the process exits or `limit` passes first.
    pub(crate) fn wait_log(&mut self, needle: &str, limit: Duration) {
        let what = format!("{} to log {needle:?}", self.what);
        wait_until(&what, limit, || {
            if self.log().contains(needle) {
                return Some(());
            }
            self.check_alive();
            None
        });
    }

    pub(crate) fn signal(&self, sig: &str) {
        let out = run_bounded(
            Command::new(tool("kill")).args(["-s", sig, &self.child.id().to_string()]),
            COMMAND_LIMIT,
        );
        assert!(
            out.status.success(),
            "kill -s {sig} {}: {}",
            self.what,
            text(&out)
        );
    }

    /// Waits for the process to end by itself.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.what);
        wait_until(&what, limit, || self.exited())
    }

    /// Sends `sig` and waits for the process to end.
    pub(crate) fn stop(&mut self, sig: &str, limit: Duration) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        self.signal(sig);
        self.wait_exit(limit)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let kill = tool_path("kill").unwrap_or_else(|| PathBuf::from("kill"));
            let _ = Command::new(kill)
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.exited().is_none() && Instant::now() < deadline {
                sleep(POLL);
            }
            if self.exited().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!(
                "----- {} ({}), last lines:\n{tail}",
                self.what,
                self.log.display()
            );
        }
    }
}

/// Runs `cmd` to completion with captured output; kills it and fails after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Readers on threads so that a chatty command cannot block on a full pipe.
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Polls `f` until it gives a value; fails naming `what` after `limit`.
pub(crate) fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        sleep(POLL);
    }
}

/// stdout and stderr of a finished command, for messages.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tool_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The full path of a tool the tests need; fails naming the package if it is not installed.
pub(crate) fn tool(name: &str) -> PathBuf {
    tool_path(name).unwrap_or_else(|| {
        let package = match name {
            "ip" | "ss" => "iproute2",
            "dhclient" => "isc-dhcp-client",
            "dhcrelay" => "isc-dhcp-relay",
            "udhcpc" => "udhcpc (busybox)",
            "dhcpcd" => "dhcpcd-base",
            "unshare" | "mount" | "setpriv" => "util-linux",
            "perfdhcp" => "kea-admin",
            "redis-server" => "redis-server",
            "redis-cli" => "redis-tools",
            "kill" => "procps",
            other => other,
        };
        panic!("the netns tests need `{name}` (package {package}); it is not on PATH")
    })
}
