//! A real Redis Cluster for tests: 3 primaries and 3 replicas, redis-server processes on
//! loopback ports with their files in one temp dir, joined with `redis-cli --cluster create`.
//! Every process is killed on drop (also when the test panics).
//!
//! Also a tiny synchronous RESP client ([`Conn`]), so the tests can read Redis exactly (keys,
//! slots, topology) without parsing `redis-cli` output or opening a connection per command.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Self>>),
}

impl Resp {
    /// The reply as text: simple and bulk strings, integers; "" for nil; the message of an
    /// error prefixed with "ERR:" so it never reads as a value.
    pub fn text(&self) -> String {
        match self {
            Self::Simple(s) => s.clone(),
            Self::Error(e) => format!("ERR:{e}"),
            Self::Int(i) => i.to_string(),
            Self::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Self::Bulk(None) | Self::Array(None) => String::new(),
            Self::Array(Some(items)) => items.iter().map(Self::text).collect::<Vec<_>>().join(" "),
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => self.text().parse().ok(),
        }
    }

    pub fn items(&self) -> &[Self] {
        match self {
            Self::Array(Some(items)) => items,
            _ => &[],
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Self::Error(_))
    }
}

/// A plain RESP connection to one redis-server.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn open(port: u16) -> io::Result<Self> {
        let s = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    pub fn call<S: AsRef<str>>(&mut self, args: &[S]) -> io::Result<Resp> {
        self.writer.write_all(&encode(args))?;
        read_reply(&mut self.reader)
    }

    /// Sends all commands, then reads all replies (one round trip for thousands of reads).
    pub fn pipeline<S: AsRef<str>>(&mut self, cmds: &[Vec<S>]) -> io::Result<Vec<Resp>> {
        let mut out = Vec::new();
        for c in cmds {
            out.extend(encode(c));
        }
        self.writer.write_all(&out)?;
        cmds.iter().map(|_| read_reply(&mut self.reader)).collect()
    }
}

/// One command on a fresh connection.
pub fn call<S: AsRef<str>>(port: u16, args: &[S]) -> io::Result<Resp> {
    Conn::open(port)?.call(args)
}

fn encode<S: AsRef<str>>(args: &[S]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref().as_bytes();
        b.extend(format!("${}\r\n", a.len()).into_bytes());
        b.extend(a);
        b.extend(b"\r\n");
    }
    b
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad RESP line {line:?}"),
        )
    };
    let num = || rest.parse::<i64>().map_err(|_| bad());
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(num()?),
        "$" => match usize::try_from(num()?) {
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Resp::Bulk(Some(buf))
            }
            Err(_) => Resp::Bulk(None),
        },
        "*" => match usize::try_from(num()?) {
            Ok(n) => Resp::Array(Some(
                (0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?,
            )),
            Err(_) => Resp::Array(None),
        },
        _ => return Err(bad()),
    })
}

/// The cluster hash slot of `key` (CRC16/XMODEM of the hash tag, or of the whole key).
pub fn key_slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let hashed = match b.iter().position(|c| *c == b'{') {
        Some(open) => match b[open + 1..].iter().position(|c| *c == b'}') {
            Some(len) if len > 0 => &b[open + 1..open + 1 + len],
            _ => b,
        },
        None => b,
    };
    let mut crc: u16 = 0;
    for byte in hashed {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// One redis-server of the cluster.
pub struct ClusterNode {
    pub port: u16,
    pub bus: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// SIGSTOPped: the process holds its port and answers nothing (a hung or cut-off server).
    stopped: bool,
}

impl ClusterNode {
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).expect("log file");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--cluster-port", &self.bus.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            // Fast failure detection: a primary is FAIL after 1 s of silence, and its replica
            // is promoted about a second later.
            .args(["--cluster-node-timeout", "1000"])
            // A replica always stands for election, however long it was cut off.
            .args(["--cluster-replica-validity-factor", "0"])
            // The shards that are up keep serving while one shard fails over (a DHCP operator
            // wants the other subnets served; the default would stop the whole cluster).
            .args(["--cluster-require-full-coverage", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !call(self.port, &["PING"]).is_ok_and(|r| r.text() == "PONG") {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "redis-server {} did not start ({exited:?}): {}",
                self.port,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some() && !self.stopped
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    fn pause(&mut self, stop: bool) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args([if stop { "-STOP" } else { "-CONT" }, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -STOP/-CONT {pid}");
        self.stopped = stop;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stopped = false;
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary with its slots and replicas, as the cluster sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub primary: u16,
    pub id: String,
    pub replicas: Vec<u16>,
    pub slots: Vec<(u16, u16)>,
}

impl Shard {
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// 3 primaries + 3 replicas on loopback.
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    // Dropped after the nodes (field order), so no server writes into a removed dir.
    _root: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for i in 0..6 {
            let dir = root.path().join(format!("node{i}"));
            std::fs::create_dir(&dir).expect("node dir");
            let mut node = ClusterNode {
                port: free_port(),
                bus: free_port(),
                dir,
                child: None,
                stopped: false,
            };
            node.spawn();
            nodes.push(node);
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes, _root: root };
        cluster.wait_stable(Duration::from_secs(30));
        cluster
    }

    /// The fred URL naming every node as a seed.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port));
        }
        url
    }

    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect()
    }

    /// The shards as the live node at `port` sees them (failed primaries left out).
    pub fn shards_seen_by(&self, port: u16) -> io::Result<Vec<Shard>> {
        let text = call(port, &["CLUSTER", "NODES"])?.text();
        let mut by_id: BTreeMap<String, Shard> = BTreeMap::new();
        let mut replicas = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                continue;
            }
            let port: u16 = f[1]
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let flags = f[2];
            if flags.contains("fail") && !flags.contains("fail?") {
                continue;
            }
            if flags.contains("master") {
                let slots = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| {
                        let (a, b) = s.split_once('-').unwrap_or((s, s));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                by_id.insert(
                    f[0].to_owned(),
                    Shard {
                        primary: port,
                        id: f[0].to_owned(),
                        replicas: Vec::new(),
                        slots,
                    },
                );
            } else if flags.contains("slave") {
                replicas.push((f[3].to_owned(), port));
            }
        }
        for (primary, port) in replicas {
            if let Some(s) = by_id.get_mut(&primary) {
                s.replicas.push(port);
            }
        }
        let mut shards: Vec<Shard> = by_id
            .into_values()
            .filter(|s| !s.slots.is_empty())
            .collect();
        for s in &mut shards {
            s.replicas.sort_unstable();
            s.slots.sort_unstable();
        }
        shards.sort_by_key(|s| s.slots.first().copied());
        Ok(shards)
    }

    /// The shards, as every live node agrees they are.
    pub fn shards(&self) -> Vec<Shard> {
        self.shards_seen_by(self.live_ports()[0])
            .expect("CLUSTER NODES")
    }

    /// The shard whose primary serves `slot`.
    pub fn owner(&self, slot: u16) -> Shard {
        self.shards()
            .into_iter()
            .find(|s| s.owns(slot))
            .unwrap_or_else(|| panic!("no shard owns slot {slot}"))
    }

    /// Waits until every live node says `cluster_state:ok`, all agree on who serves which
    /// slot, every slot is served, and every replica's link to its primary is up.
    pub fn wait_stable(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            match self.stable() {
                Ok(()) => return,
                Err(why) => assert!(
                    Instant::now() < deadline,
                    "cluster not stable in {limit:?}: {why}"
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stable(&self) -> Result<(), String> {
        let mut seen = None;
        for port in self.live_ports() {
            let info = call(port, &["CLUSTER", "INFO"])
                .map_err(|e| e.to_string())?
                .text();
            if !info.contains("cluster_state:ok") {
                return Err(format!("{port}: not ok"));
            }
            let shards = self.shards_seen_by(port).map_err(|e| e.to_string())?;
            let covered: u32 = shards
                .iter()
                .flat_map(|s| &s.slots)
                .map(|(a, b)| u32::from(b - a) + 1)
                .sum();
            if covered != 16384 {
                return Err(format!("{port}: {covered} slots served"));
            }
            match &seen {
                None => seen = Some(shards),
                Some(s) if *s == shards => {}
                Some(s) => return Err(format!("{port} disagrees: {shards:?} vs {s:?}")),
            }
            let repl = call(port, &["INFO", "replication"])
                .map_err(|e| e.to_string())?
                .text();
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return Err(format!("{port}: replica link down"));
            }
        }
        Ok(())
    }

    /// SIGKILLs the server on `port`.
    pub fn kill(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// SIGSTOPs the server on `port`: it keeps its connections and answers nothing, as a hung
    /// server or one behind a network partition.
    pub fn stop(&mut self, port: u16) {
        self.node_mut(port).pause(true);
    }

    /// SIGCONTs the server on `port`.
    pub fn resume(&mut self, port: u16) {
        self.node_mut(port).pause(false);
    }

    /// Starts the server on `port` again, on its dir (and its nodes.conf).
    pub fn restart(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.kill();
        node.spawn();
    }

    fn node_mut(&mut self, port: u16) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on {port}"))
    }

    /// Waits until a live node other than `old` is primary of `slot`; returns its port.
    pub fn wait_new_owner(&self, slot: u16, old: u16, limit: Duration) -> u16 {
        let deadline = Instant::now() + limit;
        loop {
            let owners: Vec<u16> = self
                .live_ports()
                .iter()
                .filter_map(|p| self.shards_seen_by(*p).ok())
                .filter_map(|shards| shards.into_iter().find(|s| s.owns(slot)))
                .map(|s| s.primary)
                .collect();
            if let Some(new) = owners.first().copied()
                && new != old
                && owners.iter().all(|o| *o == new)
                && call(new, &["ROLE"]).is_ok_and(|r| r.text().starts_with("master"))
            {
                return new;
            }
            assert!(
                Instant::now() < deadline,
                "slot {slot} still on {old} after {limit:?}: {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Moves `slot` to the primary on `to`, keys and all, while clients keep using it:
    /// IMPORTING/MIGRATING, MIGRATE of the keys `first` picks in one batch, then of the others
    /// in batches of `batch` with `pause` between them, then SETSLOT NODE on both ends and on
    /// every other primary. Returns the keys moved.
    ///
    /// While some of a command's keys have moved and others not, Redis answers TRYAGAIN; once
    /// all of them have moved, the old owner answers ASK. Moving the keys every command names
    /// first makes the migration mostly an ASK window.
    pub fn migrate_slot(
        &self,
        slot: u16,
        to: u16,
        first: impl Fn(&str) -> bool,
        batch: usize,
        pause: Duration,
    ) -> usize {
        let shards = self.shards();
        let from = shards
            .iter()
            .find(|s| s.owns(slot))
            .expect("slot owner")
            .clone();
        let dest = shards
            .iter()
            .find(|s| s.primary == to)
            .expect("destination is a primary")
            .clone();
        assert_ne!(from.primary, to, "slot {slot} is already on {to}");
        let s = slot.to_string();
        let ok = |port: u16, args: &[&str]| {
            let r = call(port, args).expect("redis");
            assert!(!r.is_error(), "{port} {args:?}: {r:?}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id]);
        ok(
            from.primary,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", &dest.id],
        );
        let mut moved = 0;
        let mut src = Conn::open(from.primary).expect("source");
        let keys_in_slot = |src: &mut Conn, n: usize| -> Vec<String> {
            src.call(&["CLUSTER", "GETKEYSINSLOT", &s, &n.to_string()])
                .expect("GETKEYSINSLOT")
                .items()
                .iter()
                .map(Resp::text)
                .collect()
        };
        let mut leading: Vec<String> = keys_in_slot(&mut src, 1_000_000)
            .into_iter()
            .filter(|k| first(k))
            .collect();
        loop {
            let keys = if leading.is_empty() {
                keys_in_slot(&mut src, batch)
            } else {
                std::mem::take(&mut leading)
            };
            if keys.is_empty() {
                break;
            }
            let to_s = to.to_string();
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &to_s,
                "",
                "0",
                "5000",
                "REPLACE",
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            let r = src.call(&args).expect("MIGRATE");
            // NOKEY: every key of the batch expired meanwhile.
            assert!(
                !r.is_error() || r.text().contains("NOKEY"),
                "MIGRATE: {r:?}"
            );
            moved += keys.len();
            std::thread::sleep(pause);
        }
        // The destination first, so no moment exists where neither end serves the slot.
        ok(to, &["CLUSTER", "SETSLOT", &s, "NODE", &dest.id]);
        ok(from.primary, &["CLUSTER", "SETSLOT", &s, "NODE", &dest.id]);
        for other in shards
            .iter()
            .filter(|x| x.primary != to && x.primary != from.primary)
        {
            ok(other.primary, &["CLUSTER", "SETSLOT", &s, "NODE", &dest.id]);
        }
        moved
    }

    /// One command routed to the primary serving `key`.
    pub fn call_key(&self, key: &str, args: &[&str]) -> Resp {
        let slot = key_slot(key);
        call(self.owner(slot).primary, args).expect("redis")
    }

    /// Many single-key commands, each sent to the primary serving its key (the key is the
    /// command's second word), pipelined per primary; replies in the order of `cmds`.
    pub fn pipeline_by_key(&self, cmds: &[Vec<String>]) -> Vec<Resp> {
        let shards = self.shards();
        let mut per_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, c) in cmds.iter().enumerate() {
            let slot = key_slot(&c[1]);
            let port = shards
                .iter()
                .find(|s| s.owns(slot))
                .map_or(0, |s| s.primary);
            per_port.entry(port).or_default().push(i);
        }
        let mut out = vec![Resp::Bulk(None); cmds.len()];
        for (port, idx) in per_port {
            let batch: Vec<Vec<String>> = idx.iter().map(|i| cmds[*i].clone()).collect();
            let replies = Conn::open(port)
                .and_then(|mut c| c.pipeline(&batch))
                .expect("pipeline");
            for (i, r) in idx.into_iter().zip(replies) {
                out[i] = r;
            }
        }
        out
    }

    /// Picks `count` subnets `127.<n>.0.0/<mask>` (n from `first` on) whose hash tags spread
    /// over every shard as evenly as possible; returns (subnet, n, primary port).
    pub fn spread_subnets(&self, count: usize, first: u8, mask: u8) -> Vec<(String, u8, u16)> {
        let shards = self.shards();
        let per_shard = count.div_ceil(shards.len());
        let mut taken = vec![0usize; shards.len()];
        let mut picked = Vec::new();
        for n in first..=250 {
            let subnet = format!("127.{n}.0.0/{mask}");
            let slot = key_slot(&format!("x:{{{subnet}}}:y"));
            let Some(i) = shards.iter().position(|s| s.owns(slot)) else {
                continue;
            };
            // Fill every shard once before any gets a second subnet.
            let round = picked.len() / shards.len();
            if taken[i] <= round && taken[i] < per_shard {
                taken[i] += 1;
                picked.push((subnet, n, shards[i].primary));
                if picked.len() == count {
                    return picked;
                }
            }
        }
        panic!("no {count} subnets spread over {} shards", shards.len());
    }
}
