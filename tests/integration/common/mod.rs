//! Test harness: a real redis-server on a free port in a temp dir, hive nodes in-process on
//! loopback sockets, and a relay that speaks DHCP through them.

#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dhcp_hive_mind::config::Config;
use dhcp_hive_mind::lease::{self, RedisStore};
use dhcp_hive_mind::node::Node;
use dhcp_hive_mind::transport;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// The tests that load the machine most (chaos, perfdhcp, 10,000 leases, 1,000 concurrent
/// clients) take this, so that on a 2-core CI host they never starve each other.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A free TCP/UDP port on loopback (both protocols checked).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        // Spread over a range per process so parallel tests do not race for one port; below
        // Linux's ephemeral range (32768 and up by default), where the tests' own outgoing
        // connections (to Redis, between cluster nodes) take their local ports and could take
        // one of these between this check and the server's bind.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((std::process::id() * 37 + n * 2) % 12_000) as u16;
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok();
        let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        if udp && tcp {
            return port;
        }
    }
}

/// A redis-server child process with its data in a temp dir; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
    password: Option<String>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra command-line arguments (e.g. `--requirepass x`, `--replicaof h p`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .map(|p| (*p).to_owned());
        let mut r = Self {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            password,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL: the hardest way to lose it).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the server (`STOP`: it keeps its connections and answers nothing).
    pub fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("redis-server running");
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Starts it again on the same port and data dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs redis-cli and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Config JSON of a loopback hive: subnets 127.0.<n>.0/24 relayed from 127.0.<n>.1.
pub fn config_json(port: u16, redis: &str, prefix: &str, pool_last: u8) -> String {
    format!(
        r#"{{
  "hostname": "hive.test",
  "interface": "127.0.0.1",
  "port": {port},
  "redis": "{redis}",
  "serverId": "127.0.0.1",
  "keyPrefix": "{prefix}",
  "offerTime": 10,
  "declineProbation": 300,
  "subnets": [
    {{
      "subnet": "127.0.2.0/24",
      "router": "127.0.2.1",
      "dynStart": "127.0.2.10",
      "dynEnd": "127.0.2.{pool_last}",
      "leaseTime": 600,
      "dns": ["127.0.2.53", "127.0.2.54"],
      "domainName": "hive.test",
      "reservations": [
        {{ "mac": "02:00:00:00:aa:01", "ip": "127.0.2.5" }},
        {{ "circuitId": "port-7", "ip": "127.0.2.7" }},
        {{ "clientId": "ff:00:00:00:08", "ip": "127.0.2.8" }}
      ]
    }},
    {{
      "subnet": "127.0.3.0/24",
      "router": "127.0.3.1",
      "dynStart": "127.0.3.10",
      "dynEnd": "127.0.3.250",
      "leaseTime": 1200,
      "minLeaseTime": 60,
      "maxLeaseTime": 3600,
      "rapidCommit": true
    }}
  ]
}}"#
    )
}

pub fn parse_config(json: &str) -> Config {
    Config::from_json(Path::new("test.json"), json).expect("test config is valid")
}

/// N nodes in-process sharing `port` on 127.0.0.1 through SO_REUSEPORT.
pub struct Hive {
    pub nodes: Vec<Arc<Node<RedisStore>>>,
    pub port: u16,
    pub config: Config,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Hive {
    pub async fn start(config: Config, n: usize) -> Self {
        let port = config.port;
        let mut nodes = Vec::new();
        let mut tasks = Vec::new();
        let shutdown = CancellationToken::new();
        for i in 0..n {
            let store = lease::connect(&config, &format!("node{i}")).expect("client");
            let node = Arc::new(Node::new(config.clone(), store, None).expect("node"));
            let socket =
                transport::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), None).expect("bind");
            tasks.push(tokio::spawn(
                Arc::clone(&node).run(vec![socket], shutdown.clone()),
            ));
            nodes.push(node);
        }
        let hive = Self {
            nodes,
            port,
            config,
            shutdown,
            tasks,
        };
        hive.wait_ready(Duration::from_secs(10)).await;
        hive
    }

    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.nodes.iter().all(|n| n.is_ready()) {
            assert!(Instant::now() < deadline, "nodes not ready in {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A relay agent at `giaddr`, listening on giaddr:port for the hive's replies.
pub struct Relay {
    pub sock: UdpSocket,
    pub giaddr: Ipv4Addr,
    pub server: SocketAddrV4,
}

impl Relay {
    pub async fn new(giaddr: Ipv4Addr, port: u16) -> Self {
        let sock = transport::bind(SocketAddrV4::new(giaddr, port), None).expect("relay bind");
        Self {
            sock,
            giaddr,
            server: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        }
    }

    pub async fn send(&self, msg: &Message) {
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).expect("encode");
        self.send_raw(&buf).await;
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.server).await.expect("send");
    }

    /// The next reply, or None after `wait`.
    pub async fn recv(&self, wait: Duration) -> Option<Message> {
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(Message::decode(&mut Decoder::new(&buf[..n])).expect("hive replies decode"))
    }

    /// The next reply's bytes, or None after `wait`.
    pub async fn recv_raw(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Sends and waits for the reply, retransmitting like a client (RFC 2131 4.1, with
    /// shorter waits): 4 tries, 1 s apart.
    pub async fn exchange(&self, msg: &Message) -> Option<Message> {
        for _ in 0..4 {
            self.send(msg).await;
            while let Some(reply) = self.recv(Duration::from_secs(1)).await {
                // A late answer to an earlier exchange is not this one's.
                if reply.xid() == msg.xid() && reply.chaddr() == msg.chaddr() {
                    return Some(reply);
                }
            }
        }
        None
    }

    /// Sends once and waits up to `wait` for a reply to it (for paths that expect silence).
    pub async fn exchange_once(&self, msg: &Message, wait: Duration) -> Option<Message> {
        self.send(msg).await;
        self.recv(wait).await
    }
}

/// `msg` encoded, with `extra` raw option bytes inserted before END.
pub fn with_raw_options(msg: &Message, extra: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).expect("encode");
    let end = buf.iter().rposition(|b| *b == 255).expect("end");
    buf.splice(end..end, extra.iter().copied());
    buf
}

pub fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0x00, b[0], b[1], b[2], b[3]]
}

/// A client message as a relay forwards it.
pub fn message(kind: MessageType, mac: &[u8], xid: u32, giaddr: Ipv4Addr) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        giaddr,
        mac,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

pub fn discover(mac: &[u8], xid: u32, giaddr: Ipv4Addr) -> Message {
    let mut m = message(MessageType::Discover, mac, xid, giaddr);
    m.opts_mut().insert(DhcpOption::Hostname(format!(
        "host-{:02x}{:02x}",
        mac[4], mac[5]
    )));
    m
}

/// A SELECTING-state REQUEST for `ip` from server `server_id`.
pub fn request_selecting(
    mac: &[u8],
    xid: u32,
    giaddr: Ipv4Addr,
    ip: Ipv4Addr,
    server_id: Ipv4Addr,
) -> Message {
    let mut m = message(MessageType::Request, mac, xid, giaddr);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server_id));
    m.opts_mut().insert(DhcpOption::Hostname(format!(
        "host-{:02x}{:02x}",
        mac[4], mac[5]
    )));
    m
}

pub fn msg_type(m: &Message) -> Option<MessageType> {
    m.opts().msg_type()
}

pub fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

/// A full DORA through `relay`; returns the ACKed address.
pub async fn dora(relay: &Relay, mac: &[u8], xid: u32) -> Option<Ipv4Addr> {
    let offer = relay.exchange(&discover(mac, xid, relay.giaddr)).await?;
    if msg_type(&offer) != Some(MessageType::Offer) {
        return None;
    }
    let ip = offer.yiaddr();
    let server_id = match opt(&offer, OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => return None,
    };
    let ack = relay
        .exchange(&request_selecting(mac, xid, relay.giaddr, ip, server_id))
        .await?;
    (msg_type(&ack) == Some(MessageType::Ack) && ack.yiaddr() == ip).then_some(ip)
}

/// A unique key prefix per test.
pub fn prefix(name: &str) -> String {
    format!("t{}-{name}", std::process::id())
}

/// The real binary serving a config written to a temp dir; killed on drop.
pub struct Served {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
    pub http: SocketAddrV4,
}

impl Served {
    /// Writes `json` and starts `dhcp-hive-mind serve`; waits until /readyz says ready.
    pub fn start(json: &str, http: SocketAddrV4) -> Self {
        Self::start_with_env(json, http, &[("RUST_LOG", "info")])
    }

    /// As [`Served::start`], with environment variables for the node.
    pub fn start_with_env(json: &str, http: SocketAddrV4, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, json).expect("write config");
        let log = std::fs::File::create(dir.path().join("node.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("HIVE_NODE_NAME", "served")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the binary");
        let served = Self {
            child,
            dir,
            config_path,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(http, "/readyz").map(|(s, _)| s) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "node not ready: {}",
                served.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        served
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddrV4, path: &str) -> Option<(u16, String)> {
    http(addr, "GET", path, None, "")
}

/// A plain HTTP/1.0 request with an optional bearer token and a JSON body: (status, body).
pub fn http(
    addr: SocketAddrV4,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of one sample line of a Prometheus text exposition, e.g.
/// `dhcp_hive_replies_sent_total{type="offer"}`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// DORA for each client in `ids` through one relay, up to 250 exchanges at once (a real
/// client population spreads over time; a test that fires 10,000 at once measures the socket
/// buffers, not the hive); returns (id, address) of the ACKs.
pub async fn run_clients(relay: &Relay, ids: Vec<u32>) -> Vec<(u32, Ipv4Addr)> {
    let mut acked = Vec::new();
    for batch in ids.chunks(250) {
        acked.extend(run_batch(relay, batch).await);
    }
    acked
}

async fn run_batch(relay: &Relay, ids: &[u32]) -> Vec<(u32, Ipv4Addr)> {
    use std::collections::HashMap;
    // Where each client stands: None = waiting for an offer, Some(ip) = requested ip.
    let mut state: HashMap<u32, Option<Ipv4Addr>> = ids.iter().map(|id| (*id, None)).collect();
    let mut acked = Vec::new();
    // Like real clients, retransmit what got no answer: up to 6 rounds (a busy 2-core CI
    // machine can stall a debug build for a second or two).
    for _ in 0..6 {
        for (id, st) in &state {
            match st {
                None => relay.send(&discover(&mac(*id), *id, relay.giaddr)).await,
                Some(ip) => {
                    relay
                        .send(&request_selecting(
                            &mac(*id),
                            *id,
                            relay.giaddr,
                            *ip,
                            Ipv4Addr::LOCALHOST,
                        ))
                        .await;
                }
            }
        }
        // Until every client is acknowledged or the hive has gone quiet for a while.
        while !state.is_empty() {
            let Some(m) = relay.recv(Duration::from_millis(2000)).await else {
                break;
            };
            let id = m.xid();
            match msg_type(&m) {
                Some(MessageType::Offer) => {
                    if let Some(st @ None) = state.get_mut(&id) {
                        *st = Some(m.yiaddr());
                        relay
                            .send(&request_selecting(
                                &mac(id),
                                id,
                                relay.giaddr,
                                m.yiaddr(),
                                Ipv4Addr::LOCALHOST,
                            ))
                            .await;
                    }
                }
                Some(MessageType::Ack) => {
                    if state.remove(&id).is_some() {
                        acked.push((id, m.yiaddr()));
                    }
                }
                other => panic!("unexpected reply {other:?}"),
            }
        }
        if state.is_empty() {
            break;
        }
    }
    acked
}
pub mod cluster;

/// The raw options of an encoded message: (code, body), long options joined (RFC 3396).
pub fn raw_options(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut i = 240;
    while i < b.len() {
        match b[i] {
            0 => i += 1,
            255 => break,
            c => {
                let len = b[i + 1] as usize;
                let body = b[i + 2..i + 2 + len].to_vec();
                match out.iter_mut().find(|(k, _)| *k == c) {
                    Some((_, v)) => v.extend(body),
                    None => out.push((c, body)),
                }
                i += 2 + len;
            }
        }
    }
    out
}

/// The body of option `code` in `raw_options`' output.
pub fn get(opts: &[(u8, Vec<u8>)], code: u8) -> Option<&[u8]> {
    opts.iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_slice())
}
