//! Ring 4, continued: dhcpcd (Roy Marples', 9.x), the third real client, against the hive in
//! the lab of [`super::netns`] (its namespaces, Redis, three nodes and guards).
//!
//! dhcpcd keeps its state in paths fixed when it is built: its pid file and control sockets in
//! /run/dhcpcd, its leases, DUID and secret in /var/lib/dhcpcd. So that a test neither reads nor
//! leaves anything there, and so that tests in parallel do not share a DUID or a control socket,
//! each dhcpcd command runs in a mount namespace of its own (`unshare --mount`, propagation
//! private: nothing mounted there reaches the host) where two directories of the test's
//! temporary directory are bound over /run and /var/lib/dhcpcd. Every dhcpcd command of a test
//! (the daemon, `-k`) binds the same two, so they find each other's pid file and socket.
//!
//! dhcpcd runs in the lab's client namespace on the lab's veth only: the interface is named on
//! the command line (a single-interface instance) and is the only one `allowinterfaces` lets
//! through. Its hook is the test's own script (`script` in its config), so none of Debian's hooks
//! run: they would write /etc/resolv.conf and the hostname, which are the host's inside a network
//! namespace. dhcpcd applies the address and routes to the veth itself, inside the namespace.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::netns::{
    Events, Lab, Proc, RENEWAL_TIME, SERVER_IP, SMALL_POOL, SUBNET, assert_bound,
    assert_client_config, assert_declined_then_bound, assert_renewed, assert_ttl_fresh, text, tool,
    wait_until, write_script,
};
use super::netns_options::reconfigure_config;

/// A command line of mixed strings and paths, as an array of `OsString`.
macro_rules! argv {
    ($($arg:expr),* $(,)?) => { [$(OsString::from($arg)),*] };
}

/// dhcpcd with Debian's stock options: DORA with every configured option and a client
/// identifier made of its DUID (RFC 4361), the lease in Redis, a renewal at T1 that refreshes
/// the TTL, a RELEASE (`dhcpcd -k`) that removes the lease, the same address again by DISCOVER
/// after the release, and by INIT-REBOOT from its saved lease after a stop without release.
#[test]
fn dhcpcd_binds_renews_releases_and_gets_its_address_back() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    let mac = lab.client_mac();
    let dc = Dhcpcd::new(&lab, "hostname netns-dhcpcd\n");

    let mut client = dc.start(&lab, "dhcpcd");
    let (at, bound) = dc
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(20));
    let bound_seen = Instant::now();
    let ip = assert_client_config(&bound, SMALL_POOL);
    assert_eq!(bound["serverid"], SERVER_IP.to_string(), "{bound:?}");
    // dhcpcd takes T1 from option 58 as it is (it logs "renew in 10 seconds").
    assert_eq!(bound["t1"], RENEWAL_TIME.to_string(), "{bound:?}");
    let first = assert_bound(&lab, ip, &mac, "netns-dhcpcd");
    let record = lab.record(SUBNET, ip);
    assert_eq!(
        record.get("client_id"),
        Some(&dc.client_id(&client)),
        "the lease is keyed by dhcpcd's RFC 4361 identifier: {record:?}"
    );

    // RENEWING is a unicast to the server identifier from the bound address; unanswered, dhcpcd
    // would only broadcast at T2 (52 s), after this wait.
    let limit = Duration::from_secs(u64::from(RENEWAL_TIME) + 10);
    let (at, renew) = dc.events.wait(&mut client, &["RENEW"], at + 1, limit);
    // Timed from when the BOUND hook was seen, which a loaded host may see late: a margin of
    // 3 s still tells a renewal at T1 from an early one.
    let waited = bound_seen.elapsed();
    assert!(
        waited >= Duration::from_secs(u64::from(RENEWAL_TIME) - 3),
        "renewed after {waited:?}, before T1 = {RENEWAL_TIME} s"
    );
    assert_renewed(&lab, &renew, ip, &mac, &first);

    // `dhcpcd -k`: the running instance sends a RELEASE, drops its lease file and exits.
    let out = lab
        .client
        .run(&dc.command(&["-k"]), Duration::from_secs(20));
    assert!(out.status.success(), "dhcpcd -k: {}", text(&out));
    client.wait_exit(Duration::from_secs(10));
    assert!(
        client.log().contains(&format!("releasing lease of {ip}")),
        "{}",
        client.log()
    );
    wait_until(
        "the lease key to go after RELEASE",
        Duration::from_secs(5),
        || lab.lease(ip).is_none().then_some(()),
    );

    // No lease file: a DISCOVER, and the hive remembers the client (sticky).
    let mut again = dc.start(&lab, "dhcpcd-again");
    let (at, rebound) = dc
        .events
        .wait(&mut again, &["BOUND"], at + 1, Duration::from_secs(20));
    assert_eq!(
        assert_client_config(&rebound, SMALL_POOL),
        ip,
        "same address after release"
    );
    assert!(
        again.log().contains("soliciting a DHCP lease"),
        "{}",
        again.log()
    );
    // Stopped without a release (dhcpcd.conf has no `release`): the lease stays bound, and its
    // file stays for the next start.
    again.stop("TERM", Duration::from_secs(10));
    let kept = lab
        .lease(ip)
        .expect("the lease after a stop without release");
    assert_eq!(kept.state, "bound", "{kept:?}");
    // expires_at counts whole seconds: the reboot's ACK must come in a later second than the
    // last one for the check below to see it move.
    std::thread::sleep(Duration::from_millis(1100));

    // INIT-REBOOT (RFC 2131 4.3.2): dhcpcd asks for its saved address without a server
    // identifier ("rebinding lease of"), and the hive confirms it.
    let mut reboot = dc.start(&lab, "dhcpcd-reboot");
    let (_, rebooted) = dc
        .events
        .wait(&mut reboot, &["REBOOT"], at + 1, Duration::from_secs(20));
    assert_eq!(
        assert_client_config(&rebooted, SMALL_POOL),
        ip,
        "same address after a reboot"
    );
    let log = reboot.log();
    assert!(
        log.contains(&format!("rebinding lease of {ip}")) && !log.contains("soliciting"),
        "INIT-REBOOT, no DISCOVER:\n{log}"
    );
    let back = lab.lease(ip).expect("the lease after the reboot");
    assert_eq!(
        (back.mac.as_str(), back.state.as_str()),
        (mac.as_str(), "bound")
    );
    assert_ttl_fresh(&back);
    assert!(back.expires_at > kept.expires_at, "{kept:?} -> {back:?}");

    // No NAK in any run, and nothing of dhcpcd's reached the host's own directories.
    for p in [&client, &again, &reboot] {
        assert!(!p.log().contains("NAK"), "{}:\n{}", p.what, p.log());
    }
    dc.assert_nothing_on_host();
    lab.assert_alive();
}

/// Rapid Commit (RFC 4039) with a real client: dhcpcd asks for it in its DISCOVER (Debian's
/// stock `option rapid_commit`); where the subnet has `rapidCommit` on, the hive answers with an
/// ACK carrying option 80 (dhcpcd takes an ACK to a DISCOVER only with it), and dhcpcd binds in
/// two messages, with no OFFER and no REQUEST. The lease is bound in Redis at once. This client
/// has a fully qualified name, sent as a client FQDN option (81) alone: it names the lease.
#[test]
fn dhcpcd_binds_in_two_messages_with_rapid_commit() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    reconfigure_config(&mut lab, |config| {
        config["subnets"][0]["rapidCommit"] = serde_json::json!(true);
    });
    let mac = lab.client_mac();
    let dc = Dhcpcd::new(&lab, "hostname pc1.example.test\nfqdn both\n");

    let mut client = dc.start(&lab, "dhcpcd-rapid");
    let (_, bound) = dc
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(20));
    let ip = assert_client_config(&bound, SMALL_POOL);
    let log = client.log();
    assert!(
        log.contains(&format!("acknowledged {ip} from {SERVER_IP}"))
            && !log.contains("offered")
            && !log.contains("sending REQUEST"),
        "DISCOVER answered by an ACK, no OFFER and no REQUEST:\n{log}"
    );
    let lease = lab.lease(ip).expect("a lease in Redis after the rapid ACK");
    assert_eq!(
        (lease.mac.as_str(), lease.state.as_str()),
        (mac.as_str(), "bound"),
        "{lease:?}"
    );
    assert_ttl_fresh(&lease);
    assert_eq!(
        lab.record(SUBNET, ip).get("client_id"),
        Some(&dc.client_id(&client))
    );
    // With `fqdn`, dhcpcd sends its name in option 81 (RFC 4702, wire format) and no option
    // 12: the lease's hostname is the FQDN's.
    assert_eq!(lease.hostname, "pc1.example.test", "{lease:?}");
    lab.assert_alive();
}

/// DHCPDECLINE from a real client (RFC 2131 3.1.5, RFC 5227): another host on the client's
/// link already holds the first address of the pool, which the hive (ping check off, its
/// default) offers. dhcpcd probes the address with ARP before it uses it, sees the other host
/// answer, declines the address and starts again with a DISCOVER; the hive puts the address on
/// probation and gives the client another one, which it binds.
#[test]
fn dhcpcd_declines_an_address_in_use_and_binds_another() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    let mac = lab.client_mac();
    let squatted = *SMALL_POOL.range().start();
    let squatter = lab.squatter(squatted);

    // dhcpcd as in the other tests, but with its ARP probe (RFC 5227) on.
    let dc = Dhcpcd::configured(&lab, "hostname netns-decline\n", "");
    let mut client = dc.start(&lab, "dhcpcd-decline");
    let (_, bound) = dc
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(40));
    let log = client.log();
    assert!(
        log.contains(&format!("offered {squatted} from {SERVER_IP}"))
            && log.contains(&format!("DAD detected {squatted}")),
        "the hive offered the address in use and dhcpcd found it taken:\n{log}"
    );
    let ip = assert_client_config(&bound, SMALL_POOL);
    assert_declined_then_bound(&lab, squatted, ip, &mac, "netns-decline");
    drop(squatter);
    dc.assert_nothing_on_host();
    lab.assert_alive();
}

/// dhcpcd with its own config, hook script and state directories (see the module's doc).
struct Dhcpcd {
    conf: PathBuf,
    script: PathBuf,
    events: Events,
    /// Bound over /run: dhcpcd makes its /run/dhcpcd (pid file, control sockets) in it.
    run: PathBuf,
    /// Bound over /var/lib/dhcpcd: leases, DUID, secret.
    db: PathBuf,
    interface: String,
}

impl Dhcpcd {
    /// dhcpcd without its ARP probe of the offered address (RFC 5227, 5 s before the BOUND
    /// hook; `noarp`): nothing else answers on the veth, and the hook then runs right after
    /// the ACK, so the TTL checks hold as for the other clients.
    fn new(lab: &Lab, name: &str) -> Self {
        Self::configured(lab, name, "noarp\n")
    }

    /// dhcpcd with `name` (its name options) and `extra` lines in its config.
    fn configured(lab: &Lab, name: &str, extra: &str) -> Self {
        let d = lab.dir.path();
        let me = Self {
            conf: d.join("dhcpcd.conf"),
            script: d.join("dhcpcd-script"),
            events: Events(d.join("dhcpcd.events")),
            run: d.join("dhcpcd-run"),
            db: d.join("dhcpcd-db"),
            interface: lab.client_if.clone(),
        };
        for dir in [&me.run, &me.db] {
            fs::create_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        // The options of Debian's stock /etc/dhcpcd.conf that concern DHCPv4 (`duid`: the
        // client identifier is IAID + DUID, RFC 4361; Rapid Commit asked for, RFC 4039), less
        // `persistent`, and the lab's own: the veth only, IPv4 only, no IPv4LL.
        fs::write(
            &me.conf,
            format!(
                "allowinterfaces {interface}\n\
                 script {script}\n\
                 ipv4only\n\
                 noipv4ll\n\
                 {extra}\
                 {name}\
                 duid\n\
                 vendorclassid\n\
                 option domain_name_servers, domain_name, domain_search\n\
                 option classless_static_routes\n\
                 option interface_mtu\n\
                 option host_name\n\
                 option rapid_commit\n\
                 require dhcp_server_identifier\n",
                interface = me.interface,
                script = me.script.display(),
                name = name,
                extra = extra,
            ),
        )
        .expect("write dhcpcd.conf");
        // dhcpcd sets the address and routes itself: the hook only records what it was given.
        write_script(
            &me.script,
            &format!(
                "#!/bin/sh\n\
                 printf 'reason=%s|ip=%s|mask=%s|routers=%s|dns=%s|domain=%s|lease=%s|t1=%s|serverid=%s\\n' \
                 \"$reason\" \"$new_ip_address\" \"$new_subnet_mask\" \"$new_routers\" \
                 \"$new_domain_name_servers\" \"$new_domain_name\" \"$new_dhcp_lease_time\" \
                 \"$new_dhcp_renewal_time\" \"$new_dhcp_server_identifier\" >> '{events}'\n\
                 exit 0\n",
                events = me.events.0.display(),
            ),
        );
        me
    }

    /// `dhcpcd <extra> -f <conf> -4 <interface>`, in a mount namespace of its own where the
    /// test's directories are bound over /run and /var/lib/dhcpcd (paths passed as arguments
    /// to `sh`, never spliced into its script).
    fn command(&self, extra: &[&str]) -> Vec<OsString> {
        let mut v = Vec::from(argv![
            tool("unshare"),
            "--mount",
            "--propagation",
            "private",
            "--",
            tool("sh"),
            "-c",
            format!(
                "{mount} --bind \"$1\" /run && {mount} --bind \"$2\" /var/lib/dhcpcd && \
                 shift 2 && exec \"$@\"",
                mount = tool("mount").display()
            ),
            "sh",
            &self.run,
            &self.db,
            tool("dhcpcd"),
        ]);
        v.extend(extra.iter().map(Into::into));
        v.extend(argv!["-f", &self.conf, "-4", &self.interface]);
        v
    }

    /// dhcpcd in the foreground (`-B`), logging debug lines to its stderr (`-d`), so that it
    /// stays our child and its guard ends it.
    fn start(&self, lab: &Lab, what: &str) -> Proc {
        let log = lab.dir.path().join(format!("{what}.log"));
        lab.client
            .spawn(what, &self.command(&["-B", "-d"]), &log, &[])
    }

    /// The hive's name for dhcpcd's client identifier: option 61 is type 255, the IAID and
    /// the DUID (RFC 4361 6.1). The DUID is the one dhcpcd stored in the test's directory, the
    /// IAID the one it logged.
    fn client_id(&self, client: &Proc) -> String {
        let duid = fs::read_to_string(self.db.join("duid"))
            .unwrap_or_else(|e| panic!("dhcpcd's DUID in {}: {e}", self.db.display()));
        let log = client.log();
        let iaid = log
            .lines()
            .find_map(|l| l.split_once(": IAID ").map(|(_, iaid)| iaid.trim()))
            .unwrap_or_else(|| panic!("dhcpcd logs its IAID:\n{log}"));
        let hex: String = format!("ff:{iaid}:{}", duid.trim())
            .split(':')
            .collect::<String>()
            .to_lowercase();
        format!("id-{hex}")
    }

    /// dhcpcd's files for the lab's interface are in the test's directories, and none is in
    /// the host's (the names hold the test's unique interface name).
    fn assert_nothing_on_host(&self) {
        let lease = format!("{}.lease", self.interface);
        assert!(
            self.db.join(&lease).is_file(),
            "dhcpcd kept its lease in {}",
            self.db.display()
        );
        for host in [
            Path::new("/var/lib/dhcpcd").join(&lease),
            Path::new("/run/dhcpcd").join(format!("{}-4.pid", self.interface)),
            Path::new("/run/dhcpcd").join(format!("{}-4.sock", self.interface)),
        ] {
            assert!(!host.exists(), "{} on the host", host.display());
        }
    }
}
