//! Redis Cluster: a client per primary, so that losing one shard stops only its subnets.
//!
//! fred's cluster client sends every command through one connection task. When a primary dies,
//! that task reconnects to the whole cluster and keeps failing, the dead primary being still in
//! the topology, until its replica is promoted: for those seconds (`cluster-node-timeout` and
//! the election) every command fails, whatever its shard. Each of the hive's scripts touches a
//! single slot (its subnet's hash tag), so the node sends them on clients of their own, one per
//! primary, chosen by slot from the cluster client's routing table. A dead primary then fails
//! only the calls for its own slots.
//!
//! The cluster client stays: it learns the topology, and a call that a shard client cannot
//! place is sent through it, which follows MOVED and ASK redirects. That covers a slot being
//! moved, and a connection that is lost. A primary that hangs, or is cut off by a partition,
//! redirects nothing: its calls time out. A timed-out call makes the cluster client read the
//! topology again (at most once a second), so that the replica promoted in its place is found.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, ClusterInterface, EventInterface};
use fred::prelude::{
    Config as RedisConfig, ConnectionConfig, Error as RedisError, ErrorKind, PerformanceConfig,
    Server, ServerConfig,
};
use tokio::sync::Notify;

/// How often the routing table is looked at when no event says it changed.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The least time between two topology reads that timed-out calls ask for.
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);
/// A topology read gets this long (it may first wait 2 s each on servers that do not answer).
const RESYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// The clients of the cluster's primaries and the slots each serves.
struct Map<C = Client> {
    /// Slot ranges `(first, last, client)`, sorted, `client` an index into `clients`.
    ranges: Vec<(u16, u16, usize)>,
    clients: Vec<(Server, C)>,
}

impl<C> Default for Map<C> {
    fn default() -> Self {
        Self {
            ranges: Vec::new(),
            clients: Vec::new(),
        }
    }
}

impl<C> Map<C> {
    fn client(&self, slot: u16) -> Option<&C> {
        let i = self.ranges.partition_point(|r| r.1 < slot);
        let &(first, _, c) = self.ranges.get(i)?;
        (first <= slot).then(|| &self.clients[c].1)
    }

    /// Whether this map routes `ranges` (sorted `(first, last, primary)`) the same way.
    fn routes(&self, ranges: &[(u16, u16, Server)]) -> bool {
        self.ranges.len() == ranges.len()
            && self
                .ranges
                .iter()
                .zip(ranges)
                .all(|(a, b)| a.0 == b.0 && a.1 == b.1 && self.clients[a.2].0 == b.2)
    }
}

/// The clients of one node's shards, and how to make more.
pub(super) struct Shards {
    cluster: Client,
    /// The cluster client's config: a shard client is the same with one server.
    config: RedisConfig,
    perf: PerformanceConfig,
    conn: ConnectionConfig,
    /// Sets up a new client (its event listeners, its connection task).
    start: Box<dyn Fn(&Client) + Send + Sync>,
    map: RwLock<Arc<Map>>,
    changed: Notify,
    /// Set by `quit`: no more clients are made.
    closed: AtomicBool,
    /// Set when a call timed out: the cluster client reads the topology again.
    resync: AtomicBool,
}

impl Shards {
    /// The shards of the cluster that `cluster` connects to. `start` is called on every
    /// client made, before its first connection.
    pub(super) fn new(
        cluster: Client,
        config: RedisConfig,
        perf: PerformanceConfig,
        conn: ConnectionConfig,
        start: impl Fn(&Client) + Send + Sync + 'static,
    ) -> Arc<Self> {
        let shards = Arc::new(Self {
            cluster,
            config,
            perf,
            conn,
            start: Box::new(start),
            map: RwLock::new(Arc::default()),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
            resync: AtomicBool::new(false),
        });
        let watched = Arc::clone(&shards);
        drop(shards.cluster.on_cluster_change(move |_| {
            watched.poke();
            async { Ok(()) }
        }));
        let watched = Arc::clone(&shards);
        drop(shards.cluster.on_reconnect(move |_| {
            watched.poke();
            async { Ok(()) }
        }));
        tokio::spawn(Arc::clone(&shards).follow());
        shards
    }

    /// The client of the primary that serves `slot`, when the topology is known.
    pub(super) fn client(&self, slot: u16) -> Option<Client> {
        let map = self.map.read().ok()?;
        map.client(slot).cloned()
    }

    /// Every shard client.
    pub(super) fn all(&self) -> Vec<Client> {
        self.map
            .read()
            .map(|m| m.clients.iter().map(|(_, c)| c.clone()).collect())
            .unwrap_or_default()
    }

    /// Asks for the routing table to be read again (a call found its slot elsewhere).
    pub(super) fn poke(&self) {
        self.changed.notify_one();
    }

    /// Asks the cluster client to read the topology from the cluster (a call timed out: its
    /// primary may hang, and a replica may have taken over).
    pub(super) fn resync(&self) {
        self.resync.store(true, Ordering::Relaxed);
        self.poke();
    }

    /// Whether a shard client's error means the call belongs elsewhere, or could not be sent:
    /// the cluster client, which follows redirects and the topology, takes it then. A timeout
    /// is not one (the call may still be running; the DHCP client retransmits).
    pub(super) fn elsewhere(e: &RedisError) -> bool {
        matches!(
            e.kind(),
            ErrorKind::Cluster | ErrorKind::IO | ErrorKind::Canceled
        ) || [
            "TRYAGAIN",
            "CLUSTERDOWN",
            "MASTERDOWN",
            "READONLY",
            "LOADING",
        ]
        .iter()
        .any(|p| e.details().starts_with(p))
    }

    /// Disconnects every shard client.
    pub(super) async fn quit(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.poke();
        for client in self.all() {
            let _ = client.quit().await;
        }
    }

    /// Keeps the shard clients in step with the cluster client's routing table.
    async fn follow(self: Arc<Self>) {
        let mut synced: Option<tokio::time::Instant> = None;
        while !self.closed.load(Ordering::Relaxed) {
            if synced.is_none_or(|t| t.elapsed() >= RESYNC_INTERVAL)
                && self.resync.swap(false, Ordering::Relaxed)
            {
                synced = Some(tokio::time::Instant::now());
                match tokio::time::timeout(RESYNC_TIMEOUT, self.cluster.sync_cluster()).await {
                    Ok(Ok(())) => tracing::debug!("Redis Cluster topology read again"),
                    Ok(Err(e)) => tracing::debug!(error = %e, "Redis Cluster topology not read"),
                    Err(_) => tracing::debug!("Redis Cluster topology not read in time"),
                }
            }
            self.refresh();
            let _ = tokio::time::timeout(REFRESH_INTERVAL, self.changed.notified()).await;
        }
    }

    /// Reads the routing table; makes clients for new primaries and drops those of servers
    /// that no longer are one.
    fn refresh(&self) {
        let Some(state) = self.cluster.cached_cluster_state() else {
            return;
        };
        let mut ranges: Vec<(u16, u16, Server)> = state
            .slots()
            .iter()
            .map(|r| (r.start, r.end, r.primary.clone()))
            .collect();
        ranges.sort_by_key(|r| r.0);
        let old = match self.map.read() {
            Ok(m) if m.routes(&ranges) => return,
            Ok(m) => Arc::clone(&m),
            Err(_) => return,
        };
        let mut kept: HashMap<&Server, &Client> = old.clients.iter().map(|(s, c)| (s, c)).collect();
        let mut map = Map::default();
        for (first, last, server) in &ranges {
            let at = match map.clients.iter().position(|(s, _)| s == server) {
                Some(at) => at,
                None => {
                    let client = match kept.remove(server) {
                        Some(c) => c.clone(),
                        None => self.open(server),
                    };
                    map.clients.push((server.clone(), client));
                    map.clients.len() - 1
                }
            };
            map.ranges.push((*first, *last, at));
        }
        let gone: Vec<(Server, Client)> = kept
            .into_iter()
            .map(|(s, c)| (s.clone(), c.clone()))
            .collect();
        tracing::info!(
            primaries = %map.clients.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>().join(","),
            "Redis Cluster topology: a client per primary"
        );
        if let Ok(mut m) = self.map.write() {
            *m = Arc::new(map);
        }
        for (server, client) in gone {
            tracing::info!(%server, "no longer a primary: its shard client is closed");
            tokio::spawn(async move {
                let _ = client.quit().await;
            });
        }
    }

    /// A client of `server` alone, connecting in the background.
    fn open(&self, server: &Server) -> Client {
        let config = RedisConfig {
            server: ServerConfig::Centralized {
                server: server.clone(),
            },
            ..self.config.clone()
        };
        let client = Client::new(
            config,
            Some(self.perf.clone()),
            Some(self.conn.clone()),
            Some(super::redis::reconnect_policy()),
        );
        (self.start)(&client);
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map whose "clients" are their servers' ports.
    fn map(ranges: &[(u16, u16, u16)]) -> Map<u16> {
        let mut m = Map::default();
        for &(first, last, port) in ranges {
            let server = Server::new("127.0.0.1", port);
            let at = match m.clients.iter().position(|(s, _)| *s == server) {
                Some(at) => at,
                None => {
                    m.clients.push((server, port));
                    m.clients.len() - 1
                }
            };
            m.ranges.push((first, last, at));
        }
        m
    }

    #[test]
    fn a_slot_finds_the_primary_of_its_range() {
        let m = map(&[(0, 5460, 7000), (5461, 10922, 7001), (10923, 16383, 7002)]);
        for (slot, port) in [
            (0, 7000),
            (5460, 7000),
            (5461, 7001),
            (10922, 7001),
            (16383, 7002),
        ] {
            assert_eq!(m.client(slot), Some(&port), "slot {slot}");
        }
        // A slot that no primary serves (a gap in the table) has no client.
        let m = map(&[(0, 99, 7000), (100, 150, 7000), (200, 16383, 7001)]);
        assert_eq!(m.clients.len(), 2);
        assert_eq!(m.client(120), Some(&7000));
        assert_eq!(m.client(160), None);
        assert_eq!(Map::<u16>::default().client(120), None);
    }

    #[test]
    fn a_changed_owner_is_a_new_route() {
        let m = map(&[(0, 8191, 7000), (8192, 16383, 7001)]);
        let same = [
            (0, 8191, Server::new("127.0.0.1", 7000)),
            (8192, 16383, Server::new("127.0.0.1", 7001)),
        ];
        assert!(m.routes(&same));
        let failed_over = [
            (0, 8191, Server::new("127.0.0.1", 7003)),
            (8192, 16383, Server::new("127.0.0.1", 7001)),
        ];
        assert!(!m.routes(&failed_over));
        assert!(!m.routes(&same[..1]));
    }

    #[test]
    fn redirects_and_lost_connections_go_through_the_cluster_client() {
        let e = |kind, details: &str| RedisError::new(kind, details.to_owned());
        for (kind, details) in [
            (ErrorKind::Cluster, "MOVED 3999 127.0.0.1:6381"),
            (ErrorKind::Cluster, "ASK 3999 127.0.0.1:6381"),
            (ErrorKind::Canceled, "Connection closed unexpectedly."),
            (ErrorKind::IO, "Broken pipe"),
            (
                ErrorKind::Unknown,
                "TRYAGAIN Multiple keys request during rehashing",
            ),
        ] {
            assert!(Shards::elsewhere(&e(kind, details)), "{details}");
        }
        for (kind, details) in [
            (ErrorKind::Timeout, "Request timed out."),
            (ErrorKind::Unknown, "ERR Error running script"),
            (ErrorKind::Unknown, "NOSCRIPT No matching script"),
        ] {
            assert!(!Shards::elsewhere(&e(kind, details)), "{details}");
        }
    }
}
