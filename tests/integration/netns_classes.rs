//! Ring 4, continued: client classes and the ICMP check with real DHCP clients, in network
//! namespaces (the harness of [`super::netns`]).
//!
//! - A class matched on the vendor class (option 60): udhcpc (`-V`) and dhclient
//!   (`send vendor-class-identifier`) in it get an address of the class's pool and the class's
//!   domain name; the same host without the vendor class gets the open pool and the subnet's.
//! - With `pingCheck` on, an address that already answers ICMP echo in the client's namespace
//!   (a host the hive does not know) is not offered: udhcpc gets another one, and Redis holds
//!   the squatted address on probation.
//!
//! Every namespace and link made here is removed by a guard, also when a test panics.

use std::fs;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::netns::{Dhclient, Lab, SMALL_POOL, Udhcpc};
use super::netns_options::reconfigure_config;

const CLASS_FIRST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
const CLASS_LAST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 209);
const CLASS_DOMAIN: &str = "phones.hive.test";
const VENDOR_CLASS: &str = "hive-phone";

fn in_class_pool(ip: Ipv4Addr) -> bool {
    (CLASS_FIRST..=CLASS_LAST).contains(&ip)
}

fn ip_of(ev: &super::netns::Event) -> Ipv4Addr {
    ev["ip"]
        .parse()
        .unwrap_or_else(|_| panic!("no address in {ev:?}"))
}

#[test]
fn clients_in_a_class_get_its_pool_and_options() {
    // Real clients have timeouts of a few seconds: not beside the heaviest tests.
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    reconfigure_config(&mut lab, |config| {
        config["clientClasses"] = serde_json::json!([{
            "name": "phone",
            "match": format!("vendor-class == \"{VENDOR_CLASS}\""),
            "options": [{ "name": "domain-name", "value": CLASS_DOMAIN }],
        }]);
        config["subnets"][0]["pools"] = serde_json::json!([{
            "start": CLASS_FIRST.to_string(),
            "end": CLASS_LAST.to_string(),
            "classes": ["phone"],
        }]);
    });
    let mac = lab.client_mac();
    let ud = Udhcpc::new(&lab);

    // udhcpc -V: the class's pool and domain.
    let mut phone = ud.start(&lab, "udhcpc-phone", &["-V", VENDOR_CLASS]);
    let (at, ev) = ud
        .events
        .wait(&mut phone, &["bound"], 0, Duration::from_secs(20));
    let phone_ip = ip_of(&ev);
    assert!(in_class_pool(phone_ip), "class pool: {ev:?}");
    assert_eq!(ev["domain"], CLASS_DOMAIN, "{ev:?}");
    drop(phone);

    // The same host without the vendor class is out of the class: it cannot keep the class
    // address, and gets the open pool and the subnet's domain.
    let mut plain = ud.start(&lab, "udhcpc-plain", &[]);
    let (_, ev) = ud
        .events
        .wait(&mut plain, &["bound"], at + 1, Duration::from_secs(20));
    let plain_ip = ip_of(&ev);
    assert!(SMALL_POOL.range().contains(&plain_ip), "open pool: {ev:?}");
    assert_eq!(ev["domain"], "hive.test", "{ev:?}");
    drop(plain);
    assert!(
        lab.lease(phone_ip).is_none(),
        "one lease per client: the class address went back when the open one was bound"
    );

    // dhclient with the vendor class: the class's pool and domain.
    let dh = Dhclient::new(&lab);
    fs::write(
        &dh.conf,
        format!(
            "send vendor-class-identifier \"{VENDOR_CLASS}\";\n\
             request subnet-mask, routers, domain-name, domain-name-servers;\n\
             initial-interval 1;\n"
        ),
    )
    .expect("write dhclient.conf");
    let mut client = dh.start(&lab, "dhclient-phone");
    let (_, ev) = dh
        .events
        .wait(&mut client, &["BOUND"], 0, Duration::from_secs(20));
    let ip = ip_of(&ev);
    assert!(in_class_pool(ip), "class pool: {ev:?}");
    assert_eq!(ev["domain"], CLASS_DOMAIN, "{ev:?}");

    let lease = lab.lease(ip).expect("a lease in Redis after the ACK");
    assert_eq!(
        (lease.mac.as_str(), lease.state.as_str()),
        (mac.as_str(), "bound"),
        "{lease:?}"
    );
    lab.assert_alive();
}

#[test]
fn ping_check_skips_an_address_in_use() {
    let _heavy = crate::common::HEAVY.blocking_lock();
    let mut lab = Lab::new(SMALL_POOL);
    reconfigure_config(&mut lab, |config| {
        config["pingCheck"] = serde_json::json!(true);
        config["pingTimeoutMs"] = serde_json::json!(300);
    });
    // A host the hive does not know, on the client's link, holding the pool's first address:
    // on the loopback device of the client namespace (the kernel answers ARP for it on the
    // veth), with a route back to the server for its replies.
    let squatted = *SMALL_POOL.range().start();
    lab.client
        .ip(&["addr", "add", &format!("{squatted}/32"), "dev", "lo"]);
    lab.client.ip(&["link", "set", "lo", "up"]);
    lab.client
        .ip(&["route", "add", "192.0.2.0/24", "dev", &lab.client_if]);

    let ud = Udhcpc::new(&lab);
    let mut client = ud.start(&lab, "udhcpc-ping", &[]);
    let (_, ev) = ud
        .events
        .wait(&mut client, &["bound"], 0, Duration::from_secs(20));
    let ip = ip_of(&ev);
    assert_ne!(ip, squatted, "the address in use is not offered: {ev:?}");
    assert!(SMALL_POOL.range().contains(&ip), "{ev:?}");

    let lease = lab
        .lease(squatted)
        .expect("the squatted address has a record");
    assert_eq!(lease.state, "declined", "on probation: {lease:?}");
    let found = lab
        .nodes
        .iter()
        .any(|n| n.log().contains("address answers ICMP echo"));
    assert!(found, "a node logged the conflict");
    lab.assert_alive();
}
