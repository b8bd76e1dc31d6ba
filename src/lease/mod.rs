//! Leases: the store seam between the DHCP logic and Redis.
//!
//! Owns the typed calls the protocol makes (one per DHCP message), their outcomes, and the
//! Redis implementation with its Lua scripts. Every call is ONE atomic script on one hash slot:
//! the script decides, so there are no retry loops around races here. Redis types never leak
//! out of this module; callers see [`LeaseError`].

mod redis;
mod shards;

use std::net::Ipv4Addr;

use crate::config::{Config, Subnet};

pub use self::redis::{RedisStore, connect};

impl Exchange<'_> {
    /// When the message was received, in ms of this host's clock (now when unknown).
    ///
    /// Leases record `bound_at` on the same clock (the granting node's), and a RELEASE or
    /// DECLINE received before it is stale. Comparing two wall-clock instants taken where the
    /// messages arrived stays right however long a call waits in a queue or is replayed after
    /// a redirect; the cost is the nodes' clock skew (NTP keeps it to milliseconds), and a skew
    /// can only make a RELEASE look stale, which leaves the lease to expire: never a double.
    pub fn received_ms(&self) -> u64 {
        unix_ms(self.received_at.unwrap_or_else(std::time::SystemTime::now))
    }

    /// Whether `ip` lies in a range open to this client: its classes' ranges when they are
    /// not the whole pool, else the pool. The scripts take this as an answer rather than
    /// parsing ranges and a dotted address in Lua on every call, where it costs far more.
    pub fn in_open_ranges(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        match self.ranges {
            None => self
                .pool
                .range_ints
                .iter()
                .any(|(a, b)| (*a..=*b).contains(&n)),
            Some(spec) => spec
                .split(',')
                .filter_map(|r| r.split_once('-'))
                .any(|(a, b)| match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&n),
                    _ => false,
                }),
        }
    }
}

/// `t` as milliseconds since the Unix epoch.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Pool {
    /// Whether `ip` lies in one of the pool's ranges, or is reserved in the config.
    pub fn serves(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        self.range_ints.iter().any(|(a, b)| (*a..=*b).contains(&n))
            || self.reserved.iter().any(|(_, r)| *r == ip)
    }

    /// The first and last host address of the subnet, as integers.
    pub fn hosts(&self) -> (u32, u32) {
        self.hosts
    }
}

/// How long the claim on one client exchange lives. Every copy of a broadcast reaches every node
/// within microseconds; a client retransmits after ~4 s, by which time a node that died after
/// claiming no longer blocks the others.
pub const CLAIM_MS: u64 = 2_000;

/// The Redis keys and numbers of one subnet's pool, computed once at start-up.
///
/// Every key carries the hash tag `{<subnet>}` so the subnet's scripts run on one slot.
#[derive(Debug, Clone)]
pub struct Pool {
    /// `<prefix>:{<subnet>}:`, the start of every key of this subnet.
    base: String,
    /// `<base>lease:`; a lease key is this plus the dotted address.
    lease_prefix: String,
    expiry_key: String,
    offered_key: String,
    declined_key: String,
    reserved_key: String,
    /// Reservations by MAC: from the config, and added through the admin API.
    config_resv_key: String,
    api_resv_key: String,
    /// The pool's ranges as the scripts take them: `first-last,first-last` (integers).
    ranges: String,
    /// The same ranges, as numbers.
    range_ints: Vec<(u32, u32)>,
    lease_ms: u64,
    offer_ms: u64,
    probation_ms: u64,
    hint_ttl_s: u64,
    reserved: Vec<(String, Ipv4Addr)>,
    /// The subnet's whole host range (network + 1 ..= broadcast - 1), for the lease views.
    hosts: (u32, u32),
    /// New allocations per second allowed in the subnet and per relay (0: no cap).
    caps: (u32, u32),
    /// The subnet as text, the metrics label.
    pub label: String,
    pub size: u32,
    /// The constant keys and arguments of the per-message scripts, built once: a call clones
    /// them by reference count instead of formatting them again.
    args: redis::PoolArgs,
}

impl Pool {
    /// The pool of `subnet` under `config`'s key prefix and times.
    pub fn new(config: &Config, subnet: &Subnet) -> Self {
        let base = format!("{}:{{{}}}:", config.key_prefix, subnet.tag());
        let ranges: Vec<String> = subnet
            .ranges()
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect();
        let mut pool = Self {
            lease_prefix: format!("{base}lease:"),
            expiry_key: format!("{base}expiry"),
            offered_key: format!("{base}offered"),
            declined_key: format!("{base}declined"),
            reserved_key: format!("{base}reserved"),
            config_resv_key: format!("{base}resv:config"),
            api_resv_key: format!("{base}resv:api"),
            base,
            ranges: ranges.join(","),
            range_ints: subnet.ranges().to_vec(),
            lease_ms: u64::from(subnet.lease_time) * 1000,
            offer_ms: u64::from(config.offer_time) * 1000,
            probation_ms: u64::from(config.decline_probation) * 1000,
            hint_ttl_s: u64::from(subnet.lease_time) + u64::from(config.sticky_time),
            reserved: subnet
                .reservations
                .iter()
                // Keyed like the run-time reservations: a MAC as `aa:bb:..`, others by kind.
                .map(|r| (r.key.to_string(), r.ip))
                .collect(),
            hosts: (
                u32::from(subnet.net.network()) + 1,
                u32::from(subnet.broadcast()).saturating_sub(1),
            ),
            label: subnet.net.to_string(),
            caps: (
                config.rate_limits.subnet_allocations,
                config.rate_limits.relay_allocations,
            ),
            size: subnet.pool_size(),
            args: redis::PoolArgs::default(),
        };
        pool.args = redis::PoolArgs::new(&pool);
        pool
    }

    /// The Redis key of the lease record of `ip` (what `redis-cli hgetall` takes).
    pub fn lease_key(&self, ip: Ipv4Addr) -> String {
        format!("{}{ip}", self.lease_prefix)
    }
}

/// Filters of the lease views.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `offered`, `bound` or `declined`.
    pub state: Option<String>,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    pub hostname: Option<String>,
}

/// A lease as the views show it, with the seed's field names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseRecord {
    pub client_ip: Ipv4Addr,
    pub client_mac: String,
    pub hostname: String,
    /// Seconds left.
    pub lease_time: u64,
    /// Unix seconds.
    pub expires_at: u64,
    pub state: String,
    pub subnet: String,
    pub client_id: String,
    pub relay_ip: String,
    /// The relay's circuit id and remote id (option 82), as hex bytes `aa:bb:..`.
    pub circuit_id: String,
    pub remote_id: String,
    pub node: String,
}

impl LeaseRecord {
    /// From a `leases.lua` row: {ip, pttl, field, value, ...}.
    fn from_row(pool: &Pool, row: fred::types::Value) -> Option<Self> {
        let mut items = row.into_array().into_iter();
        let client_ip = items.next()?.as_string()?.parse().ok()?;
        let pttl = items.next()?.as_i64()?;
        let mut rec = Self {
            client_ip,
            client_mac: String::new(),
            hostname: String::new(),
            lease_time: u64::try_from(pttl).map_or(0, |ms| ms / 1000),
            expires_at: 0,
            state: String::new(),
            subnet: pool.label.clone(),
            client_id: String::new(),
            relay_ip: String::new(),
            circuit_id: String::new(),
            remote_id: String::new(),
            node: String::new(),
        };
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            let (Some(k), Some(v)) = (k.as_string(), v.as_string()) else {
                continue;
            };
            match k.as_str() {
                "mac" => rec.client_mac = v,
                "hostname" => rec.hostname = v,
                "state" => rec.state = v,
                "client_id" => rec.client_id = v,
                "relay_ip" => rec.relay_ip = v,
                "circuit_id" => rec.circuit_id = v,
                "remote_id" => rec.remote_id = v,
                "node" => rec.node = v,
                "expires_at" => rec.expires_at = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        Some(rec)
    }
}

/// A lease another DHCP server granted, to be written as the hive's own (`leases import-kea`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub ip: Ipv4Addr,
    /// The client as the node names it: `id-<hex>` of option 61, else `hw-<hex>` of chaddr
    /// (`protocol::packet`), so that the client's next REQUEST finds the lease its own.
    pub client_id: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub hostname: String,
    /// When the lease ends, unix ms.
    pub expires_ms: u64,
}

/// What an import did with one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported,
    /// The hive already has it, for the same client.
    Held,
    /// Held by another client, or declined (the record's state), or reserved for another
    /// client (`None`).
    Taken(Option<String>),
}

/// Utilisation of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Addresses in the pool.
    pub size: u32,
    /// Addresses with a live record (bound, offered or declined).
    pub in_use: u64,
    pub offered: u64,
    pub declined: u64,
}

/// One client exchange, as the store needs it.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub pool: &'a Pool,
    /// The transaction id; with the client id it names the exchange all nodes race to answer.
    pub xid: u32,
    /// Option 61 when present, else the hardware address (see `protocol::client_id`).
    pub client_id: &'a str,
    /// chaddr as `aa:bb:cc:dd:ee:ff`.
    pub mac: &'a str,
    /// Option 12, or empty.
    pub hostname: &'a str,
    pub relay: Option<Ipv4Addr>,
    /// The client's reserved address in this subnet, if it has one.
    pub reservation: Option<Ipv4Addr>,
    /// Tells apart exchanges of one client that reuse an xid (udhcpc renews with the xid of
    /// its DORA): `selecting`, `init-reboot`, `renewing`, or empty.
    pub phase: &'static str,
    /// When the message was received (this host's clock): a RELEASE or DECLINE received
    /// before the lease's last grant is stale and ignored.
    pub received_at: Option<std::time::SystemTime>,
    /// The pool ranges open to this client's classes (`first-last,...`), when not all are.
    pub ranges: Option<&'a str>,
    /// Option 82 sub-options 1 and 2, kept in the lease record: where the client sits.
    pub circuit_id: Option<&'a [u8]>,
    pub remote_id: Option<&'a [u8]>,
    /// The lease granted, in seconds, when the client asked for one other than the subnet's
    /// `leaseTime` (see `Subnet::granted_lease`); None: the pool's.
    pub lease_time: Option<u32>,
}

/// How long an address chosen for a DISCOVER is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// An offer: held for `offerTime`, bound by the REQUEST that follows.
    Offer,
    /// Bound for the lease time at once (rapid commit, RFC 4039).
    Lease,
    /// Bound with no end (a BOOTP client, RFC 951: it never renews).
    Permanent,
}

/// What `offer` chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    pub ip: Ipv4Addr,
    pub how: Allocation,
    /// The address had no holder before this call (not the client's own live offer or lease):
    /// the one case where the ICMP check is worth its delay.
    pub fresh: bool,
}

/// How an offered address was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// The client's reservation.
    Reserved,
    /// A lease the client holds right now.
    Bound,
    /// The address the client had before (offer, expired or released lease).
    Sticky,
    /// The address the client asked for in option 50.
    Requested,
    /// A free address from the pool.
    New,
}

impl Allocation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Bound => "bound",
            Self::Sticky => "sticky",
            Self::Requested => "requested",
            Self::New => "new",
        }
    }
}

/// How a REQUEST was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The client's reservation.
    Reserved,
    /// An existing lease extended (RENEWING, REBINDING, INIT-REBOOT with a live lease).
    Renewed,
    /// An offer turned into a lease (SELECTING).
    Selected,
    /// An address we had no record of, free in the pool, given to the client that asks for it:
    /// how the hive re-learns leases after Redis lost them.
    Recovered,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Renewed => "renewed",
            Self::Selected => "selected",
            Self::Recovered => "recovered",
        }
    }
}

/// Why a REQUEST is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client has a reservation elsewhere in the subnet.
    Reservation,
    /// The address is not in the pool (nor the client's reservation).
    OutsidePool,
    /// The address is on probation after a DECLINE.
    Declined,
    /// Another client holds the address.
    Taken,
    /// We have no record of the client (non-authoritative: stay silent).
    NoRecord,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reservation => "reservation",
            Self::OutsidePool => "outside_pool",
            Self::Declined => "declined",
            Self::Taken => "taken",
            Self::NoRecord => "no_record",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reservation" => Self::Reservation,
            "outside-pool" => Self::OutsidePool,
            "declined" => Self::Declined,
            "taken" => Self::Taken,
            "no-record" => Self::NoRecord,
            _ => return None,
        })
    }
}

/// Why a run-time reservation change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    #[error("the MAC has a reservation in the config; change it there")]
    Configured,
    #[error("the address is reserved for another client")]
    Taken,
    #[error("no run-time reservation for this MAC")]
    None,
    #[error(transparent)]
    Backend(LeaseError),
}

/// What a store call can end in besides success.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node claimed this exchange first: it answers, we stay silent.
    #[error("another node answers this exchange")]
    Duplicate,
    /// No free address in the pool.
    #[error("pool exhausted")]
    Exhausted,
    /// A starvation cap (`"subnet"` or `"relay"`) bit: no new address this second.
    #[error("{0} allocation rate cap reached")]
    Limited(&'static str),
    /// The request is refused; `nak` says whether the client gets a NAK or silence.
    #[error("refused ({})", reason.as_str())]
    Refused { reason: Refusal, nak: bool },
    /// A RELEASE, DECLINE or offer withdrawal for an address the client does not hold.
    #[error("client does not hold the address")]
    NotHolder,
    /// Redis could not be reached or failed: fail closed, answer nothing.
    #[error("redis: {0}")]
    Backend(String),
    /// The lease was written but did not reach the replicas asked for in time: no ACK.
    #[error("lease reached {got} of {want} replicas in time")]
    NotReplicated { got: i64, want: i64 },
    /// A script answered something this code does not know: a version mismatch.
    #[error("unexpected script reply: {0:?}")]
    BadReply(Vec<String>),
}

impl LeaseError {
    /// A short label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Exhausted => "exhausted",
            Self::Limited(_) => "rate_limited",
            Self::Refused { .. } => "refused",
            Self::NotHolder => "not_holder",
            Self::Backend(_) => "backend",
            Self::BadReply(_) => "bad_reply",
            Self::NotReplicated { .. } => "not_replicated",
        }
    }
}

/// The lease store. One call per DHCP message, each atomic.
pub trait Store: Send + Sync + 'static {
    /// DISCOVER (or a BOOTP request): choose an address and hold it as `hold` says.
    fn offer(
        &self,
        ex: &Exchange<'_>,
        requested: Option<Ipv4Addr>,
        hold: Hold,
    ) -> impl Future<Output = Result<Offered, LeaseError>> + Send;

    /// REQUEST: bind or extend `ip` for the client.
    fn request(
        &self,
        ex: &Exchange<'_>,
        ip: Ipv4Addr,
        authoritative: bool,
    ) -> impl Future<Output = Result<Grant, LeaseError>> + Send;

    /// RELEASE (`offer_only` false), or withdraw an offer when the client chose another server.
    fn release(
        &self,
        ex: &Exchange<'_>,
        ip: Ipv4Addr,
        offer_only: bool,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;

    /// DECLINE: put `ip` on probation.
    fn decline(
        &self,
        ex: &Exchange<'_>,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;

    /// INFORM: claim the exchange so that one node answers.
    fn inform(&self, ex: &Exchange<'_>) -> impl Future<Output = Result<(), LeaseError>> + Send;

    /// Makes the store ready to serve `pools`: scripts loaded, reservations written. Run at
    /// start-up and whenever the backend comes back after an outage.
    fn prepare(&self, pools: &[Pool]) -> impl Future<Output = Result<(), LeaseError>> + Send;

    /// A cheap liveness check of the backend.
    fn ping(&self) -> impl Future<Output = Result<(), LeaseError>> + Send;

    /// Whether the connection to the backend is up (a slow answer is not a lost connection).
    fn is_connected(&self) -> bool {
        true
    }

    /// True once after the backend connection was re-established (so `prepare` runs again).
    fn take_reconnected(&self) -> bool {
        false
    }

    /// Whether a call got the backend's answer within the last `window`: a backend that answers
    /// the lease calls is busy, not gone, whatever a health ping queued behind them says.
    fn answered_within(&self, _window: std::time::Duration) -> bool {
        false
    }

    /// The last connection-level error, for operators (readiness reason, log).
    fn last_error(&self) -> Option<String> {
        None
    }
}
