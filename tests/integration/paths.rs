//! Every DHCP message path through a 1-node hive in relay mode on 127.x, checking what the
//! client receives and what Redis holds.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, MessageType, OptionCode};

use crate::common::*;

const GIADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);
const SERVER_ID: Ipv4Addr = Ipv4Addr::LOCALHOST;

struct Setup {
    redis: Redis,
    hive: Hive,
    relay: Relay,
    prefix: String,
}

async fn setup(name: &str) -> Setup {
    let redis = Redis::start();
    let port = free_port();
    let prefix = prefix(name);
    let config = parse_config(&config_json(port, &redis.url(), &prefix, 250));
    let hive = Hive::start(config, 1).await;
    let relay = Relay::new(GIADDR, port).await;
    Setup {
        redis,
        hive,
        relay,
        prefix,
    }
}

impl Setup {
    fn lease_key(&self, ip: Ipv4Addr) -> String {
        format!("{}:{{127.0.2.0/24}}:lease:{ip}", self.prefix)
    }

    fn field(&self, ip: Ipv4Addr, field: &str) -> String {
        self.redis.cli(&["hget", &self.lease_key(ip), field])
    }

    fn ttl(&self, ip: Ipv4Addr) -> i64 {
        self.redis
            .cli(&["ttl", &self.lease_key(ip)])
            .parse()
            .expect("ttl is a number")
    }
}

fn server_id(m: &dhcproto::v4::Message) -> Option<Ipv4Addr> {
    match opt(m, OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    }
}

fn lease_time(m: &dhcproto::v4::Message) -> Option<u32> {
    match opt(m, OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
        _ => None,
    }
}

fn in_pool(ip: Ipv4Addr) -> bool {
    (u32::from(Ipv4Addr::new(127, 0, 2, 10))..=u32::from(Ipv4Addr::new(127, 0, 2, 250)))
        .contains(&u32::from(ip))
}

#[tokio::test]
async fn discover_gets_an_offer_held_briefly_in_redis() {
    let s = setup("offer").await;
    let m = mac(1);
    let offer = s
        .relay
        .exchange(&discover(&m, 1, GIADDR))
        .await
        .expect("an offer");
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));
    let ip = offer.yiaddr();
    assert!(in_pool(ip), "{ip} outside the pool");
    assert_eq!(server_id(&offer), Some(SERVER_ID));
    assert_eq!(offer.siaddr(), SERVER_ID);
    assert_eq!(offer.giaddr(), GIADDR);
    assert_eq!(offer.xid(), 1);
    assert_eq!(&offer.chaddr()[..6], &m);
    assert_eq!(lease_time(&offer), Some(600));
    assert!(matches!(
        opt(&offer, OptionCode::Renewal),
        Some(DhcpOption::Renewal(300))
    ));
    assert!(matches!(
        opt(&offer, OptionCode::Rebinding),
        Some(DhcpOption::Rebinding(525))
    ));
    assert!(
        matches!(opt(&offer, OptionCode::SubnetMask), Some(DhcpOption::SubnetMask(m)) if *m == Ipv4Addr::new(255, 255, 255, 0))
    );
    assert!(
        matches!(opt(&offer, OptionCode::Router), Some(DhcpOption::Router(r)) if r == &[GIADDR])
    );
    assert!(
        matches!(opt(&offer, OptionCode::DomainNameServer), Some(DhcpOption::DomainNameServer(d)) if d.len() == 2)
    );
    assert!(
        matches!(opt(&offer, OptionCode::DomainName), Some(DhcpOption::DomainName(d)) if d == "hive.test")
    );
    // Held for offerTime (10 s), not the lease time.
    assert_eq!(s.field(ip, "state"), "offered");
    assert_eq!(s.field(ip, "mac"), "02:00:00:00:00:01");
    let ttl = s.ttl(ip);
    assert!((8..=10).contains(&ttl), "offer hold ttl {ttl}");
    s.hive.stop().await;
}

#[tokio::test]
async fn selecting_request_is_acked_and_the_lease_is_the_seeds_record() {
    let s = setup("select").await;
    let m = mac(2);
    let ip = dora(&s.relay, &m, 2).await.expect("DORA");
    assert_eq!(s.field(ip, "mac"), "02:00:00:00:00:02");
    assert_eq!(s.field(ip, "hostname"), "host-0002");
    assert_eq!(s.field(ip, "state"), "bound");
    let ttl = s.ttl(ip);
    assert!((598..=600).contains(&ttl), "lease ttl {ttl}");
    // The hint outlives the lease by stickyTime (86,400 s by default): the DISCOVER set it with
    // the offer time (10 s) on top, and the REQUEST left it as it was.
    let hint = format!("{}:{{127.0.2.0/24}}:client:hw-020000000002", s.prefix);
    let hint_ttl: i64 = s.redis.cli(&["ttl", &hint]).parse().expect("ttl");
    assert!(
        (600 + 86_400..=600 + 86_400 + 10).contains(&hint_ttl),
        "hint ttl {hint_ttl}"
    );
    assert_eq!(s.redis.cli(&["get", &hint]), ip.to_string());
    s.hive.stop().await;
}

#[tokio::test]
async fn parameter_list_orders_and_filters_options() {
    let s = setup("prl").await;
    let mut d = discover(&mac(3), 3, GIADDR);
    d.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::DomainNameServer,
        OptionCode::Router,
    ]));
    s.relay.send(&d).await;
    // Read the raw bytes to see the order on the wire.
    let mut buf = vec![0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), s.relay.sock.recv_from(&mut buf))
        .await
        .expect("reply in time")
        .expect("recv");
    let codes = option_codes(&buf[..n]);
    let pos = |c: u8| codes.iter().position(|x| *x == c);
    assert_eq!(codes.first(), Some(&53), "53 comes first: {codes:?}");
    assert!(
        pos(6).expect("dns sent") < pos(3).expect("router sent"),
        "client's order kept: {codes:?}"
    );
    assert!(
        pos(15).is_none(),
        "domain name was not asked for: {codes:?}"
    );
    assert!(
        pos(1).is_some() && pos(51).is_some() && pos(54).is_some(),
        "mandatory options: {codes:?}"
    );
    s.hive.stop().await;
}

/// The option codes of a raw DHCP message, in wire order.
fn option_codes(b: &[u8]) -> Vec<u8> {
    raw_options(b).into_iter().map(|(c, _)| c).collect()
}

#[tokio::test]
async fn init_reboot_is_acked_for_own_address_and_naked_otherwise() {
    let s = setup("reboot").await;
    let m = mac(4);
    let ip = dora(&s.relay, &m, 4).await.expect("DORA");
    // INIT-REBOOT: requested address, no server identifier, no ciaddr.
    let mut r = message(MessageType::Request, &m, 40, GIADDR);
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    let ack = s.relay.exchange(&r).await.expect("ack");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    // Another client asking for that address is refused.
    let mut other = message(MessageType::Request, &mac(5), 41, GIADDR);
    other.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    let nak = s.relay.exchange(&other).await.expect("nak");
    assert_eq!(msg_type(&nak), Some(MessageType::Nak));
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(nak.flags().broadcast(), "a relayed NAK asks for broadcast");
    assert_eq!(
        s.field(ip, "mac"),
        "02:00:00:00:00:04",
        "the holder keeps it"
    );
    // An address from another network (the client moved): NAK.
    let mut moved = message(MessageType::Request, &m, 42, GIADDR);
    moved
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(127, 0, 3, 20)));
    let nak = s.relay.exchange(&moved).await.expect("nak");
    assert_eq!(msg_type(&nak), Some(MessageType::Nak));
    s.hive.stop().await;
}

#[tokio::test]
async fn renewing_unicast_is_acked_to_ciaddr_and_extends_the_lease() {
    let s = setup("renew").await;
    let m = mac(6);
    let ip = dora(&s.relay, &m, 6).await.expect("DORA");
    s.redis.cli(&["expire", &s.lease_key(ip), "100"]);
    // RENEWING: unicast from the client itself, ciaddr set, no relay.
    let client = dhcp_hive_mind::transport::bind(SocketAddrV4::new(ip, s.hive.port + 1), None)
        .expect("client socket");
    let mut r = message(MessageType::Request, &m, 60, Ipv4Addr::UNSPECIFIED);
    r.set_ciaddr(ip);
    let mut buf = Vec::new();
    dhcproto::Encodable::encode(&r, &mut dhcproto::Encoder::new(&mut buf)).expect("encode");
    client
        .send_to(&buf, SocketAddrV4::new(SERVER_ID, s.hive.port))
        .await
        .expect("send");
    let mut rx = vec![0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut rx))
        .await
        .expect("ack to ciaddr:client port")
        .expect("recv");
    let ack = dhcproto::v4::Message::decode(&mut dhcproto::Decoder::new(&rx[..n])).expect("decode");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(ack.ciaddr(), ip);
    assert_eq!(ack.yiaddr(), ip);
    let ttl = s.ttl(ip);
    assert!(ttl > 590, "renewal restored the lease time, ttl {ttl}");
    // The renewal rewrote what changed (it came straight from the client, not through the
    // relay) and kept the rest.
    assert_eq!(s.field(ip, "relay_ip"), "");
    assert_eq!(s.field(ip, "state"), "bound");
    assert_eq!(s.field(ip, "mac"), "02:00:00:00:00:06");
    let expires: u64 = s.field(ip, "expires_at").parse().expect("expires_at");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        (now + 590..=now + 601).contains(&expires),
        "expires_at {expires}, now {now}"
    );
    s.hive.stop().await;
}

use dhcproto::Decodable;

#[tokio::test]
async fn rebinding_through_a_relay_is_acked() {
    let s = setup("rebind").await;
    let m = mac(7);
    let ip = dora(&s.relay, &m, 7).await.expect("DORA");
    let mut r = message(MessageType::Request, &m, 70, GIADDR);
    r.set_ciaddr(ip);
    let ack = s.relay.exchange(&r).await.expect("ack");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    // Rebinding an address the client does not hold: NAK.
    let mut r = message(MessageType::Request, &mac(8), 71, GIADDR);
    r.set_ciaddr(ip);
    let nak = s.relay.exchange(&r).await.expect("nak");
    assert_eq!(msg_type(&nak), Some(MessageType::Nak));
    s.hive.stop().await;
}

#[tokio::test]
async fn request_for_another_server_withdraws_the_offer_silently() {
    let s = setup("other").await;
    let m = mac(9);
    let offer = s
        .relay
        .exchange(&discover(&m, 9, GIADDR))
        .await
        .expect("offer");
    let ip = offer.yiaddr();
    assert_eq!(s.field(ip, "state"), "offered");
    let r = request_selecting(&m, 9, GIADDR, ip, Ipv4Addr::new(127, 0, 0, 99));
    s.relay.send(&r).await;
    assert!(
        s.relay.recv(Duration::from_millis(500)).await.is_none(),
        "no answer"
    );
    assert_eq!(
        s.redis.cli(&["exists", &s.lease_key(ip)]),
        "0",
        "offer withdrawn"
    );
    s.hive.stop().await;
}

/// A renewal with a server identifier and ciaddr but no requested address (clients send it,
/// though RFC 2131 says neither): served from ciaddr when it names this server; another
/// server's is not answered, and the lease stays as it was.
#[tokio::test]
async fn renewal_with_a_server_id_and_no_requested_address() {
    let s = setup("renew54").await;
    let m = mac(13);
    let ip = dora(&s.relay, &m, 13).await.expect("DORA");
    let renewal = |xid, server| {
        let mut r = message(MessageType::Request, &m, xid, GIADDR);
        r.set_ciaddr(ip);
        r.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        r
    };
    let elsewhere = renewal(130, Ipv4Addr::new(127, 0, 0, 99));
    assert!(
        s.relay
            .exchange_once(&elsewhere, Duration::from_millis(500))
            .await
            .is_none(),
        "another server's renewal gets no answer"
    );
    assert_eq!(s.field(ip, "state"), "bound");
    assert_eq!(s.field(ip, "mac"), "02:00:00:00:00:0d");
    let ack = s
        .relay
        .exchange(&renewal(131, SERVER_ID))
        .await
        .expect("ack");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    assert_eq!(s.field(ip, "state"), "bound");
    s.hive.stop().await;
}

/// RFC 4390: an IP-over-InfiniBand client (htype 32, hlen 0, no chaddr) is known by its
/// client identifier; its offer and ACK echo the empty chaddr, and its lease records it.
#[tokio::test]
async fn infiniband_client_gets_a_lease_by_its_client_identifier() {
    let s = setup("ipoib").await;
    let guid: Vec<u8> = [
        0xff, 0, 0, 0, 0, 0, 2, 0, 0, 2, 0xc9, 0, 0, 2, 0xc9, 3, 0, 0x12, 0x34,
    ]
    .to_vec();
    let ib = |kind, xid| {
        let mut m = message(kind, &[], xid, GIADDR);
        m.set_htype(dhcproto::v4::HType::Infiniband);
        m.opts_mut()
            .insert(DhcpOption::ClientIdentifier(guid.clone()));
        m
    };
    let offer = s
        .relay
        .exchange(&ib(MessageType::Discover, 140))
        .await
        .expect("offer");
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));
    assert_eq!((offer.hlen(), u8::from(offer.htype())), (0, 32));
    let ip = offer.yiaddr();
    let mut req = ib(MessageType::Request, 141);
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER_ID));
    let ack = s.relay.exchange(&req).await.expect("ack");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    assert_eq!(s.field(ip, "state"), "bound");
    let hex: String = guid.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(s.field(ip, "client_id"), format!("id-{hex}"));
    assert_eq!(s.field(ip, "mac"), "");
    // Without its client identifier such a client cannot be served.
    let mut anonymous = message(MessageType::Discover, &[], 142, GIADDR);
    anonymous.set_htype(dhcproto::v4::HType::Infiniband);
    assert!(
        s.relay
            .exchange_once(&anonymous, Duration::from_millis(500))
            .await
            .is_none()
    );
    s.hive.stop().await;
}

#[tokio::test]
async fn release_frees_the_address_and_the_client_gets_it_back() {
    let s = setup("release").await;
    let m = mac(10);
    let ip = dora(&s.relay, &m, 10).await.expect("DORA");
    let mut rel = message(MessageType::Release, &m, 11, Ipv4Addr::UNSPECIFIED);
    rel.set_ciaddr(ip);
    rel.opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER_ID));
    s.relay.send(&rel).await;
    assert!(
        s.relay.recv(Duration::from_millis(300)).await.is_none(),
        "RELEASE gets no reply"
    );
    assert_eq!(
        s.redis.cli(&["exists", &s.lease_key(ip)]),
        "0",
        "lease gone"
    );
    // Others take addresses meanwhile; the client still gets its old one back.
    for i in 0..5 {
        dora(&s.relay, &mac(100 + i), 100 + i)
            .await
            .expect("others");
    }
    assert_eq!(
        dora(&s.relay, &m, 12).await,
        Some(ip),
        "sticky after release"
    );
    // And after an expiry (the record vanished by TTL): same again.
    s.redis.cli(&["del", &s.lease_key(ip)]);
    assert_eq!(
        dora(&s.relay, &m, 13).await,
        Some(ip),
        "sticky after expiry"
    );
    s.hive.stop().await;
}

#[tokio::test]
async fn release_from_someone_else_is_ignored() {
    let s = setup("forged").await;
    let ip = dora(&s.relay, &mac(14), 14).await.expect("DORA");
    let mut rel = message(MessageType::Release, &mac(15), 15, Ipv4Addr::UNSPECIFIED);
    rel.set_ciaddr(ip);
    s.relay.send(&rel).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.field(ip, "state"), "bound");
    s.hive.stop().await;
}

#[tokio::test]
async fn decline_puts_the_address_on_probation() {
    let s = setup("decline").await;
    let m = mac(16);
    let ip = dora(&s.relay, &m, 16).await.expect("DORA");
    let mut d = message(MessageType::Decline, &m, 17, GIADDR);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    d.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER_ID));
    s.relay.send(&d).await;
    assert!(
        s.relay.recv(Duration::from_millis(300)).await.is_none(),
        "DECLINE gets no reply"
    );
    assert_eq!(s.field(ip, "state"), "declined");
    let ttl = s.ttl(ip);
    assert!((298..=300).contains(&ttl), "probation ttl {ttl}");
    // The client's hint named the declined address: it is gone. The declined index has the
    // address; the offers index does not (a bound lease is never in it, so this only checks
    // that the DECLINE put nothing back there).
    let base = format!("{}:{{127.0.2.0/24}}:", s.prefix);
    assert_eq!(
        s.redis
            .cli(&["exists", &format!("{base}client:hw-020000000010")]),
        "0",
        "hint removed"
    );
    assert!(
        s.redis
            .cli(&["zscore", &format!("{base}declined"), &ip.to_string()])
            .parse::<f64>()
            .is_ok()
    );
    assert_eq!(
        s.redis
            .cli(&["zscore", &format!("{base}offered"), &ip.to_string()]),
        ""
    );
    let again = dora(&s.relay, &m, 18).await.expect("a new lease");
    assert_ne!(again, ip, "a declined address is not offered again");
    // Nobody else gets it either, nor may anyone request it.
    let mut r = message(MessageType::Request, &mac(19), 19, GIADDR);
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    let nak = s.relay.exchange(&r).await.expect("nak");
    assert_eq!(msg_type(&nak), Some(MessageType::Nak));
    s.hive.stop().await;
}

#[tokio::test]
async fn inform_gets_options_and_no_lease() {
    let s = setup("inform").await;
    let mut i = message(MessageType::Inform, &mac(20), 20, GIADDR);
    i.set_ciaddr(Ipv4Addr::new(127, 0, 2, 7));
    let ack = s.relay.exchange(&i).await.expect("ack");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(
        lease_time(&ack).is_none(),
        "no lease time in an INFORM's ACK"
    );
    assert!(opt(&ack, OptionCode::Router).is_some());
    assert_eq!(
        s.redis
            .cli(&["exists", &s.lease_key(Ipv4Addr::new(127, 0, 2, 7))]),
        "0"
    );
    s.hive.stop().await;
}

#[tokio::test]
async fn relay_agent_information_is_echoed_unchanged() {
    let s = setup("opt82").await;
    let mut d = discover(&mac(21), 21, GIADDR);
    let mut buf = Vec::new();
    dhcproto::Encodable::encode(&d, &mut dhcproto::Encoder::new(&mut buf)).expect("encode");
    // Insert option 82 by hand before END, sub-options in a non-sorted order (2 then 1).
    let agent = [82u8, 10, 2, 3, b'r', b'i', b'd', 1, 3, b'c', b'i', b'd'];
    let end = buf.iter().rposition(|b| *b == 255).expect("end");
    buf.splice(end..end, agent);
    s.relay.send_raw(&buf).await;
    let mut rx = vec![0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), s.relay.sock.recv_from(&mut rx))
        .await
        .expect("offer")
        .expect("recv");
    assert!(
        rx[..n].windows(agent.len()).any(|w| w == agent),
        "option 82 echoed byte for byte"
    );
    let codes = option_codes(&rx[..n]);
    assert_eq!(codes.last(), Some(&82), "82 is the last option");
    d.set_xid(0);
    s.hive.stop().await;
}

#[tokio::test]
async fn client_identifier_is_the_identity_and_is_echoed() {
    let s = setup("cid").await;
    let id = vec![0xff, 1, 2, 3, 4];
    let mut d = discover(&mac(22), 22, GIADDR);
    d.opts_mut()
        .insert(DhcpOption::ClientIdentifier(id.clone()));
    let offer = s.relay.exchange(&d).await.expect("offer");
    assert!(
        matches!(opt(&offer, OptionCode::ClientIdentifier), Some(DhcpOption::ClientIdentifier(x)) if *x == id)
    );
    // Same client id behind another hardware address: the same client.
    let mut d2 = discover(&mac(23), 23, GIADDR);
    d2.opts_mut()
        .insert(DhcpOption::ClientIdentifier(id.clone()));
    let offer2 = s.relay.exchange(&d2).await.expect("offer");
    assert_eq!(offer2.yiaddr(), offer.yiaddr());
    assert_eq!(s.field(offer.yiaddr(), "client_id"), "id-ff01020304");
    s.hive.stop().await;
}

#[tokio::test]
async fn reservation_goes_to_its_owner_only() {
    let s = setup("reserve").await;
    let owner = [0x02, 0, 0, 0, 0xaa, 0x01];
    let reserved = Ipv4Addr::new(127, 0, 2, 5);
    // Someone else asking for it gets another address.
    let mut d = discover(&mac(24), 24, GIADDR);
    d.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(reserved));
    let offer = s.relay.exchange(&d).await.expect("offer");
    assert_ne!(offer.yiaddr(), reserved);
    assert_eq!(dora(&s.relay, &owner, 25).await, Some(reserved));
    assert_eq!(s.field(reserved, "mac"), "02:00:00:00:aa:01");
    s.hive.stop().await;
}

#[tokio::test]
async fn unknown_subnet_and_bootreply_get_nothing() {
    let s = setup("nosubnet").await;
    // A relay on a network the hive does not serve.
    let stranger = Relay::new(Ipv4Addr::new(127, 0, 9, 1), s.hive.port).await;
    stranger
        .send(&discover(&mac(26), 26, stranger.giaddr))
        .await;
    assert!(stranger.recv(Duration::from_millis(400)).await.is_none());
    let mut reply = discover(&mac(27), 27, GIADDR);
    reply.set_opcode(dhcproto::v4::Opcode::BootReply);
    s.relay.send(&reply).await;
    assert!(s.relay.recv(Duration::from_millis(400)).await.is_none());
    s.hive.stop().await;
}

fn decode(b: &[u8]) -> dhcproto::v4::Message {
    dhcproto::v4::Message::decode(&mut dhcproto::Decoder::new(b)).expect("decode")
}

#[tokio::test]
async fn relay_source_port_gets_the_answer_on_that_port() {
    let s = setup("srcport").await;
    // A relay on another port (RFC 8357), announcing it with sub-option 19.
    let other = dhcp_hive_mind::transport::bind(SocketAddrV4::new(GIADDR, 0), None).expect("bind");
    let server = SocketAddrV4::new(SERVER_ID, s.hive.port);
    let with_19 = with_raw_options(&discover(&mac(30), 30, GIADDR), &[82, 2, 19, 0]);
    other.send_to(&with_19, server).await.expect("send");
    let mut rx = vec![0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), other.recv_from(&mut rx))
        .await
        .expect("reply on the relay's own port")
        .expect("recv");
    assert_eq!(msg_type(&decode(&rx[..n])), Some(MessageType::Offer));
    // Without the sub-option the answer goes to the server port, as RFC 2131 says.
    other
        .send_to(
            &with_raw_options(&discover(&mac(31), 31, GIADDR), &[]),
            server,
        )
        .await
        .expect("send");
    let at_server_port = s
        .relay
        .recv(Duration::from_secs(2))
        .await
        .expect("reply at giaddr:server port");
    assert_eq!(at_server_port.xid(), 31);
    s.hive.stop().await;
}

#[tokio::test]
async fn link_selection_and_subnet_selection_options_pick_the_subnet() {
    let s = setup("linksel").await;
    // giaddr in 127.0.2.0/24, but the relay says the client is on 127.0.3.0/24 (RFC 3527).
    let bytes = with_raw_options(
        &discover(&mac(32), 32, GIADDR),
        &[82, 6, 5, 4, 127, 0, 3, 1],
    );
    s.relay.send_raw(&bytes).await;
    let offer = s.relay.recv(Duration::from_secs(2)).await.expect("offer");
    assert_eq!(
        offer.yiaddr().octets()[..3],
        [127, 0, 3],
        "{}",
        offer.yiaddr()
    );
    assert_eq!(lease_time(&offer), Some(1200));
    // Option 118 (RFC 3011) does the same.
    let bytes = with_raw_options(&discover(&mac(33), 33, GIADDR), &[118, 4, 127, 0, 3, 1]);
    s.relay.send_raw(&bytes).await;
    let offer = s.relay.recv(Duration::from_secs(2)).await.expect("offer");
    assert_eq!(offer.yiaddr().octets()[..3], [127, 0, 3]);
    s.hive.stop().await;
}

#[tokio::test]
async fn server_identifier_override_is_used_and_accepted() {
    let s = setup("override").await;
    let m = mac(34);
    let agent = [82, 6, 11, 4, 127, 0, 0, 77];
    s.relay
        .send_raw(&with_raw_options(&discover(&m, 34, GIADDR), &agent))
        .await;
    let offer = s.relay.recv(Duration::from_secs(2)).await.expect("offer");
    assert_eq!(
        server_id(&offer),
        Some(Ipv4Addr::new(127, 0, 0, 77)),
        "RFC 5107 override in option 54"
    );
    let req = request_selecting(&m, 34, GIADDR, offer.yiaddr(), Ipv4Addr::new(127, 0, 0, 77));
    s.relay.send_raw(&with_raw_options(&req, &agent)).await;
    let ack = s
        .relay
        .recv(Duration::from_secs(2))
        .await
        .expect("ack for the overridden identifier");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    s.hive.stop().await;
}

#[tokio::test]
async fn rapid_commit_binds_in_two_messages_where_enabled() {
    let s = setup("rapid").await;
    let rapid_relay = Relay::new(Ipv4Addr::new(127, 0, 3, 1), s.hive.port).await;
    // 127.0.3.0/24 has rapidCommit: DISCOVER with option 80 -> ACK with option 80, bound.
    rapid_relay
        .send_raw(&with_raw_options(
            &discover(&mac(35), 35, rapid_relay.giaddr),
            &[80, 0],
        ))
        .await;
    let ack = rapid_relay.recv(Duration::from_secs(2)).await.expect("ack");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert!(
        opt(&ack, OptionCode::RapidCommit).is_some(),
        "option 80 in the ACK"
    );
    assert_eq!(lease_time(&ack), Some(1200));
    let key = format!("{}:{{127.0.3.0/24}}:lease:{}", s.prefix, ack.yiaddr());
    assert_eq!(s.redis.cli(&["hget", &key, "state"]), "bound");
    let ttl: i64 = s.redis.cli(&["ttl", &key]).parse().expect("ttl");
    assert!(ttl > 1190, "lease ttl {ttl}");
    // Without option 80: the usual OFFER.
    let offer = rapid_relay
        .exchange(&discover(&mac(36), 36, rapid_relay.giaddr))
        .await
        .expect("offer");
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));
    // 127.0.2.0/24 has no rapid commit: option 80 is ignored.
    s.relay
        .send_raw(&with_raw_options(&discover(&mac(37), 37, GIADDR), &[80, 0]))
        .await;
    let offer = s.relay.recv(Duration::from_secs(2)).await.expect("offer");
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));
    s.hive.stop().await;
}

/// RFC 2131 section 3.5: a client may ask for a lease time (option 51). 127.0.3.0/24 grants
/// one within its `minLeaseTime` (60) and `maxLeaseTime` (3600), T1 and T2 scaled with it, and
/// Redis keeps the lease that long; 127.0.2.0/24 has no bounds, so asking changes nothing.
#[tokio::test]
async fn a_lease_time_asked_for_is_granted_within_the_subnets_bounds() {
    let s = setup("lease-asked").await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 3, 1), s.hive.port).await;
    let timers = |m: &dhcproto::v4::Message| match (
        opt(m, OptionCode::Renewal),
        opt(m, OptionCode::Rebinding),
    ) {
        (Some(DhcpOption::Renewal(t1)), Some(DhcpOption::Rebinding(t2))) => (*t1, *t2),
        other => panic!("no T1/T2: {other:?}"),
    };
    for (n, asked, granted) in [(40u32, 120u32, 120u32), (41, 5, 60), (42, u32::MAX, 3600)] {
        let ask = [&[51u8, 4][..], &asked.to_be_bytes()].concat();
        let m = mac(n);
        relay
            .send_raw(&with_raw_options(&discover(&m, n, relay.giaddr), &ask))
            .await;
        let offer = relay.recv(Duration::from_secs(2)).await.expect("offer");
        assert_eq!(lease_time(&offer), Some(granted), "asked {asked}");
        assert_eq!(
            timers(&offer),
            (granted / 2, granted * 7 / 8),
            "asked {asked}"
        );
        let ip = offer.yiaddr();
        let request = request_selecting(&m, n, relay.giaddr, ip, SERVER_ID);
        relay.send_raw(&with_raw_options(&request, &ask)).await;
        let ack = relay.recv(Duration::from_secs(2)).await.expect("ack");
        assert_eq!(msg_type(&ack), Some(MessageType::Ack));
        assert_eq!(lease_time(&ack), Some(granted), "asked {asked}");
        let key = format!("{}:{{127.0.3.0/24}}:lease:{ip}", s.prefix);
        let ttl: i64 = s.redis.cli(&["ttl", &key]).parse().expect("ttl");
        let granted = i64::from(granted);
        assert!(
            (granted - 2..=granted).contains(&ttl),
            "lease ttl {ttl}, granted {granted}"
        );
        let expires: i64 = s
            .redis
            .cli(&["hget", &key, "expires_at"])
            .parse()
            .expect("s");
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs(),
        )
        .expect("now");
        assert!((expires - now - granted).abs() <= 2, "expires_at {expires}");
    }
    // No bounds: the subnet's 600 s whatever the client asks.
    let m = mac(43);
    s.relay
        .send_raw(&with_raw_options(
            &discover(&m, 43, GIADDR),
            &[51, 4, 0, 0, 0, 30],
        ))
        .await;
    let offer = s.relay.recv(Duration::from_secs(2)).await.expect("offer");
    assert_eq!(lease_time(&offer), Some(600));
    s.hive.stop().await;
}

#[tokio::test]
async fn reservations_by_relay_circuit_id_and_client_identifier() {
    let s = setup("resv-ids").await;
    // The client behind switch port "port-7" (option 82 sub-option 1), whatever its MAC.
    let agent = [82, 8, 1, 6, b'p', b'o', b'r', b't', b'-', b'7'];
    s.relay
        .send_raw(&with_raw_options(&discover(&mac(40), 40, GIADDR), &agent))
        .await;
    let offer = s.relay.recv(Duration::from_secs(2)).await.expect("offer");
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(127, 0, 2, 7));
    // By option 61.
    let mut d = discover(&mac(41), 41, GIADDR);
    d.opts_mut()
        .insert(DhcpOption::ClientIdentifier(vec![0xff, 0, 0, 0, 8]));
    let offer = s.relay.exchange(&d).await.expect("offer");
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(127, 0, 2, 8));
    // Nobody else gets either.
    for (i, ip) in [(42u32, 7u8), (43, 8)] {
        let mut d = discover(&mac(i), i, GIADDR);
        d.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(127, 0, 2, ip)));
        let offer = s.relay.exchange(&d).await.expect("offer");
        assert_ne!(offer.yiaddr(), Ipv4Addr::new(127, 0, 2, ip));
    }
    s.hive.stop().await;
}

#[tokio::test]
async fn several_pools_and_exclusions_bound_what_is_given() {
    let redis = Redis::start();
    let port = free_port();
    let json = config_json(port, &redis.url(), &prefix("pools"), 19).replacen(
        r#""dynEnd": "127.0.2.19","#,
        r#""dynEnd": "127.0.2.19",
      "pools": [{ "start": "127.0.2.200", "end": "127.0.2.201" }],
      "exclude": [{ "start": "127.0.2.12", "end": "127.0.2.15" }],"#,
        1,
    );
    let hive = Hive::start(parse_config(&json), 1).await;
    let relay = Relay::new(GIADDR, port).await;
    let got = run_clients(&relay, (500..512).collect()).await;
    let mut ips: Vec<u8> = got.iter().map(|(_, ip)| ip.octets()[3]).collect();
    ips.sort_unstable();
    // .10-.19 without .12-.15, plus .200-.201: 8 addresses for 12 clients.
    assert_eq!(ips, vec![10, 11, 16, 17, 18, 19, 200, 201]);
    // An excluded address is not granted even when asked for.
    let mut r = message(MessageType::Request, &mac(600), 600, GIADDR);
    r.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(127, 0, 2, 13)));
    let nak = relay.exchange(&r).await.expect("nak");
    assert_eq!(msg_type(&nak), Some(MessageType::Nak));
    hive.stop().await;
}
