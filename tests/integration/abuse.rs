//! Durability and abuse: `redis.waitReplicas`, the starvation caps, and Redis AUTH.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use dhcproto::v4::MessageType;

use crate::common::*;

const GIADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);

/// The standard test config with `"redis"` replaced by `redis_json` and extra top-level keys.
fn config_with(port: u16, redis_json: &str, prefix: &str, extra: &str) -> String {
    config_json(port, "REDIS", prefix, 250).replace(
        r#""redis": "REDIS","#,
        &format!(r#""redis": {redis_json}, {extra}"#),
    )
}

/// A Redis primary and a replica attached to it.
async fn primary_and_replica() -> (Redis, Redis) {
    let primary = Redis::start();
    // Diskless sync waits 5 s by default for more replicas; one is all there is.
    primary.cli(&["config", "set", "repl-diskless-sync-delay", "0"]);
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !primary
        .cli(&["info", "replication"])
        .contains("state=online")
    {
        assert!(Instant::now() < deadline, "replica did not attach");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (primary, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_waits_for_a_replica_and_fails_closed_without_one() {
    let (primary, replica) = primary_and_replica().await;
    let port = free_port();
    let prefix = prefix("wait");
    let redis = format!(
        r#"{{ "url": "{}", "waitReplicas": 1, "waitTimeoutMs": 300 }}"#,
        primary.url()
    );
    let hive = Hive::start(parse_config(&config_with(port, &redis, &prefix, "")), 1).await;
    let relay = Relay::new(GIADDR, port).await;
    let ip = dora(&relay, &mac(1), 1).await.expect("ACK with a replica");
    // The ACKed lease is on the replica already.
    let key = format!("{prefix}:{{127.0.2.0/24}}:lease:{ip}");
    assert_eq!(replica.cli(&["hget", &key, "mac"]), "02:00:00:00:00:01");
    // Without the replica the lease cannot be made safe: no ACK (the offer still comes).
    drop(replica);
    let offer = relay
        .exchange(&discover(&mac(2), 2, GIADDR))
        .await
        .expect("offer");
    let req = request_selecting(&mac(2), 2, GIADDR, offer.yiaddr(), Ipv4Addr::LOCALHOST);
    assert!(
        relay
            .exchange_once(&req, Duration::from_secs(1))
            .await
            .is_none(),
        "no ACK without the replica"
    );
    hive.stop().await;
}

/// An offer lives on the primary only; a failover forgets it, and nothing more: the address stays
/// held for the offer's time, and the client's REQUEST gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_forgets_offers_but_not_the_addresses_they_hold() {
    let (primary, replica) = primary_and_replica().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = free_port();
    let prefix = prefix("offers");
    let config = |url: &str| parse_config(&config_with(port, &format!("\"{url}\""), &prefix, ""));
    let hive = Hive::start(config(&primary.url()), 1).await;
    let relay = Relay::new(GIADDR, port).await;
    let offer = relay
        .exchange(&discover(&mac(1), 1, GIADDR))
        .await
        .expect("offer");
    let ip = offer.yiaddr();
    let base = format!("{prefix}:{{127.0.2.0/24}}:");
    let lease = format!("{base}lease:{ip}");
    let hint = format!("{base}client:hw-020000000001");
    assert_eq!(primary.cli(&["hget", &lease, "state"]), "offered");
    // Replication is asynchronous: the hint, written after the offer, tells when it is done.
    while replica.cli(&["get", &hint]) != ip.to_string() {
        assert!(
            Instant::now() < deadline,
            "the hint did not reach the replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        replica.cli(&["exists", &lease]),
        "0",
        "the offer stays on the primary"
    );
    assert_eq!(
        replica.cli(&["zscore", &format!("{base}offered"), &ip.to_string()]),
        ""
    );
    assert!(
        !replica
            .cli(&["zscore", &format!("{base}expiry"), &ip.to_string()])
            .is_empty(),
        "the address's expiry-index entry is replicated"
    );
    // Failover: the replica becomes the primary, the hive moves to it.
    hive.stop().await;
    replica.cli(&["replicaof", "no", "one"]);
    drop(primary);
    let hive = Hive::start(config(&replica.url()), 1).await;
    let other = relay
        .exchange(&discover(&mac(2), 2, GIADDR))
        .await
        .expect("offer to another client");
    assert_ne!(
        other.yiaddr(),
        ip,
        "another client does not get the forgotten offer's address (the cursor is past it; \
         its expiry-index entry, replicated as asserted above, holds it until the offer's end)"
    );
    let req = request_selecting(&mac(1), 1, GIADDR, ip, Ipv4Addr::LOCALHOST);
    let ack = relay.exchange(&req).await.expect("an answer");
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    assert_eq!(replica.cli(&["hget", &lease, "state"]), "bound");
    hive.stop().await;
}

#[tokio::test]
async fn subnet_and_relay_caps_stop_a_pool_drain() {
    let redis = Redis::start();
    let port = free_port();
    let extra = r#""rateLimits": { "subnetAllocations": 5, "relayAllocations": 3 },"#;
    let hive = Hive::start(
        parse_config(&config_with(
            port,
            &format!("\"{}\"", redis.url()),
            &prefix("caps"),
            extra,
        )),
        1,
    )
    .await;
    let relay = Relay::new(GIADDR, port).await;
    // A spoofer behind one relay: 30 new MACs at once.
    for i in 0..30 {
        relay.send(&discover(&mac(100 + i), 100 + i, GIADDR)).await;
    }
    let mut offers = 0;
    while let Some(m) = relay.recv(Duration::from_millis(400)).await {
        if msg_type(&m) == Some(MessageType::Offer) {
            offers += 1;
        }
    }
    // Within one second at most 3 (relay cap); if the burst straddled a second boundary, 6.
    assert!((3..=6).contains(&offers), "relay cap: {offers} offers");
    // A client that already has its address is not capped.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ip = dora(&relay, &mac(1), 1).await.expect("a lease");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..10 {
        relay.send(&discover(&mac(200 + i), 200 + i, GIADDR)).await;
    }
    while relay.recv(Duration::from_millis(300)).await.is_some() {}
    let again = relay
        .exchange(&discover(&mac(1), 1000, GIADDR))
        .await
        .expect("own address still offered");
    assert_eq!(again.yiaddr(), ip);
    // The subnet cap holds across relays.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut offers = 0;
    for r in 2..6u8 {
        let other = Relay::new(Ipv4Addr::new(127, 0, 2, r + 200), port).await;
        for i in 0..3u32 {
            let id = 300 + u32::from(r) * 10 + i;
            other.send(&discover(&mac(id), id, other.giaddr)).await;
        }
        while let Some(m) = other.recv(Duration::from_millis(200)).await {
            offers += u32::from(msg_type(&m) == Some(MessageType::Offer));
        }
    }
    assert!(
        offers <= 10,
        "subnet cap: {offers} offers in ~1 s for a cap of 5/s"
    );
    hive.stop().await;
}

#[tokio::test]
async fn per_client_cap_limits_a_chatty_client() {
    let redis = Redis::start();
    let port = free_port();
    let extra = r#""rateLimits": { "clientExchanges": 4 },"#;
    let hive = Hive::start(
        parse_config(&config_with(
            port,
            &format!("\"{}\"", redis.url()),
            &prefix("chatty"),
            extra,
        )),
        1,
    )
    .await;
    let relay = Relay::new(GIADDR, port).await;
    for i in 0..20 {
        relay.send(&discover(&mac(7), 7000 + i, GIADDR)).await;
    }
    let mut answers = 0;
    while relay.recv(Duration::from_millis(400)).await.is_some() {
        answers += 1;
    }
    assert!(
        (4..=8).contains(&answers),
        "{answers} answers for 20 messages at a cap of 4/s"
    );
    // Another client is served meanwhile.
    assert!(dora(&relay, &mac(8), 8).await.is_some());
    hive.stop().await;
}

#[tokio::test]
async fn redis_auth_works_and_a_wrong_password_is_a_clear_not_ready() {
    let redis = Redis::start_with(&["--requirepass", "s3cret"]);
    let port = free_port();
    let good = format!("\"redis://:s3cret@127.0.0.1:{}\"", redis.port);
    let hive = Hive::start(
        parse_config(&config_with(port, &good, &prefix("auth"), "")),
        1,
    )
    .await;
    let relay = Relay::new(GIADDR, port).await;
    assert!(
        dora(&relay, &mac(1), 1).await.is_some(),
        "serves with the right password"
    );
    hive.stop().await;

    // The real binary with a wrong password: keeps running, not ready, says why, logs it once.
    let port = free_port();
    let http = free_port();
    let bad = format!("\"redis://:wrong@127.0.0.1:{}\"", redis.port);
    let extra = format!(r#""httpListen": "127.0.0.1:{http}","#);
    let json = config_with(port, &bad, &prefix("auth2"), &extra);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("c.json");
    std::fs::write(&path, json).expect("write");
    let log = std::fs::File::create(dir.path().join("log")).expect("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(log)
        .spawn()
        .expect("start");
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, http);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Some((503, body)) = http_get(addr, "/readyz")
            && !body.contains("starting")
        {
            break body;
        }
        assert!(Instant::now() < deadline, "no readyz answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "still running, no crash loop"
    );
    let text = std::fs::read_to_string(dir.path().join("log")).expect("log");
    let _ = child.kill();
    let _ = child.wait();
    let says = |t: &str| {
        t.contains("WRONGPASS")
            || t.to_lowercase().contains("password")
            || t.to_lowercase().contains("auth")
    };
    assert!(says(&body), "readyz says why: {body}");
    assert!(says(&text), "the log says why: {text}");
    assert_eq!(
        text.matches("Redis unavailable").count(),
        1,
        "logged once: {text}"
    );
}

/// A CA and a server certificate for 127.0.0.1, made with openssl in `dir`.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=hive-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test]
async fn redis_over_tls_with_the_configured_ca() {
    let certs = tempfile::tempdir().expect("dir");
    make_certs(certs.path());
    let tls_port = free_port();
    let p = |f: &str| certs.path().join(f).display().to_string();
    let (crt, key, ca) = (p("srv.crt"), p("srv.key"), p("ca.crt"));
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &crt,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let port = free_port();
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let with_ca = format!(r#"{{ "url": "{url}", "tlsCaFile": "{ca}" }}"#);
    let hive = Hive::start(
        parse_config(&config_with(port, &with_ca, &prefix("tls"), "")),
        1,
    )
    .await;
    let relay = Relay::new(GIADDR, port).await;
    let ip = dora(&relay, &mac(1), 1).await.expect("served over TLS");
    let key_name = format!("{}:{{127.0.2.0/24}}:lease:{ip}", prefix("tls"));
    assert_eq!(redis.cli(&["hget", &key_name, "mac"]), "02:00:00:00:00:01");
    hive.stop().await;

    // Without the CA the server's certificate is not trusted: never ready, and it says why.
    let config = parse_config(&config_with(
        free_port(),
        &format!("\"{url}\""),
        &prefix("tls2"),
        "",
    ));
    let store = dhcp_hive_mind::lease::connect(&config, "n").expect("client");
    let node =
        std::sync::Arc::new(dhcp_hive_mind::node::Node::new(config, store, None).expect("node"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(std::sync::Arc::clone(&node).run(Vec::new(), shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!node.is_ready());
    let why = node.not_ready_reason().to_lowercase();
    assert!(
        why.contains("certificate") || why.contains("tls") || why.contains("issuer"),
        "{why}"
    );
    shutdown.cancel();
    let _ = task.await;
}

#[tokio::test]
async fn the_documented_acl_is_enough() {
    let redis = Redis::start();
    let acl = "hive on >hive-secret-123 ~acl:* +evalsha +script|load +ping +wait +time +get +mget +set +del +incr +expire +pexpire +persist +pttl +hset +hget +hmget +hgetall +hexists +hdel +hvals +zadd +zrem +zcount +zcard +zrangebyscore +zremrangebyscore +sadd +scard +srem +sismember";
    let mut args = vec!["acl", "setuser"];
    args.extend(acl.split(' '));
    assert_eq!(redis.cli(&args), "OK");
    let port = free_port();
    let url = format!("\"redis://hive:hive-secret-123@127.0.0.1:{}\"", redis.port);
    let extra = r#""rateLimits": { "subnetAllocations": 1000, "relayAllocations": 1000 },"#;
    let mut config = parse_config(&config_with(port, &url, "acl", extra));
    config.subnets[0].bootp = true;
    let hive = Hive::start(config.clone(), 1).await;
    let relay = Relay::new(GIADDR, port).await;
    // Every script: discover, request, release, decline, inform; with the rate counters on.
    let ip = dora(&relay, &mac(1), 1)
        .await
        .expect("DORA as the ACL user");
    let mut rel = message(MessageType::Release, &mac(1), 2, Ipv4Addr::UNSPECIFIED);
    rel.set_ciaddr(ip);
    relay.send(&rel).await;
    let ip2 = dora(&relay, &mac(2), 3).await.expect("DORA");
    let mut dec = message(MessageType::Decline, &mac(2), 4, GIADDR);
    dec.opts_mut()
        .insert(dhcproto::v4::DhcpOption::RequestedIpAddress(ip2));
    relay.send(&dec).await;
    let mut inf = message(MessageType::Inform, &mac(3), 5, GIADDR);
    inf.set_ciaddr(Ipv4Addr::new(127, 0, 2, 9));
    assert!(relay.exchange(&inf).await.is_some(), "INFORM answered");
    // A BOOTP client: a permanent binding (PERSIST).
    let mut bootp = discover(&mac(4), 6, GIADDR);
    bootp
        .opts_mut()
        .remove(dhcproto::v4::OptionCode::MessageType);
    let reply = relay.exchange(&bootp).await.expect("BOOTREPLY");
    let key = format!("acl:{{127.0.2.0/24}}:lease:{}", reply.yiaddr());
    assert_eq!(redis.cli(&["ttl", &key]), "-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let key = format!("acl:{{127.0.2.0/24}}:lease:{ip2}");
    assert_eq!(redis.cli(&["hget", &key, "state"]), "declined");
    // The views and the admin calls.
    let node = &hive.nodes[0];
    let rt = node.runtime();
    let store = node.store();
    store
        .stats(&rt.pools[0])
        .await
        .expect("stats as the ACL user");
    let q = dhcp_hive_mind::admin::ListFilter {
        limit: 10,
        ..Default::default()
    };
    dhcp_hive_mind::admin::list(store, &rt.pools, &q)
        .await
        .expect("list as the ACL user");
    store
        .set_reservation(
            &rt.pools[0],
            "02:00:00:00:00:99",
            Some(Ipv4Addr::new(127, 0, 2, 99)),
        )
        .await
        .expect("reservation");
    store
        .set_reservation(&rt.pools[0], "02:00:00:00:00:99", None)
        .await
        .expect("unreserve");
    assert!(
        store
            .force_release(&rt.pools[0], ip2)
            .await
            .expect("force release")
    );
    assert!(node.is_ready());
    hive.stop().await;
}
