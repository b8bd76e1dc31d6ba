//! The hive as a whole: several nodes on one Redis, concurrency, pool exhaustion, one answer
//! per exchange, Redis outage, and garbage input.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::MessageType;
use dhcproto::{Encodable, Encoder};
use rand::{Rng, SeedableRng};

use crate::common::*;

/// A hive config with one big subnet 127.8.0.0/20 (and a small one, 127.9.0.0/24, with
/// `small` addresses) relayed from 127.8.0.x / 127.9.0.1.
fn big_config(port: u16, redis: &str, prefix: &str, small: u8) -> String {
    format!(
        r#"{{
  "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{redis}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}", "offerTime": 30,
  "subnets": [
    {{ "subnet": "127.8.0.0/20", "router": "127.8.0.1", "dynStart": "127.8.1.0",
       "dynEnd": "127.8.15.250", "leaseTime": 3600 }},
    {{ "subnet": "127.9.0.0/24", "router": "127.9.0.1", "dynStart": "127.9.0.10",
       "dynEnd": "127.9.0.{}", "leaseTime": 3600 }}
  ]
}}"#,
        9 + u32::from(small)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_give_a_thousand_clients_distinct_addresses() {
    let _heavy = HEAVY.lock().await;
    let redis = Redis::start();
    let port = free_port();
    let prefix = prefix("thousand");
    let hive = Hive::start(
        parse_config(&big_config(port, &redis.url(), &prefix, 50)),
        3,
    )
    .await;
    // Eight relays with their own source addresses, so SO_REUSEPORT spreads them over the nodes.
    let mut relays = Vec::new();
    for i in 2..10u8 {
        relays.push(Arc::new(
            Relay::new(Ipv4Addr::new(127, 8, 0, i), port).await,
        ));
    }
    let clients = 1000u32;
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..relays.len() as u32 {
        let relay = Arc::clone(&relays[r as usize]);
        tasks.spawn(async move {
            // Each relay runs its clients' exchanges concurrently, matching replies by xid.
            run_clients(&relay, (r..clients).step_by(8).collect()).await
        });
    }
    let mut acked = Vec::new();
    while let Some(r) = tasks.join_next().await {
        acked.extend(r.expect("relay task"));
    }
    let unique: HashSet<Ipv4Addr> = acked.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(acked.len(), clients as usize, "every client got an ACK");
    assert_eq!(unique.len(), acked.len(), "no address given twice");
    // Redis agrees: one bound lease per client, each with its own MAC.
    let keys = redis.cli(&[
        "--scan",
        "--pattern",
        &format!("{prefix}:{{127.8.0.0/20}}:lease:*"),
    ]);
    assert_eq!(keys.lines().count(), clients as usize);
    for (m, ip) in acked.iter().take(50) {
        let key = format!("{prefix}:{{127.8.0.0/20}}:lease:{ip}");
        assert_eq!(
            redis.cli(&["hget", &key, "mac"]),
            dhcp_hive_mind::protocol::mac_text(&mac(*m))
        );
    }
    // Every node served part of the load.
    let script = "local r = {} for _, k in ipairs(redis.call('keys', ARGV[1])) do r[#r + 1] = redis.call('hget', k, 'node') end return r";
    let pattern = format!("{prefix}:{{127.8.0.0/20}}:lease:*");
    let nodes: HashSet<String> = redis
        .cli(&["eval", script, "0", &pattern])
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(nodes.len() >= 2, "load spread over nodes: {nodes:?}");

    // Exhaustion: 80 clients for 50 addresses in 127.9.0.0/24.
    let small = Relay::new(Ipv4Addr::new(127, 9, 0, 1), port).await;
    let got = run_clients(&small, (5000..5080).collect()).await;
    let unique: HashSet<Ipv4Addr> = got.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(got.len(), 50, "exactly the pool size is leased");
    assert_eq!(unique.len(), 50, "no address doubled");
    // The surplus gets no offer at all.
    small.send(&discover(&mac(6000), 6000, small.giaddr)).await;
    assert!(
        small.recv(Duration::from_millis(500)).await.is_none(),
        "no offer from an empty pool"
    );
    hive.stop().await;
}

#[tokio::test]
async fn one_exchange_seen_by_three_nodes_gets_one_answer() {
    let redis = Redis::start();
    let port = free_port();
    let hive = Hive::start(
        parse_config(&config_json(port, &redis.url(), &prefix("once"), 250)),
        3,
    )
    .await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 2, 1), port).await;
    let peer: SocketAddr = relay.sock.local_addr().expect("addr");
    // What a broadcast does on one host: the same datagram reaches every node.
    let mut bytes = Vec::new();
    discover(&mac(1), 77, relay.giaddr)
        .encode(&mut Encoder::new(&mut bytes))
        .expect("encode");
    let sock =
        dhcp_hive_mind::transport::bind(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None)
            .expect("bind");
    let (a, b, c) = tokio::join!(
        hive.nodes[0].process(&bytes, peer, &sock),
        hive.nodes[1].process(&bytes, peer, &sock),
        hive.nodes[2].process(&bytes, peer, &sock),
    );
    let _ = (a, b, c);
    let first = relay.recv(Duration::from_secs(2)).await.expect("one offer");
    assert_eq!(msg_type(&first), Some(MessageType::Offer));
    assert!(
        relay.recv(Duration::from_millis(500)).await.is_none(),
        "exactly one answer"
    );
    // Any node ACKs, whichever made the offer.
    let req = request_selecting(
        &mac(1),
        77,
        relay.giaddr,
        first.yiaddr(),
        Ipv4Addr::LOCALHOST,
    );
    let mut bytes = Vec::new();
    req.encode(&mut Encoder::new(&mut bytes)).expect("encode");
    for node in &hive.nodes {
        node.process(&bytes, peer, &sock).await;
    }
    let ack = relay.recv(Duration::from_secs(2)).await.expect("one ack");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), first.yiaddr());
    assert!(
        relay.recv(Duration::from_millis(500)).await.is_none(),
        "exactly one ACK"
    );
    hive.stop().await;
}

/// The node that claimed an exchange answers its retransmissions, the others stay silent until
/// the claim runs out (its node may have died).
#[tokio::test]
async fn a_claim_binds_an_exchange_to_its_node_until_it_runs_out() {
    let redis = Redis::start();
    let port = free_port();
    let prefix = prefix("claim");
    let hive = Hive::start(
        parse_config(&config_json(port, &redis.url(), &prefix, 250)),
        2,
    )
    .await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 2, 1), port).await;
    let peer: SocketAddr = relay.sock.local_addr().expect("addr");
    let sock =
        dhcp_hive_mind::transport::bind(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None)
            .expect("bind");
    let client_key = format!("{prefix}:{{127.0.2.0/24}}:client:hw-020000000007");
    let mut bytes = Vec::new();
    discover(&mac(7), 0x5151, relay.giaddr)
        .encode(&mut Encoder::new(&mut bytes))
        .expect("encode");
    let offered = |node: usize| {
        let (node, bytes, sock) = (&hive.nodes[node], &bytes, &sock);
        let relay = &relay;
        async move {
            node.process(bytes, peer, sock).await;
            relay
                .recv(Duration::from_millis(300))
                .await
                .map(|m| m.yiaddr())
        }
    };
    let ip = offered(0).await.expect("node 0 offers");
    assert_eq!(redis.cli(&["get", &client_key]), ip.to_string());
    assert_eq!(
        offered(1).await,
        None,
        "the other node leaves the exchange to node 0"
    );
    assert_eq!(
        offered(0).await,
        Some(ip),
        "node 0 answers the retransmission"
    );
    tokio::time::sleep(Duration::from_millis(dhcp_hive_mind::lease::CLAIM_MS + 200)).await;
    assert_eq!(
        offered(1).await,
        Some(ip),
        "once the claim ran out, the other node takes the exchange"
    );
    let ttl: i64 = redis.cli(&["ttl", &client_key]).parse().expect("ttl");
    assert!(
        ttl > 600,
        "the hint lives lease + stickyTime, not the claim's 2 s: {ttl}"
    );
    hive.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_and_recovers_within_five_seconds() {
    let mut redis = Redis::start();
    let port = free_port();
    let hive = Hive::start(
        parse_config(&config_json(port, &redis.url(), &prefix("outage"), 250)),
        2,
    )
    .await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 2, 1), port).await;
    let before = dora(&relay, &mac(1), 1).await.expect("serves with Redis");
    redis.stop();
    // Under traffic while Redis is down: nothing is offered or acknowledged.
    for i in 0..20u32 {
        relay
            .send(&discover(&mac(100 + i), 100 + i, relay.giaddr))
            .await;
    }
    assert!(
        relay.recv(Duration::from_secs(1)).await.is_none(),
        "no offer without Redis"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        hive.nodes.iter().all(|n| !n.is_ready()),
        "nodes report not-ready"
    );
    redis.restart();
    let back = Instant::now();
    let mut served = None;
    let mut xid = 1000;
    // Single tries 200 ms apart, so the time to recovery is measured finely.
    while back.elapsed() < Duration::from_secs(8) && served.is_none() {
        xid += 1;
        let offer = relay
            .exchange_once(
                &discover(&mac(2), xid, relay.giaddr),
                Duration::from_millis(200),
            )
            .await;
        if let Some(offer) = offer.filter(|m| msg_type(m) == Some(MessageType::Offer)) {
            let req = request_selecting(
                &mac(2),
                xid,
                relay.giaddr,
                offer.yiaddr(),
                Ipv4Addr::LOCALHOST,
            );
            if relay
                .exchange(&req)
                .await
                .is_some_and(|m| msg_type(&m) == Some(MessageType::Ack))
            {
                served = Some(offer.yiaddr());
            }
        }
    }
    let took = back.elapsed();
    assert!(served.is_some(), "serving again after Redis returned");
    assert!(took < Duration::from_secs(5), "back in {took:?}");
    println!("hive served again {took:?} after Redis returned");
    // The lease from before the outage survived (AOF) and is still the client's.
    assert_eq!(dora(&relay, &mac(1), 5000).await, Some(before));
    hive.stop().await;
}

/// A Redis whose script cache was emptied under a live connection (SCRIPT FLUSH; a failover to
/// a replica that never loaded them looks the same) answers NOSCRIPT: the node loads the script
/// and makes the call again, so the client is served at once, with no reconnection to help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_under_a_live_connection_are_loaded_again() {
    let redis = Redis::start();
    let port = free_port();
    let hive = Hive::start(
        parse_config(&config_json(port, &redis.url(), &prefix("noscript"), 250)),
        1,
    )
    .await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 2, 1), port).await;
    let first = dora(&relay, &mac(1), 1).await.expect("serves");
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    // DISCOVER and REQUEST both meet an empty cache (each script is loaded on its first miss).
    let second = dora(&relay, &mac(2), 2)
        .await
        .expect("served after SCRIPT FLUSH");
    assert_ne!(first, second);
    assert_eq!(dora(&relay, &mac(1), 3).await, Some(first), "same lease");
    hive.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dropped_and_the_node_still_answers() {
    let redis = Redis::start();
    let port = free_port();
    let hive = Hive::start(
        parse_config(&config_json(port, &redis.url(), &prefix("garbage"), 250)),
        1,
    )
    .await;
    let relay = Relay::new(Ipv4Addr::new(127, 0, 2, 1), port).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut valid = Vec::new();
    discover(&mac(9), 9, relay.giaddr)
        .encode(&mut Encoder::new(&mut valid))
        .expect("encode");
    for i in 0..3000 {
        let bytes: Vec<u8> = match i % 4 {
            // Random bytes of random length.
            0 => (0..rng.random_range(0..1500))
                .map(|_| rng.random())
                .collect(),
            // A valid message cut short.
            1 => valid[..rng.random_range(0..valid.len())].to_vec(),
            // A valid message with bytes flipped (often inside the options).
            2 => {
                let mut b = valid.clone();
                for _ in 0..rng.random_range(1..8) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b
            }
            // A valid header with random options.
            _ => {
                let mut b = valid[..240].to_vec();
                b.extend((0..rng.random_range(0..300)).map(|_| rng.random::<u8>()));
                b
            }
        };
        relay.send_raw(&bytes).await;
    }
    // Drain whatever the corrupted-but-valid ones earned, then a clean client is served.
    while relay.recv(Duration::from_millis(300)).await.is_some() {}
    assert!(
        dora(&relay, &mac(42), 4242).await.is_some(),
        "still answers a valid client"
    );
    hive.stop().await;
}

#[test]
fn parse_never_panics_on_random_input() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut valid = Vec::new();
    discover(&mac(9), 9, Ipv4Addr::new(127, 0, 2, 1))
        .encode(&mut Encoder::new(&mut valid))
        .expect("encode");
    let mut parsed = 0;
    for _ in 0..50_000 {
        let mut b = valid.clone();
        for _ in 0..rng.random_range(1..16) {
            let at = rng.random_range(0..b.len());
            b[at] = rng.random();
        }
        b.truncate(rng.random_range(0..=b.len()));
        if dhcp_hive_mind::protocol::parse(&b).is_ok() {
            parsed += 1;
        }
    }
    // Some mutations leave a valid message, most do not; neither panics.
    assert!(parsed < 50_000);
}
