//! Ring 4, continued: what real DHCP clients do with the hive's options and reservations, in
//! network namespaces (the harness of [`super::netns`]: its `Lab`, namespaces and guards).
//!
//! - dhclient and udhcpc receive the classless static routes (121) and the domain search list
//!   (119) of the subnet, decode them to the values configured, and the routes, applied in the
//!   client's namespace, are the ones the kernel uses.
//! - A MAC reservation reaches its client and only it: of two clients on one bridge, the one
//!   with the reserved MAC gets the reserved address (outside the pool) and its hostname, the
//!   other a pool address; Redis holds both leases with the right MACs.
//!
//! The options and the reservation are added to the lab's config, which the nodes then reload
//! (SIGHUP, as an operator would). The client hook scripts log what they receive and apply
//! addresses and routes inside the client namespaces only; they write no file outside the
//! test's temporary directory (never /etc/resolv.conf: inside a namespace that is the host's).
//! Every namespace and link made here is removed by a guard, also when a test panics.

use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::netns::{
    COMMAND_LIMIT, Dhclient, Event, Events, HIVE_BIN, Lab, Netns, Proc, RENEWAL_TIME, SERVER_IP,
    SMALL_POOL, Udhcpc, renewal_in, text, tool, write_script,
};

/// A command line of mixed strings and paths, as an array of `OsString`.
macro_rules! argv {
    ($($arg:expr),* $(,)?) => { [$(OsString::from($arg)),*] };
}

/// The subnet's option 119, and what both clients make of it.
const SEARCH: [&str; 2] = ["eng.hive.test", "hive.test"];
/// The subnet's option 121. Per RFC 3442 a client that gets it ignores option 3, so the
/// default route is in it too.
const ROUTES: [&str; 2] = ["198.51.100.0/24 via 192.0.2.1", "0.0.0.0/0 via 192.0.2.1"];
/// The MAC reservation of the reservation test: an address outside the pool, and a hostname.
const RESERVED_MAC: &str = "02:00:00:00:aa:10";
const RESERVED_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const RESERVED_HOSTNAME: &str = "reserved-host";

// ---------------------------------------------------------------------------------------------
// Tests

/// dhclient requests 121 and 119 (as Debian's stock dhclient.conf does), decodes them and,
/// through a hook script that applies 121 the way Debian's rfc3442-classless-routes hook does,
/// installs both routes in its namespace.
#[test]
fn dhclient_applies_classless_static_routes_and_domain_search() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    configure_options(&mut lab);
    let mac = lab.client_mac();

    // The lab's dhclient, with a config that requests 119 and 121 and a hook that logs them.
    let dh = Dhclient::new(&lab);
    fs::write(
        &dh.conf,
        "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\n\
         send host-name \"netns-options\";\n\
         request subnet-mask, routers, domain-name, domain-name-servers, domain-search,\n\
         \trfc3442-classless-static-routes;\n\
         initial-interval 1;\n",
    )
    .expect("write dhclient.conf");
    write_script(&dh.script, &dhclient_script(&dh.events));

    let mut client = dh.start(&lab, "dhclient-options");
    let (_, bound) = dh
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(20));
    let ip = bound_ip(&bound);
    // dhclient prints an array of unsigned integer 8 as its decimal bytes: RFC 3442's
    // (width, significant octets of the destination, router) per route.
    assert_eq!(
        bound["routes"], "24 198 51 100 192 0 2 1 0 192 0 2 1",
        "option 121 as dhclient decoded it: {bound:?}"
    );
    // dhclient writes each name of a name list fully qualified, ending in the root's dot (ISC
    // common/options.c, pretty_print_option, format 'D'): "eng.hive.test. hive.test.".
    let fqdns: Vec<String> = SEARCH.iter().map(|name| format!("{name}.")).collect();
    assert_eq!(
        bound["search"],
        fqdns.join(" "),
        "option 119 as dhclient decoded it: {bound:?}"
    );
    // The hook logs the result of each `ip route replace`, after it ran.
    wait_routes_applied(&dh.events, &mut client, "ROUTES");
    assert_routes(&lab.client, &lab.client_if);

    let lease = lab.lease(ip).expect("a lease in Redis after the ACK");
    assert_eq!(
        (lease.mac.as_str(), lease.state.as_str()),
        (mac.as_str(), "bound"),
        "{lease:?}"
    );
    lab.assert_alive();
}

/// RFC 2131 section 3.5 with a real client: dhclient asks for a 300 s lease (`send
/// dhcp-lease-time`). The lab's subnet gives 60 s, but with `minLeaseTime` 30 and
/// `maxLeaseTime` 600 the client gets what it asked for: option 51 says 300, T1 is scaled with
/// the lease (10 s of 60 -> 50 s, which dhclient schedules its renewal by), and Redis keeps the
/// lease 300 s.
#[test]
fn dhclient_gets_the_lease_time_it_asks_for_within_the_bounds() {
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    reconfigure(&mut lab, |subnet| {
        subnet["minLeaseTime"] = serde_json::json!(30);
        subnet["maxLeaseTime"] = serde_json::json!(600);
    });
    let dh = Dhclient::new(&lab);
    let conf = fs::read_to_string(&dh.conf).expect("dhclient.conf");
    fs::write(&dh.conf, format!("{conf}send dhcp-lease-time 300;\n")).expect("dhclient.conf");

    let mut client = dh.start(&lab, "dhclient-lease-time");
    let (_, bound) = dh
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(20));
    assert_eq!(
        bound["lease"], "300",
        "option 51 as dhclient got it: {bound:?}"
    );
    let ip = bound_ip(&bound);
    let lease = lab.lease(ip).expect("a lease in Redis after the ACK");
    assert!(
        (298_000..=300_000).contains(&lease.pttl_ms),
        "Redis keeps the lease asked for: {lease:?}"
    );
    // dhclient schedules its renewal between 3/4 T1 and T1 (see the dhclient test): T1 is
    // 50 s, not the subnet's 10 s.
    client.wait_log("renewal in ", Duration::from_secs(5));
    let scheduled = renewal_in(&client.log()).expect("dhclient logs its renewal time");
    let t1 = u64::from(RENEWAL_TIME) * 300 / 60;
    assert!(
        ((3 * t1).div_ceil(4) - 1..=t1 + 1).contains(&scheduled),
        "renewal in {scheduled} s does not follow the scaled T1 = {t1} s"
    );
    lab.assert_alive();
}

/// udhcpc asked for them with `-O staticroutes -O search` hands its script the decoded 121 and
/// 119; the script applies the routes in the namespace.
#[test]
fn udhcpc_receives_and_applies_static_routes_and_search() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    configure_options(&mut lab);
    let mac = lab.client_mac();

    let ud = Udhcpc::new(&lab);
    write_script(&ud.script, &udhcpc_script(&ud.events));
    let mut client = ud.start(
        &lab,
        "udhcpc-options",
        &["-O", "staticroutes", "-O", "search"],
    );
    let (_, bound) = ud
        .events
        .wait(&mut client, &["bound"], 0, Duration::from_secs(20));
    let ip = bound_ip(&bound);
    assert_eq!(
        bound["routes"], "198.51.100.0/24 192.0.2.1 0.0.0.0/0 192.0.2.1",
        "option 121 as udhcpc decoded it: {bound:?}"
    );
    assert_eq!(
        bound["search"],
        SEARCH.join(" "),
        "option 119 as udhcpc decoded it: {bound:?}"
    );
    wait_routes_applied(&ud.events, &mut client, "routes");
    assert_routes(&lab.client, &lab.client_if);

    let lease = lab.lease(ip).expect("a lease in Redis after the ACK");
    assert_eq!(
        (lease.mac.as_str(), lease.state.as_str()),
        (mac.as_str(), "bound"),
        "{lease:?}"
    );
    lab.assert_alive();
}

/// Two udhcpc on one bridge at the same time: the one whose MAC is reserved gets the reserved
/// address (outside the pool) and the reservation's hostname; the other gets a pool address and
/// no hostname. Redis holds exactly these two leases, each with its client's MAC.
#[test]
fn mac_reservation_reaches_the_right_client() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    configure_reservation(&mut lab);
    let bridge = Bridge::new(&lab);
    let reserved = bridge.client(&lab, "a", Some(RESERVED_MAC));
    let other = bridge.client(&lab, "b", None);
    let other_mac = other.mac();
    assert_ne!(other_mac, RESERVED_MAC, "the other client's MAC is its own");

    // Both at once, so that the hive sees their exchanges interleaved.
    let mut procs: Vec<Proc> = [&reserved, &other].iter().map(|c| c.start(&lab)).collect();
    let mut bound: Vec<Event> = Vec::new();
    for (c, p) in [&reserved, &other].iter().zip(&mut procs) {
        let (_, ev) = c
            .udhcpc
            .events
            .wait(p, &["bound"], 0, Duration::from_secs(20));
        bound.push(ev);
    }

    let reserved_ip = bound_ip(&bound[0]);
    assert_eq!(
        reserved_ip, RESERVED_IP,
        "the reserved MAC gets its address: {:?}",
        bound[0]
    );
    assert_eq!(
        bound[0]["hostname"], RESERVED_HOSTNAME,
        "the reservation's hostname (option 12) reaches its client: {:?}",
        bound[0]
    );
    let other_ip = bound_ip(&bound[1]);
    assert!(
        SMALL_POOL.range().contains(&other_ip),
        "the other client gets a pool address: {:?}",
        bound[1]
    );
    assert_eq!(
        bound[1]["hostname"], "",
        "the reservation's hostname goes to no one else: {:?}",
        bound[1]
    );
    // The scripts applied the addresses in the clients' namespaces.
    for (c, ip) in [(&reserved, reserved_ip), (&other, other_ip)] {
        assert_eq!(c.addresses(), [format!("{ip}/24")], "{}", c.ns.name);
    }

    let mut leases = lab.all_leases();
    leases.sort();
    assert_eq!(
        leases,
        [
            (RESERVED_IP, RESERVED_MAC.to_owned(), "bound".to_owned()),
            (other_ip, other_mac, "bound".to_owned()),
        ],
        "Redis: one bound lease per client, with its MAC"
    );
    lab.assert_alive();
}

// ---------------------------------------------------------------------------------------------
// Config

/// Adds 119 and 121 to the lab's subnet and has the nodes reload.
fn configure_options(lab: &mut Lab) {
    reconfigure(lab, |subnet| {
        subnet["options"] = serde_json::json!([
            { "name": "domain-search", "value": SEARCH },
            { "name": "classless-static-routes", "value": ROUTES },
        ]);
    });
}

/// Adds the MAC reservation (with a hostname) to the lab's subnet and has the nodes reload.
fn configure_reservation(lab: &mut Lab) {
    reconfigure(lab, |subnet| {
        subnet["reservations"] = serde_json::json!([{
            "mac": RESERVED_MAC,
            "ip": RESERVED_IP.to_string(),
            "hostname": RESERVED_HOSTNAME,
        }]);
    });
}

/// Edits the first subnet of the config the lab's nodes run with, checks the new file with
/// `check-config`, and reloads every node (SIGHUP), waiting until each has it in force.
fn reconfigure(lab: &mut Lab, edit: impl FnOnce(&mut serde_json::Value)) {
    reconfigure_config(lab, |config| edit(&mut config["subnets"][0]));
}

/// As [`reconfigure`], editing the whole config.
pub(crate) fn reconfigure_config(lab: &mut Lab, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = lab.dir.path().join("config.json");
    let old = fs::read_to_string(&path).expect("the lab's config");
    let mut config: serde_json::Value = serde_json::from_str(&old).expect("the lab's config");
    edit(&mut config);
    fs::write(&path, config.to_string()).expect("write config");
    let check = lab
        .server
        .run(&argv![HIVE_BIN, "check-config", &path], COMMAND_LIMIT);
    assert!(
        check.status.success(),
        "check-config refuses the test's config: {}",
        text(&check)
    );
    for node in &lab.nodes {
        node.signal("HUP");
    }
    for node in &mut lab.nodes {
        node.wait_log("config reloaded", Duration::from_secs(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Client scripts and checks

/// dhclient's hook: logs the address, option 121 (`$new_rfc3442_classless_static_routes`, the
/// bytes of RFC 3442) and option 119; on BOUND/RENEW/REBIND/REBOOT applies the address and then
/// the routes the way Debian's dhclient-exit-hooks.d/rfc3442-classless-routes does (option 3
/// ignored when 121 is present, as Debian's dhclient-script does), and logs the outcome as a
/// ROUTES event.
fn dhclient_script(events: &Events) -> String {
    format!(
        "#!/bin/sh\n\
         printf 'reason=%s|ip=%s|mask=%s|routes=%s|search=%s\\n' \"$reason\" \"$new_ip_address\" \
         \"$new_subnet_mask\" \"$new_rfc3442_classless_static_routes\" \"$new_domain_search\" \
         >> '{events}'\n\
         case \"$reason\" in\n\
         BOUND|RENEW|REBIND|REBOOT) ;;\n\
         *) exit 0 ;;\n\
         esac\n\
         {ip} addr replace \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" || exit 1\n\
         failed=''\n\
         set -- $new_rfc3442_classless_static_routes\n\
         while [ $# -gt 0 ]; do\n\
         \twidth=$1; shift\n\
         \tsignificant=$(( (width + 7) / 8 ))\n\
         \tnet=''; i=0\n\
         \twhile [ $i -lt 4 ]; do\n\
         \t\tif [ $i -lt $significant ]; then octet=$1; shift; else octet=0; fi\n\
         \t\tnet=\"$net${{net:+.}}$octet\"; i=$((i + 1))\n\
         \tdone\n\
         \tif [ $# -lt 4 ]; then failed=\"$failed truncated\"; break; fi\n\
         \tgateway=\"$1.$2.$3.$4\"; shift 4\n\
         \tvia=''; [ \"$gateway\" = 0.0.0.0 ] || via=\"via $gateway\"\n\
         \t{ip} -4 route replace \"$net/$width\" $via dev \"$interface\" || failed=\"$failed $net/$width\"\n\
         done\n\
         printf 'reason=ROUTES|failed=%s\\n' \"$failed\" >> '{events}'\n\
         exit 0\n",
        events = events.0.display(),
        ip = tool("ip").display(),
    )
}

/// udhcpc's hook: logs the address, `$staticroutes` (121), `$search` (119) and `$hostname`
/// (12); on bound/renew applies the address and the routes (pairs of destination and router,
/// as busybox's example script does; `$router` ignored when 121 is present) and logs the
/// outcome as a `routes` event. udhcpc's `$subnet` is the mask, `$mask` the prefix length.
fn udhcpc_script(events: &Events) -> String {
    format!(
        "#!/bin/sh\n\
         printf 'reason=%s|ip=%s|mask=%s|routes=%s|search=%s|hostname=%s\\n' \"$1\" \"$ip\" \
         \"$subnet\" \"$staticroutes\" \"$search\" \"$hostname\" >> '{events}'\n\
         case \"$1\" in\n\
         bound|renew) ;;\n\
         deconfig) {ip} addr flush dev \"$interface\" scope global; exit 0 ;;\n\
         *) exit 0 ;;\n\
         esac\n\
         {ip} addr replace \"$ip/$mask\" dev \"$interface\" || exit 1\n\
         failed=''\n\
         set -- $staticroutes\n\
         while [ $# -ge 2 ]; do\n\
         \t{ip} -4 route replace \"$1\" via \"$2\" dev \"$interface\" || failed=\"$failed $1\"\n\
         \tshift 2\n\
         done\n\
         [ $# -eq 0 ] || failed=\"$failed odd:$*\"\n\
         printf 'reason=routes|failed=%s\\n' \"$failed\" >> '{events}'\n\
         exit 0\n",
        events = events.0.display(),
        ip = tool("ip").display(),
    )
}

/// The address of a bound event, which must be in the subnet with its /24 mask.
fn bound_ip(ev: &Event) -> Ipv4Addr {
    assert_eq!(ev["mask"], "255.255.255.0", "{ev:?}");
    ev["ip"]
        .parse()
        .unwrap_or_else(|_| panic!("no address in {ev:?}"))
}

/// Waits for the hook's route event (`reason`) and checks that every route went in.
fn wait_routes_applied(events: &Events, client: &mut Proc, reason: &str) {
    let (_, ev) = events.wait(client, &[reason], 0, Duration::from_secs(5));
    assert_eq!(ev["failed"], "", "routes the hook could not apply: {ev:?}");
}

/// The client namespace routes as option 121 says: its two routes via 192.0.2.1 on the client's
/// link, and the kernel picks them for addresses they cover.
fn assert_routes(ns: &Netns, dev: &str) {
    let out = ns.run(
        &argv![tool("ip"), "-j", "-4", "route", "show"],
        COMMAND_LIMIT,
    );
    assert!(out.status.success(), "ip route: {}", text(&out));
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j route");
    let via = |dst: &str| {
        routes
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["dst"] == dst)
            .map(|r| (r["gateway"].clone(), r["dev"].clone()))
    };
    let expected = Some((
        serde_json::json!(SERVER_IP.to_string()),
        serde_json::json!(dev),
    ));
    for dst in ["198.51.100.0/24", "default"] {
        assert_eq!(via(dst), expected, "route {dst} in {}: {routes}", ns.name);
    }
    // The kernel's choice for an address of each route.
    for target in ["198.51.100.7", "203.0.113.9"] {
        let out = ns.run(
            &argv![tool("ip"), "-j", "route", "get", target],
            COMMAND_LIMIT,
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ip route get {target}: {e}: {}", text(&out)));
        assert_eq!(
            (got[0]["gateway"].clone(), got[0]["dev"].clone()),
            expected.clone().expect("expected route"),
            "ip route get {target}: {got}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Two clients on a bridge

/// A bridge in the lab's client namespace with the lab's client veth on it: the clients'
/// veths join it, so they share the server's link. Removed with that namespace.
struct Bridge {
    name: String,
    id: String,
}

impl Bridge {
    fn new(lab: &Lab) -> Self {
        // The lab's link names are "hw-<id>"; ours carry the same id, so they are unique and
        // fit IFNAMSIZ like the lab's.
        let id = lab
            .client_if
            .strip_prefix("hw-")
            .expect("the lab's client link is hw-<id>")
            .to_owned();
        let name = format!("hb-{id}");
        lab.client
            .ip(&["link", "add", &name, "type", "bridge", "stp_state", "0"]);
        lab.client
            .ip(&["link", "set", &lab.client_if, "master", &name]);
        lab.client.ip(&["link", "set", &name, "up"]);
        Self { name, id }
    }

    /// A namespace `hc-<id>-<tag>` with a veth `z<tag>-<id>` whose peer `y<tag>-<id>` is on the
    /// bridge; the veth gets `mac` if given. The namespace's guard deletes both ends.
    fn client(&self, lab: &Lab, tag: &str, mac: Option<&str>) -> BridgeClient {
        let ns = Netns::new(&format!("hc-{}-{tag}", self.id));
        let (port, dev) = (format!("y{tag}-{}", self.id), format!("z{tag}-{}", self.id));
        lab.client.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", &dev, "netns", &ns.name,
        ]);
        lab.client.ip(&["link", "set", &port, "master", &self.name]);
        lab.client.ip(&["link", "set", &port, "up"]);
        if let Some(mac) = mac {
            ns.ip(&["link", "set", "dev", &dev, "address", mac]);
        }
        ns.ip(&["link", "set", &dev, "up"]);
        let d = lab.dir.path();
        let udhcpc = Udhcpc {
            script: d.join(format!("udhcpc-{tag}-script")),
            events: Events(d.join(format!("udhcpc-{tag}.events"))),
            interface: dev.clone(),
        };
        write_script(&udhcpc.script, &udhcpc_script(&udhcpc.events));
        BridgeClient {
            ns,
            dev,
            tag: tag.to_owned(),
            udhcpc,
        }
    }
}

/// One client namespace on the bridge, with its udhcpc.
struct BridgeClient {
    ns: Netns,
    dev: String,
    tag: String,
    udhcpc: Udhcpc,
}

impl BridgeClient {
    fn start(&self, lab: &Lab) -> Proc {
        let what = format!("udhcpc-{}", self.tag);
        let log = lab.dir.path().join(format!("{what}.log"));
        self.ns.spawn(&what, &self.udhcpc.command(&[]), &log, &[])
    }

    /// The veth's MAC, lower-case with colons (as the hive writes it).
    fn mac(&self) -> String {
        let out = self.ns.run(
            &argv![tool("ip"), "-j", "link", "show", "dev", &self.dev],
            COMMAND_LIMIT,
        );
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
        links[0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address: {}", text(&out)))
            .to_lowercase()
    }

    /// The veth's global IPv4 addresses, as `a.b.c.d/len`.
    fn addresses(&self) -> Vec<String> {
        let out = self.ns.run(
            &argv![tool("ip"), "-j", "-4", "addr", "show", "dev", &self.dev],
            COMMAND_LIMIT,
        );
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j addr");
        links[0]["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
            .collect()
    }
}
