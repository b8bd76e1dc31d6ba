//! The hive on a real Redis Cluster (3 primaries, 3 replicas): subnets spread over the shards,
//! a slot moved to another primary while clients are served, and a primary killed and replaced
//! by its replica.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcp_hive_mind::protocol::mac_text;
use dhcproto::v4::MessageType;

use crate::common::cluster::{Cluster, Conn, Resp, call, key_slot};
use crate::common::*;

/// A hive config with one /24 per `subnets` entry (`127.<n>.0.0/24`, relayed from 127.<n>.0.x).
fn cluster_config(port: u16, redis: &str, prefix: &str, subnets: &[(String, u8, u16)]) -> String {
    let subnets: Vec<String> = subnets
        .iter()
        .map(|(net, n, _)| {
            format!(
                r#"{{ "subnet": "{net}", "router": "127.{n}.0.1", "dynStart": "127.{n}.0.10",
                   "dynEnd": "127.{n}.0.250", "leaseTime": 600 }}"#
            )
        })
        .collect();
    format!(
        r#"{{ "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{redis}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}", "offerTime": 10,
  "subnets": [{}] }}"#,
        subnets.join(",\n")
    )
}

fn lease_key(prefix: &str, subnet: &str, ip: Ipv4Addr) -> String {
    format!("{prefix}:{{{subnet}}}:lease:{ip}")
}

/// DORA with short waits (250 ms, 12 tries per step), so the time to recovery after a fault
/// is measured to a quarter second rather than to a DHCP client's 4 s back-off. Returns the
/// address and when the REQUEST that got the ACK was sent.
async fn dora_fast(relay: &Relay, mac: &[u8], xid: u32) -> Option<(Ipv4Addr, Instant)> {
    let wait = Duration::from_millis(250);
    let mut offered = None;
    for _ in 0..12 {
        relay.send(&discover(mac, xid, relay.giaddr)).await;
        if let Some(m) = recv_for(relay, xid, wait).await
            && msg_type(&m) == Some(MessageType::Offer)
        {
            offered = Some(m.yiaddr());
            break;
        }
    }
    let ip = offered?;
    for _ in 0..12 {
        let asked = Instant::now();
        relay
            .send(&request_selecting(
                mac,
                xid,
                relay.giaddr,
                ip,
                Ipv4Addr::LOCALHOST,
            ))
            .await;
        match recv_for(relay, xid, wait).await {
            Some(m) if msg_type(&m) == Some(MessageType::Ack) => {
                return (m.yiaddr() == ip).then_some((ip, asked));
            }
            Some(m) if msg_type(&m) == Some(MessageType::Nak) => return None,
            _ => {}
        }
    }
    None
}

/// The next reply for `xid` within `wait` (late replies to earlier exchanges are skipped).
async fn recv_for(relay: &Relay, xid: u32, wait: Duration) -> Option<dhcproto::v4::Message> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = relay.recv(left).await?;
        if m.xid() == xid {
            return Some(m);
        }
    }
}

/// One finished client exchange of the background traffic.
#[derive(Debug, Clone, Copy)]
struct Done {
    subnet: usize,
    id: u32,
    ip: Option<Ipv4Addr>,
    /// When the exchange ended.
    at: Instant,
    /// When the REQUEST that got the ACK was sent.
    asked: Option<Instant>,
}

impl Done {
    /// An ACK to a REQUEST sent after `t`: the hive worked after `t`, not before.
    fn acked_after(&self, t: Instant) -> bool {
        self.asked.is_some_and(|a| a > t)
    }
}

/// DORA loops on two relays per subnet until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Done>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    async fn start(port: u16, subnets: &[(String, u8, u16)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (s, (_, n, _)) in subnets.iter().enumerate() {
            for r in 0..2u8 {
                let relay = Relay::new(Ipv4Addr::new(127, *n, 0, 2 + r), port).await;
                let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
                // 50 clients per relay, over and over (a /24 would soon be full of new
                // ones); each DORA gets its client's address again, through the slot's scripts.
                let base = 1_000_000 * (s as u32 + 1) + 100_000 * u32::from(r);
                let mut xid = base;
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        xid += 1;
                        let id = base + xid % 50;
                        let got = dora_fast(&relay, &mac(id), xid).await;
                        log.lock().expect("log").push(Done {
                            subnet: s,
                            id,
                            ip: got.map(|g| g.0),
                            at: Instant::now(),
                            asked: got.map(|g| g.1),
                        });
                        // About 50 exchanges a second per relay: enough to time a recovery
                        // to a few tens of ms, light enough to share 2 cores.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }));
            }
        }
        Self { stop, log, tasks }
    }

    async fn finish(self) -> Vec<Done> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("traffic task");
        }
        self.log.lock().expect("log").clone()
    }
}

/// Addresses given to two different clients (leases are 600 s and nobody releases here).
fn duplicates(acks: impl IntoIterator<Item = (u32, Ipv4Addr)>) -> Vec<String> {
    let mut holder: HashMap<Ipv4Addr, u32> = HashMap::new();
    let mut dups = Vec::new();
    for (id, ip) in acks {
        if let Some(other) = holder.insert(ip, id)
            && other != id
        {
            dups.push(format!("{ip}: clients {other} and {id}"));
        }
    }
    dups
}

/// Checks in Redis that each (subnet index, client, ip) is a bound lease with that client's MAC.
fn assert_leases_in_redis(
    cluster: &Cluster,
    prefix: &str,
    subnets: &[(String, u8, u16)],
    acks: &[(usize, u32, Ipv4Addr)],
) {
    let cmds: Vec<Vec<String>> = acks
        .iter()
        .map(|(s, _, ip)| {
            vec![
                "HMGET".into(),
                lease_key(prefix, &subnets[*s].0, *ip),
                "mac".into(),
                "state".into(),
            ]
        })
        .collect();
    let replies = cluster.pipeline_by_key(&cmds);
    for ((s, id, ip), r) in acks.iter().zip(replies) {
        let fields: Vec<String> = r.items().iter().map(Resp::text).collect();
        assert_eq!(
            fields,
            vec![mac_text(&mac(*id)), "bound".to_owned()],
            "lease {ip} of client {id} in {}",
            subnets[*s].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_subnets_spread_over_three_shards_are_all_served() {
    let cluster = tokio::task::block_in_place(Cluster::start);
    let subnets = cluster.spread_subnets(4, 20, 24);
    let primaries: HashSet<u16> = subnets.iter().map(|s| s.2).collect();
    assert_eq!(primaries.len(), 3, "4 subnets on 3 shards: {subnets:?}");
    let prefix = prefix("spread");
    // The slot arithmetic here is Redis's own.
    for (net, _, _) in &subnets {
        let key = lease_key(&prefix, net, Ipv4Addr::new(127, 0, 0, 1));
        let slot = call(cluster.nodes[0].port, &["CLUSTER", "KEYSLOT", &key]).expect("keyslot");
        assert_eq!(slot.int(), Some(i64::from(key_slot(&key))), "{key}");
    }
    let port = free_port();
    let hive = Hive::start(
        parse_config(&cluster_config(port, &cluster.url(), &prefix, &subnets)),
        3,
    )
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for (s, (_, n, _)) in subnets.iter().enumerate() {
        let relay = Relay::new(Ipv4Addr::new(127, *n, 0, 1), port).await;
        let first = 1000 * (s as u32 + 1);
        tasks.spawn(async move {
            let got = run_clients(&relay, (first..first + 60).collect()).await;
            (s, got)
        });
    }
    let mut acks = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (s, got) = r.expect("relay task");
        assert_eq!(got.len(), 60, "every client of {} served", subnets[s].0);
        let unique: HashSet<Ipv4Addr> = got.iter().map(|(_, ip)| *ip).collect();
        assert_eq!(unique.len(), 60, "no address twice in {}", subnets[s].0);
        acks.extend(got.into_iter().map(|(id, ip)| (s, id, ip)));
    }
    assert_leases_in_redis(&cluster, &prefix, &subnets, &acks);
    // Each lease sits on the primary that serves its subnet's slot, and no other primary holds
    // a key of that slot.
    for (s, (net, _, primary)) in subnets.iter().enumerate() {
        let slot = key_slot(&lease_key(&prefix, net, Ipv4Addr::LOCALHOST));
        let mut on_owner = Conn::open(*primary).expect("owner");
        let cmds: Vec<Vec<String>> = acks
            .iter()
            .filter(|a| a.0 == s)
            .map(|(_, _, ip)| vec!["EXISTS".into(), lease_key(&prefix, net, *ip)])
            .collect();
        let found = on_owner.pipeline(&cmds).expect("pipeline");
        assert!(
            found.iter().all(|r| r.int() == Some(1)),
            "leases of {net} on {primary}: {found:?}"
        );
        for other in cluster.shards().iter().filter(|x| x.primary != *primary) {
            let n = call(
                other.primary,
                &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()],
            )
            .expect("count");
            assert_eq!(
                n.int(),
                Some(0),
                "{net}'s slot {slot} has keys on {}",
                other.primary
            );
        }
        println!(
            "cluster spread: {net} -> slot {slot} -> primary 127.0.0.1:{primary}: {} leases",
            cmds.len()
        );
    }
    // The lease API pages through all four subnets, across the shards, in small pages:
    // every lease once, none twice.
    let node = &hive.nodes[0];
    let rt = node.runtime();
    let mut q = dhcp_hive_mind::admin::ListFilter {
        limit: 7,
        ..Default::default()
    };
    let mut listed = Vec::new();
    loop {
        let (rows, next) = dhcp_hive_mind::admin::list(node.store(), &rt.pools, &q)
            .await
            .expect("list over the cluster");
        listed.extend(rows.into_iter().map(|r| r.client_ip));
        match next {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    let unique: HashSet<Ipv4Addr> = listed.iter().copied().collect();
    assert_eq!(listed.len(), acks.len(), "each lease listed once");
    assert_eq!(unique, acks.iter().map(|a| a.2).collect::<HashSet<_>>());
    hive.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_traffic_keeps_every_subnet_served_without_duplicates() {
    let cluster = tokio::task::block_in_place(Cluster::start);
    let subnets = cluster.spread_subnets(4, 60, 24);
    let prefix = prefix("reshard");
    let port = free_port();
    let hive = Hive::start(
        parse_config(&cluster_config(port, &cluster.url(), &prefix, &subnets)),
        3,
    )
    .await;
    // Leases to move along with the slot.
    let mut acks = Vec::new();
    for (s, (_, n, _)) in subnets.iter().enumerate() {
        let relay = Relay::new(Ipv4Addr::new(127, *n, 0, 1), port).await;
        let first = 1000 * (s as u32 + 1);
        let got = run_clients(&relay, (first..first + 40).collect()).await;
        assert_eq!(got.len(), 40);
        acks.extend(got.into_iter().map(|(id, ip)| (s, id, ip)));
    }

    let traffic = Traffic::start(port, &subnets).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (net, _, from) = subnets[0].clone();
    let slot = key_slot(&lease_key(&prefix, &net, Ipv4Addr::LOCALHOST));
    let to = cluster
        .shards()
        .into_iter()
        .map(|s| s.primary)
        .find(|p| *p != from)
        .expect("another primary");
    let started = Instant::now();
    // The subnet's index keys first, then the leases in small batches with pauses: for about
    // two seconds the old owner answers ASK to most scripts on the slot while the hive runs
    // them.
    let per_client = |k: &str| {
        [":lease:", ":client:", ":xid:"]
            .iter()
            .any(|p| k.contains(p))
    };
    let moved = tokio::task::block_in_place(|| {
        cluster.migrate_slot(slot, to, |k| !per_client(k), 8, Duration::from_millis(60))
    });
    let done = Instant::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let log = traffic.finish().await;

    // Every subnet is served after the move, the moved one included.
    for (s, _) in subnets.iter().enumerate() {
        let after = log
            .iter()
            .filter(|d| d.subnet == s && d.acked_after(done))
            .count();
        let not_ready: Vec<String> = hive.nodes.iter().map(|n| n.not_ready_reason()).collect();
        assert!(
            after > 0,
            "{} not served after the move; nodes' not-ready reasons: {not_ready:?}",
            subnets[s].0
        );
    }
    let first_ack = log
        .iter()
        .filter(|d| d.subnet == 0 && d.acked_after(done))
        .map(|d| d.at - done)
        .min();
    let during = log.iter().filter(|d| d.at >= started && d.at <= done);
    let (ok, failed) = during.fold((0, 0), |(ok, f), d| {
        if d.ip.is_some() {
            (ok + 1, f)
        } else {
            (ok, f + 1)
        }
    });
    let total_failed = log.iter().filter(|d| d.ip.is_none()).count();
    println!(
        "reshard: slot {slot} of {net} moved 127.0.0.1:{from} -> 127.0.0.1:{to}: {moved} keys in \
         {:?}; {} exchanges under traffic ({ok} ACKed and {failed} failed while moving, \
         {total_failed} failed overall); first ACK in {net} {first_ack:?} after the move",
        done - started,
        log.len(),
    );

    acks.extend(log.iter().filter_map(|d| Some((d.subnet, d.id, d.ip?))));
    let per_subnet: BTreeMap<usize, Vec<(u32, Ipv4Addr)>> =
        acks.iter().fold(BTreeMap::new(), |mut m, (s, id, ip)| {
            m.entry(*s).or_insert_with(Vec::new).push((*id, *ip));
            m
        });
    for (s, got) in per_subnet {
        let dups = duplicates(got);
        assert!(dups.is_empty(), "duplicates in {}: {dups:?}", subnets[s].0);
    }
    // The slot lives on its new primary, with every lease of the subnet.
    for port in cluster.live_ports() {
        let owner = cluster
            .shards_seen_by(port)
            .expect("nodes")
            .into_iter()
            .find(|s| s.owns(slot))
            .map(|s| s.primary);
        assert_eq!(owner, Some(to), "node {port} sees slot {slot} on {owner:?}");
    }
    assert_leases_in_redis(&cluster, &prefix, &subnets, &acks);
    let relay = Relay::new(Ipv4Addr::new(127, subnets[0].1, 0, 9), port).await;
    assert!(
        dora_fast(&relay, &mac(9_999_999), 9_999_999)
            .await
            .is_some(),
        "a new client is served in the moved subnet"
    );
    hive.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_and_the_hive_serves_again() {
    primary_lost(Loss::Killed).await;
}

/// A primary that hangs (SIGSTOP: its connections stay open and nothing answers) is what a
/// network partition looks like. Nothing redirects the hive's calls: they time out, and the
/// hive must ask the cluster for its topology to find the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_is_replaced_and_the_hive_serves_again() {
    primary_lost(Loss::Hung).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    Killed,
    Hung,
}

/// One shard's primary lost under traffic, in one of two ways: its subnets are served again
/// once the replica is promoted, the others throughout, and no address is given twice.
async fn primary_lost(how: Loss) {
    let mut cluster = tokio::task::block_in_place(Cluster::start);
    let subnets = cluster.spread_subnets(4, 120, 24);
    let prefix = prefix("failover");
    let port = free_port();
    let hive = Hive::start(
        parse_config(&cluster_config(port, &cluster.url(), &prefix, &subnets)),
        3,
    )
    .await;
    let mut before = Vec::new();
    for (s, (_, n, _)) in subnets.iter().enumerate() {
        let relay = Relay::new(Ipv4Addr::new(127, *n, 0, 1), port).await;
        let first = 1000 * (s as u32 + 1);
        let got = run_clients(&relay, (first..first + 30).collect()).await;
        assert_eq!(got.len(), 30);
        before.extend(got.into_iter().map(|(id, ip)| (s, id, ip)));
    }
    let (net, victim_subnet_n, victim) = subnets[0].clone();
    let slot = key_slot(&lease_key(&prefix, &net, Ipv4Addr::LOCALHOST));
    let shard = cluster.owner(slot);
    assert_eq!(shard.primary, victim);
    // Replication is asynchronous: wait until the replica has the leases made so far, so the
    // test asserts what failover keeps, not a race.
    let replica = shard.replicas[0];
    let mut conn = Conn::open(replica).expect("replica");
    conn.call(&["READONLY"]).expect("readonly");
    let keys: Vec<Vec<String>> = before
        .iter()
        .filter(|b| b.0 == 0)
        .map(|(_, _, ip)| vec!["EXISTS".into(), lease_key(&prefix, &net, *ip)])
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn
        .pipeline(&keys)
        .expect("pipeline")
        .iter()
        .all(|r| r.int() == Some(1))
    {
        assert!(
            Instant::now() < deadline,
            "replica {replica} never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let traffic = Traffic::start(port, &subnets).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fault = Instant::now();
    match how {
        Loss::Killed => cluster.kill(victim),
        Loss::Hung => cluster.stop(victim),
    }
    let promoted_port = tokio::task::block_in_place(|| {
        cluster.wait_new_owner(slot, victim, Duration::from_secs(20))
    });
    let promoted = Instant::now();
    assert_eq!(promoted_port, replica, "the victim's replica took over");
    // Served again in the victim's subnet, within 15 s of the fault.
    let deadline = fault + Duration::from_secs(15);
    let first_ack = loop {
        let hit = traffic
            .log
            .lock()
            .expect("log")
            .iter()
            .filter(|d| d.subnet == 0 && d.acked_after(fault))
            .map(|d| d.at)
            .min();
        if let Some(at) = hit {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "{net} not served 15 s after the fault"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = traffic.finish().await;
    let others_first = log
        .iter()
        .filter(|d| d.subnet != 0 && d.acked_after(fault))
        .map(|d| d.at - fault)
        .min();
    // The longest pause between two ACKs in the other subnets across the fault.
    let mut other_acks: Vec<Instant> = log
        .iter()
        .filter(|d| d.subnet != 0 && d.ip.is_some())
        .map(|d| d.at)
        .collect();
    other_acks.sort();
    let other_gap = other_acks
        .windows(2)
        .filter(|w| w[1] > fault)
        .map(|w| w[1] - w[0])
        .max();
    let failed = log.iter().filter(|d| d.ip.is_none()).count();
    println!(
        "failover: primary 127.0.0.1:{victim} of {net} {how:?}; replica 127.0.0.1:{replica} \
         promoted after {:?}; first ACK in {net} {:?} after the fault; other subnets: first \
         ACK {others_first:?} after, longest pause {other_gap:?}; {} exchanges, {failed} failed",
        promoted - fault,
        first_ack - fault,
        log.len(),
    );
    // The other shards' subnets are served throughout: their calls go to their own primaries'
    // clients, not through the cluster client that waits for the failover. The election alone
    // takes over a second (cluster-node-timeout is 1 s here), so a pause as long means the
    // whole hive stopped with the one shard.
    let pause = other_gap.expect("ACKs in the other subnets after the fault");
    assert!(
        pause < Duration::from_millis(900) && pause < promoted - fault,
        "the other subnets paused {pause:?} while one shard failed over ({:?})",
        promoted - fault
    );
    for (s, _) in subnets.iter().enumerate() {
        assert!(
            log.iter().any(|d| d.subnet == s && d.acked_after(promoted)),
            "{} served after the failover",
            subnets[s].0
        );
    }
    let mut acks = before.clone();
    acks.extend(log.iter().filter_map(|d| Some((d.subnet, d.id, d.ip?))));
    for (s, (net, _, _)) in subnets.iter().enumerate() {
        let dups = duplicates(acks.iter().filter(|a| a.0 == s).map(|a| (a.1, a.2)));
        assert!(dups.is_empty(), "duplicates in {net}: {dups:?}");
    }
    // Leases made before the fault (and replicated) survive it: each client gets its address
    // back.
    let relay = Relay::new(Ipv4Addr::new(127, victim_subnet_n, 0, 1), port).await;
    for (_, id, ip) in before.iter().filter(|b| b.0 == 0).take(10) {
        assert_eq!(
            dora_fast(&relay, &mac(*id), 50_000 + id).await.map(|g| g.0),
            Some(*ip),
            "client {id} keeps its lease across the failover"
        );
    }
    assert_leases_in_redis(&cluster, &prefix, &subnets, &acks);
    hive.wait_ready(Duration::from_secs(5)).await;
    // The old primary comes back as a replica of the new one.
    tokio::task::block_in_place(|| {
        match how {
            Loss::Killed => cluster.restart(victim),
            Loss::Hung => cluster.resume(victim),
        }
        cluster.wait_stable(Duration::from_secs(20));
    });
    assert!(cluster.owner(slot).replicas.contains(&victim));
    hive.stop().await;
}
