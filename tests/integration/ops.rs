//! Operating the hive: exact metrics over HTTP (and `promtool check metrics`), the lease API
//! with filters and pagination over 10,000 leases, live reload under traffic, and a graceful
//! SIGTERM under traffic.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, MessageType, OptionCode};

use crate::common::*;

const GIADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);

fn served_config(
    port: u16,
    http: u16,
    redis: &str,
    prefix: &str,
    lease_time: u32,
    extra_subnet: bool,
) -> String {
    let extra = if extra_subnet {
        r#", { "subnet": "127.0.4.0/24", "router": "127.0.4.1", "dynStart": "127.0.4.10", "dynEnd": "127.0.4.250", "leaseTime": 300 }"#
    } else {
        ""
    };
    format!(
        r#"{{
  "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{redis}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}", "httpListen": "127.0.0.1:{http}",
  "subnets": [
    {{ "subnet": "127.0.2.0/24", "router": "127.0.2.1", "dynStart": "127.0.2.10",
       "dynEnd": "127.0.2.250", "leaseTime": {lease_time}, "dns": ["127.0.2.53"] }}{extra}
  ]
}}"#
    )
}

fn start(redis: &Redis, name: &str, lease_time: u32) -> (Served, u16) {
    let port = free_port();
    let http = free_port();
    let json = served_config(port, http, &redis.url(), &prefix(name), lease_time, false);
    (
        Served::start(&json, SocketAddrV4::new(Ipv4Addr::LOCALHOST, http)),
        port,
    )
}

fn scrape(s: &Served) -> String {
    let (status, body) = http_get(s.http, "/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn metrics_count_exactly_what_happened_and_pass_promtool() {
    let redis = Redis::start();
    let (served, port) = start(&redis, "metrics", 600);
    let relay = Relay::new(GIADDR, port).await;
    // The mix: 3 DORA, 1 NAK (another's address), 1 RELEASE, 1 truncated datagram,
    // 1 DISCOVER from an unserved network, 1 DISCOVER with an empty host name and a 3-byte
    // maximum size (offered as if it had sent neither).
    let mut ips = Vec::new();
    for i in 1..=3 {
        ips.push(dora(&relay, &mac(i), i).await.expect("DORA"));
    }
    let sloppy = message(MessageType::Discover, &mac(31), 31, GIADDR);
    relay
        .send_raw(&with_raw_options(&sloppy, &[12, 0, 57, 3, 5, 220, 0]))
        .await;
    let offer = relay.recv(Duration::from_secs(2)).await;
    assert_eq!(offer.as_ref().and_then(msg_type), Some(MessageType::Offer));
    let mut r = message(MessageType::Request, &mac(9), 9, GIADDR);
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ips[0]));
    let nak = relay.exchange(&r).await.expect("nak");
    assert_eq!(msg_type(&nak), Some(MessageType::Nak));
    let mut rel = message(MessageType::Release, &mac(2), 20, Ipv4Addr::UNSPECIFIED);
    rel.set_ciaddr(ips[1]);
    relay.send(&rel).await;
    relay.send_raw(&[1, 2, 3]).await;
    let stranger = Relay::new(Ipv4Addr::new(127, 0, 9, 1), port).await;
    stranger
        .send(&discover(&mac(30), 30, stranger.giaddr))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let text = scrape(&served);
    // Kept for scripts/validate-deploy.sh, which checks the dashboard and alerts against it.
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics.txt"),
        &text,
    );
    let want = [
        (r#"dhcp_hive_packets_received_total{type="discover"}"#, 5.0),
        (r#"dhcp_hive_packets_received_total{type="request"}"#, 4.0),
        (r#"dhcp_hive_packets_received_total{type="release"}"#, 1.0),
        (r#"dhcp_hive_packets_received_total{type="invalid"}"#, 1.0),
        (r#"dhcp_hive_replies_sent_total{type="offer"}"#, 4.0),
        (r#"dhcp_hive_replies_sent_total{type="ack"}"#, 3.0),
        (r#"dhcp_hive_replies_sent_total{type="nak"}"#, 1.0),
        (r#"dhcp_hive_naks_total{reason="taken"}"#, 1.0),
        (r#"dhcp_hive_allocations_total{outcome="new"}"#, 4.0),
        (r#"dhcp_hive_grants_total{outcome="selected"}"#, 3.0),
        (r#"dhcp_hive_grants_total{outcome="renewed"}"#, 0.0),
        (r#"dhcp_hive_drops_total{reason="truncated"}"#, 1.0),
        (r#"dhcp_hive_drops_total{reason="no_subnet"}"#, 1.0),
        (r#"dhcp_hive_options_ignored_total{code="12"}"#, 1.0),
        (r#"dhcp_hive_options_ignored_total{code="57"}"#, 1.0),
        ("dhcp_hive_releases_total", 1.0),
        ("dhcp_hive_ready", 1.0),
        ("dhcp_hive_config_version", 1.0),
        (
            r#"dhcp_hive_message_duration_seconds_count{type="discover"}"#,
            5.0,
        ),
    ];
    for (series, value) in want {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    // No series of a type that cannot occur: the node never replies with a DISCOVER, and an
    // offer is never "selected" (that is how a REQUEST is granted).
    for never in [
        r#"dhcp_hive_replies_sent_total{type="discover"}"#,
        r#"dhcp_hive_replies_sent_total{type="request"}"#,
        r#"dhcp_hive_allocations_total{outcome="selected"}"#,
    ] {
        assert_eq!(sample(&text, never), None, "{never} in:\n{text}");
    }
    // Pool gauges are refreshed at start-up and then every 10 s.
    assert_eq!(
        sample(&text, r#"dhcp_hive_pool_size{subnet="127.0.2.0/24"}"#),
        Some(241.0),
        "{text}"
    );
    assert!(!text.contains("02:00:00"), "no MAC in labels");

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    match promtool {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("pipe");
            let out = child.wait_with_output().expect("promtool");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && said.trim().is_empty(),
                "promtool check metrics: {said}"
            );
        }
        Err(e) => panic!("promtool is missing ({e}); scripts/deps.sh installs it from apt"),
    }
}

/// Whether every thread of process `pid` is in state 'T' (stopped); a thread that exited meanwhile
/// does not count.
fn all_threads_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's threads");
    tasks.flatten().all(|t| {
        // The state follows the command name, which is in parentheses.
        std::fs::read_to_string(t.path().join("stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('T'))
        })
    })
}

/// Sends SIGSTOP to the node and waits until every thread of it has stopped (the signal reaches
/// each thread on its own).
async fn stop(served: &Served) {
    served.signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_threads_stopped(served.child.id()) {
        assert!(Instant::now() < deadline, "node not stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The handling time is counted from the kernel's receipt stamp: a DISCOVER that waited in the
/// socket buffer of a stopped node shows that wait, as its client saw it.
#[tokio::test]
async fn message_duration_counts_the_wait_in_the_socket_buffer() {
    let redis = Redis::start();
    let (served, port) = start(&redis, "queued", 600);
    let relay = Relay::new(GIADDR, port).await;
    stop(&served).await;
    relay.send(&discover(&mac(1), 1, GIADDR)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    served.signal("CONT");
    let Some(offer) = relay.recv(Duration::from_secs(3)).await else {
        panic!(
            "no OFFER once the node runs again; node log:\n{}",
            served.log()
        );
    };
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));
    // The exchange is recorded just after its reply is sent.
    let deadline = Instant::now() + Duration::from_secs(3);
    let text = loop {
        let text = scrape(&served);
        let count = r#"dhcp_hive_message_duration_seconds_count{type="discover"}"#;
        if sample(&text, count) == Some(1.0) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let series = |le: &str| {
        sample(
            &text,
            &format!(r#"dhcp_hive_message_duration_seconds_bucket{{type="discover",le="{le}"}}"#),
        )
    };
    assert_eq!(series("+Inf"), Some(1.0), "{text}");
    assert_eq!(
        series("0.5"),
        Some(0.0),
        "a 0.7 s wait counted as less:\n{text}"
    );
    assert_eq!(series("1"), Some(1.0), "{text}");
}

/// A node with a large relayed pool, 127.`net`.0.0/16 (room for the overload tests' thousands
/// of clients), and a relay of that subnet.
async fn overload_node(redis: &Redis, net: u8, name: &str) -> (Served, Relay, Ipv4Addr) {
    let port = free_port();
    let http = free_port();
    let giaddr = Ipv4Addr::new(127, net, 0, 1);
    let json = format!(
        r#"{{
  "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{}",
  "serverId": "127.0.0.1", "keyPrefix": "{}", "httpListen": "127.0.0.1:{http}",
  "subnets": [ {{ "subnet": "127.{net}.0.0/16", "router": "127.{net}.0.1",
     "dynStart": "127.{net}.0.10", "dynEnd": "127.{net}.255.250", "leaseTime": 600 }} ]
}}"#,
        redis.url(),
        prefix(name)
    );
    let served = Served::start(&json, SocketAddrV4::new(Ipv4Addr::LOCALHOST, http));
    let relay = Relay::new(giaddr, port).await;
    (served, relay, giaddr)
}

/// Under overload a REQUEST is answered ahead of the DISCOVERs queued before it: it completes
/// a lease the hive already offered. 2,000 DISCOVERs wait in the socket buffer of a stopped
/// node, then a REQUEST; once the node runs, 1,024 of them take every slot and the rest wait in
/// the backlog, where the REQUEST goes first. In arrival order it would be the last answer.
#[tokio::test]
async fn a_request_is_served_ahead_of_a_backlog_of_discovers() {
    const QUEUED: u32 = 2_000;
    let redis = Redis::start();
    let (served, relay, giaddr) = overload_node(&redis, 6, "backlog").await;
    let client = mac(0xffff);
    let offer = relay
        .exchange(&discover(&client, 7, giaddr))
        .await
        .expect("an offer before the burst");
    stop(&served).await;
    for n in 1..=QUEUED {
        relay.send(&discover(&mac(n), n, giaddr)).await;
    }
    relay
        .send(&request_selecting(
            &client,
            7,
            giaddr,
            offer.yiaddr(),
            Ipv4Addr::LOCALHOST,
        ))
        .await;
    served.signal("CONT");
    let mut offers_first = 0;
    loop {
        let Some(reply) = relay.recv(Duration::from_secs(5)).await else {
            panic!(
                "no ACK after {offers_first} OFFERs; node log:\n{}",
                served.log()
            );
        };
        match msg_type(&reply) {
            Some(MessageType::Offer) => offers_first += 1,
            Some(MessageType::Ack) => {
                assert_eq!(reply.yiaddr(), offer.yiaddr());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        offers_first < QUEUED * 3 / 4,
        "the REQUEST waited behind {offers_first} of {QUEUED} DISCOVERs"
    );
    let text = scrape(&served);
    assert!(
        sample(&text, "dhcp_hive_backlog_messages").is_some(),
        "{text}"
    );
}

/// A backlog that outgrows its class sheds its oldest messages, counts them, and the node goes
/// on. Redis is stopped, so the 1,024 slots hang in their calls (up to the 2 s handler timeout)
/// while 8,000 DISCOVERs arrive: 4,096 wait in the backlog and the oldest of the rest are shed.
#[tokio::test]
async fn an_overflowing_backlog_sheds_its_oldest_and_counts_them() {
    const SENT: u32 = 8_000;
    let redis = Redis::start();
    let (served, relay, giaddr) = overload_node(&redis, 7, "shed").await;
    relay
        .exchange(&discover(&mac(0xffff), 1, giaddr))
        .await
        .expect("an offer before Redis stops");
    redis.signal("STOP");
    for n in 1..=SENT {
        relay.send(&discover(&mac(n), n + 1, giaddr)).await;
    }
    // Every datagram the socket buffer kept has been read, queued or shed, well within the
    // handler timeout that frees the slots.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    let shed = loop {
        let text = scrape(&served);
        let shed = sample(&text, r#"dhcp_hive_drops_total{reason="shed"}"#).unwrap_or(0.0);
        if shed > 0.0 || Instant::now() > deadline {
            break shed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The socket buffer may have dropped some of the burst itself; what reached the node
    // beyond 1,024 in flight and 4,096 queued was shed.
    assert!(shed >= 1.0, "nothing shed; node log:\n{}", served.log());
    assert!(
        shed <= f64::from(SENT - 1024 - 4096),
        "{shed} shed of {SENT}: more than the overflow"
    );
    // The node serves again once Redis does.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answered = relay
            .exchange(&discover(&mac(0xfffe), SENT + 7, giaddr))
            .await;
        if answered.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no OFFER after Redis came back; node log:\n{}",
            served.log()
        );
    }
}

#[tokio::test]
async fn health_endpoints_say_why() {
    let mut redis = Redis::start();
    let (served, _) = start(&redis, "health", 600);
    assert_eq!(http_get(served.http, "/healthz").map(|r| r.0), Some(200));
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(served.http, "/readyz").expect("readyz");
        if status == 503 {
            assert!(body.contains("Redis"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still ready without Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http_get(served.http, "/healthz").map(|r| r.0),
        Some(200),
        "alive all the same"
    );
    let probe = Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
        .args(["probe", "--url", &format!("http://{}/readyz", served.http)])
        .output()
        .expect("probe");
    assert!(!probe.status.success());
    assert!(
        served.log().matches("Redis unavailable").count() == 1,
        "one log line per outage:\n{}",
        served.log()
    );
}

fn get_json(s: &Served, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(s.http, path).expect("answer");
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// `leases import-kea` on a lease file as Kea 2.2 writes it: live leases of the pool become
/// the hive's (their clients' next REQUEST renews them: `renewed`, not `recovered`), and every
/// other row is counted by why it was not imported; a second import changes nothing.
#[tokio::test]
async fn kea_leases_are_imported_and_renewed_by_their_clients() {
    let redis = Redis::start();
    let (served, port) = start(&redis, "import", 600);
    let relay = Relay::new(GIADDR, port).await;
    // A client of the hive already holds the pool's first address.
    let held = dora(&relay, &mac(8), 8).await.expect("DORA");

    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let colons = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let row = |ip: &str, n: u32, id: bool, valid: u64, expire: u64, host: &str| {
        let m = mac(n);
        let cid = if id {
            format!("01:{}", colons(&m))
        } else {
            String::new()
        };
        format!(
            "{ip},{},{cid},{valid},{expire},1,0,0,{host},0,\n",
            colons(&m)
        )
    };
    let live = now_s + 1800;
    let mut csv = String::from(
        "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n",
    );
    csv += &row("127.0.2.20", 1, true, 3600, live, "kea-one");
    csv += &row("127.0.2.21", 2, false, 3600, live, "");
    csv += &row("127.0.2.22", 3, false, 3600, now_s - 10, "");
    csv += &row("127.0.2.23", 4, false, 3600, live, "");
    csv += &row("127.0.2.23", 4, false, 0, live, "");
    csv += &row("127.0.9.5", 5, false, 3600, live, "");
    csv += &row("127.0.2.5", 6, false, 3600, live, "");
    csv += &row(&held.to_string(), 7, false, 3600, live, "");
    let file = served.dir.path().join("kea-leases4.csv");
    std::fs::write(&file, csv).expect("write the lease file");

    let import = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
            .args(["leases", "import-kea", "--config"])
            .arg(&served.config_path)
            .args(extra)
            .arg(&file)
            .output()
            .expect("cli");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A dry run says the same and writes nothing.
    let dry = import(&["--dry-run"]);
    assert!(
        dry.ends_with(
            "would import 2 of 7 leases; 1 expired, 1 held by another client, 1 not active, \
             1 outside every subnet, 1 outside the pool\n"
        ),
        "{dry}"
    );
    assert_eq!(get_json(&served, "/api/v1/leases/127.0.2.20").0, 404);
    let text = import(&[]);
    assert!(
        text.ends_with(
            "imported 2 of 7 leases; 1 expired, 1 held by another client, 1 not active, \
             1 outside every subnet, 1 outside the pool\n"
        ),
        "{text}"
    );
    for line in [
        format!("{held} 02:00:00:00:00:07 not imported: held by another client"),
        "127.0.9.5 02:00:00:00:00:05 not imported: outside every subnet".to_owned(),
        "127.0.2.5 02:00:00:00:00:06 not imported: outside the pool".to_owned(),
    ] {
        assert!(text.contains(&line), "{line:?} in\n{text}");
    }
    let (status, lease) = get_json(&served, "/api/v1/leases/127.0.2.20");
    assert_eq!(status, 200);
    assert_eq!(lease["client_mac"], "02:00:00:00:00:01");
    assert_eq!(lease["hostname"], "kea-one");
    assert_eq!(lease["state"], "bound");
    let left = lease["lease_time"].as_u64().expect("lease_time");
    assert!(
        (1790..=1800).contains(&left),
        "what Kea left of it: {lease}"
    );
    assert_eq!(get_json(&served, "/api/v1/leases/127.0.2.22").0, 404);

    // The clients reboot and ask for their addresses (INIT-REBOOT): one with the client
    // identifier Kea recorded, one known by its MAC alone.
    for (n, ip, id) in [(1, [127, 0, 2, 20], true), (2, [127, 0, 2, 21], false)] {
        let mut r = message(MessageType::Request, &mac(n), 100 + n, GIADDR);
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::from(ip)));
        if id {
            let mut cid = vec![1];
            cid.extend(mac(n));
            r.opts_mut().insert(DhcpOption::ClientIdentifier(cid));
        }
        let ack = relay.exchange(&r).await.expect("an answer");
        assert_eq!(msg_type(&ack), Some(MessageType::Ack), "{ack:?}");
        assert_eq!(ack.yiaddr(), Ipv4Addr::from(ip));
    }
    let metrics = scrape(&served);
    assert_eq!(
        sample(&metrics, r#"dhcp_hive_grants_total{outcome="renewed"}"#),
        Some(2.0),
        "the hive knew both leases:\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"dhcp_hive_grants_total{outcome="recovered"}"#),
        Some(0.0)
    );

    // Again: nothing changes.
    let again = import(&[]);
    assert!(
        again.ends_with(
            "imported 0 of 7 leases; 1 expired, 2 held already, 1 held by another client, \
             1 not active, 1 outside every subnet, 1 outside the pool\n"
        ),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_api_filters_and_pages_over_ten_thousand_leases() {
    let _heavy = HEAVY.lock().await;
    let redis = Redis::start();
    let port = free_port();
    let http = free_port();
    let prefix = prefix("api");
    let json = format!(
        r#"{{ "hostname": "h", "interface": "127.0.0.1", "port": {port}, "redis": "{}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}", "httpListen": "127.0.0.1:{http}", "offerTime": 600,
  "subnets": [
    {{ "subnet": "127.16.0.0/18", "router": "127.16.0.1", "dynStart": "127.16.0.10", "dynEnd": "127.16.63.250", "leaseTime": 3600 }},
    {{ "subnet": "127.17.0.0/24", "router": "127.17.0.1", "dynStart": "127.17.0.10", "dynEnd": "127.17.0.250", "leaseTime": 3600,
       "sharedNetwork": "campus" }}
  ] }}"#,
        redis.url()
    );
    let served = Served::start(&json, SocketAddrV4::new(Ipv4Addr::LOCALHOST, http));
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..8u32 {
        let relay = Relay::new(Ipv4Addr::new(127, 16, 0, 2 + r as u8), port).await;
        tasks.spawn(async move {
            run_clients(&relay, (r..10_000).step_by(8).map(|i| i + 1).collect()).await
        });
    }
    let mut acked = Vec::new();
    while let Some(r) = tasks.join_next().await {
        acked.extend(r.expect("relay"));
    }
    assert_eq!(acked.len(), 10_000, "{}", served.log());
    // Two offers held (not requested) in the second subnet.
    let small = Relay::new(Ipv4Addr::new(127, 17, 0, 1), port).await;
    for i in 0..2 {
        small
            .exchange(&discover(&mac(50_000 + i), 50_000 + i, small.giaddr))
            .await
            .expect("offer");
    }

    // Every lease exactly once, in address order, page by page.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let path = format!("/api/v1/leases?limit=500{cursor}");
        let (status, page) = get_json(&served, &path);
        assert_eq!(status, 200, "{page}");
        for l in page["leases"].as_array().expect("leases") {
            seen.push(
                l["client_ip"]
                    .as_str()
                    .expect("client_ip")
                    .parse::<Ipv4Addr>()
                    .expect("ip"),
            );
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
        assert!(pages < 200, "pagination does not end");
    }
    let unique: HashSet<Ipv4Addr> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 10_002, "no duplicate, no gap");
    assert_eq!(unique.len(), seen.len());
    assert!(
        seen.windows(2).all(|w| u32::from(w[0]) < u32::from(w[1])),
        "address order"
    );
    let expected: HashSet<Ipv4Addr> = acked.iter().map(|(_, ip)| *ip).collect();
    assert!(expected.is_subset(&unique));

    // Filters.
    let (id, ip) = acked[17];
    let m = dhcp_hive_mind::protocol::mac_text(&mac(id));
    let (_, one) = get_json(&served, &format!("/api/v1/leases?mac={m}"));
    let rows = one["leases"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{one}");
    assert_eq!(rows[0]["client_ip"], ip.to_string());
    assert_eq!(rows[0]["client_mac"], m);
    assert_eq!(rows[0]["state"], "bound");
    assert_eq!(rows[0]["subnet"], "127.16.0.0/18");
    assert!(rows[0]["lease_time"].as_u64().expect("lease_time") > 3500);
    let host = format!("host-{:02x}{:02x}", mac(id)[4], mac(id)[5]);
    let (_, by_host) = get_json(
        &served,
        &format!("/api/v1/leases?hostname={host}&subnet=127.16.0.0/18&limit=1000"),
    );
    assert!(
        by_host["leases"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|r| r["hostname"] == host.as_str())
    );
    let (_, offered) = get_json(&served, "/api/v1/leases?state=offered");
    assert_eq!(
        offered["leases"].as_array().expect("rows").len(),
        2,
        "{offered}"
    );
    let (_, sub) = get_json(&served, "/api/v1/leases?subnet=127.17.0.0/24");
    assert_eq!(sub["leases"].as_array().expect("rows").len(), 2);
    let (status, _) = get_json(&served, "/api/v1/leases?subnet=10.0.0.0/8");
    assert_eq!(status, 400);

    // One lease, and the subnets view.
    let (status, lease) = get_json(&served, &format!("/api/v1/leases/{ip}"));
    assert_eq!(status, 200);
    assert_eq!(lease["client_mac"], m);
    assert_eq!(get_json(&served, "/api/v1/leases/127.16.63.251").0, 404);
    let (_, subnets) = get_json(&served, "/api/v1/subnets");
    assert_eq!(subnets[0]["in_use"], 10_000);
    assert_eq!(subnets[1]["offered"], 2);
    assert_eq!(subnets[1]["shared_network"], "campus");
    assert!(subnets[0]["shared_network"].is_null());

    // The CLI reads the same, and survives a closed pipe.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} leases list --config {} | head -3",
            env!("CARGO_BIN_EXE_dhcp-hive-mind"),
            served.config_path.display()
        ))
        .output()
        .expect("cli");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let show = Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
        .args(["leases", "show", "--json", "--config"])
        .arg(&served.config_path)
        .arg(ip.to_string())
        .output()
        .expect("cli");
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(shown["client_mac"], m);
    let rel = Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
        .args(["leases", "release", "--config"])
        .arg(&served.config_path)
        .arg(ip.to_string())
        .output()
        .expect("cli");
    assert!(
        rel.status.success(),
        "{}",
        String::from_utf8_lossy(&rel.stderr)
    );
    assert_eq!(get_json(&served, &format!("/api/v1/leases/{ip}")).0, 404);
}

/// Waits (at most 20 s, however loaded the machine) until `acked` holds `n` ACKs.
async fn wait_for_acks(acked: &std::sync::Mutex<Vec<(u32, Ipv4Addr)>>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().expect("lock").len() < n {
        assert!(
            Instant::now() < deadline,
            "traffic did not get {n} ACKs in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Clients doing DORA in a loop until `stop`; counts exchanges that got no ACK.
fn traffic(
    relay: Arc<Relay>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU32>,
    acked: Arc<std::sync::Mutex<Vec<(u32, Ipv4Addr)>>>,
    first: u32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut id = first;
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            match dora(&relay, &mac(id), id).await {
                Some(ip) => acked.lock().expect("lock").push((id, ip)),
                None => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_traffic_applies_new_values_and_refuses_a_broken_config() {
    let redis = Redis::start();
    let port = free_port();
    let http = free_port();
    let prefix = prefix("reload");
    let served = Served::start(
        &served_config(port, http, &redis.url(), &prefix, 600, false),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, http),
    );
    let relay = Arc::new(Relay::new(GIADDR, port).await);
    let (stop, failed, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let load = traffic(
        Arc::clone(&relay),
        Arc::clone(&stop),
        Arc::clone(&failed),
        Arc::clone(&acked),
        0,
    );
    wait_for_acks(&acked, 5).await;

    // New lease time and a new subnet, under traffic.
    std::fs::write(
        &served.config_path,
        served_config(port, http, &redis.url(), &prefix, 900, true),
    )
    .expect("write");
    served.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_json(&served, "/metrics").0 == 200
        && sample(&scrape(&served), "dhcp_hive_config_version") != Some(2.0)
    {
        assert!(
            Instant::now() < deadline,
            "reload not applied: {}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Traffic goes on under the new config for a while.
    let before = acked.lock().expect("lock").len();
    wait_for_acks(&acked, before + 5).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("traffic");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no exchange lost during the reload"
    );
    assert!(acked.lock().expect("lock").len() >= 10, "traffic ran");
    let offer = relay
        .exchange(&discover(&mac(90_000), 90_000, GIADDR))
        .await
        .expect("offer");
    assert!(matches!(
        opt(&offer, OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(900))
    ));
    let new_net = Relay::new(Ipv4Addr::new(127, 0, 4, 1), port).await;
    assert!(
        dora(&new_net, &mac(90_001), 90_001).await.is_some(),
        "the added subnet is served"
    );

    // A broken config is refused; the running one keeps serving.
    std::fs::write(
        &served.config_path,
        r#"{ "hostname": "h", "interface": "127.0.0.1", "port": 0 }"#,
    )
    .expect("write");
    served.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = scrape(&served);
    assert_eq!(
        sample(&text, r#"dhcp_hive_config_reloads_total{result="error"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "dhcp_hive_config_version"), Some(2.0));
    assert!(served.log().contains("reload refused"), "{}", served.log());
    let offer = relay
        .exchange(&discover(&mac(90_002), 90_002, GIADDR))
        .await
        .expect("still serving");
    assert!(matches!(
        opt(&offer, OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(900))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_traffic_exits_cleanly_and_keeps_every_acked_lease() {
    let redis = Redis::start();
    let prefix = prefix("term");
    let port = free_port();
    let http = free_port();
    let mut served = Served::start(
        &served_config(port, http, &redis.url(), &prefix, 600, false),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, http),
    );
    let relay = Arc::new(Relay::new(GIADDR, port).await);
    let (stop, failed, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let load = traffic(
        Arc::clone(&relay),
        Arc::clone(&stop),
        failed,
        Arc::clone(&acked),
        0,
    );
    wait_for_acks(&acked, 5).await;
    let t = Instant::now();
    served.signal("TERM");
    let status = loop {
        if let Some(s) = served.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, Ordering::Relaxed);
    load.await.expect("traffic");
    assert!(status.success(), "exit status {status}: {}", served.log());
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 5, "traffic ran: {} ACKs", acked.len());
    for (id, ip) in &acked {
        let key = format!("{prefix}:{{127.0.2.0/24}}:lease:{ip}");
        assert_eq!(
            redis.cli(&["hget", &key, "mac"]),
            dhcp_hive_mind::protocol::mac_text(&mac(*id)),
            "ACKed lease {ip} is in Redis"
        );
    }
}

#[tokio::test]
async fn write_api_is_off_by_default_and_token_protected() {
    let redis = Redis::start();
    let (served, _) = start(&redis, "writeoff", 600);
    let (status, _) = http(
        served.http,
        "DELETE",
        "/api/v1/admin/leases/127.0.2.10",
        Some("x"),
        "",
    )
    .expect("answer");
    assert_eq!(status, 403, "off without apiToken");
    drop(served);

    let port = free_port();
    let http_port = free_port();
    let prefix = prefix("write");
    let token = "0123456789abcdef-test";
    let json = served_config(port, http_port, &redis.url(), &prefix, 600, false).replacen(
        "\"hostname\"",
        &format!("\"apiToken\": \"{token}\", \"hostname\""),
        1,
    );
    let served = Served::start(&json, SocketAddrV4::new(Ipv4Addr::LOCALHOST, http_port));
    let api = served.http;
    let relay = Relay::new(GIADDR, port).await;
    let owner = mac(77);
    let owner_text = dhcp_hive_mind::protocol::mac_text(&owner);
    let path = format!("/api/v1/admin/reservations/{owner_text}");
    assert_eq!(
        http(
            api,
            "PUT",
            &path,
            Some("wrong-token-0000000"),
            r#"{"ip":"127.0.2.200"}"#
        )
        .map(|r| r.0),
        Some(401)
    );
    assert_eq!(
        http(api, "PUT", &path, None, r#"{"ip":"127.0.2.200"}"#).map(|r| r.0),
        Some(401)
    );
    assert_eq!(
        http(api, "PUT", &path, Some(token), r#"{"ip":"10.0.0.1"}"#).map(|r| r.0),
        Some(400)
    );
    assert_eq!(
        http(api, "PUT", &path, Some(token), r#"{"ip":"127.0.2.200"}"#).map(|r| r.0),
        Some(204)
    );
    let (_, list) = http(api, "GET", "/api/v1/admin/reservations", Some(token), "").expect("list");
    assert!(
        list.contains("127.0.2.200") && list.contains(&owner_text),
        "{list}"
    );
    // The lease scripts look reservations up only in a subnet whose count says it has some.
    let count = format!("{prefix}:{{127.0.2.0/24}}:reserved:count");
    assert_eq!(redis.cli(&["get", &count]), "1", "reserved count after PUT");
    // Another MAC cannot take the same address.
    let other = format!(
        "/api/v1/admin/reservations/{}",
        dhcp_hive_mind::protocol::mac_text(&mac(78))
    );
    assert_eq!(
        http(api, "PUT", &other, Some(token), r#"{"ip":"127.0.2.200"}"#).map(|r| r.0),
        Some(409)
    );
    // The reservation reaches its owner, and nobody else.
    assert_eq!(
        dora(&relay, &owner, 1).await,
        Some(Ipv4Addr::new(127, 0, 2, 200))
    );
    let mut r = message(MessageType::Request, &mac(79), 2, GIADDR);
    r.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            127, 0, 2, 200,
        )));
    assert_eq!(
        relay.exchange(&r).await.map(|m| msg_type(&m)),
        Some(Some(MessageType::Nak))
    );
    // Release through the API, then remove the reservation.
    assert_eq!(
        http(
            api,
            "DELETE",
            "/api/v1/admin/leases/127.0.2.200",
            Some(token),
            ""
        )
        .map(|r| r.0),
        Some(204)
    );
    assert_eq!(
        http_get(api, "/api/v1/leases/127.0.2.200").map(|r| r.0),
        Some(404)
    );
    assert_eq!(
        http(api, "DELETE", &path, Some(token), "").map(|r| r.0),
        Some(204)
    );
    assert_eq!(
        http(api, "DELETE", &path, Some(token), "").map(|r| r.0),
        Some(404)
    );
    assert_eq!(
        redis.cli(&["exists", &count]),
        "0",
        "no reserved count once the subnet has no reservation"
    );
    // Free again for anyone.
    let mut d = discover(&mac(80), 3, GIADDR);
    d.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            127, 0, 2, 200,
        )));
    let offer = relay.exchange(&d).await.expect("offer");
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(127, 0, 2, 200));
}

#[tokio::test]
async fn json_logs_carry_one_line_per_exchange_with_the_seeds_fields() {
    let redis = Redis::start();
    let port = free_port();
    let http = free_port();
    let json = served_config(port, http, &redis.url(), &prefix("logs"), 600, false);
    let served = Served::start_with_env(
        &json,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, http),
        &[
            ("RUST_LOG", "dhcp_hive_mind=debug"),
            ("HIVE_LOG_FORMAT", "json"),
        ],
    );
    let relay = Relay::new(GIADDR, port).await;
    let ip = dora(&relay, &mac(5), 5).await.expect("DORA");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = served.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        lines.len(),
        log.lines().count(),
        "every line is JSON:\n{log}"
    );
    let ack = lines
        .iter()
        .find(|l| l["fields"]["message"] == "exchange" && l["fields"]["reply"] == "ack")
        .unwrap_or_else(|| panic!("an ACK exchange line:\n{log}"));
    let f = &ack["fields"];
    assert_eq!(f["msg_type"], "request");
    assert_eq!(f["client_mac"], "02:00:00:00:00:05");
    assert_eq!(f["hostname"], "host-0005");
    assert_eq!(f["relay_ip"], "127.0.2.1");
    assert_eq!(f["client_ip"], ip.to_string());
    assert_eq!(f["server_ip"], "127.0.0.1");
    assert_eq!(f["lease_time"], 600);
    assert_eq!(f["subnet_mask"], "255.255.255.0");
    assert_eq!(f["router"], "127.0.2.1");
    // Start-up says what it runs with.
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "node starting" && l["fields"]["port"] == port)
    );
}
