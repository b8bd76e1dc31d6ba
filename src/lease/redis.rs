//! The Redis implementation of the lease store: fred, and one Lua script per DHCP message.
//!
//! Scripts are called with EVALSHA and loaded again when Redis answers NOSCRIPT (after a Redis
//! restart or failover, script caches are empty). The client fails fast while disconnected, so
//! a packet never waits for Redis to come back: the node fails closed and the client retries.
//! On a Redis Cluster, each call goes to its slot's primary on a client of that primary's own
//! (see shards.rs), so one shard's failover does not stop the others.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::bytes::{Bytes, BytesMut};
use fred::clients::Client;
use fred::interfaces::LuaInterface;
use fred::interfaces::{EventInterface, ServerInterface};
use fred::prelude::Options;
use fred::prelude::{
    ClientLike, Config as RedisConfig, ConnectionConfig, Error as RedisError, ErrorKind,
    PerformanceConfig, ReconnectPolicy,
};
use fred::types::config::ServerConfig;
use fred::types::scripts::Script;
use fred::types::{FromValue, Key, Value};

use super::shards::Shards;
use super::{
    Allocation, CLAIM_MS, Exchange, Filter, Grant, Hold, ImportOutcome, Imported, LeaseError,
    LeaseRecord, Offered, Pool, PoolStats, Refusal, ReservationError, Store,
};
use crate::metrics;

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// A lease script: `body` after the prelude's helpers that it uses, directly or through one
/// another. Redis runs the whole text on every call, and each `local function` of it is a
/// closure made and collected again each time: a REQUEST uses 6 of the prelude's 13 helpers.
///
/// The prelude is read in paragraphs (blank-line separated): one that defines a
/// `local function` is that helper's, taken where the code (comments left out) of the body or
/// of a helper taken names it; any other paragraph is always taken. Order is kept: a helper
/// comes after those it calls, as in the prelude.
fn assemble(body: &str) -> String {
    let paragraphs: Vec<(Option<&str>, &str)> = PRELUDE
        .split("\n\n")
        .map(|text| (text.lines().find_map(defines), text))
        .collect();
    let mut taken: Vec<bool> = paragraphs.iter().map(|(name, _)| name.is_none()).collect();
    // Until no paragraph taken mentions a helper not taken yet.
    loop {
        let mut grew = false;
        for (i, (name, _)) in paragraphs.iter().enumerate() {
            let Some(name) = name else { continue };
            if taken[i] {
                continue;
            }
            let used = mentions(body, name)
                || paragraphs
                    .iter()
                    .zip(&taken)
                    .any(|((other, text), &t)| t && other.is_some() && mentions(text, name));
            if used {
                taken[i] = true;
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let mut out = String::with_capacity(PRELUDE.len() + body.len());
    for ((_, text), _) in paragraphs.iter().zip(&taken).filter(|(_, t)| **t) {
        out.push_str(text);
        out.push_str("\n\n");
    }
    out.push_str(body);
    out
}

/// The helper a line of Lua starts to define (`local function name(`), if any.
fn defines(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("local function ")?;
    Some(&rest[..rest.find('(')?])
}

/// A line of Lua without its `--` comment. (The lease scripts have no `--` within a string.)
fn code(line: &str) -> &str {
    line.find("--").map_or(line, |at| &line[..at])
}

/// Whether the code of `text`, its comments left out, has `name` as a whole identifier.
fn mentions(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.lines().map(code).any(|code| {
        code.match_indices(name).any(|(at, _)| {
            !code[..at].ends_with(ident) && !code[at + name.len()..].starts_with(ident)
        })
    })
}

/// A command gets this long before the exchange is given up; the DHCP client retransmits.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Delay between reconnection attempts: the node serves again within this of Redis's return.
const RECONNECT_DELAY_MS: u32 = 500;

/// Every client's: attempts without end, `RECONNECT_DELAY_MS` apart.
pub(super) fn reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_constant(0, RECONNECT_DELAY_MS)
}

/// Addresses one lease-view call looks at, at most (a few ms of Redis time).
const PAGE_SCAN: u32 = 4096;

struct Scripts {
    discover: Script,
    request: Script,
    release: Script,
    decline: Script,
    claim: Script,
    reserve: Script,
    reservation: Script,
    stats: Script,
    leases: Script,
    import: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            discover: Script::from_lua(assemble(include_str!("lua/discover.lua"))),
            request: Script::from_lua(assemble(include_str!("lua/request.lua"))),
            release: Script::from_lua(assemble(include_str!("lua/release.lua"))),
            decline: Script::from_lua(assemble(include_str!("lua/decline.lua"))),
            claim: Script::from_lua(assemble(include_str!("lua/claim.lua"))),
            reserve: Script::from_lua(assemble(include_str!("lua/reserve.lua"))),
            reservation: Script::from_lua(assemble(include_str!("lua/reservation.lua"))),
            stats: Script::from_lua(assemble(include_str!("lua/stats.lua"))),
            leases: Script::from_lua(assemble(include_str!("lua/leases.lua"))),
            import: Script::from_lua(assemble(include_str!("lua/import.lua"))),
        }
    }

    fn all(&self) -> [&Script; 10] {
        [
            &self.discover,
            &self.request,
            &self.release,
            &self.decline,
            &self.claim,
            &self.reserve,
            &self.reservation,
            &self.stats,
            &self.leases,
            &self.import,
        ]
    }
}

/// A pool's constant keys and arguments of the per-message scripts, built once per config.
///
/// `Bytes` clones share one buffer, so handing these to fred costs a reference count per key,
/// not a formatted `String` (or two: fred copied every key and argument to keep them for a
/// NOSCRIPT retry). That was most of a node's instructions per message.
#[derive(Debug, Clone, Default)]
pub(super) struct PoolArgs {
    /// The hash slot of every key of the pool (its subnet's hash tag).
    slot: u16,
    expiry: Bytes,
    offered: Bytes,
    declined: Bytes,
    lease_prefix: Bytes,
    ranges: Bytes,
    // The pool's numbers, as the scripts take them (text): formatted once, not per call.
    offer_ms: Bytes,
    lease_ms: Bytes,
    probation_ms: Bytes,
    hint_ttl_s: Bytes,
    /// The hint's time as a DISCOVER sets it: the offer time more (see discover.lua).
    hint_ttl_offer_s: Bytes,
    cap_subnet: Bytes,
    cap_relay: Bytes,
}

impl PoolArgs {
    pub(super) fn new(pool: &Pool) -> Self {
        Self {
            slot: fred::util::redis_keyslot(pool.expiry_key.as_bytes()),
            expiry: shared(&pool.expiry_key),
            offered: shared(&pool.offered_key),
            declined: shared(&pool.declined_key),
            lease_prefix: shared(&pool.lease_prefix),
            ranges: shared(&pool.ranges),
            offer_ms: shared(&pool.offer_ms.to_string()),
            lease_ms: shared(&pool.lease_ms.to_string()),
            probation_ms: shared(&pool.probation_ms.to_string()),
            hint_ttl_s: shared(&pool.hint_ttl_s.to_string()),
            hint_ttl_offer_s: shared(&(pool.hint_ttl_s + pool.offer_ms.div_ceil(1000)).to_string()),
            cap_subnet: shared(&pool.caps.0.to_string()),
            cap_relay: shared(&pool.caps.1.to_string()),
        }
    }
}

/// The lease of an exchange: its length in ms, and how the scripts take it and the client
/// hint's time (s) that goes with it. The pool's, formatted once, unless the client was granted
/// another lease time (`Exchange::lease_time`).
struct Lease {
    ms: u64,
    ms_arg: Value,
    hint_ttl_s: Value,
    /// As a DISCOVER sets the hint: the offer time more (see discover.lua).
    hint_ttl_offer_s: Value,
}

impl Lease {
    fn of(ex: &Exchange<'_>, b: &mut Args) -> Self {
        let pool = ex.pool;
        match ex.lease_time {
            None => Self {
                ms: pool.lease_ms,
                ms_arg: Value::Bytes(pool.args.lease_ms.clone()),
                hint_ttl_s: Value::Bytes(pool.args.hint_ttl_s.clone()),
                hint_ttl_offer_s: Value::Bytes(pool.args.hint_ttl_offer_s.clone()),
            },
            Some(s) => {
                // The hint outlives the lease by the sticky time, whatever the lease.
                let sticky_s = pool.hint_ttl_s.saturating_sub(pool.lease_ms / 1000);
                let hint = u64::from(s) + sticky_s;
                Self {
                    ms: u64::from(s) * 1000,
                    ms_arg: b.num(u64::from(s) * 1000),
                    hint_ttl_s: b.num(hint),
                    hint_ttl_offer_s: b.num(hint + pool.offer_ms.div_ceil(1000)),
                }
            }
        }
    }
}

/// `s` in a buffer that is already shared, so every clone is a reference count (a `Bytes` made
/// from a `Vec` allocates its shared header on its first clone, in whichever call that is).
fn shared(s: &str) -> Bytes {
    let b = Bytes::copy_from_slice(s.as_bytes());
    drop(b.clone());
    b
}

/// The per-message keys and arguments of one call, written one after another into a single
/// buffer and cut from it: one allocation for all of them (and one for the shared header),
/// where a `String` each cost two.
struct Args(BytesMut);

impl Args {
    fn for_exchange(ex: &Exchange<'_>) -> Self {
        // Room for the claim key (with the client id), the texts, a few addresses and times; a
        // longer call grows the buffer (still correct, one more allocation).
        Self(BytesMut::with_capacity(
            ex.pool.base.len()
                + 2 * ex.client_id.len()
                + ex.mac.len()
                + ex.hostname.len()
                + ex.ranges.map_or(0, str::len)
                + 3 * (ex.circuit_id.map_or(0, <[u8]>::len) + ex.remote_id.map_or(0, <[u8]>::len))
                + 224,
        ))
    }

    fn cut(&mut self) -> Bytes {
        self.0.split().freeze()
    }

    /// A number, as text: the scripts read `"123"` (fred would format a `Value::Integer` the
    /// same way, but through a float logarithm to count its digits).
    fn num(&mut self, n: u64) -> Value {
        push_dec(&mut self.0, n);
        Value::Bytes(self.cut())
    }

    fn text(&mut self, s: &str) -> Value {
        self.0.extend_from_slice(s.as_bytes());
        Value::Bytes(self.cut())
    }

    /// A dotted address, or the empty string.
    fn ip(&mut self, ip: Option<Ipv4Addr>) -> Value {
        if let Some(ip) = ip {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    self.0.extend_from_slice(b".");
                }
                push_dec(&mut self.0, u64::from(octet));
            }
        }
        Value::Bytes(self.cut())
    }

    /// Bytes as `aa:bb:..` (the form the lease views show), or the empty string.
    fn hex(&mut self, bytes: Option<&[u8]>) -> Value {
        for (i, b) in bytes.unwrap_or_default().iter().enumerate() {
            if i > 0 {
                self.0.extend_from_slice(b":");
            }
            push_hex(&mut self.0, u32::from(*b), 2);
        }
        Value::Bytes(self.cut())
    }

    /// The key of the claim on one client exchange, which the nodes race for:
    /// `<base>xid:<xid, 8 hex digits>:<client id>:<kind>[-<phase>]`.
    fn claim_key(&mut self, ex: &Exchange<'_>, kind: &str, phase: Option<&str>) -> Key {
        self.0.extend_from_slice(ex.pool.base.as_bytes());
        self.0.extend_from_slice(b"xid:");
        push_hex(&mut self.0, ex.xid, 8);
        self.0.extend_from_slice(b":");
        self.0.extend_from_slice(ex.client_id.as_bytes());
        self.0.extend_from_slice(b":");
        self.0.extend_from_slice(kind.as_bytes());
        if let Some(phase) = phase {
            self.0.extend_from_slice(b"-");
            self.0.extend_from_slice(phase.as_bytes());
        }
        Key::from(self.cut())
    }
}

/// Appends `n` in decimal. Numbers and addresses go into every call; through `write!` each
/// cost ~600 instructions of the formatting machinery (5 % of a node's work per message).
fn push_dec(out: &mut BytesMut, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends the low `digits` hex digits of `n`, lowercase, zero-padded.
fn push_hex(out: &mut BytesMut, n: u32, digits: u32) {
    for shift in (0..digits).rev() {
        out.extend_from_slice(&[crate::protocol::HEX_DIGITS[((n >> (4 * shift)) & 0xf) as usize]]);
    }
}

/// The lease store on a Redis server or cluster.
pub struct RedisStore {
    /// The client of the server, or of the cluster.
    client: Client,
    /// On a cluster: a client per primary, for the calls of its slots (see shards.rs).
    shards: Option<Arc<Shards>>,
    scripts: Scripts,
    node: String,
    /// `node`, as a script argument.
    node_arg: Bytes,
    /// `CLAIM_MS`, as a script argument.
    claim_ms_arg: Bytes,
    /// Replicas an ACKed lease must reach before the ACK goes out (0: do not wait), and for how
    /// long to wait.
    wait_replicas: u32,
    wait_timeout_ms: u32,
    /// The last connection error fred reported (a refused connection, a wrong password): what
    /// a command that merely timed out cannot say.
    last_error: Arc<Mutex<Option<String>>>,
    /// Set on every reconnection: the server may be a new one (restart, failover) whose
    /// reserved set must be written again.
    reconnected: Arc<AtomicBool>,
    /// When a script call last got Redis's answer, in ms since `epoch` (0: never).
    answered_ms: AtomicU64,
    epoch: Instant,
}

/// Builds the client for `url` and starts connecting in the background. It does not wait for
/// Redis: a node starts, reports not-ready and serves once Redis answers. On a cluster, the
/// shard clients follow once the cluster client has learnt the topology.
pub fn connect(config: &crate::config::Config, node: &str) -> Result<RedisStore, LeaseError> {
    let url = &config.redis;
    let (wait_replicas, wait_timeout_ms) = (config.wait_replicas, config.wait_timeout_ms);
    let tls_ca = config.redis_tls_ca.clone();
    let mut config = RedisConfig::from_url(url).map_err(|e| LeaseError::Backend(e.to_string()))?;
    if let Some(ca) = tls_ca {
        config.tls = Some(tls_with_ca(&ca)?.into());
    }
    let perf = PerformanceConfig {
        default_command_timeout: COMMAND_TIMEOUT,
        ..PerformanceConfig::default()
    };
    let conn = ConnectionConfig {
        connection_timeout: Duration::from_secs(2),
        internal_command_timeout: Duration::from_secs(2),
        // A wrong password is retried like any other failure, so fixing the ACL (or the
        // Secret) brings the node back without a restart.
        reconnect_on_auth_error: true,
        // A few attempts, for MOVED/ASK redirects while a cluster moves slots. Replaying a
        // script after an unknown outcome is safe: the exchange claim makes the replay an
        // answer to the same exchange.
        max_command_attempts: 3,
        ..ConnectionConfig::default()
    };
    let config = RedisConfig {
        fail_fast: true,
        ..config
    };
    let client = Client::new(
        config.clone(),
        Some(perf.clone()),
        Some(conn.clone()),
        Some(reconnect_policy()),
    );
    let last_error = Arc::new(Mutex::new(None));
    let reconnected = Arc::new(AtomicBool::new(false));
    let start = {
        let (errors, flag) = (Arc::clone(&last_error), Arc::clone(&reconnected));
        move |client: &Client| start_client(client, &errors, &flag)
    };
    start(&client);
    let shards = matches!(config.server, ServerConfig::Clustered { .. })
        .then(|| Shards::new(client.clone(), config, perf, conn, start));
    Ok(RedisStore {
        client,
        shards,
        scripts: Scripts::new(),
        node: node.to_owned(),
        node_arg: shared(node),
        claim_ms_arg: shared(&CLAIM_MS.to_string()),
        wait_replicas,
        wait_timeout_ms,
        last_error,
        reconnected,
        answered_ms: AtomicU64::new(0),
        epoch: Instant::now(),
    })
}

/// Listens to `client`'s events (its errors into `errors`, its reconnections into
/// `reconnected`) and starts its connection task, which runs until the client quits.
fn start_client(
    client: &Client,
    errors: &Arc<Mutex<Option<String>>>,
    reconnected: &Arc<AtomicBool>,
) {
    let errors = Arc::clone(errors);
    // The listeners must exist before the first connection attempt to see its error.
    drop(client.on_error(move |(e, server)| {
        let text = match server {
            Some(s) => format!("{s}: {e}"),
            None => e.to_string(),
        };
        if let Ok(mut last) = errors.lock() {
            *last = Some(text);
        }
        async { Ok(()) }
    }));
    let flag = Arc::clone(reconnected);
    drop(client.on_reconnect(move |_| {
        flag.store(true, Ordering::Relaxed);
        async { Ok(()) }
    }));
    // fred ends its connection task on some routing errors (an ASK redirect during a slot
    // migration that runs out of attempts) and would then never reconnect: start it again.
    // The task ends for good only when the client quits.
    let supervised = client.clone();
    tokio::spawn(async move {
        loop {
            match supervised.connect().await {
                Ok(Ok(())) => return,
                Ok(Err(e)) if e.is_canceled() => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Redis connection task ended; starting it again")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis connection task failed; starting it again")
                }
            }
            tokio::time::sleep(Duration::from_millis(u64::from(RECONNECT_DELAY_MS))).await;
        }
    });
}

/// A rustls client config that trusts the CAs in the PEM file `ca` (and nothing else).
fn tls_with_ca(ca: &std::path::Path) -> Result<rustls::ClientConfig, LeaseError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let fail = |e: String| LeaseError::Backend(format!("TLS CA file {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| fail(e.to_string()))? {
        roots
            .add(cert.map_err(|e| fail(e.to_string()))?)
            .map_err(|e| fail(e.to_string()))?;
    }
    // The ring provider named explicitly: no process-wide default has to be installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn backend(e: RedisError) -> LeaseError {
    LeaseError::Backend(e.to_string())
}

impl RedisStore {
    /// Waits up to `timeout` for the first connection.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.client.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Loads every script (on every primary of a cluster). Readiness needs this to succeed.
    pub async fn load_scripts(&self) -> Result<(), LeaseError> {
        self.load_scripts_on(&self.client).await.map_err(backend)
    }

    /// Loads every script through `client` (a shard client: on its primary).
    async fn load_scripts_on(&self, client: &Client) -> Result<(), RedisError> {
        for script in self.scripts.all() {
            script.load(client).await?;
        }
        Ok(())
    }

    /// Writes `pool`'s reserved addresses to Redis, so that the scripts skip them.
    pub async fn sync_reservations(&self, pool: &Pool) -> Result<(), LeaseError> {
        let args: Vec<String> = pool
            .reserved
            .iter()
            .flat_map(|(mac, ip)| [mac.clone(), ip.to_string()])
            .collect();
        let keys = vec![
            pool.reserved_key.clone(),
            pool.config_resv_key.clone(),
            pool.api_resv_key.clone(),
        ];
        self.eval_strings::<Value>("reserve", &self.scripts.reserve, keys, args)
            .await
            .map(drop)
    }

    /// The lease record of `ip`, if there is one.
    pub async fn lease(
        &self,
        pool: &Pool,
        ip: Ipv4Addr,
    ) -> Result<Option<LeaseRecord>, LeaseError> {
        let u = u32::from(ip);
        let (rows, _) = self.page(pool, u, u, &Filter::default(), 1).await?;
        Ok(rows.into_iter().next())
    }

    /// Up to `limit` lease records of `pool` from address `from` on, in address order, and the
    /// address to go on from (None when the subnet is done). Looks at a bounded number of
    /// addresses per call, so a page may come back short with a cursor.
    pub async fn page(
        &self,
        pool: &Pool,
        from: u32,
        to: u32,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Vec<LeaseRecord>, Option<u32>), LeaseError> {
        let from = from.max(pool.hosts.0);
        let to = to.min(pool.hosts.1);
        if from > to {
            return Ok((Vec::new(), None));
        }
        let args = vec![
            pool.lease_prefix.clone(),
            from.to_string(),
            to.to_string(),
            limit.to_string(),
            PAGE_SCAN.to_string(),
            filter.state.clone().unwrap_or_default(),
            filter.mac.clone().unwrap_or_default(),
            filter.hostname.clone().unwrap_or_default(),
        ];
        let reply: Vec<Value> = self
            .eval_strings(
                "leases",
                &self.scripts.leases,
                vec![pool.expiry_key.clone()],
                args,
            )
            .await?;
        let mut it = reply.into_iter();
        let next = it
            .next()
            .and_then(|v| v.as_i64())
            .ok_or_else(|| LeaseError::BadReply(vec!["leases: no cursor".into()]))?;
        let rows = it
            .filter_map(|row| LeaseRecord::from_row(pool, row))
            .collect();
        Ok((rows, u32::try_from(next).ok()))
    }

    /// Utilisation of `pool`.
    pub async fn stats(&self, pool: &Pool) -> Result<PoolStats, LeaseError> {
        let keys = vec![
            pool.expiry_key.clone(),
            pool.offered_key.clone(),
            pool.declined_key.clone(),
        ];
        let r: Vec<u64> = self
            .eval_strings("stats", &self.scripts.stats, keys, Vec::<String>::new())
            .await?;
        match r[..] {
            [in_use, offered, declined] => Ok(PoolStats {
                size: pool.size,
                in_use,
                offered,
                declined,
            }),
            _ => Err(LeaseError::BadReply(vec![format!("stats: {r:?}")])),
        }
    }

    /// An operator's release of `ip`, whoever holds it. False when there was no lease.
    pub async fn force_release(&self, pool: &Pool, ip: Ipv4Addr) -> Result<bool, LeaseError> {
        let keys = vec![
            pool.expiry_key.clone(),
            format!("{}admin", pool.base),
            pool.offered_key.clone(),
            pool.declined_key.clone(),
        ];
        let args = vec![
            pool.lease_prefix.clone(),
            String::new(),
            ip.to_string(),
            self.node.clone(),
            CLAIM_MS.to_string(),
            "force".to_owned(),
            "0".to_owned(),
        ];
        let reply: Vec<String> = self
            .eval_strings("release", &self.scripts.release, keys, args)
            .await?;
        match reply.first().map(String::as_str) {
            Some("released") => Ok(true),
            Some("ignored") => Ok(false),
            _ => Err(LeaseError::BadReply(reply)),
        }
    }

    /// Writes a lease another server granted (`leases import-kea`), as a bound lease of this
    /// hive, unless the address has a record or is reserved for another client. `dry_run`:
    /// only says what it would do.
    pub async fn import(
        &self,
        pool: &Pool,
        lease: &Imported,
        dry_run: bool,
    ) -> Result<ImportOutcome, LeaseError> {
        let now = super::unix_ms(std::time::SystemTime::now());
        let left_ms = lease.expires_ms.saturating_sub(now).max(1);
        // The client's reservation in the config, by MAC or by client identifier (keyed as
        // `Pool::reserved` names them).
        let by_id = lease.client_id.strip_prefix("id-").map(|hex| {
            let pairs: Vec<&str> = (0..hex.len() / 2).map(|i| &hex[2 * i..2 * i + 2]).collect();
            format!("client id {}", pairs.join(":"))
        });
        let own = pool
            .reserved
            .iter()
            .find(|(key, _)| *key == lease.mac || Some(key) == by_id.as_ref())
            .map_or_else(String::new, |(_, ip)| ip.to_string());
        // The hint outlives the lease by the sticky time, as after a grant.
        let sticky_s = pool.hint_ttl_s.saturating_sub(pool.lease_ms / 1000);
        let args = vec![
            lease.ip.to_string(),
            lease.client_id.clone(),
            lease.mac.clone(),
            lease.hostname.clone(),
            self.node.clone(),
            own,
            left_ms.to_string(),
            lease.expires_ms.to_string(),
            lease.expires_ms.div_ceil(1000).to_string(),
            (left_ms.div_ceil(1000) + sticky_s).to_string(),
            now.to_string(),
            if dry_run { "1" } else { "0" }.to_owned(),
        ];
        let reply: Vec<String> = self
            .eval_strings(
                "import",
                &self.scripts.import,
                vec![pool.expiry_key.clone()],
                args,
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("imported") => Ok(ImportOutcome::Imported),
            Some("held") => Ok(ImportOutcome::Held),
            Some("taken") => Ok(ImportOutcome::Taken(reply.get(1).cloned())),
            _ => Err(LeaseError::BadReply(reply)),
        }
    }

    /// Redis WAIT on the shard of `slot`, on the connection that wrote the lease (`shard`'s,
    /// or the server's or cluster's client's): the ACK goes out only once the lease reached
    /// `wait_replicas` replicas, so losing the primary right after cannot forget it.
    async fn wait_for_replicas(&self, slot: u16, shard: Option<Client>) -> Result<(), LeaseError> {
        let want = i64::from(self.wait_replicas);
        let timeout = i64::from(self.wait_timeout_ms);
        let got: i64 = match shard {
            Some(client) => client.wait(want, timeout).await,
            None => {
                let opts = Options {
                    // `From<Option<u16>>` is the public way to name a custom slot.
                    cluster_hash: Some(Some(slot).into()),
                    ..Options::default()
                };
                self.client.with_options(&opts).wait(want, timeout).await
            }
        }
        .map_err(backend)?;
        if got < want {
            tracing::debug!(got, want, slot, "WAIT short");
            return Err(LeaseError::NotReplicated { got, want });
        }
        Ok(())
    }

    /// Adds (`Some(ip)`) or removes (`None`) a run-time reservation for `mac`
    /// (`aa:bb:cc:dd:ee:ff`). Configured reservations cannot be changed this way.
    pub async fn set_reservation(
        &self,
        pool: &Pool,
        mac: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<(), ReservationError> {
        let keys = vec![
            pool.reserved_key.clone(),
            pool.config_resv_key.clone(),
            pool.api_resv_key.clone(),
        ];
        let args = match ip {
            Some(ip) => vec!["add".to_owned(), mac.to_owned(), ip.to_string()],
            None => vec!["remove".to_owned(), mac.to_owned()],
        };
        let reply: Vec<String> = self
            .eval_strings("reservation", &self.scripts.reservation, keys, args)
            .await
            .map_err(ReservationError::Backend)?;
        match (
            reply.first().map(String::as_str),
            reply.get(1).map(String::as_str),
        ) {
            (Some("ok"), _) => Ok(()),
            (Some("error"), Some("configured")) => Err(ReservationError::Configured),
            (Some("error"), Some("reserved-for-another")) => Err(ReservationError::Taken),
            (Some("error"), Some("none")) => Err(ReservationError::None),
            _ => Err(ReservationError::Backend(LeaseError::BadReply(reply))),
        }
    }

    /// The run-time reservations of `pool` (mac -> ip).
    pub async fn api_reservations(&self, pool: &Pool) -> Result<Vec<(String, String)>, LeaseError> {
        use fred::interfaces::HashesInterface;
        let map: std::collections::HashMap<String, String> = self
            .client
            .hgetall(&pool.api_resv_key)
            .await
            .map_err(backend)?;
        let mut v: Vec<_> = map.into_iter().collect();
        v.sort();
        Ok(v)
    }

    /// Disconnects.
    pub async fn quit(&self) {
        if let Some(shards) = &self.shards {
            shards.quit().await;
        }
        let _ = self.client.quit().await;
    }

    /// The shard clients of a cluster whose topology is known (empty otherwise).
    fn shard_clients(&self) -> Vec<Client> {
        self.shards.as_ref().map(|s| s.all()).unwrap_or_default()
    }

    /// [`Store::prepare`] on a cluster whose shard clients exist: each shard and each pool on
    /// its own. A shard that does not answer (its primary lost, not yet replaced) fails only
    /// its own pools: the others are served meanwhile, and the whole is done again on the next
    /// health check until every pool is written.
    async fn prepare_shards(&self, clients: &[Client], pools: &[Pool]) -> Result<(), LeaseError> {
        let mut first_error = None;
        for client in clients {
            if let Err(e) = self.load_scripts_on(client).await {
                first_error.get_or_insert(backend(e));
            }
        }
        let mut synced = 0;
        for pool in pools {
            match self.sync_reservations(pool).await {
                Ok(()) => synced += 1,
                Err(e) => {
                    tracing::warn!(subnet = %pool.label, error = %e, "reservations not written; trying again");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) if synced == 0 => Err(e),
            Some(_) => {
                self.reconnected.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Runs `script` on the keys of hash slot `slot` with the keys and arguments that `build`
    /// makes, and times it.
    async fn eval<R: FromValue>(
        &self,
        name: &'static str,
        script: &Script,
        slot: u16,
        build: impl Fn() -> (Vec<Key>, Vec<Value>),
    ) -> Result<R, LeaseError> {
        self.eval_on(name, script, slot, build)
            .await
            .map(|(r, _)| r)
    }

    /// [`Self::eval`], and the shard client that ran the script (None: the server's or the
    /// cluster's client), on whose connection a WAIT must follow.
    ///
    /// On a cluster the call goes to the client of the slot's primary; when that one cannot
    /// place it (a redirect, a lost connection), the cluster client takes it.
    async fn eval_on<R: FromValue>(
        &self,
        name: &'static str,
        script: &Script,
        slot: u16,
        build: impl Fn() -> (Vec<Key>, Vec<Value>),
    ) -> Result<(R, Option<Client>), LeaseError> {
        let start = Instant::now();
        let shard = self
            .shards
            .as_ref()
            .and_then(|s| Some((s, s.client(slot)?)));
        let r = match shard {
            Some((shards, client)) => match run(&client, script, &build).await {
                Err(e) if Shards::elsewhere(&e) => {
                    tracing::debug!(error = %e, slot, "shard client: through the cluster client");
                    metrics::redis_error("shard_redirect");
                    shards.poke();
                    run(&self.client, script, &build).await.map(|r| (r, None))
                }
                r => {
                    if r.as_ref().is_err_and(|e| *e.kind() == ErrorKind::Timeout) {
                        // Its primary may hang: a replica may have taken over.
                        shards.resync();
                    }
                    r.map(|r| (r, Some(client)))
                }
            },
            None => run(&self.client, script, &build).await.map(|r| (r, None)),
        }
        .map_err(backend);
        if r.is_ok() {
            let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.answered_ms.store(ms.max(1), Ordering::Relaxed);
        }
        metrics::script_duration(name, start.elapsed());
        r
    }

    /// [`Self::eval`] with keys and arguments as strings, for the calls off the packet path.
    async fn eval_strings<R: FromValue>(
        &self,
        name: &'static str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, LeaseError> {
        // Every key of a call shares one hash tag.
        let slot = keys
            .first()
            .map_or(0, |k| fred::util::redis_keyslot(k.as_bytes()));
        self.eval(name, script, slot, || {
            (
                keys.iter().map(|k| Key::from(k.as_str())).collect(),
                args.iter().map(|a| Value::from(a.as_str())).collect(),
            )
        })
        .await
    }

    /// KEYS 1-2 of discover.lua and request.lua: the subnet's other keys are named after the
    /// first in the scripts, and the client's hint after its id (fewer arguments to encode and
    /// for Redis to unpack on every call).
    fn common_keys(
        &self,
        ex: &Exchange<'_>,
        b: &mut Args,
        kind: &str,
        phase: Option<&str>,
    ) -> Vec<Key> {
        vec![
            Key::from(ex.pool.args.expiry.clone()),
            b.claim_key(ex, kind, phase),
        ]
    }

    /// ARGV 1-5 of release.lua and decline.lua (the holder of `ip` and the claim); each
    /// script's own arguments follow.
    fn holder_args(&self, ex: &Exchange<'_>, b: &mut Args, ip: Ipv4Addr) -> Vec<Value> {
        let mut args = Vec::with_capacity(8);
        args.extend([
            Value::Bytes(ex.pool.args.lease_prefix.clone()),
            b.text(ex.client_id),
            b.ip(Some(ip)),
            Value::Bytes(self.node_arg.clone()),
            Value::Bytes(self.claim_ms_arg.clone()),
        ]);
        args
    }

    /// ARGV 1-7 of discover.lua and request.lua (ARGV 5, `pool`, is each script's own);
    /// each script's own arguments follow, in order.
    fn common_args(
        &self,
        ex: &Exchange<'_>,
        b: &mut Args,
        pool: Value,
        time_ms: Value,
    ) -> Vec<Value> {
        let mut args = Vec::with_capacity(20);
        args.extend([
            b.text(ex.client_id),
            b.text(ex.mac),
            b.text(ex.hostname),
            Value::Bytes(self.node_arg.clone()),
            pool,
            time_ms,
            Value::Bytes(self.claim_ms_arg.clone()),
        ]);
        args
    }
}

/// EVALSHA of `script` on `client`; on NOSCRIPT (a restarted or failed-over Redis has an empty
/// script cache) the script is loaded and the call made once more, with `build` called again:
/// building twice in that rare case is cheaper than keeping a copy of every call's arguments.
async fn run<R: FromValue>(
    client: &Client,
    script: &Script,
    build: &impl Fn() -> (Vec<Key>, Vec<Value>),
) -> Result<R, RedisError> {
    // fred's call is a ~7 KiB future. Boxed, it is built once on the heap; inline, it would
    // make every future that awaits it (up to the task spawned per datagram) that much
    // bigger, and the runtime moves a task's future several times in its life.
    let call = |(keys, args): (Vec<Key>, Vec<Value>)| {
        Box::pin(client.evalsha::<R, _, _, _>(script.sha1().clone(), keys, args))
    };
    match call(build()).await {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            match Box::pin(script.load(client)).await {
                Ok(()) => call(build()).await,
                Err(e) => Err(e),
            }
        }
        r => r,
    }
}

fn parse_ip(reply: &[String], at: usize) -> Result<Ipv4Addr, LeaseError> {
    reply
        .get(at)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| LeaseError::BadReply(reply.to_vec()))
}

/// The replies every script can give besides its own success.
fn common_reply(reply: Vec<String>) -> LeaseError {
    match reply.first().map(String::as_str) {
        Some("dup") => LeaseError::Duplicate,
        Some("exhausted") => LeaseError::Exhausted,
        Some("limited") => {
            LeaseError::Limited(if reply.get(1).map(String::as_str) == Some("relay") {
                "relay"
            } else {
                "subnet"
            })
        }
        Some("ignored") => LeaseError::NotHolder,
        Some(kind @ ("nak" | "silent")) => match reply.get(1).and_then(|r| Refusal::parse(r)) {
            Some(reason) => LeaseError::Refused {
                reason,
                nak: kind == "nak",
            },
            None => LeaseError::BadReply(reply),
        },
        _ => LeaseError::BadReply(reply),
    }
}

impl Store for RedisStore {
    async fn offer(
        &self,
        ex: &Exchange<'_>,
        requested: Option<Ipv4Addr>,
        hold: Hold,
    ) -> Result<Offered, LeaseError> {
        let pool = ex.pool;
        let now = super::unix_ms(std::time::SystemTime::now());
        let build = || {
            let mut b = Args::for_exchange(ex);
            let lease = Lease::of(ex, &mut b);
            // The end of the hold this call writes (the script keeps times as the strings sent).
            let until = now.saturating_add(match hold {
                Hold::Offer => pool.offer_ms,
                Hold::Lease => lease.ms,
                Hold::Permanent => 0,
            });
            let keys = self.common_keys(ex, &mut b, "discover", None);
            // The ranges open to the client's classes, when not the whole pool.
            let ranges = ex
                .ranges
                .map_or_else(|| Value::Bytes(pool.args.ranges.clone()), |r| b.text(r));
            let mut args =
                self.common_args(ex, &mut b, ranges, Value::Bytes(pool.args.offer_ms.clone()));
            args.extend([
                // Only an address the client may be given: the script need not check.
                b.ip(requested.filter(|ip| ex.in_open_ranges(*ip))),
                b.ip(ex.reservation),
                lease.hint_ttl_offer_s,
                b.ip(ex.relay),
                Value::Bytes(pool.args.cap_subnet.clone()),
                Value::Bytes(pool.args.cap_relay.clone()),
                match hold {
                    Hold::Offer => Value::from_static_str("0"),
                    Hold::Lease => lease.ms_arg,
                    Hold::Permanent => Value::from_static_str("-1"),
                },
                b.num(now),
                // Every range, only when ARGV 5 is a class subset (else the script reuses 5).
                match ex.ranges {
                    Some(_) => Value::Bytes(pool.args.ranges.clone()),
                    None => Value::from_static_str(""),
                },
                b.hex(ex.circuit_id),
                b.hex(ex.remote_id),
                b.num(until),
                b.num(until / 1000),
            ]);
            (keys, args)
        };
        let reply = self
            .eval::<Vec<String>>("discover", &self.scripts.discover, pool.args.slot, build)
            .await?;
        if reply.first().map(String::as_str) != Some("offer") {
            return Err(common_reply(reply));
        }
        let ip = parse_ip(&reply, 1)?;
        let how = match reply.get(2).map(String::as_str) {
            Some("reserved") => Allocation::Reserved,
            Some("bound") => Allocation::Bound,
            Some("sticky") => Allocation::Sticky,
            Some("requested") => Allocation::Requested,
            Some("new") => Allocation::New,
            _ => return Err(LeaseError::BadReply(reply)),
        };
        let fresh = reply.get(3).map(String::as_str) == Some("1");
        Ok(Offered { ip, how, fresh })
    }

    async fn request(
        &self,
        ex: &Exchange<'_>,
        ip: Ipv4Addr,
        authoritative: bool,
    ) -> Result<Grant, LeaseError> {
        let now = super::unix_ms(std::time::SystemTime::now());
        let build = || {
            let mut b = Args::for_exchange(ex);
            let lease = Lease::of(ex, &mut b);
            let until = now.saturating_add(lease.ms);
            // The phase in the key: exchanges of one client that reuse an xid in another phase
            // are told apart.
            let keys = self.common_keys(ex, &mut b, "request", Some(ex.phase));
            let open = Value::from_static_str(if ex.in_open_ranges(ip) { "1" } else { "0" });
            let mut args = self.common_args(ex, &mut b, open, lease.ms_arg);
            args.extend([
                b.ip(Some(ip)),
                b.ip(ex.reservation),
                lease.hint_ttl_s,
                b.ip(ex.relay),
                Value::from_static_str(if authoritative { "1" } else { "0" }),
                b.num(now),
                b.hex(ex.circuit_id),
                b.hex(ex.remote_id),
                b.num(until),
                b.num(until / 1000),
            ]);
            (keys, args)
        };
        let (reply, shard) = self
            .eval_on::<Vec<String>>("request", &self.scripts.request, ex.pool.args.slot, build)
            .await?;
        if reply.first().map(String::as_str) != Some("ack") {
            return Err(common_reply(reply));
        }
        if self.wait_replicas > 0 {
            // Boxed: fred's WAIT future is as big as its EVALSHA one (see `eval`).
            Box::pin(self.wait_for_replicas(ex.pool.args.slot, shard)).await?;
        }
        match reply.get(2).map(String::as_str) {
            Some("reserved") => Ok(Grant::Reserved),
            Some("renewed") => Ok(Grant::Renewed),
            Some("selected") => Ok(Grant::Selected),
            Some("recovered") => Ok(Grant::Recovered),
            _ => Err(LeaseError::BadReply(reply)),
        }
    }

    async fn release(
        &self,
        ex: &Exchange<'_>,
        ip: Ipv4Addr,
        offer_only: bool,
    ) -> Result<(), LeaseError> {
        let pool = &ex.pool.args;
        let build = || {
            let mut b = Args::for_exchange(ex);
            let kind = if offer_only { "withdraw" } else { "release" };
            let keys = vec![
                Key::from(pool.expiry.clone()),
                b.claim_key(ex, kind, None),
                Key::from(pool.offered.clone()),
            ];
            let mut args = self.holder_args(ex, &mut b, ip);
            args.extend([
                Value::from_static_str(if offer_only { "offer" } else { "release" }),
                b.num(ex.received_ms()),
            ]);
            (keys, args)
        };
        let reply = self
            .eval::<Vec<String>>("release", &self.scripts.release, ex.pool.args.slot, build)
            .await?;
        match reply.first().map(String::as_str) {
            Some("released") => Ok(()),
            _ => Err(common_reply(reply)),
        }
    }

    async fn decline(&self, ex: &Exchange<'_>, ip: Ipv4Addr) -> Result<(), LeaseError> {
        let pool = &ex.pool.args;
        let build = || {
            let mut b = Args::for_exchange(ex);
            let keys = vec![
                Key::from(pool.expiry.clone()),
                b.claim_key(ex, "decline", None),
                Key::from(pool.offered.clone()),
                Key::from(pool.declined.clone()),
            ];
            let mut args = self.holder_args(ex, &mut b, ip);
            args.extend([
                Value::Bytes(pool.probation_ms.clone()),
                b.text(ex.mac),
                b.num(ex.received_ms()),
            ]);
            (keys, args)
        };
        let reply = self
            .eval::<Vec<String>>("decline", &self.scripts.decline, ex.pool.args.slot, build)
            .await?;
        match reply.first().map(String::as_str) {
            Some("declined") => Ok(()),
            _ => Err(common_reply(reply)),
        }
    }

    async fn prepare(&self, pools: &[Pool]) -> Result<(), LeaseError> {
        let clients = self.shard_clients();
        let r = if clients.is_empty() {
            async {
                self.load_scripts().await?;
                for pool in pools {
                    self.sync_reservations(pool).await?;
                }
                Ok(())
            }
            .await
        } else {
            self.prepare_shards(&clients, pools).await
        };
        if r.is_err() {
            // Not done: the next health check prepares again.
            self.reconnected.store(true, Ordering::Relaxed);
        }
        r
    }

    /// On a cluster, any shard that answers will do: a lost primary fails the calls of its
    /// own subnets, the node serves the others.
    async fn ping(&self) -> Result<(), LeaseError> {
        let clients = self.shard_clients();
        if clients.is_empty() {
            return self.client.ping::<()>(None).await.map_err(backend);
        }
        let mut pings = tokio::task::JoinSet::new();
        for client in clients {
            pings.spawn(async move { client.ping::<()>(None).await });
        }
        let mut first_error = None;
        while let Some(r) = pings.join_next().await {
            match r {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    first_error.get_or_insert(backend(e));
                }
                Err(e) => {
                    first_error.get_or_insert(LeaseError::Backend(e.to_string()));
                }
            }
        }
        Err(first_error.unwrap_or_else(|| LeaseError::Backend("no shard answered".into())))
    }

    fn is_connected(&self) -> bool {
        self.client.is_connected() || self.shard_clients().iter().any(|c| c.is_connected())
    }

    fn take_reconnected(&self) -> bool {
        self.reconnected.swap(false, Ordering::Relaxed)
    }

    fn answered_within(&self, window: Duration) -> bool {
        let at = self.answered_ms.load(Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        at != 0 && now.saturating_sub(at) <= u64::try_from(window.as_millis()).unwrap_or(0)
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    async fn inform(&self, ex: &Exchange<'_>) -> Result<(), LeaseError> {
        let build = || {
            let mut b = Args::for_exchange(ex);
            let keys = vec![b.claim_key(ex, "inform", None)];
            let args = vec![
                Value::Bytes(self.node_arg.clone()),
                Value::Bytes(self.claim_ms_arg.clone()),
            ];
            (keys, args)
        };
        let reply = self
            .eval::<Vec<String>>("claim", &self.scripts.claim, ex.pool.args.slot, build)
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            _ => Err(common_reply(reply)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: Value) -> String {
        match v {
            Value::Bytes(b) => String::from_utf8(b.to_vec()).expect("ascii"),
            other => panic!("not bytes: {other:?}"),
        }
    }

    #[test]
    fn arguments_are_written_as_the_formatter_writes_them() {
        let mut a = Args(BytesMut::new());
        for n in [0, 7, 10, 999, 1_000, 4_294_967_295, u64::MAX] {
            assert_eq!(text(a.num(n)), n.to_string());
        }
        for ip in ["0.0.0.0", "10.0.0.1", "192.0.2.255", "255.255.255.255"] {
            let ip: Ipv4Addr = ip.parse().expect("address");
            assert_eq!(text(a.ip(Some(ip))), ip.to_string());
        }
        assert_eq!(text(a.ip(None)), "");
        assert_eq!(text(a.hex(Some(&[0x00, 0x0a, 0xff, 0x10]))), "00:0a:ff:10");
        assert_eq!(text(a.hex(None)), "");
        for xid in [0, 0x1f, 0xdead_beef, u32::MAX] {
            let mut out = BytesMut::new();
            push_hex(&mut out, xid, 8);
            assert_eq!(&out[..], format!("{xid:08x}").as_bytes());
        }
    }

    /// The helpers (of the prelude) whose definition a script carries.
    fn helpers_in(script: &str) -> Vec<&str> {
        script.lines().filter_map(defines).collect()
    }

    #[test]
    fn each_script_carries_the_helpers_it_calls_and_no_other() {
        let every = helpers_in(PRELUDE);
        assert_eq!(every.len(), 13, "the prelude's helpers: {every:?}");
        for body in [
            include_str!("lua/discover.lua"),
            include_str!("lua/request.lua"),
            include_str!("lua/release.lua"),
            include_str!("lua/decline.lua"),
            include_str!("lua/claim.lua"),
            include_str!("lua/reserve.lua"),
            include_str!("lua/reservation.lua"),
            include_str!("lua/stats.lua"),
            include_str!("lua/leases.lua"),
            include_str!("lua/import.lua"),
        ] {
            let script = assemble(body);
            let carried = helpers_in(&script);
            for name in &every {
                // Called anywhere in the script's code: defined in it, before the body.
                let called = script
                    .lines()
                    .map(code)
                    .any(|code| code.contains(&format!("{name}(")) && defines(code).is_none());
                assert_eq!(carried.contains(name), called, "{name} in\n{script}");
            }
            assert!(script.ends_with(body));
            assert!(script.contains("redis.replicate_commands()"));
        }
        let request = assemble(include_str!("lua/request.lua"));
        assert_eq!(
            helpers_in(&request),
            [
                "claim",
                "subnet_keys",
                "probe",
                "unindex_offer",
                "bind",
                "give_back"
            ]
        );
        let discover = assemble(include_str!("lua/discover.lua"));
        let discover = helpers_in(&discover);
        assert!(discover.contains(&"int2ip") && !discover.contains(&"now_ms"));
    }

    #[test]
    fn a_mention_is_a_whole_identifier_in_code() {
        assert!(mentions("local x = bind(a)", "bind"));
        assert!(!mentions("local x = rebind(a)", "bind"));
        assert!(!mentions("local x = bind_all(a)", "bind"));
        assert!(!mentions("-- see bind", "bind"));
        assert!(mentions("x = 1 -- y\nbind(a)", "bind"));
    }
}
