//! Hostile but well-formed messages through decode + decide, with a store that records every
//! call: never a panic, never a reply to a malformed packet, and never a store call (a Redis
//! write) for a message the server must drop before deciding.

use std::net::Ipv4Addr;
use std::sync::Mutex;

use dhcp_hive_mind::lease::{Allocation, Exchange, Grant, Hold, LeaseError, Offered, Pool, Store};
use dhcp_hive_mind::protocol::{self, Answer, Context, Drop};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Encodable, Encoder};
use rand::{Rng, SeedableRng};

use crate::common::*;

/// Records the calls; answers success (or, one time in four, a refusal).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<&'static str>>,
}

impl Recorder {
    fn note(&self, what: &'static str) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(what);
        }
    }
    fn count(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Store for Recorder {
    async fn offer(
        &self,
        ex: &Exchange<'_>,
        _: Option<Ipv4Addr>,
        _: Hold,
    ) -> Result<Offered, LeaseError> {
        self.note("offer");
        if ex.xid.is_multiple_of(4) {
            return Err(LeaseError::Exhausted);
        }
        Ok(Offered {
            ip: Ipv4Addr::new(127, 0, 2, 20),
            how: Allocation::New,
            fresh: true,
        })
    }
    async fn request(&self, ex: &Exchange<'_>, _: Ipv4Addr, _: bool) -> Result<Grant, LeaseError> {
        self.note("request");
        if ex.xid.is_multiple_of(4) {
            return Err(LeaseError::Refused {
                reason: dhcp_hive_mind::lease::Refusal::Taken,
                nak: true,
            });
        }
        Ok(Grant::Renewed)
    }
    async fn release(&self, _: &Exchange<'_>, _: Ipv4Addr, _: bool) -> Result<(), LeaseError> {
        self.note("release");
        Ok(())
    }
    async fn decline(&self, _: &Exchange<'_>, _: Ipv4Addr) -> Result<(), LeaseError> {
        self.note("decline");
        Ok(())
    }
    async fn inform(&self, _: &Exchange<'_>) -> Result<(), LeaseError> {
        self.note("inform");
        Ok(())
    }
    async fn prepare(&self, _: &[Pool]) -> Result<(), LeaseError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), LeaseError> {
        Ok(())
    }
}

/// Drops decided before the store is asked.
fn decided_before_store(d: Drop) -> bool {
    matches!(
        d,
        Drop::MissingField
            | Drop::UnexpectedType
            | Drop::NoSubnet
            | Drop::NotForUs
            | Drop::BootpDisabled
            | Drop::NoClassPool
    )
}

fn hostile(rng: &mut rand::rngs::StdRng) -> Message {
    let types = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 200];
    let mut m = message(
        MessageType::Discover,
        &mac(rng.random_range(1..1000)),
        rng.random(),
        Ipv4Addr::UNSPECIFIED,
    );
    m.opts_mut().clear();
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::from(
            types[rng.random_range(0..types.len())],
        )));
    let addr = |rng: &mut rand::rngs::StdRng| match rng.random_range(0..5) {
        0 => Ipv4Addr::UNSPECIFIED,
        1 => Ipv4Addr::new(127, 0, 2, rng.random()),
        2 => Ipv4Addr::new(127, 0, 9, rng.random()),
        3 => Ipv4Addr::BROADCAST,
        _ => Ipv4Addr::from(rng.random::<u32>()),
    };
    m.set_giaddr(addr(rng));
    m.set_ciaddr(addr(rng));
    m.set_yiaddr(addr(rng));
    if rng.random_bool(0.5) {
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(addr(rng)));
    }
    if rng.random_bool(0.5) {
        m.opts_mut().insert(DhcpOption::ServerIdentifier(addr(rng)));
    }
    if rng.random_bool(0.3) {
        let len = rng.random_range(2..40);
        m.opts_mut().insert(DhcpOption::ClientIdentifier(
            (0..len).map(|_| rng.random()).collect(),
        ));
    }
    if rng.random_bool(0.3) {
        m.opts_mut().insert(DhcpOption::Hostname(
            (0..rng.random_range(1..80))
                .map(|_| rng.random_range(0u8..=255) as char)
                .collect(),
        ));
    }
    if rng.random_bool(0.3) {
        m.opts_mut()
            .insert(DhcpOption::MaxMessageSize(rng.random()));
    }
    if rng.random_bool(0.1) {
        m.set_opcode(Opcode::BootReply);
    }
    m
}

#[tokio::test]
async fn hostile_messages_never_panic_and_never_write_when_dropped_first() {
    // The loopback config with classes, class pools, a shared network and BOOTP on top, so
    // that every path of the decision sees hostile input.
    let mut json: serde_json::Value =
        serde_json::from_str(&config_json(1067, "redis://127.0.0.1:1", "hostile", 250))
            .expect("json");
    json["clientClasses"] = serde_json::json!([
        { "name": "a", "match": "vendor-class starts-with \"A\" or user-class == \"u\"" },
        { "name": "b", "match": "circuit-id exists and not member \"a\" or mac starts-with 02:00:00" },
        { "name": "c", "match": "relay[9] contains 0x00 and subnet == 127.0.3.0/24" }
    ]);
    json["subnets"][0]["pools"] =
        serde_json::json!([{ "start": "127.0.2.251", "end": "127.0.2.253", "classes": ["a"] }]);
    json["subnets"][0]["bootp"] = serde_json::json!(true);
    json["subnets"][1]["classes"] = serde_json::json!(["b", "c"]);
    for s in 0..2 {
        json["subnets"][s]["sharedNetwork"] = serde_json::json!("link");
    }
    let config = parse_config(&json.to_string());
    let pools: Vec<Pool> = config
        .subnets
        .iter()
        .map(|s| Pool::new(&config, s))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbad);
    let (mut replies, mut dropped_early, mut bootp, mut classed) = (0, 0, 0, 0);
    for _ in 0..20_000 {
        let msg = hostile(&mut rng);
        let mut bytes = Vec::new();
        msg.encode(&mut Encoder::new(&mut bytes)).expect("encode");
        // Class material: vendor and user class, relay information, and no message type at all.
        if rng.random_bool(0.3) {
            let code = [60u8, 77, 82][rng.random_range(0..3)];
            let mut body: Vec<u8> = (0..rng.random_range(0..12)).map(|_| rng.random()).collect();
            if code == 82 && rng.random_bool(0.7) {
                body = vec![1, 2, b'A', rng.random(), 9, 1, rng.random()];
            }
            let mut extra = vec![code, body.len() as u8];
            extra.extend(body);
            let end = bytes.iter().rposition(|b| *b == 255).expect("end");
            bytes.splice(end..end, extra);
        }
        if rng.random_bool(0.1) {
            // Option 53 is first: turn it into pads (a BOOTP request).
            bytes[240..243].fill(0);
        }
        // Some get their option area damaged on top.
        if rng.random_bool(0.2) && bytes.len() > 241 {
            let at = rng.random_range(240..bytes.len());
            bytes[at] = rng.random();
        }
        // Malformed: no decision, no store, no reply.
        let Ok(req) = protocol::parse(&bytes) else {
            continue;
        };
        let Some(i) = protocol::select_subnet(&config, &req, None) else {
            continue;
        };
        bootp += usize::from(req.bootp);
        classed += usize::from(protocol::classes_of(&config, &req, &config.subnets[i]) != 0);
        let store = Recorder::default();
        let ctx = Context {
            config: &config,
            subnet: &config.subnets[i],
            pool: &pools[i],
            server_id: Ipv4Addr::LOCALHOST,
            pools: &pools,
            pinger: None,
            classes: 0,
        };
        match protocol::handle(&req, &ctx, &store).await {
            Ok(Answer::Reply(reply)) => {
                replies += 1;
                let mut out = Vec::new();
                protocol::encode(
                    &reply.header,
                    &reply.options,
                    reply.relay_info.as_deref(),
                    reply.max_len,
                    &mut out,
                )
                .expect("a reply always encodes");
                assert!(
                    out.len() <= reply.max_len.max(300),
                    "reply of {} bytes over {}",
                    out.len(),
                    reply.max_len
                );
                assert_eq!(out[0], 2, "replies are BOOTREPLYs");
            }
            Ok(Answer::Done(_)) => {}
            Err(d) if decided_before_store(d) => {
                dropped_early += 1;
                assert_eq!(
                    store.count(),
                    0,
                    "{d:?} wrote to the store: {:?}",
                    store.calls.lock().map(|c| c.clone())
                );
            }
            Err(_) => {}
        }
    }
    // The generator reaches both outcomes often.
    assert!(
        replies > 300 && dropped_early > 1000 && bootp > 100 && classed > 1000,
        "replies {replies}, early drops {dropped_early}, BOOTP {bootp}, in a class {classed}"
    );
}
