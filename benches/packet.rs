//! Micro-benchmark of a node's per-packet work without Redis: decode (`protocol::parse`),
//! decide (`protocol::handle` against a store that answers at once) and encode
//! (`protocol::encode`), for a relayed DISCOVER and REQUEST like those of `hive-loadgen`.
//!
//! Standard harness (`harness = false`): `cargo bench --bench packet` prints ns per packet for
//! each stage and for the whole path. What it leaves out, on purpose: sockets, the tokio task
//! per datagram, metrics and the Redis round trip (see bench/README.md for the full path).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use dhcp_hive_mind::config::Config;
use dhcp_hive_mind::lease::{Allocation, Exchange, Grant, Hold, LeaseError, Offered, Pool, Store};
use dhcp_hive_mind::protocol::{self, Answer, Context, Request};

/// A store that grants everything at once: the benchmark measures the node, not Redis.
struct Instant0;

impl Store for Instant0 {
    async fn offer(
        &self,
        _: &Exchange<'_>,
        _: Option<Ipv4Addr>,
        _: Hold,
    ) -> Result<Offered, LeaseError> {
        Ok(Offered {
            ip: Ipv4Addr::new(10, 77, 1, 9),
            how: Allocation::New,
            fresh: true,
        })
    }
    async fn request(&self, _: &Exchange<'_>, _: Ipv4Addr, _: bool) -> Result<Grant, LeaseError> {
        Ok(Grant::Selected)
    }
    async fn release(&self, _: &Exchange<'_>, _: Ipv4Addr, _: bool) -> Result<(), LeaseError> {
        Ok(())
    }
    async fn decline(&self, _: &Exchange<'_>, _: Ipv4Addr) -> Result<(), LeaseError> {
        Ok(())
    }
    async fn inform(&self, _: &Exchange<'_>) -> Result<(), LeaseError> {
        Ok(())
    }
    async fn prepare(&self, _: &[Pool]) -> Result<(), LeaseError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), LeaseError> {
        Ok(())
    }
}

/// Runs a future that completes without waiting (the store above never waits).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = TaskContext::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

const CONFIG: &str = r#"{
  "hostname": "bench", "interface": "lo", "port": 67, "serverId": "10.77.0.1",
  "subnets": [ { "subnet": "10.77.0.0/16", "dynStart": "10.77.1.0", "dynEnd": "10.77.255.254",
                 "leaseTime": 3600, "router": "10.77.0.1", "dns": ["10.77.0.1"],
                 "domainName": "bench.example" } ]
}"#;

/// A relayed DHCP message as a relay agent forwards it (the same bytes as hive-loadgen's).
fn message(msg_type: u8, xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1;
    p[2] = 6;
    p[3] = 1;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[24..28].copy_from_slice(&[10, 77, 0, 101]); // giaddr
    p[28..34].copy_from_slice(&[2, 0x42, 0, 0, 0x12, 0x34]);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, msg_type]);
    if msg_type == 3 {
        p.extend_from_slice(&[50, 4, 10, 77, 1, 9, 54, 4, 10, 77, 0, 1]);
    }
    p.extend_from_slice(&[55, 9, 1, 3, 6, 15, 28, 51, 54, 58, 59, 255]);
    p.resize(300, 0);
    p
}

/// Times `f` over enough iterations to take about `budget`, after a warm-up; ns per call.
fn time<T>(budget: Duration, mut f: impl FnMut() -> T) -> f64 {
    for _ in 0..1_000 {
        black_box(f());
    }
    let mut n = 1_000u64;
    loop {
        let start = Instant::now();
        for _ in 0..n {
            black_box(f());
        }
        let took = start.elapsed();
        if took >= budget / 4 || n >= 1 << 30 {
            // Scale to the budget, then measure for real.
            let n = ((n as f64) * budget.as_secs_f64() / took.as_secs_f64().max(1e-9)) as u64;
            let n = n.max(1);
            let start = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            return start.elapsed().as_nanos() as f64 / n as f64;
        }
        n *= 4;
    }
}

fn main() {
    // `cargo test --benches` runs this binary with `--bench` absent: keep it short then.
    let budget = if std::env::args().any(|a| a == "--bench") {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(20)
    };
    let config = match Config::from_json(Path::new("bench.json"), CONFIG) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench config: {e}");
            std::process::exit(1);
        }
    };
    let subnet = &config.subnets[0];
    let pool = Pool::new(&config, subnet);
    let ctx = Context {
        config: &config,
        subnet,
        pool: &pool,
        server_id: Ipv4Addr::new(10, 77, 0, 1),
        pools: std::slice::from_ref(&pool),
        pinger: None,
        classes: 0,
    };
    let store = Instant0;
    let discover = message(1, 0x1234_5678);
    let request = message(3, 0x1234_5678);
    let mut out = Vec::with_capacity(protocol::MIN_MAX_SIZE);

    let decide = |req: &Request| ready(protocol::handle(req, &ctx, &store));
    let encode = |answer: &Answer, out: &mut Vec<u8>| match answer {
        Answer::Reply(r) => protocol::encode(
            &r.header,
            &r.options,
            r.relay_info.as_deref(),
            r.max_len,
            out,
        )
        .map(|()| out.len())
        .unwrap_or(0),
        Answer::Done(_) => 0,
    };

    println!("per-packet path without Redis (ns/packet, lower is better)");
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>12}",
        "message", "decode", "decide", "encode", "whole path"
    );
    for (name, bytes) in [("DISCOVER", &discover), ("REQUEST", &request)] {
        let Ok(req) = protocol::parse(bytes) else {
            eprintln!("{name}: the benchmark's packet does not parse");
            std::process::exit(1);
        };
        let Ok(answer) = decide(&req) else {
            eprintln!("{name}: no answer");
            std::process::exit(1);
        };
        let t_decode = time(budget, || protocol::parse(black_box(bytes)));
        let t_decide = time(budget, || decide(black_box(&req)));
        let t_encode = time(budget, || encode(black_box(&answer), &mut out));
        let t_all = time(budget, || {
            let Ok(req) = protocol::parse(black_box(bytes)) else {
                return 0;
            };
            decide(&req).map_or(0, |a| encode(&a, &mut out))
        });
        println!("{name:<10} {t_decode:>10.0} {t_decide:>10.0} {t_encode:>10.0} {t_all:>12.0}");
    }
}
