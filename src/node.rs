//! A node: wires the config, the lease store and the sockets together, runs the receive loops
//! and the health check, bounds the work in flight, and drains on shutdown.
//!
//! Every datagram takes one straight path: receive -> parse -> pick subnet -> handle (under a
//! timeout) -> encode -> send, and is recorded once, at the end, in [`Node::record`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use dhcproto::v4::MessageType;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backlog::{Backlog, Class};
use crate::config::Config;
use crate::icmp::Pinger;
use crate::lease::{LeaseError, Pool, Store};
use crate::metrics;
use crate::protocol::{self, Answer, Context, Drop, Request};
use crate::transport::{self, Interface};

/// A message gets this long in the node; past it the client's retransmission is the retry.
const HANDLER_TIMEOUT: Duration = Duration::from_secs(2);
/// Datagrams handled at once. Enough to keep Redis busy (and to cover ICMP checks that wait);
/// beyond it datagrams wait in the backlog, where the order of service is chosen (see
/// [`crate::backlog`]).
const MAX_IN_FLIGHT: usize = 1024;
/// Datagrams of each class the backlog holds (with the in-flight ones, about a second of a
/// node's full rate); past it the oldest of the class is dropped (`shed`).
const BACKLOG: usize = 4096;
/// A message that waited longer than this (in the socket, or for a slot) is dropped unread:
/// its client has retransmitted or moved on, and answering it would only feed an overload.
const MAX_AGE: Duration = Duration::from_secs(2);
/// Largest datagram read. DHCP messages are at most a few KiB; a longer one is dropped.
const RECV_BUF: usize = 4096;
/// How often readiness is checked.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Pings that may fail in a row, with the connection up, before the node stops serving.
const SLOW_PINGS: u32 = 3;
/// Slow pings do not stop a node whose lease calls got answers this recently.
const ANSWERED_WINDOW: Duration = Duration::from_secs(1);
/// How long shutdown waits for messages in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::{ClientWindow, Node};
    use crate::config::Config;
    use crate::lease::{Exchange, Grant, Hold, LeaseError, Offered, Pool, Store};

    /// A store whose pings always time out; whether its lease calls get answers is the test's.
    #[derive(Default)]
    struct SlowPings {
        answering: AtomicBool,
    }

    impl Store for SlowPings {
        async fn offer(
            &self,
            _: &Exchange<'_>,
            _: Option<Ipv4Addr>,
            _: Hold,
        ) -> Result<Offered, LeaseError> {
            Err(LeaseError::Exhausted)
        }
        async fn request(
            &self,
            _: &Exchange<'_>,
            _: Ipv4Addr,
            _: bool,
        ) -> Result<Grant, LeaseError> {
            Err(LeaseError::Exhausted)
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
            if self.answering.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err(LeaseError::Backend("Request timed out".into()))
            }
        }
        async fn ping(&self) -> Result<(), LeaseError> {
            Err(LeaseError::Backend("Request timed out".into()))
        }
        fn answered_within(&self, _: Duration) -> bool {
            self.answering.load(Ordering::Relaxed)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_pings_stop_a_node_only_when_its_calls_go_unanswered_too() {
        let config = Config::from_json(
            Path::new("t.json"),
            r#"{ "hostname": "h", "interface": "127.0.0.1", "port": 1067, "serverId": "127.0.0.1",
                 "subnets": [{ "subnet": "127.0.2.0/24", "dynStart": "127.0.2.10",
                               "dynEnd": "127.0.2.20", "leaseTime": 600 }] }"#,
        )
        .expect("config");
        let store = SlowPings::default();
        store.answering.store(true, Ordering::Relaxed);
        let node = Arc::new(Node::new(config, store, None).expect("node"));
        let shutdown = CancellationToken::new();
        let health = tokio::spawn(Arc::clone(&node).health(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            node.is_ready(),
            "busy, not gone: still serving after 20 slow pings"
        );
        node.store.answering.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!node.is_ready(), "no answers and no pings: out of service");
        shutdown.cancel();
        let _ = health.await;
    }

    #[test]
    fn client_window_caps_per_second_and_resets() {
        let mut w = ClientWindow::default();
        assert!(w.admit("a", 2, 10));
        assert!(w.admit("a", 2, 10));
        assert!(!w.admit("a", 2, 10), "third in the same second");
        assert!(w.admit("b", 2, 10), "other clients are not affected");
        assert!(w.admit("a", 2, 11), "a new second");
        assert_eq!(w.counts.len(), 1, "old second forgotten");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "{file}: serverId: not set, and the interface {interface:?} has no IPv4 address to use"
    )]
    NoServerId { file: String, interface: String },
    #[error("{file}: pingCheck: {source}")]
    Ping {
        file: String,
        source: std::io::Error,
    },
}

/// What a node serves with: the config and what is derived from it. Swapped whole on reload;
/// a message in flight keeps the `Arc` it started with.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub pools: Vec<Pool>,
    pub server_id: Ipv4Addr,
    /// The subnet of the link the node listens on, for clients that are not relayed.
    local_subnet: Option<usize>,
    /// 1 at start-up, +1 per accepted reload.
    pub version: u64,
    /// The ICMP check's socket, while a subnet has `pingCheck` (kept across reloads).
    pinger: Option<Arc<Pinger>>,
}

impl Runtime {
    fn new(
        config: Config,
        interface: Option<&Interface>,
        version: u64,
        pinger: Option<&Arc<Pinger>>,
    ) -> Result<Self, NodeError> {
        let addrs: Vec<Ipv4Addr> = interface
            .map(|i| i.addrs.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default();
        // All nodes must present one identifier; the interface's own address is only right
        // for a single node (DESIGN.md, identity of the hive).
        let server_id = config
            .server_id
            .or_else(|| addrs.first().copied())
            .ok_or_else(|| NodeError::NoServerId {
                file: config.file.display().to_string(),
                interface: config.interface.clone(),
            })?;
        let local_subnet = config
            .subnets
            .iter()
            .position(|s| addrs.iter().any(|a| s.contains(*a)));
        let pools = config
            .subnets
            .iter()
            .map(|s| Pool::new(&config, s))
            .collect();
        let pinger = match pinger {
            _ if !config.subnets.iter().any(|s| s.ping_check) => None,
            Some(p) => Some(Arc::clone(p)),
            None => Some(Arc::new(Pinger::open().map_err(|source| {
                NodeError::Ping {
                    file: config.file.display().to_string(),
                    source,
                }
            })?)),
        };
        Ok(Self {
            config,
            pools,
            server_id,
            local_subnet,
            version,
            pinger,
        })
    }
}

/// One hive node. Shared by its tasks behind an `Arc`; it holds no per-client state.
pub struct Node<S> {
    /// A std lock: held only to clone or swap the `Arc`, never across an await.
    runtime: RwLock<Arc<Runtime>>,
    interface: Option<Interface>,
    store: S,
    ready: AtomicBool,
    /// Set while Redis fails, so the outage is logged once, not once per packet.
    redis_down: AtomicBool,
    /// Why the node is not ready, for /readyz.
    reason: RwLock<String>,
    /// Messages per client in the current second (`rateLimits.clientExchanges`), in shards by
    /// client: messages of different clients on different cores rarely wait for each other.
    clients: [Mutex<ClientWindow>; CLIENT_SHARDS],
    /// Picks a client's shard (keyed per process, as a HashMap's hasher).
    client_hasher: RandomState,
    /// Datagrams waiting for a slot (see `receive`). A std lock, held for one queue operation.
    backlog: Mutex<Backlog<Waiting>>,
    /// The link's neighbour table, for unicast to clients without an address; None where the
    /// link has no ARP (loopback) or the kernel refused it (no CAP_NET_ADMIN): broadcast then.
    neighbours: Option<transport::Neighbours>,
    /// Set when the kernel refused a neighbour entry for want of privilege: logged once, and
    /// not asked again.
    neighbours_refused: AtomicBool,
}

/// A datagram received and not yet served.
struct Waiting {
    data: Vec<u8>,
    peer: SocketAddr,
    received_at: SystemTime,
    /// The socket it came in on, which the reply goes out of.
    socket: Arc<UdpSocket>,
}

/// Shards of the per-client message counts.
const CLIENT_SHARDS: usize = 16;

/// A fixed one-second window of message counts per client. Cleared when the second changes,
/// so it holds at most one second's worth of clients.
#[derive(Default)]
struct ClientWindow {
    second: u64,
    counts: HashMap<String, u32>,
}

impl ClientWindow {
    /// Counts one message of `client`; false when that passes `cap` this second.
    fn admit(&mut self, client: &str, cap: u32, second: u64) -> bool {
        if second != self.second {
            self.second = second;
            self.counts.clear();
        }
        let n = match self.counts.get_mut(client) {
            Some(n) => n,
            None => self.counts.entry(client.to_owned()).or_default(),
        };
        *n += 1;
        *n <= cap
    }
}

impl<S: Store> Node<S> {
    /// A node for `config`, listening on `interface` (None: relayed traffic only, as in tests).
    pub fn new(config: Config, store: S, interface: Option<&Interface>) -> Result<Self, NodeError> {
        let runtime = Runtime::new(config, interface, 1, None)?;
        metrics::config_version(1);
        Ok(Self {
            runtime: RwLock::new(Arc::new(runtime)),
            interface: interface.cloned(),
            store,
            ready: AtomicBool::new(false),
            redis_down: AtomicBool::new(false),
            reason: RwLock::new("starting: Redis not reached yet".into()),
            clients: std::array::from_fn(|_| Mutex::new(ClientWindow::default())),
            client_hasher: RandomState::new(),
            backlog: Mutex::new(Backlog::new(BACKLOG)),
            neighbours: interface.and_then(|i| {
                transport::Neighbours::open(i)
                    .inspect_err(|e| {
                        warn!(
                            interface = %i.name,
                            error = %e,
                            "no route netlink socket: replies to clients without an address are \
                             broadcast"
                        );
                    })
                    .ok()
                    .flatten()
            }),
            neighbours_refused: AtomicBool::new(false),
        })
    }

    /// The runtime in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        // A poisoned lock means a panic while swapping an Arc: the Arc itself is intact.
        Arc::clone(&self.runtime.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn server_id(&self) -> Ipv4Addr {
        self.runtime().server_id
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether the node serves: Redis reachable, scripts loaded, reservations written.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Why the node is not ready (empty when it is).
    pub fn not_ready_reason(&self) -> String {
        if self.is_ready() {
            String::new()
        } else {
            self.reason.read().map(|r| r.clone()).unwrap_or_default()
        }
    }

    /// Swaps in a new, already validated config. Keys that sockets or the Redis client were
    /// built from (`interface`, `port`, `redis`, `nodeName`) take a restart: they keep their
    /// running values, with a warning. Messages in flight finish with the old config.
    pub async fn reload(&self, mut config: Config) -> Result<u64, NodeError> {
        let old = self.runtime();
        let fixed = [
            ("interface", old.config.interface != config.interface),
            ("port", old.config.port != config.port),
            ("redis", old.config.redis != config.redis),
            ("nodeName", old.config.node_name != config.node_name),
        ];
        for (key, changed) in fixed {
            if changed {
                warn!(
                    key,
                    "reload: this key takes a restart; keeping the running value"
                );
            }
        }
        config.interface.clone_from(&old.config.interface);
        config.port = old.config.port;
        config.redis.clone_from(&old.config.redis);
        config.node_name.clone_from(&old.config.node_name);
        let version = old.version + 1;
        let runtime = Arc::new(Runtime::new(
            config,
            self.interface.as_ref(),
            version,
            old.pinger.as_ref(),
        )?);
        // Reservations first, so no packet under the new config sees the old reserved set.
        // If Redis is down the health check writes them when it is back.
        if let Err(e) = self.store.prepare(&runtime.pools).await {
            self.backend_failed(&e);
        }
        *self.runtime.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&runtime);
        metrics::config_version(version);
        info!(
            version,
            subnets = runtime.config.subnets.len(),
            file = %runtime.config.file.display(),
            "config reloaded"
        );
        Ok(version)
    }

    /// Runs until `shutdown`: one receive loop per socket, plus the health check. Returns after
    /// the messages in flight are done (or the drain timeout passed).
    pub async fn run(self: Arc<Self>, sockets: Vec<UdpSocket>, shutdown: CancellationToken) {
        metrics::ready(false);
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(Arc::clone(&self).health(shutdown.clone()));
        for socket in sockets {
            tasks.spawn(Arc::clone(&self).receive(
                Arc::new(socket),
                Arc::clone(&limit),
                shutdown.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
        // Drain: every permit back means nothing is in flight.
        let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
        if tokio::time::timeout(DRAIN_TIMEOUT, limit.acquire_many(all))
            .await
            .is_err()
        {
            warn!("shutdown: messages still in flight after {DRAIN_TIMEOUT:?}, leaving them");
        }
    }

    /// Keeps `ready` true: prepares the store when it (re)appears, pings it while up.
    async fn health(self: Arc<Self>, shutdown: CancellationToken) {
        // Failed pings in a row while connected. A lost connection takes the node out at once;
        // a slow answer (a starved CPU, a burst queued ahead of the ping) only after
        // `SLOW_PINGS` in a row, so one busy second does not stop a healthy node.
        let mut slow = 0;
        loop {
            // A reconnection may be to a new server (restart, failover): prepare again.
            let ok = if self.is_ready() && !self.store.take_reconnected() {
                self.store.ping().await
            } else {
                self.store.prepare(&self.runtime().pools).await
            };
            match ok {
                Ok(()) => {
                    slow = 0;
                    self.backend_ok();
                }
                Err(e) => {
                    slow += 1;
                    // Pings that time out behind a burst while the lease calls keep getting
                    // answers mean a busy Redis, not a lost one: keep serving (a call that
                    // fails is dropped on its own). A lost connection stops the node at once.
                    let busy = self.store.answered_within(ANSWERED_WINDOW);
                    if !self.is_ready()
                        || !self.store.is_connected()
                        || (slow >= SLOW_PINGS && !busy)
                    {
                        self.backend_failed(&e);
                    } else {
                        metrics::redis_error("slow_ping");
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
        }
    }

    fn backend_ok(&self) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            metrics::ready(true);
            if self.redis_down.swap(false, Ordering::Relaxed) {
                info!("Redis is back: serving again");
            } else {
                info!("Redis reachable, scripts loaded: serving");
            }
        }
    }

    fn backend_failed(&self, e: &LeaseError) {
        metrics::redis_error(e.as_str());
        let why = match self.store.last_error() {
            Some(conn) => format!("{e} (last connection error: {conn})"),
            None => e.to_string(),
        };
        if let Ok(mut r) = self.reason.write() {
            *r = format!("Redis unavailable: {why}");
        }
        if self.ready.swap(false, Ordering::Relaxed) {
            metrics::ready(false);
        }
        if !self.redis_down.swap(true, Ordering::Relaxed) {
            warn!(error = %why, "Redis unavailable: answering nothing until it is back");
        }
    }

    async fn receive(
        self: Arc<Self>,
        socket: Arc<UdpSocket>,
        limit: Arc<Semaphore>,
        shutdown: CancellationToken,
    ) {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                r = transport::recv_stamped(&socket, &mut buf) => r,
            };
            let (len, peer, received_at) = match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; not fatal.
                    debug!(error = %e, "receive error");
                    continue;
                }
            };
            let waiting = Waiting {
                data: buf[..len].to_vec(),
                peer,
                received_at,
                socket: Arc::clone(&socket),
            };
            // A free slot serves the datagram at once. Without one, it waits in the backlog
            // and the loop goes on reading: under overload the REQUESTs behind the DISCOVERs
            // in the socket buffer must be seen to be served first.
            let waiting = match Arc::clone(&limit).try_acquire_owned() {
                Ok(permit) => {
                    self.spawn_worker(Some(waiting), permit);
                    continue;
                }
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => waiting,
            };
            self.enqueue(waiting);
            // Every slot was taken a moment ago; one may have come free before the datagram
            // was queued, its worker having found the backlog empty: serve it here then.
            if let Ok(permit) = Arc::clone(&limit).try_acquire_owned() {
                self.spawn_worker(None, permit);
            }
        }
    }

    /// A worker holding one slot: serves `first`, then the backlog until it is empty.
    fn spawn_worker(self: &Arc<Self>, first: Option<Waiting>, permit: OwnedSemaphorePermit) {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let (mut next, mut permit) = (first, permit);
            loop {
                if let Some(w) = next {
                    node.process_at(&w.data, w.peer, w.received_at, &w.socket)
                        .await;
                }
                let Some((w, held)) = node.dequeue(permit) else {
                    return;
                };
                (next, permit) = (Some(w), held);
            }
        });
    }

    /// Queues a datagram that found no free slot; one shed to make room is recorded as dropped.
    fn enqueue(&self, waiting: Waiting) {
        let class = match protocol::peek_type(&waiting.data) {
            Some(MessageType::Request | MessageType::Decline | MessageType::Release) => {
                Class::Finishing
            }
            _ => Class::Starting,
        };
        let (shed, len) = {
            let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
            let shed = backlog.push(waiting, class, Instant::now());
            (shed, backlog.len())
        };
        metrics::backlog(len);
        if let Some(w) = shed {
            let msg_type = protocol::peek_type(&w.data);
            let label = metrics::type_label(msg_type);
            metrics::received(label);
            metrics::duration(label, w.received_at.elapsed().unwrap_or_default());
            metrics::dropped(Drop::Shed.as_str());
            debug!(msg_type = label, peer = %w.peer, reason = Drop::Shed.as_str(), "dropped");
        }
    }

    /// The next datagram of the backlog for the worker holding `permit`; with none, the slot
    /// is given back (under the backlog's lock, so that a datagram queued meanwhile is seen
    /// either here or by the receive loop's second try).
    fn dequeue(&self, permit: OwnedSemaphorePermit) -> Option<(Waiting, OwnedSemaphorePermit)> {
        let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        match backlog.pop(Instant::now()) {
            Some(w) => {
                let len = backlog.len();
                drop(backlog);
                metrics::backlog(len);
                Some((w, permit))
            }
            None => {
                drop(permit);
                None
            }
        }
    }

    /// One datagram, start to end.
    pub async fn process(&self, data: &[u8], peer: SocketAddr, socket: &UdpSocket) {
        self.process_at(data, peer, SystemTime::now(), socket).await;
    }

    /// One datagram that the kernel received at `received_at`.
    pub async fn process_at(
        &self,
        data: &[u8],
        peer: SocketAddr,
        received_at: SystemTime,
        socket: &UdpSocket,
    ) {
        let start = Instant::now();
        let (req, outcome) =
            match tokio::time::timeout(HANDLER_TIMEOUT, self.exchange(data, peer, received_at))
                .await
            {
                Ok(r) => r,
                Err(_) => (None, Err(Drop::Timeout)),
            };
        let mut sent = None;
        if let Ok(Answer::Reply(reply)) = &outcome {
            let mut out = Vec::with_capacity(protocol::MIN_MAX_SIZE);
            match protocol::encode(
                &reply.header,
                &reply.options,
                reply.relay_info.as_deref(),
                reply.max_len,
                &mut out,
            ) {
                Ok(()) => {
                    let to = self.destination(reply);
                    match socket.send_to(&out, to).await {
                        Ok(_) => sent = Some(to),
                        Err(e) => {
                            metrics::send_error();
                            debug!(error = %e, %to, "send failed");
                        }
                    }
                }
                Err(d) => metrics::dropped(d.as_str()),
            }
        }
        // Timed from the kernel's receipt stamp, so the wait in the socket buffer counts: a node
        // behind its load shows it here, as its clients see it. That stamp is wall-clock time;
        // if the clock stepped back since, the time since processing began stands in.
        let processing = start.elapsed();
        let elapsed = received_at
            .elapsed()
            .map_or(processing, |waited| waited.max(processing));
        self.record(req.as_ref(), &outcome, sent, peer, elapsed);
    }

    /// Where `reply` is sent: its address, or a broadcast where it is for a client without an
    /// address (RFC 2131 section 4.1) and the node cannot make the neighbour entry that a
    /// unicast to it needs, or the address is not another host of its link (a shared network's
    /// other subnet, where a unicast would be routed away; the interface's own address, where
    /// it would stay on the host).
    fn destination(&self, reply: &protocol::Reply) -> SocketAddrV4 {
        let Some(mac) = reply.link else {
            return reply.to;
        };
        let Some(neighbours) = self.neighbours.as_ref().filter(|n| {
            n.on_link(*reply.to.ip()) && !self.neighbours_refused.load(Ordering::Relaxed)
        }) else {
            return reply.broadcast_to();
        };
        match neighbours.learn(*reply.to.ip(), mac) {
            Ok(()) => reply.to,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    if !self.neighbours_refused.swap(true, Ordering::Relaxed) {
                        warn!(
                            error = %e,
                            "the kernel refuses neighbour entries (CAP_NET_ADMIN needed): \
                             replies to clients without an address are broadcast"
                        );
                    }
                } else {
                    debug!(error = %e, to = %reply.to, "neighbour entry failed: broadcast");
                }
                reply.broadcast_to()
            }
        }
    }

    /// Decodes, selects the subnet and handles; the request comes back for the record.
    async fn exchange(
        &self,
        data: &[u8],
        peer: SocketAddr,
        received_at: SystemTime,
    ) -> (Option<Request>, Result<Answer, Drop>) {
        if data.len() >= RECV_BUF {
            return (None, Err(Drop::TooLarge));
        }
        if received_at.elapsed().is_ok_and(|waited| waited > MAX_AGE) {
            return (None, Err(Drop::TooOld));
        }
        let mut req = match protocol::parse(data) {
            Ok(r) => r,
            Err(d) => return (None, Err(d)),
        };
        req.peer_port = peer.port();
        req.received_at = Some(received_at);
        let rt = self.runtime();
        let cap = rt.config.rate_limits.client_exchanges;
        if cap > 0 {
            let second = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // A std mutex: held for one map operation, never across an await.
            let shard = self.client_hasher.hash_one(&req.client_id) as usize % CLIENT_SHARDS;
            let admitted = self.clients[shard]
                .lock()
                .map(|mut w| w.admit(&req.client_id, cap, second))
                .unwrap_or(true);
            if !admitted {
                return (Some(req), Err(Drop::ClientRate));
            }
        }
        let Some(index) = protocol::select_subnet(&rt.config, &req, rt.local_subnet) else {
            return (Some(req), Err(Drop::NoSubnet));
        };
        if !self.is_ready() {
            // Fail closed: without Redis (or before reservations are written) nothing is
            // offered or acknowledged.
            return (Some(req), Err(Drop::NotReady));
        }
        let ctx = Context {
            config: &rt.config,
            subnet: &rt.config.subnets[index],
            pool: &rt.pools[index],
            server_id: rt.server_id,
            pools: &rt.pools,
            pinger: rt.pinger.as_deref(),
            classes: 0,
        };
        let outcome = protocol::handle(&req, &ctx, &self.store).await;
        (Some(req), outcome)
    }

    /// The one reporting point: metrics and the debug line of the exchange.
    fn record(
        &self,
        req: Option<&Request>,
        outcome: &Result<Answer, Drop>,
        sent: Option<SocketAddrV4>,
        peer: SocketAddr,
        elapsed: Duration,
    ) {
        let in_type = match req {
            Some(r) if r.bootp => "bootrequest",
            _ => metrics::type_label(req.map(|r| r.msg_type)),
        };
        metrics::received(in_type);
        metrics::duration(in_type, elapsed);
        for code in req.map_or(&[][..], |r| &r.ignored_options) {
            metrics::option_ignored(*code);
        }
        match outcome {
            Ok(Answer::Reply(reply)) => {
                let out_type = if reply.bootp {
                    "bootreply"
                } else {
                    metrics::type_label(Some(reply.msg_type))
                };
                if sent.is_some() {
                    metrics::replied(out_type);
                }
                match reply.msg_type {
                    MessageType::Nak => metrics::nak(reply.detail),
                    MessageType::Offer => metrics::allocation(reply.detail),
                    MessageType::Ack => match req.map(|r| r.msg_type) {
                        // A rapid-commit ACK allocates like an offer.
                        Some(MessageType::Discover) => metrics::allocation(reply.detail),
                        Some(MessageType::Request) => metrics::grant(reply.detail),
                        _ => {}
                    },
                    _ => {}
                }
                if let Some(req) = req
                    && tracing::enabled!(tracing::Level::DEBUG)
                {
                    // The seed's message fields, read back from the reply's options.
                    let opt = |code: u8| {
                        reply
                            .options
                            .iter()
                            .find(|o| o.code == code)
                            .map(|o| &o.data[..])
                    };
                    let ip = |code: u8| {
                        opt(code)
                            .and_then(|d| <[u8; 4]>::try_from(d.get(..4)?).ok())
                            .map(|b| Ipv4Addr::from(b).to_string())
                            .unwrap_or_default()
                    };
                    let lease_time = opt(51)
                        .and_then(|d| <[u8; 4]>::try_from(d).ok())
                        .map_or(0, u32::from_be_bytes);
                    debug!(
                        msg_type = in_type,
                        reply = out_type,
                        client_mac = %req.mac,
                        hostname = %req.hostname,
                        relay_ip = %req.msg.giaddr(),
                        client_ip = %reply.header.yiaddr(),
                        server_ip = %ip(54),
                        lease_time,
                        subnet_mask = %ip(1),
                        router = %ip(3),
                        detail = reply.detail,
                        to = ?sent,
                        micros = elapsed.as_micros() as u64,
                        "exchange"
                    );
                }
            }
            Ok(Answer::Done(what)) => {
                match *what {
                    "declined" => metrics::declined(),
                    "released" => metrics::released(),
                    _ => {}
                }
                debug!(
                    msg_type = in_type,
                    client_mac = req.map_or("", |r| r.mac.as_str()),
                    outcome = what,
                    "exchange"
                );
            }
            Err(drop) => {
                metrics::dropped(drop.as_str());
                if *drop == Drop::Exhausted {
                    metrics::allocation("exhausted");
                }
                if *drop == Drop::Backend {
                    // Counted here; readiness and the one log line per outage are the health
                    // check's: a single slow call must not take the node out of service.
                    metrics::redis_error("call");
                }
                debug!(msg_type = in_type, %peer, reason = drop.as_str(), client_mac = req.map_or("", |r| r.mac.as_str()), "dropped");
            }
        }
    }
}
