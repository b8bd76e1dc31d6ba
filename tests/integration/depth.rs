//! DHCP depth over loopback with a real Redis: client classes (pools and options), shared
//! networks, BOOTP clients, the agent information kept in the lease, and the ICMP check.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, MessageType, Opcode, OptionCode};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(3);

fn lease_key(prefix: &str, net: &str, ip: Ipv4Addr) -> String {
    format!("{prefix}:{{{net}}}:lease:{ip}")
}

/// DISCOVER with raw extra options through `relay`; the OFFER's bytes.
async fn offer_with(relay: &Relay, m: &[u8], xid: u32, extra: &[u8]) -> Option<Vec<u8>> {
    relay
        .send_raw(&with_raw_options(&discover(m, xid, relay.giaddr), extra))
        .await;
    relay.recv_raw(WAIT).await
}

fn yiaddr(bytes: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19])
}

fn in_range(ip: Ipv4Addr, first: Ipv4Addr, last: Ipv4Addr) -> bool {
    (u32::from(first)..=u32::from(last)).contains(&u32::from(ip))
}

fn classes_config(port: u16, redis: &str, prefix: &str) -> String {
    format!(
        r#"{{
  "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{redis}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}",
  "clientClasses": [
    {{ "name": "pxe", "match": "vendor-class starts-with \"PXEClient\"",
       "options": [ {{ "name": "boot-file-name", "value": "pxelinux.0" }} ] }},
    {{ "name": "phone", "match": "mac starts-with 02:aa or user-class == \"hive-phone\"",
       "options": [ {{ "name": "domain-name", "value": "phones.test" }} ] }},
    {{ "name": "rack1", "match": "circuit-id == \"eth1\" and subnet == 127.0.8.0/24" }}
  ],
  "subnets": [
    {{ "subnet": "127.0.8.0/24", "router": "127.0.8.1", "dynStart": "127.0.8.10",
       "dynEnd": "127.0.8.19", "leaseTime": 600, "domainName": "subnet.test",
       "pools": [
         {{ "start": "127.0.8.100", "end": "127.0.8.109", "classes": ["pxe"] }},
         {{ "start": "127.0.8.200", "end": "127.0.8.209", "classes": ["phone", "rack1"] }}
       ] }},
    {{ "subnet": "127.0.9.0/24", "router": "127.0.9.1", "dynStart": "127.0.9.10",
       "dynEnd": "127.0.9.19", "leaseTime": 600, "classes": ["phone"] }}
  ]
}}"#
    )
}

#[tokio::test]
async fn client_classes_pick_pools_and_options() {
    let redis = Redis::start();
    let port = free_port();
    let prefix = prefix("classes");
    let hive = Hive::start(
        parse_config(&classes_config(port, &redis.url(), &prefix)),
        1,
    )
    .await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 8, 1), port).await;
    let ip = |a: u8| Ipv4Addr::new(127, 0, 8, a);

    // A client in no class: the open pool, the subnet's options, no class option.
    let b = offer_with(&relay, &mac(1), 1, &[]).await.expect("offer");
    assert!(in_range(yiaddr(&b), ip(10), ip(19)), "{}", yiaddr(&b));
    let opts = raw_options(&b);
    assert_eq!(get(&opts, 15), Some(&b"subnet.test"[..]));
    assert_eq!(get(&opts, 67), None);

    // Vendor class (60): the PXE pool and the class's boot file.
    let mut vc = vec![60, 32];
    vc.extend_from_slice(b"PXEClient:Arch:00000:UNDI:002001");
    let b = offer_with(&relay, &mac(2), 2, &vc).await.expect("offer");
    assert!(in_range(yiaddr(&b), ip(100), ip(109)), "{}", yiaddr(&b));
    let opts = raw_options(&b);
    assert_eq!(get(&opts, 67), Some(&b"pxelinux.0"[..]));
    assert_eq!(
        get(&opts, 15),
        Some(&b"subnet.test"[..]),
        "subnet options too"
    );

    // MAC prefix: the phone pool, and the class's domain name over the subnet's.
    let phone = [0x02, 0xaa, 0, 0, 0, 1];
    let b = offer_with(&relay, &phone, 3, &[]).await.expect("offer");
    assert!(in_range(yiaddr(&b), ip(200), ip(209)), "{}", yiaddr(&b));
    assert_eq!(get(&raw_options(&b), 15), Some(&b"phones.test"[..]));

    // User class (77), as dhclient sends it (plain text).
    let mut uc = vec![77, 10];
    uc.extend_from_slice(b"hive-phone");
    let b = offer_with(&relay, &mac(4), 4, &uc).await.expect("offer");
    assert!(in_range(yiaddr(&b), ip(200), ip(209)), "{}", yiaddr(&b));

    // A relay sub-option (82.1 circuit id) and the arrival subnet; the lease keeps it.
    let agent = [82, 6, 1, 4, b'e', b't', b'h', b'1'];
    let b = offer_with(&relay, &mac(5), 5, &agent).await.expect("offer");
    let rack = yiaddr(&b);
    assert!(in_range(rack, ip(200), ip(209)), "{rack}");
    let key = lease_key(&prefix, "127.0.8.0/24", rack);
    assert_eq!(redis.cli(&["hget", &key, "circuit_id"]), "65:74:68:31");
    assert_eq!(redis.cli(&["hget", &key, "state"]), "offered");
    // What the lease API and `leases show` print: where the client sits.
    let view = dhcp_hive_mind::lease::connect(&hive.config, "view").expect("client");
    assert!(view.wait_connected(Duration::from_secs(5)).await);
    let pool = dhcp_hive_mind::lease::Pool::new(&hive.config, &hive.config.subnets[0]);
    let rec = view
        .lease(&pool, rack)
        .await
        .expect("view")
        .expect("record");
    assert_eq!(
        (rec.circuit_id.as_str(), rec.remote_id.as_str()),
        ("65:74:68:31", "")
    );

    // A client outside the class asking for a class address: NAK (not its pool).
    let mut reboot = message(MessageType::Request, &mac(1), 6, relay.giaddr);
    reboot
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip(105)));
    let nak = relay.exchange(&reboot).await.expect("answer");
    assert_eq!(msg_type(&nak), Some(MessageType::Nak));

    // A subnet only for phones: silence for others, an address for a phone.
    let relay9 = Relay::new(Ipv4Addr::new(127, 0, 9, 1), port).await;
    assert!(
        relay9
            .exchange_once(&discover(&mac(7), 7, relay9.giaddr), Duration::from_secs(1))
            .await
            .is_none(),
        "no pool for a client outside the subnet's classes"
    );
    let b = offer_with(&relay9, &[0x02, 0xaa, 0, 0, 0, 2], 8, &[])
        .await
        .expect("offer to a phone");
    assert!(in_range(
        yiaddr(&b),
        Ipv4Addr::new(127, 0, 9, 10),
        Ipv4Addr::new(127, 0, 9, 19)
    ));
    hive.stop().await;
}

#[tokio::test]
async fn a_full_subnet_overflows_into_its_shared_network() {
    let redis = Redis::start();
    let port = free_port();
    let prefix = prefix("shared");
    let json = format!(
        r#"{{
  "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{url}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}",
  "subnets": [
    {{ "subnet": "127.0.10.0/24", "router": "127.0.10.1", "dynStart": "127.0.10.10",
       "dynEnd": "127.0.10.11", "leaseTime": 600, "sharedNetwork": "lab" }},
    {{ "subnet": "127.0.11.0/24", "router": "127.0.11.1", "dynStart": "127.0.11.10",
       "dynEnd": "127.0.11.19", "leaseTime": 900, "sharedNetwork": "lab",
       "reservations": [ {{ "mac": "02:00:00:00:00:aa", "ip": "127.0.11.5" }} ] }}
  ]
}}"#,
        url = redis.url()
    );
    let hive = Hive::start(parse_config(&json), 1).await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 10, 1), port).await;
    // A client reserved in the second subnet gets its reservation, though the first has room.
    assert_eq!(
        dora(&relay, &[2, 0, 0, 0, 0, 0xaa], 100).await,
        Some(Ipv4Addr::new(127, 0, 11, 5))
    );
    let first = dora(&relay, &mac(1), 1).await.expect("first");
    let second = dora(&relay, &mac(2), 2).await.expect("second");
    assert_eq!(
        [first, second],
        [Ipv4Addr::new(127, 0, 10, 10), Ipv4Addr::new(127, 0, 10, 11)]
    );

    // The first subnet is full: the next one on the link, with its own options.
    let offer = relay
        .exchange(&discover(&mac(3), 3, relay.giaddr))
        .await
        .expect("offer");
    let third = offer.yiaddr();
    assert_eq!(third, Ipv4Addr::new(127, 0, 11, 10));
    assert!(matches!(
        opt(&offer, OptionCode::Router),
        Some(DhcpOption::Router(r)) if r == &vec![Ipv4Addr::new(127, 0, 11, 1)]
    ));
    assert!(matches!(
        opt(&offer, OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(900))
    ));
    let ack = relay
        .exchange(&request_selecting(
            &mac(3),
            3,
            relay.giaddr,
            third,
            Ipv4Addr::LOCALHOST,
        ))
        .await
        .expect("ack");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    let key = lease_key(&prefix, "127.0.11.0/24", third);
    assert_eq!(redis.cli(&["hget", &key, "state"]), "bound");

    // INIT-REBOOT through the first subnet's relay: the address is on this link, so an ACK.
    let mut reboot = message(MessageType::Request, &mac(3), 4, relay.giaddr);
    reboot
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(third));
    let ack = relay.exchange(&reboot).await.expect("answer");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));

    // An INFORM through the same relay gets the parameters of the subnet its address is in
    // (RFC 2131 4.3.5), not those of the relay's.
    let mut inform = message(MessageType::Inform, &mac(3), 40, relay.giaddr);
    inform.set_ciaddr(third);
    let ack = relay.exchange(&inform).await.expect("inform's ack");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert!(
        matches!(
            opt(&ack, OptionCode::Router),
            Some(DhcpOption::Router(r)) if r == &vec![Ipv4Addr::new(127, 0, 11, 1)]
        ),
        "{:?}",
        opt(&ack, OptionCode::Router)
    );

    // Room again in the first subnet; a DISCOVER asking for its address keeps it.
    let mut release = message(MessageType::Release, &mac(1), 5, relay.giaddr);
    release.set_ciaddr(first);
    release
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST));
    relay.send(&release).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = discover(&mac(3), 6, relay.giaddr);
    again
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(third));
    let offer = relay.exchange(&again).await.expect("offer");
    assert_eq!(offer.yiaddr(), third, "the client keeps its address");
    // A newcomer gets the freed address of the first subnet.
    assert_eq!(dora(&relay, &mac(4), 7).await, Some(first));

    // Renewing unicast and RELEASE of the second subnet's lease.
    let mut renew = message(MessageType::Request, &mac(3), 8, relay.giaddr);
    renew.set_ciaddr(third);
    let ack = relay.exchange(&renew).await.expect("renew");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    let mut release = message(MessageType::Release, &mac(3), 9, relay.giaddr);
    release.set_ciaddr(third);
    relay.send(&release).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.cli(&["exists", &key]), "0");
    hive.stop().await;
}

#[tokio::test]
async fn bootp_clients_get_a_permanent_binding() {
    let redis = Redis::start();
    let port = free_port();
    let prefix = prefix("bootp");
    let json = format!(
        r#"{{
  "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{url}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}",
  "subnets": [
    {{ "subnet": "127.0.12.0/24", "router": "127.0.12.1", "dynStart": "127.0.12.10",
       "dynEnd": "127.0.12.19", "leaseTime": 600, "bootp": true,
       "options": [ {{ "name": "boot-file-name", "value": "boot/pxe.0" }} ],
       "reservations": [ {{ "mac": "02:00:00:00:00:99", "ip": "127.0.12.5", "hostname": "printer" }} ] }},
    {{ "subnet": "127.0.13.0/24", "router": "127.0.13.1", "dynStart": "127.0.13.10",
       "dynEnd": "127.0.13.19", "leaseTime": 600 }}
  ]
}}"#,
        url = redis.url()
    );
    let hive = Hive::start(parse_config(&json), 1).await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 12, 1), port).await;
    let bootrequest = |m: &[u8], xid: u32, giaddr: Ipv4Addr| {
        let mut msg = discover(m, xid, giaddr);
        msg.opts_mut().remove(OptionCode::MessageType);
        msg
    };

    relay.send(&bootrequest(&mac(1), 1, relay.giaddr)).await;
    let b = relay.recv_raw(WAIT).await.expect("BOOTREPLY");
    assert_eq!(b[0], u8::from(Opcode::BootReply));
    assert_eq!(b.len(), 300, "a BOOTP-sized reply");
    let ip = yiaddr(&b);
    assert!(in_range(
        ip,
        Ipv4Addr::new(127, 0, 12, 10),
        Ipv4Addr::new(127, 0, 12, 19)
    ));
    let opts = raw_options(&b);
    assert_eq!(get(&opts, 53), None, "no DHCP message type");
    assert_eq!(get(&opts, 51), None, "no lease time");
    assert_eq!(get(&opts, 1), Some(&[255, 255, 255, 0][..]));
    assert_eq!(get(&opts, 3), Some(&[127, 0, 12, 1][..]));
    // The boot file sits in the header's `file` field too (RFC 951).
    assert_eq!(&b[108..118], b"boot/pxe.0");
    assert_eq!(b[118], 0);

    let key = lease_key(&prefix, "127.0.12.0/24", ip);
    assert_eq!(redis.cli(&["hget", &key, "state"]), "bound");
    assert_eq!(redis.cli(&["ttl", &key]), "-1", "permanent");
    assert_eq!(redis.cli(&["hget", &key, "expires_at"]), "0");

    // The same client again: the same address. A DHCP client gets another one.
    relay.send(&bootrequest(&mac(1), 2, relay.giaddr)).await;
    assert_eq!(relay.recv_raw(WAIT).await.map(|b| yiaddr(&b)), Some(ip));
    let other = dora(&relay, &mac(2), 3).await.expect("DHCP client");
    assert_ne!(other, ip);

    // A reservation: its address, bound for good too, its name in option 12.
    relay
        .send(&bootrequest(&[2, 0, 0, 0, 0, 0x99], 5, relay.giaddr))
        .await;
    let b = relay.recv_raw(WAIT).await.expect("BOOTREPLY");
    assert_eq!(yiaddr(&b), Ipv4Addr::new(127, 0, 12, 5));
    assert_eq!(
        get(&raw_options(&b), 12),
        None,
        "no option 55: no name (as for DHCP)"
    );
    let key = lease_key(&prefix, "127.0.12.0/24", Ipv4Addr::new(127, 0, 12, 5));
    assert_eq!(redis.cli(&["ttl", &key]), "-1", "permanent");

    // An RFC 951 client without RFC 1497 extensions: no magic cookie, its own 64-byte vendor
    // area. Served as a BOOTP client that sent no options.
    let cookieless = |m: &[u8], xid: u32, giaddr: Ipv4Addr| {
        let mut b = vec![0u8; 300];
        b[0] = 1; // BOOTREQUEST
        b[1] = 1; // Ethernet
        b[2] = 6;
        b[3] = 1; // hops: relayed
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[24..28].copy_from_slice(&giaddr.octets());
        b[28..34].copy_from_slice(m);
        b[236..240].copy_from_slice(b"VEND");
        b
    };
    relay.send_raw(&cookieless(&mac(4), 6, relay.giaddr)).await;
    let b = relay
        .recv_raw(WAIT)
        .await
        .expect("BOOTREPLY to a cookieless request");
    assert_eq!(b[0], u8::from(Opcode::BootReply));
    assert_eq!(&b[4..8], &6u32.to_be_bytes(), "its xid");
    assert_eq!(&b[28..34], &mac(4), "its chaddr");
    let plain = yiaddr(&b);
    assert!(in_range(
        plain,
        Ipv4Addr::new(127, 0, 12, 10),
        Ipv4Addr::new(127, 0, 12, 19)
    ));
    assert!(plain != ip && plain != other, "an address of its own");
    let key = lease_key(&prefix, "127.0.12.0/24", plain);
    assert_eq!(redis.cli(&["ttl", &key]), "-1", "permanent");

    // A subnet without `bootp`: silence, with the cookie or without.
    let relay13 = Relay::new(Ipv4Addr::new(127, 0, 13, 1), port).await;
    relay13.send(&bootrequest(&mac(3), 4, relay13.giaddr)).await;
    assert!(relay13.recv_raw(Duration::from_secs(1)).await.is_none());
    relay13
        .send_raw(&cookieless(&mac(3), 7, relay13.giaddr))
        .await;
    assert!(relay13.recv_raw(Duration::from_secs(1)).await.is_none());
    hive.stop().await;
}

/// Two subnets on loopback: 127.0.14.0/24 with the ICMP check (`timeout_ms`), 127.0.15.0/24
/// without.
fn ping_config(
    port: u16,
    redis: &Redis,
    prefix: &str,
    timeout_ms: u32,
) -> dhcp_hive_mind::config::Config {
    parse_config(&format!(
        r#"{{
  "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{url}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}", "pingTimeoutMs": {timeout_ms},
  "subnets": [
    {{ "subnet": "127.0.14.0/24", "router": "127.0.14.1", "dynStart": "127.0.14.10",
       "dynEnd": "127.0.14.19", "leaseTime": 600, "pingCheck": true }},
    {{ "subnet": "127.0.15.0/24", "router": "127.0.15.1", "dynStart": "127.0.15.10",
       "dynEnd": "127.0.15.19", "leaseTime": 600 }}
  ]
}}"#,
        url = redis.url()
    ))
}

/// Every 127.0.0.0/8 address answers ICMP echo on loopback, so with the check on, each address
/// offered is found in use: it goes on probation and the next is tried, three times, then the
/// client gets nothing. (The namespace test shows a free address being offered.)
#[tokio::test]
async fn ping_check_puts_answering_addresses_on_probation() {
    let redis = Redis::start();
    let port = free_port();
    let prefix = prefix("ping");
    let hive = Hive::start(ping_config(port, &redis, &prefix, 200), 1).await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 14, 1), port).await;
    assert!(
        relay
            .exchange_once(&discover(&mac(1), 1, relay.giaddr), Duration::from_secs(2))
            .await
            .is_none(),
        "every address answered"
    );
    for last in 10..=12 {
        let key = lease_key(&prefix, "127.0.14.0/24", Ipv4Addr::new(127, 0, 14, last));
        assert_eq!(redis.cli(&["hget", &key, "state"]), "declined", "{key}");
        let ttl: i64 = redis.cli(&["ttl", &key]).parse().expect("ttl");
        assert!(ttl > 80_000, "probation (declineProbation), got {ttl}");
    }
    let untried = lease_key(&prefix, "127.0.14.0/24", Ipv4Addr::new(127, 0, 14, 13));
    assert_eq!(redis.cli(&["exists", &untried]), "0");

    // Without the check, the other subnet answers at once.
    let relay15 = Relay::new(Ipv4Addr::new(127, 0, 15, 1), port).await;
    assert!(dora(&relay15, &mac(2), 2).await.is_some());
    hive.stop().await;
}

/// The ICMP check waits for its answer without holding up anything else. The test thread moves to
/// a network namespace of its own (its Redis, hive and relays with it; the host's is untouched)
/// where nothing answers pings, so a checked address waits the full timeout before it is
/// offered; a client of another subnet, sent just after, is served during that wait.
#[test]
fn ping_check_does_not_hold_up_other_messages() {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("a network namespace for this thread (needs root)");
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip");
        assert!(up.success(), "lo up in the test's namespace");
        // Per network namespace: this one only.
        std::fs::write("/proc/sys/net/ipv4/icmp_echo_ignore_all", "1").expect("sysctl");
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(ping_check_beside_other_traffic());
    })
    .join()
    .expect("the test's thread");
}

async fn ping_check_beside_other_traffic() {
    let redis = Redis::start();
    let port = free_port();
    let prefix = prefix("pingwait");
    let hive = Hive::start(ping_config(port, &redis, &prefix, 500), 1).await;
    let checked = std::sync::Arc::new(Relay::new(Ipv4Addr::new(127, 0, 14, 1), port).await);
    let other = Relay::new(Ipv4Addr::new(127, 0, 15, 1), port).await;

    let sent = std::time::Instant::now();
    checked.send(&discover(&mac(1), 1, checked.giaddr)).await;
    let waiting = std::sync::Arc::clone(&checked);
    let offer = tokio::spawn(async move {
        let m = waiting.recv(WAIT).await;
        (m, std::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let served = dora(&other, &mac(2), 2).await;
    let served_at = std::time::Instant::now();

    let (m, offered_at) = offer.await.expect("receiver");
    let m = m.expect("an OFFER once the check timed out");
    assert_eq!(msg_type(&m), Some(MessageType::Offer));
    assert_eq!(
        m.yiaddr(),
        Ipv4Addr::new(127, 0, 14, 10),
        "no answer to the ping: the first address is offered"
    );
    assert!(
        offered_at.duration_since(sent) >= Duration::from_millis(490),
        "the check waited its timeout: {:?}",
        offered_at.duration_since(sent)
    );
    assert!(served.is_some(), "the other subnet's client got its lease");
    assert!(
        served_at < offered_at,
        "the other client was served while the check waited (served after {:?}, offer after {:?})",
        served_at.duration_since(sent),
        offered_at.duration_since(sent)
    );
    let key = lease_key(&prefix, "127.0.14.0/24", Ipv4Addr::new(127, 0, 14, 10));
    assert_eq!(redis.cli(&["hget", &key, "state"]), "offered");
    hive.stop().await;
}
