//! Configuration: the seed's `config/config.json` (camelCase JSON) read, parsed and validated into
//! a [`Config`] that the rest of the hive can trust without checking it again.
//!
//! This module owns the JSON schema (serde structs that reject unknown keys), every rule about
//! what a valid value is, the deployment overrides from `HIVE_*` environment variables, and
//! [`ConfigError`], which names the file, the JSON path of the offending value and the problem.
//! The `check-config` command is [`check`].
//!
//! It must not do I/O beyond reading the one file (and the kernel host name for the default node
//! name): it does not resolve `interface`, connect to Redis or bind sockets. Validation stops at
//! the first problem, in file order, so that the message points at one place to fix.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::classify::{self, ClassSet, MAX_CLASSES};
use crate::options::{OptionData, OptionSet};
use ipnet::Ipv4Net;
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;

/// Prefix of every Redis key the hive writes, unless `keyPrefix` says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "dhcphm";

const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";
const DEFAULT_WAIT_TIMEOUT_MS: u32 = 500;
const DEFAULT_OFFER_TIME: u32 = 30;
const DEFAULT_DECLINE_PROBATION: u32 = 86_400;
const DEFAULT_STICKY_TIME: u32 = 86_400;
/// Kea's ping-check waits 100 ms, ISC dhcpd 1 s; a reply on a LAN takes well under 1 ms, and
/// every millisecond here delays the OFFER.
const DEFAULT_PING_TIMEOUT_MS: u32 = 300;
/// Option 6 could carry 63 addresses, but clients try them in order and give up long before;
/// more than this is a typo (a pasted list), not a deployment.
const MAX_DNS_SERVERS: usize = 16;
const REDIS_SCHEMES: [&str; 3] = ["redis://", "rediss://", "redis-cluster://"];
/// `field` of an error about the whole document (a missing top-level key, a file that is a list).
const TOP_LEVEL: &str = "(top level)";
/// Longest `serverHostname` and `bootFileName`: the header's 64-byte `sname` and 128-byte
/// `file` hold a NUL-terminated string (RFC 2131 figure 1), so the text gets one byte less.
/// A boot ROM reading the field as a C string would otherwise run past it.
const MAX_SNAME: usize = 63;
const MAX_FILE: usize = 127;

/// Why a configuration was rejected. Every variant names the file first, so that the one error
/// line `main` prints is enough to find and fix the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", .file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{}: line {line} column {column}: {message}", .file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value is wrong, missing or unknown. `field` is the JSON path of the value
    /// (`subnets[1].dynEnd`), the object lacking a required key (`subnets[0]`, or `(top level)`),
    /// or the name of the environment variable that supplied it (`HIVE_REDIS_URL`).
    #[error("{}: {field}: {problem}", .file.display())]
    Field {
        file: PathBuf,
        field: String,
        problem: String,
    },
}

/// A validated configuration: every address parsed, every cross-field rule checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from, for messages.
    pub file: PathBuf,
    /// `hostname`: this service's name.
    pub hostname: String,
    /// `interface`: an interface name, an IPv4 address or a host name, kept as written.
    pub interface: String,
    /// `port`: the server port; the client port is `port + 1`.
    pub port: u16,
    /// `redis`: the Redis (or Redis Cluster) URL.
    pub redis: String,
    /// `serverId`: the hive's shared server identifier (option 54).
    pub server_id: Option<Ipv4Addr>,
    /// `keyPrefix`: prefix of every Redis key.
    pub key_prefix: String,
    /// `nodeName`: this node's name in logs and Redis; see [`Config::node_name`].
    pub node_name: Option<String>,
    /// `offerTime`: seconds an offered address is held for the client.
    pub offer_time: u32,
    /// `declineProbation`: seconds a DECLINEd address stays out of use.
    pub decline_probation: u32,
    /// `authoritative`: NAK requests for addresses that are not ours to give.
    pub authoritative: bool,
    /// `httpListen`: where `/metrics`, `/healthz`, `/readyz` and the lease view listen.
    pub http_listen: Option<SocketAddr>,
    /// `stickyTime`: seconds the client -> address hint outlives a lease.
    pub sticky_time: u32,
    /// `redis.waitReplicas`: replicas that must have an ACKed lease before the ACK goes out
    /// (Redis WAIT); 0 = do not wait.
    pub wait_replicas: u32,
    /// `redis.waitTimeoutMs`: how long to wait for them; past it the client gets no ACK.
    pub wait_timeout_ms: u32,
    /// `redis.tlsCaFile`: PEM file of the CAs that sign the Redis servers' certificates, for
    /// `rediss://` (the system's roots otherwise). Checked readable at load.
    pub redis_tls_ca: Option<PathBuf>,
    /// `rateLimits`: caps against pool starvation.
    pub rate_limits: RateLimits,
    /// `apiToken`: the bearer token of the admin write API; none = the write API is off.
    pub api_token: Option<String>,
    /// `subnets`: at least one, none overlapping.
    pub subnets: Vec<Subnet>,
    /// `clientClasses`: evaluated in order for every message; see [`crate::classify`].
    pub classes: Vec<ClientClass>,
    /// `pingTimeoutMs`: how long the ICMP check before an offer waits for an echo reply.
    pub ping_timeout_ms: u32,
}

/// A client class: who is in it, and what membership brings besides class-restricted pools.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientClass {
    /// `name`: unique; pools and subnets name it in their `classes`.
    pub name: String,
    /// `match`, compiled.
    pub expr: classify::Expr,
    /// `options`: sent to members, over the subnet's (a reservation's win over them).
    pub options: OptionSet,
    /// `nextServer`, `serverHostname`, `bootFileName`: members' boot fields, over the subnet's.
    pub boot: Boot,
}

/// The reply header's boot fields of one config level, for network boot (PXE): legacy boot
/// ROMs load their file over TFTP from `siaddr` and take its name from `file`, not from options
/// 66 and 67. A field a level leaves unset comes from the next less specific level
/// (reservation, class, subnet, global), one field at a time, as in Kea.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boot {
    /// `nextServer`: `siaddr`, the TFTP server (the server identifier when no level sets it).
    pub next_server: Option<Ipv4Addr>,
    /// `serverHostname`: `sname`, at most 63 bytes without control characters.
    pub server_hostname: Option<String>,
    /// `bootFileName`: `file`, at most 127 bytes without control characters.
    pub boot_file_name: Option<String>,
}

impl Boot {
    /// `self`, with the fields it leaves unset taken from `fallback`, a less specific level.
    fn or(self, fallback: &Self) -> Self {
        Self {
            next_server: self.next_server.or(fallback.next_server),
            server_hostname: self
                .server_hostname
                .or_else(|| fallback.server_hostname.clone()),
            boot_file_name: self
                .boot_file_name
                .or_else(|| fallback.boot_file_name.clone()),
        }
    }
}

/// Caps against a client (or a spoofer) draining a pool; 0 = no cap. Counted when they bite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// `rateLimits.subnetAllocations`: new addresses per second per subnet, hive-wide.
    pub subnet_allocations: u32,
    /// `rateLimits.relayAllocations`: new addresses per second per relay (giaddr), hive-wide.
    pub relay_allocations: u32,
    /// `rateLimits.clientExchanges`: messages per second per client, per node.
    pub client_exchanges: u32,
}

/// One served subnet with its dynamic pool and static reservations.
#[derive(Debug, Clone, PartialEq)]
pub struct Subnet {
    /// `subnet`: the network, host bits zero, prefix /8 to /30.
    pub net: Ipv4Net,
    /// `router`: option 3; a host of the subnet outside the pool.
    pub router: Option<Ipv4Addr>,
    /// `dynStart`: first address of the dynamic pool.
    pub dyn_start: Ipv4Addr,
    /// `dynEnd`: last address of the dynamic pool (inclusive).
    pub dyn_end: Ipv4Addr,
    /// `leaseTime`: option 51, seconds: what a client that asks for no lease time gets.
    pub lease_time: u32,
    /// `minLeaseTime`, `maxLeaseTime`: the bounds of a lease time a client asks for (option 51
    /// in its DISCOVER or REQUEST); both `leaseTime` unless set, so that a request changes
    /// nothing. See [`Subnet::granted_lease`].
    pub min_lease_time: u32,
    pub max_lease_time: u32,
    /// `renewalTime`: T1 (option 58), seconds; see [`Subnet::renewal_time`].
    pub renewal_time: Option<u32>,
    /// `rebindingTime`: T2 (option 59), seconds; see [`Subnet::rebinding_time`].
    pub rebinding_time: Option<u32>,
    /// `dns`: option 6.
    pub dns: Vec<Ipv4Addr>,
    /// `domainName`: option 15.
    pub domain_name: Option<String>,
    /// The subnet's own `reservations` plus the top-level ones whose address falls inside it.
    pub reservations: Vec<Reservation>,
    /// `rapidCommit`: answer a DISCOVER carrying option 80 with an ACK (RFC 4039).
    pub rapid_commit: bool,
    /// The addresses handed out: `dynStart..=dynEnd` plus `pools`, minus `exclude`, as sorted
    /// disjoint integer ranges.
    pub ranges: Vec<(u32, u32)>,
    /// Options sent to this subnet's clients: the global `options`, overridden by `router`,
    /// `dns`, `domainName`, overridden by the subnet's `options` (more specific wins).
    pub options: OptionSet,
    /// For each of `ranges`, the classes it is restricted to (0: open to every client).
    pub range_classes: Vec<ClassSet>,
    /// `classes`: the subnet serves only members of these (0: everyone).
    pub classes: ClassSet,
    /// `sharedNetwork`: the name of the link this subnet shares with others.
    pub shared_network: Option<String>,
    /// The other subnets of the shared network, in config order (indexes in `subnets`).
    pub siblings: Vec<usize>,
    /// `pingCheck`: an ICMP echo to a new address before it is offered.
    pub ping_check: bool,
    /// `bootp`: answer BOOTP clients (no option 53) with a permanent binding.
    pub bootp: bool,
    /// The boot fields of this subnet's replies: its own over the global ones.
    pub boot: Boot,
}

/// Who a reservation is for: exactly one of `mac`, `clientId`, `circuitId`, `remoteId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReservedFor {
    /// `mac`: the client's chaddr; unicast, not all-zero.
    Mac([u8; 6]),
    /// `clientId`: the client's option 61, whole (type byte included).
    ClientId(Vec<u8>),
    /// `circuitId`: option 82 sub-option 1 of the client's relay (a switch port).
    CircuitId(Vec<u8>),
    /// `remoteId`: option 82 sub-option 2 of the client's relay.
    RemoteId(Vec<u8>),
}

impl fmt::Display for ReservedFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        match self {
            Self::Mac(m) => f.write_str(&format_mac(m)),
            Self::ClientId(b) => write!(f, "client id {}", hex(b)),
            Self::CircuitId(b) => write!(f, "circuit id {}", hex(b)),
            Self::RemoteId(b) => write!(f, "remote id {}", hex(b)),
        }
    }
}

/// A static binding: the address is never handed to anyone else.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Who it is for.
    pub key: ReservedFor,
    /// Inside its subnet, not its network, broadcast or router address; may be inside the pool.
    pub ip: Ipv4Addr,
    /// `hostname`: optional; when given it must be a valid DNS name.
    pub hostname: Option<String>,
    /// Options for this client only, over the subnet's.
    pub options: OptionSet,
    /// Boot fields for this client only, over its classes' and the subnet's.
    pub boot: Boot,
}

impl Subnet {
    pub fn mask(&self) -> Ipv4Addr {
        self.net.netmask()
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        self.net.broadcast()
    }

    /// `ip` is inside the network (including its network and broadcast addresses).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.net.contains(&ip)
    }

    /// `ip` is inside the dynamic pool `dyn_start..=dyn_end`.
    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&n))
    }

    /// The pool's ranges (see [`Subnet::ranges`]).
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    /// The lease time a client gets that asked for `requested` seconds (option 51, RFC 2131
    /// section 3.5: a client may suggest one): that, brought within `minLeaseTime` and
    /// `maxLeaseTime`; `leaseTime` when it asked for none.
    pub fn granted_lease(&self, requested: Option<u32>) -> u32 {
        requested.map_or(self.lease_time, |t| {
            t.clamp(self.min_lease_time, self.max_lease_time)
        })
    }

    /// T1 and T2 for a lease of `lease` seconds: the subnet's (configured or default), scaled
    /// by `lease / leaseTime`, so that they keep their share of the lease and their order.
    pub fn timers_for(&self, lease: u32) -> (u32, u32) {
        let (t1, t2) = (self.renewal_time(), self.rebinding_time());
        if lease == self.lease_time {
            return (t1, t2);
        }
        let scale = |t: u32| {
            u32::try_from(u64::from(t) * u64::from(lease) / u64::from(self.lease_time))
                .unwrap_or(u32::MAX)
        };
        (scale(t1), scale(t2))
    }

    /// T1: configured, or half the lease (RFC 2131 section 4.4.5).
    pub fn renewal_time(&self) -> u32 {
        self.renewal_time.unwrap_or(self.lease_time / 2)
    }

    /// T2: configured, or 7/8 of the lease (RFC 2131 section 4.4.5).
    pub fn rebinding_time(&self) -> u32 {
        self.rebinding_time
            .unwrap_or_else(|| default_rebinding(self.lease_time))
    }

    /// The reservation of a client, by its identities (checked in config order).
    pub fn reservation_for(
        &self,
        mac: &[u8],
        client_id: Option<&[u8]>,
        circuit_id: Option<&[u8]>,
        remote_id: Option<&[u8]>,
    ) -> Option<&Reservation> {
        self.reservations.iter().find(|r| match &r.key {
            ReservedFor::Mac(m) => m[..] == *mac,
            ReservedFor::ClientId(id) => client_id == Some(&id[..]),
            ReservedFor::CircuitId(id) => circuit_id == Some(&id[..]),
            ReservedFor::RemoteId(id) => remote_id == Some(&id[..]),
        })
    }

    /// The MAC reservation of `mac`.
    pub fn reservation_for_mac(&self, mac: &[u8]) -> Option<&Reservation> {
        self.reservation_for(mac, None, None, None)
    }

    /// The ranges a client in `classes` may be given, as the lease scripts take them
    /// (`first-last,...`), or `None` when that is every range in order (the common case, no
    /// allocation). The pools of the client's own classes come first: a class member gets its
    /// class's pool while it has room, and the open pools after that.
    pub fn ranges_for(&self, classes: ClassSet) -> Option<String> {
        if self.classes == 0 && self.range_classes.iter().all(|m| *m == 0) {
            return None;
        }
        if !self.admits(classes) {
            return Some(String::new());
        }
        let mut own = Vec::new();
        let mut open = Vec::new();
        for ((a, b), m) in self.ranges.iter().zip(&self.range_classes) {
            if *m == 0 {
                open.push(format!("{a}-{b}"));
            } else if m & classes != 0 {
                own.push(format!("{a}-{b}"));
            }
        }
        own.extend(open);
        Some(own.join(","))
    }

    /// Whether a client in `classes` may use this subnet at all.
    pub fn admits(&self, classes: ClassSet) -> bool {
        self.classes == 0 || self.classes & classes != 0
    }

    /// Number of addresses in the dynamic pool.
    pub fn pool_size(&self) -> u32 {
        // Ranges are disjoint and inside a /8 at most, so the sum fits; saturating anyway.
        self.ranges.iter().fold(0u32, |sum, (a, b)| {
            sum.saturating_add(b.saturating_sub(*a).saturating_add(1))
        })
    }

    /// Redis Cluster hash tag body for this subnet's keys: the CIDR text, e.g. "192.0.2.0/24".
    /// Every key of one subnet carries it, so each subnet's scripts touch one slot.
    pub fn tag(&self) -> String {
        self.net.to_string()
    }

    /// Why `ip` cannot be a reservation in this subnet, if it cannot.
    fn check_reservable(&self, ip: Ipv4Addr) -> Result<(), String> {
        host_of(self.net, ip)?;
        if self.router == Some(ip) {
            return Err(format!("{ip} is the router address of {}", self.net));
        }
        Ok(())
    }
}

impl Config {
    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_json(path, &text)
    }

    /// Parse and validate JSON text (`file` is used only for messages). [`Config::load`] calls
    /// this.
    pub fn from_json(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let Object(raw) = serde_path_to_error::deserialize::<_, Object<RawConfig>>(&mut de)
            .map_err(|e| serde_error(file, &e))?;
        // Without this, `{...} garbage` would be accepted: serde stops after the first value.
        de.end().map_err(|e| syntax_error(file, &e))?;
        validate(file, raw)
    }

    /// Apply deployment overrides from the environment, validated like the file's values; an
    /// error names the variable as `field`. Variables: `HIVE_REDIS_URL` (redis), `HIVE_NODE_NAME`
    /// (nodeName), `HIVE_SERVER_ID` (serverId), `HIVE_HTTP_LISTEN` (httpListen),
    /// `HIVE_INTERFACE` (interface), `HIVE_PORT` (port), `HIVE_KEY_PREFIX` (keyPrefix),
    /// `HIVE_API_TOKEN` (apiToken).
    ///
    /// A variable set to the empty string counts as unset, because deploy templates (compose,
    /// Helm) render an unset value as `""`. On error `self` is left unchanged.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let file = self.file.clone();
        let ctx = Ctx { file: &file };
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        // Work on a copy so a bad variable cannot leave half the overrides applied.
        let mut next = self.clone();
        if let Some(v) = get("HIVE_REDIS_URL") {
            next.redis = ctx.check("HIVE_REDIS_URL", redis_url(&v))?;
        }
        if let Some(v) = get("HIVE_NODE_NAME") {
            next.node_name = Some(ctx.check("HIVE_NODE_NAME", word(&v))?);
        }
        if let Some(v) = get("HIVE_SERVER_ID") {
            let id = server_id(&v).and_then(|id| server_id_clash(&next.subnets, id).map(|()| id));
            next.server_id = Some(ctx.check("HIVE_SERVER_ID", id)?);
        }
        if let Some(v) = get("HIVE_HTTP_LISTEN") {
            next.http_listen = Some(ctx.check("HIVE_HTTP_LISTEN", socket_addr(&v))?);
        }
        if let Some(v) = get("HIVE_INTERFACE") {
            next.interface = ctx.check("HIVE_INTERFACE", word(&v))?;
        }
        if let Some(v) = get("HIVE_PORT") {
            let port_number = v
                .parse::<i64>()
                .map_err(|_| format!("{v:?} is not a port number"))
                .and_then(port);
            next.port = ctx.check("HIVE_PORT", port_number)?;
        }
        if let Some(v) = get("HIVE_KEY_PREFIX") {
            next.key_prefix = ctx.check("HIVE_KEY_PREFIX", key_prefix(&v))?;
        }
        if let Some(v) = get("HIVE_API_TOKEN") {
            next.api_token = Some(ctx.check("HIVE_API_TOKEN", api_token(&v))?);
        }
        // The CA file goes with a TLS URL, from the file or from the environment.
        if next.redis_tls_ca.is_some() && !next.redis.starts_with("rediss://") {
            let (field, problem) = match get("HIVE_REDIS_URL") {
                Some(_) => ("HIVE_REDIS_URL", "must be rediss:// with redis.tlsCaFile"),
                None => (
                    "redis.tlsCaFile",
                    "only with a rediss:// URL (redis.url or HIVE_REDIS_URL)",
                ),
            };
            return Err(ctx.fail(field, problem));
        }
        *self = next;
        Ok(())
    }

    /// The subnet that contains `ip`, if any.
    pub fn subnet_for(&self, ip: Ipv4Addr) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.contains(ip))
    }

    /// The node name: configured, or "<host name>-<pid>" so that several nodes on one host
    /// (SO_REUSEPORT) still have distinct names.
    pub fn node_name(&self) -> String {
        if let Some(name) = &self.node_name {
            return name.clone();
        }
        // /proc rather than gethostname(2): nix is built without its `hostname` feature, and
        // this is Linux-only anyway. Any failure just means a less telling name.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
            .unwrap_or_else(|| "node".to_owned());
        format!("{host}-{}", std::process::id())
    }
}

/// Read, parse and validate a file: what the `check-config` command runs. Same as
/// [`Config::load`]; it exists so the command has one obvious entry point.
pub fn check(path: &Path) -> Result<Config, ConfigError> {
    Config::load(path)
}

// ---------------------------------------------------------------------------------------------
// Raw JSON shape. Addresses stay strings here so validation can say which value is wrong and why
// instead of serde's generic "invalid value".

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    hostname: String,
    interface: String,
    // Numbers are i64 so that 0, -1 and 70000 reach validation and get a range message, rather
    // than serde's "expected u16".
    port: i64,
    /// A URL string, or `{ "url", "waitReplicas", "waitTimeoutMs" }`.
    redis: Option<RawRedis>,
    rate_limits: Option<Object<RawRateLimits>>,
    api_token: Option<String>,
    options: Option<serde_json::Value>,
    server_id: Option<String>,
    key_prefix: Option<String>,
    node_name: Option<String>,
    offer_time: Option<i64>,
    decline_probation: Option<i64>,
    authoritative: Option<bool>,
    http_listen: Option<String>,
    sticky_time: Option<i64>,
    subnets: Vec<Object<RawSubnet>>,
    #[serde(default)]
    reservations: Vec<Object<RawReservation>>,
    #[serde(default)]
    client_classes: Vec<Object<RawClass>>,
    ping_check: Option<bool>,
    ping_timeout_ms: Option<i64>,
    next_server: Option<String>,
    server_hostname: Option<String>,
    boot_file_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClass {
    name: String,
    #[serde(rename = "match")]
    test: String,
    options: Option<serde_json::Value>,
    next_server: Option<String>,
    server_hostname: Option<String>,
    boot_file_name: Option<String>,
}

enum RawRedis {
    Url(String),
    Options(RawRedisOptions),
}

/// A string or an object, each with its own precise errors (serde's untagged enums would only
/// say "data did not match any variant").
impl<'de> Deserialize<'de> for RawRedis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UrlOrObject;
        impl<'de> Visitor<'de> for UrlOrObject {
            type Value = RawRedis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Redis URL or an object with url, waitReplicas, waitTimeoutMs")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawRedis, E> {
                Ok(RawRedis::Url(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRedis, A::Error> {
                RawRedisOptions::deserialize(MapAccessDeserializer::new(map)).map(RawRedis::Options)
            }
        }
        deserializer.deserialize_any(UrlOrObject)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRedisOptions {
    url: Option<String>,
    wait_replicas: Option<i64>,
    wait_timeout_ms: Option<i64>,
    tls_ca_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRateLimits {
    subnet_allocations: Option<i64>,
    relay_allocations: Option<i64>,
    client_exchanges: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSubnet {
    subnet: String,
    router: Option<String>,
    dyn_start: String,
    dyn_end: String,
    lease_time: i64,
    min_lease_time: Option<i64>,
    max_lease_time: Option<i64>,
    renewal_time: Option<i64>,
    rebinding_time: Option<i64>,
    #[serde(default)]
    dns: Vec<String>,
    domain_name: Option<String>,
    #[serde(default)]
    reservations: Vec<Object<RawReservation>>,
    #[serde(default)]
    rapid_commit: bool,
    options: Option<serde_json::Value>,
    #[serde(default)]
    pools: Vec<Object<RawPool>>,
    #[serde(default)]
    exclude: Vec<Object<RawRange>>,
    classes: Option<Vec<String>>,
    shared_network: Option<String>,
    ping_check: Option<bool>,
    #[serde(default)]
    bootp: bool,
    next_server: Option<String>,
    server_hostname: Option<String>,
    boot_file_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPool {
    start: String,
    end: String,
    classes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRange {
    start: String,
    end: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawReservation {
    mac: Option<String>,
    client_id: Option<String>,
    circuit_id: Option<String>,
    remote_id: Option<String>,
    ip: String,
    hostname: Option<String>,
    options: Option<serde_json::Value>,
    next_server: Option<String>,
    server_hostname: Option<String>,
    boot_file_name: Option<String>,
}

/// A struct that must be written as a JSON object. serde's derive also accepts a struct written
/// as a positional array (`["192.0.2.0/24", ...]`), which would slip past `deny_unknown_fields`
/// and silently bind values by position; this wrapper only asks for a map.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapOnly<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(MapOnly(PhantomData))
            .map(Object)
    }
}

// ---------------------------------------------------------------------------------------------
// serde errors -> ConfigError

fn syntax_error(file: &Path, err: &serde_json::Error) -> ConfigError {
    let message = without_location(err);
    // "EOF" is jargon for the usual cause: a truncated or empty file.
    let message = match message.strip_prefix("EOF while") {
        Some(rest) => format!("unexpected end of file while{rest}"),
        None => message,
    };
    ConfigError::Syntax {
        file: file.to_path_buf(),
        line: err.line(),
        column: err.column(),
        message,
    }
}

fn serde_error(file: &Path, err: &serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let inner = err.inner();
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => syntax_error(file, inner),
        Category::Data => {
            let (field, problem) = explain(json_path(err.path()), &without_location(inner));
            ConfigError::Field {
                file: file.to_path_buf(),
                field,
                problem,
            }
        }
    }
}

/// serde_json's message without its " at line L column C" tail: the Field variant has a path
/// instead, and the Syntax variant carries line and column separately.
fn without_location(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let tail = format!(" at line {} column {}", err.line(), err.column());
    text.strip_suffix(&tail).unwrap_or(&text).to_owned()
}

/// Render a serde path the way a person writes it: `subnets[0].dynEnd`; the root is empty.
fn json_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => append_key(&mut out, key),
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

fn append_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !plain {
        // An unknown key such as "lease time" stays readable and unambiguous.
        path.push_str(&format!("[{key:?}]"));
    } else if path.is_empty() {
        path.push_str(key);
    } else {
        path.push('.');
        path.push_str(key);
    }
}

/// Turn serde's wording (written for Rust types) into wording about JSON keys and values.
fn explain(path: String, message: &str) -> (String, String) {
    let at = |p: String| {
        if p.is_empty() {
            TOP_LEVEL.to_owned()
        } else {
            p
        }
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // "x`, expected one of `a`, `b`" | "x`, expected `a`" | "x`, there are no fields";
        // the path already ends with the unknown key.
        let problem = match rest.split_once("`, expected ") {
            Some((_, expected)) => format!("unknown key; expected {expected}"),
            None => "unknown key".to_owned(),
        };
        return (at(path), problem);
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return (at(path), format!("missing key {rest}"));
    }
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        let mut field = path;
        append_key(&mut field, rest.trim_end_matches('`'));
        return (field, "key appears more than once".to_owned());
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        let problem = format!(
            "expected {}, found {}",
            json_noun(expected),
            json_noun(found)
        );
        return (at(path), problem);
    }
    (at(path), message.to_owned())
}

fn json_noun(serde_word: &str) -> &str {
    match serde_word {
        "i64" => "a whole number",
        "map" => "an object",
        "sequence" | "a sequence" => "a list",
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: raw structs -> Config. Each value checker returns the problem as text; `Ctx` adds
// the file and the path, so the same checkers serve the file and the environment.

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn fail(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            file: self.file.to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn check<T>(
        &self,
        field: impl Into<String>,
        result: Result<T, String>,
    ) -> Result<T, ConfigError> {
        result.map_err(|problem| self.fail(field, problem))
    }
}

fn validate(file: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
    let ctx = Ctx { file };
    let hostname = ctx.check("hostname", word(&raw.hostname))?;
    let interface = ctx.check("interface", word(&raw.interface))?;
    let port = ctx.check("port", port(raw.port))?;
    let mut redis_tls_ca = None;
    let (redis, wait_replicas, wait_timeout_ms) = match raw.redis {
        None => (DEFAULT_REDIS.to_owned(), 0, DEFAULT_WAIT_TIMEOUT_MS),
        Some(RawRedis::Url(url)) => (
            ctx.check("redis", redis_url(&url))?,
            0,
            DEFAULT_WAIT_TIMEOUT_MS,
        ),
        Some(RawRedis::Options(o)) => {
            let url_in_file = o.url.is_some();
            let url = match o.url {
                Some(url) => ctx.check("redis.url", redis_url(&url))?,
                None => DEFAULT_REDIS.to_owned(),
            };
            let replicas = match o.wait_replicas {
                None => 0,
                Some(n) => ctx.check("redis.waitReplicas", bounded(n, 0, 16))?,
            };
            let timeout = match o.wait_timeout_ms {
                None => DEFAULT_WAIT_TIMEOUT_MS,
                // Past the handler's 2 s the exchange is given up anyway.
                Some(n) => ctx.check("redis.waitTimeoutMs", bounded(n, 1, 1500))?,
            };
            if let Some(ca) = o.tls_ca_file {
                // Relative to the config file, like any path an operator writes beside it.
                let path = file
                    .parent()
                    .map_or_else(|| PathBuf::from(&ca), |dir| dir.join(&ca));
                ctx.check("redis.tlsCaFile", pem_file(&path))?;
                // A URL left out of the file comes from HIVE_REDIS_URL (deploy templates): the
                // pair is checked once the environment is applied (`apply_env`).
                if url_in_file && !url.starts_with("rediss://") {
                    return Err(ctx.fail("redis.tlsCaFile", "only with a rediss:// URL"));
                }
                redis_tls_ca = Some(path);
            }
            (url, replicas, timeout)
        }
    };
    let api_token = raw
        .api_token
        .map(|t| ctx.check("apiToken", api_token(&t)))
        .transpose()?;
    let rate_limits = match raw.rate_limits {
        None => RateLimits::default(),
        Some(Object(r)) => RateLimits {
            subnet_allocations: ctx.check(
                "rateLimits.subnetAllocations",
                bounded(r.subnet_allocations.unwrap_or(0), 0, 1_000_000),
            )?,
            relay_allocations: ctx.check(
                "rateLimits.relayAllocations",
                bounded(r.relay_allocations.unwrap_or(0), 0, 1_000_000),
            )?,
            client_exchanges: ctx.check(
                "rateLimits.clientExchanges",
                bounded(r.client_exchanges.unwrap_or(0), 0, 1_000_000),
            )?,
        },
    };
    let server_id = raw
        .server_id
        .map(|v| ctx.check("serverId", server_id(&v)))
        .transpose()?;
    let key_prefix = match raw.key_prefix {
        Some(p) => ctx.check("keyPrefix", key_prefix(&p))?,
        None => DEFAULT_KEY_PREFIX.to_owned(),
    };
    let node_name = raw
        .node_name
        .map(|n| ctx.check("nodeName", word(&n)))
        .transpose()?;
    let offer_time = optional_seconds(&ctx, "offerTime", raw.offer_time, DEFAULT_OFFER_TIME)?;
    let decline_probation = optional_seconds(
        &ctx,
        "declineProbation",
        raw.decline_probation,
        DEFAULT_DECLINE_PROBATION,
    )?;
    // Authoritative by default: a hive is normally the only DHCP service on its links, and a
    // client stuck on a foreign address should be NAKed into starting over.
    let authoritative = raw.authoritative.unwrap_or(true);
    let http_listen = raw
        .http_listen
        .map(|v| ctx.check("httpListen", socket_addr(&v)))
        .transpose()?;
    let sticky_time = optional_seconds(&ctx, "stickyTime", raw.sticky_time, DEFAULT_STICKY_TIME)?;

    let classes = client_classes(&ctx, raw.client_classes)?;
    let class_names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
    let ping_check = raw.ping_check.unwrap_or(false);
    let ping_timeout_ms = match raw.ping_timeout_ms {
        None => DEFAULT_PING_TIMEOUT_MS,
        // Up to three checks fit in the handler's 2 s with room for the Redis calls.
        Some(ms) => ctx.check("pingTimeoutMs", bounded(ms, 10, 500))?,
    };

    if raw.subnets.is_empty() {
        return Err(ctx.fail("subnets", "at least one subnet is required"));
    }
    let mut seen = Seen::default();
    let mut subnets: Vec<Subnet> = Vec::with_capacity(raw.subnets.len());
    for (i, Object(raw_subnet)) in raw.subnets.into_iter().enumerate() {
        let mut subnet = subnet(&ctx, i, raw_subnet, &subnets, &mut seen, &class_names)?;
        subnet.ping_check = subnet.ping_check || ping_check;
        subnets.push(subnet);
    }
    // Shared networks: each subnet knows the others on its link, in config order.
    for i in 0..subnets.len() {
        let Some(name) = subnets[i].shared_network.clone() else {
            continue;
        };
        subnets[i].siblings = (0..subnets.len())
            .filter(|j| *j != i && subnets[*j].shared_network.as_deref() == Some(&name))
            .collect();
    }

    // Top-level reservations go to the subnet holding their address, so the packet path only
    // ever looks at one subnet's list.
    for (i, Object(raw_reservation)) in raw.reservations.into_iter().enumerate() {
        let path = format!("reservations[{i}]");
        let reservation = reservation(&ctx, &path, raw_reservation)?;
        let ip = reservation.ip;
        let Some(subnet) = subnets.iter_mut().find(|s| s.contains(ip)) else {
            return Err(ctx.fail(
                format!("{path}.ip"),
                format!("{ip} is not inside any configured subnet"),
            ));
        };
        ctx.check(format!("{path}.ip"), subnet.check_reservable(ip))?;
        seen.add(&ctx, &path, &reservation)?;
        subnet.reservations.push(reservation);
    }

    if let Some(id) = server_id {
        ctx.check("serverId", server_id_clash(&subnets, id))?;
    }
    // Global options and boot fields under every subnet's own.
    let global = option_set(&ctx, "options", raw.options.as_ref())?;
    let global_boot = boot(
        &ctx,
        "",
        raw.next_server,
        raw.server_hostname,
        raw.boot_file_name,
    )?;
    for subnet in &mut subnets {
        subnet.options = global.overlay(&subnet.options);
        subnet.boot = std::mem::take(&mut subnet.boot).or(&global_boot);
    }

    Ok(Config {
        file: file.to_path_buf(),
        hostname,
        interface,
        port,
        redis,
        server_id,
        key_prefix,
        node_name,
        offer_time,
        decline_probation,
        authoritative,
        http_listen,
        sticky_time,
        wait_replicas,
        wait_timeout_ms,
        redis_tls_ca,
        rate_limits,
        api_token,
        subnets,
        classes,
        ping_timeout_ms,
    })
}

/// `clientClasses`: names unique, expressions compiled (a class may test earlier ones).
fn client_classes(
    ctx: &Ctx<'_>,
    raw: Vec<Object<RawClass>>,
) -> Result<Vec<ClientClass>, ConfigError> {
    if raw.len() > MAX_CLASSES {
        return Err(ctx.fail(
            "clientClasses",
            format!(
                "has {} classes; at most {MAX_CLASSES} are allowed",
                raw.len()
            ),
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(raw.len());
    let mut classes = Vec::with_capacity(raw.len());
    for (i, Object(c)) in raw.into_iter().enumerate() {
        let at = |key: &str| format!("clientClasses[{i}].{key}");
        let name = ctx.check(at("name"), word(&c.name))?;
        if let Some(j) = names.iter().position(|n| *n == name) {
            return Err(ctx.fail(
                at("name"),
                format!("{name:?} is already the name of clientClasses[{j}]"),
            ));
        }
        let expr =
            classify::compile(&c.test, &names).map_err(|e| ctx.fail(at("match"), e.to_string()))?;
        let options = option_set(ctx, &at("options"), c.options.as_ref())?;
        let boot = boot(
            ctx,
            &format!("clientClasses[{i}]"),
            c.next_server,
            c.server_hostname,
            c.boot_file_name,
        )?;
        names.push(name.clone());
        classes.push(ClientClass {
            name,
            expr,
            options,
            boot,
        });
    }
    Ok(classes)
}

/// A `classes` list of class names, as a set.
fn class_set(
    ctx: &Ctx<'_>,
    path: &str,
    names: Option<&[String]>,
    known: &[String],
) -> Result<ClassSet, ConfigError> {
    let Some(names) = names else {
        return Ok(0);
    };
    if names.is_empty() {
        return Err(ctx.fail(path, "is empty; leave it out to serve every client"));
    }
    let mut set = 0;
    for (k, name) in names.iter().enumerate() {
        let Some(bit) = known.iter().position(|n| n == name) else {
            return Err(ctx.fail(
                format!("{path}[{k}]"),
                format!("no client class {name:?} (clientClasses defines {known:?})"),
            ));
        };
        set |= 1 << bit;
    }
    Ok(set)
}

fn subnet(
    ctx: &Ctx<'_>,
    i: usize,
    raw: RawSubnet,
    earlier: &[Subnet],
    seen: &mut Seen,
    class_names: &[String],
) -> Result<Subnet, ConfigError> {
    let at = |key: &str| format!("subnets[{i}].{key}");
    let net = ctx.check(at("subnet"), parse_net(&raw.subnet))?;
    // Overlapping subnets would make "the subnet of this address" ambiguous, and two key
    // spaces (hash tags) could then lease the same address twice.
    if let Some((j, other)) = earlier
        .iter()
        .enumerate()
        .find(|(_, o)| o.net.contains(&net.network()) || net.contains(&o.net.network()))
    {
        return Err(ctx.fail(
            at("subnet"),
            format!("overlaps subnets[{j}] ({})", other.net),
        ));
    }

    let host = |key: &str, text: &str| {
        ctx.check(at(key), parse_ipv4(text).and_then(|ip| host_of(net, ip)))
    };
    let router = raw
        .router
        .as_deref()
        .map(|r| host("router", r))
        .transpose()?;
    let dyn_start = host("dynStart", &raw.dyn_start)?;
    let dyn_end = host("dynEnd", &raw.dyn_end)?;
    if dyn_end < dyn_start {
        return Err(ctx.fail(
            at("dynEnd"),
            format!("{dyn_end} is before dynStart {dyn_start}"),
        ));
    }
    // More pools, and exclusions, each a range inside the subnet.
    let range = |key: String, start: &str, end: &str| -> Result<(u32, u32), ConfigError> {
        let start = ctx.check(
            format!("{key}.start"),
            parse_ipv4(start).and_then(|ip| host_of(net, ip)),
        )?;
        let end = ctx.check(
            format!("{key}.end"),
            parse_ipv4(end).and_then(|ip| host_of(net, ip)),
        )?;
        if end < start {
            return Err(ctx.fail(
                format!("{key}.end"),
                format!("{end} is before start {start}"),
            ));
        }
        Ok((u32::from(start), u32::from(end)))
    };
    let mut pools = vec![(u32::from(dyn_start), u32::from(dyn_end), 0)];
    for (k, Object(r)) in raw.pools.iter().enumerate() {
        let path = at(&format!("pools[{k}]"));
        let (a, b) = range(path.clone(), &r.start, &r.end)?;
        let classes = class_set(
            ctx,
            &format!("{path}.classes"),
            r.classes.as_deref(),
            class_names,
        )?;
        if let Some((x, y, _)) = pools.iter().find(|(x, y, _)| a <= *y && *x <= b) {
            return Err(ctx.fail(
                at(&format!("pools[{k}]")),
                format!(
                    "overlaps the pool {}-{}",
                    Ipv4Addr::from(*x),
                    Ipv4Addr::from(*y)
                ),
            ));
        }
        pools.push((a, b, classes));
    }
    let mut excluded = Vec::new();
    for (k, Object(r)) in raw.exclude.iter().enumerate() {
        excluded.push(range(at(&format!("exclude[{k}]")), &r.start, &r.end)?);
    }
    let (ranges, range_classes): (Vec<_>, Vec<_>) = subtract(pools, &excluded)
        .into_iter()
        .map(|(a, b, c)| ((a, b), c))
        .unzip();
    if ranges.is_empty() {
        return Err(ctx.fail(at("exclude"), "leaves no address in the pool"));
    }
    if let Some(r) = router {
        // The allocator hands out every pool address; the router's must never be one of them.
        let n = u32::from(r);
        if ranges.iter().any(|(a, b)| (*a..=*b).contains(&n)) {
            return Err(ctx.fail(
                at("router"),
                format!(
                    "{r} is inside the dynamic pool {dyn_start}-{dyn_end}; \
                     a client could be given it"
                ),
            ));
        }
    }

    let lease_time = ctx.check(at("leaseTime"), seconds(raw.lease_time))?;
    let (renewal_time, rebinding_time) =
        timers(ctx, i, lease_time, raw.renewal_time, raw.rebinding_time)?;
    let bound = |key: &str, value: Option<i64>, fits: fn(u32, u32) -> bool, word: &str| {
        let checked = value.map(seconds).transpose().and_then(|t| match t {
            Some(t) if !fits(t, lease_time) => {
                Err(format!("{t} must be {word} leaseTime ({lease_time})"))
            }
            t => Ok(t.unwrap_or(lease_time)),
        });
        ctx.check(at(key), checked)
    };
    let min_lease_time = bound("minLeaseTime", raw.min_lease_time, |t, l| t <= l, "at most")?;
    let max_lease_time = bound(
        "maxLeaseTime",
        raw.max_lease_time,
        |t, l| t >= l,
        "at least",
    )?;

    if raw.dns.len() > MAX_DNS_SERVERS {
        return Err(ctx.fail(
            at("dns"),
            format!(
                "has {} addresses; at most {MAX_DNS_SERVERS} are allowed",
                raw.dns.len()
            ),
        ));
    }
    let dns = raw
        .dns
        .iter()
        .enumerate()
        .map(|(k, text)| {
            ctx.check(
                format!("subnets[{i}].dns[{k}]"),
                parse_ipv4(text).and_then(unicast),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let domain_name = raw
        .domain_name
        .map(|d| ctx.check(at("domainName"), dns_name(&d)))
        .transpose()?;

    let mut subnet = Subnet {
        net,
        router,
        dyn_start,
        dyn_end,
        lease_time,
        min_lease_time,
        max_lease_time,
        renewal_time,
        rebinding_time,
        dns,
        domain_name,
        reservations: Vec::with_capacity(raw.reservations.len()),
        rapid_commit: raw.rapid_commit,
        options: OptionSet::default(),
        ranges,
        range_classes,
        classes: class_set(ctx, &at("classes"), raw.classes.as_deref(), class_names)?,
        shared_network: raw
            .shared_network
            .map(|n| ctx.check(at("sharedNetwork"), word(&n)))
            .transpose()?,
        siblings: Vec::new(),
        ping_check: raw.ping_check.unwrap_or(false),
        bootp: raw.bootp,
        boot: boot(
            ctx,
            &format!("subnets[{i}]"),
            raw.next_server,
            raw.server_hostname,
            raw.boot_file_name,
        )?,
    };
    subnet.options = shorthand_options(&subnet).overlay(&option_set(
        ctx,
        &format!("subnets[{i}].options"),
        raw.options.as_ref(),
    )?);
    for (j, Object(raw_reservation)) in raw.reservations.into_iter().enumerate() {
        let path = format!("subnets[{i}].reservations[{j}]");
        let reservation = reservation(ctx, &path, raw_reservation)?;
        ctx.check(
            format!("{path}.ip"),
            subnet.check_reservable(reservation.ip),
        )?;
        seen.add(ctx, &path, &reservation)?;
        subnet.reservations.push(reservation);
    }
    Ok(subnet)
}

/// `renewalTime` (T1) and `rebindingTime` (T2) of `subnets[i]`, checked against its lease.
fn timers(
    ctx: &Ctx<'_>,
    i: usize,
    lease_time: u32,
    renewal: Option<i64>,
    rebinding: Option<i64>,
) -> Result<(Option<u32>, Option<u32>), ConfigError> {
    let at = |key: &str| format!("subnets[{i}].{key}");
    let below_lease = |key: &str, value: i64| {
        let t = seconds(value).and_then(|t| {
            if t < lease_time {
                Ok(t)
            } else {
                Err(format!("{t} must be less than leaseTime ({lease_time})"))
            }
        });
        ctx.check(at(key), t)
    };
    let renewal_time = renewal.map(|v| below_lease("renewalTime", v)).transpose()?;
    let rebinding_time = rebinding
        .map(|v| below_lease("rebindingTime", v))
        .transpose()?;
    // RFC 2131 section 4.4.5: T1 < T2 < lease; check against the value the client will actually
    // get when only one of the two is configured.
    match (renewal_time, rebinding_time) {
        (t1, Some(t2)) => {
            let t1 = t1.unwrap_or(lease_time / 2);
            if t2 <= t1 {
                return Err(ctx.fail(
                    at("rebindingTime"),
                    format!("{t2} must be greater than the renewal time T1 ({t1})"),
                ));
            }
        }
        (Some(t1), None) => {
            let t2 = default_rebinding(lease_time);
            if t1 >= t2 {
                return Err(ctx.fail(
                    at("renewalTime"),
                    format!(
                        "{t1} must be less than the rebinding time T2 ({t2}, 7/8 of leaseTime)"
                    ),
                ));
            }
        }
        (None, None) => {}
    }
    Ok((renewal_time, rebinding_time))
}

fn reservation(ctx: &Ctx<'_>, path: &str, raw: RawReservation) -> Result<Reservation, ConfigError> {
    let options = option_set(ctx, &format!("{path}.options"), raw.options.as_ref())?;
    let boot = boot(
        ctx,
        path,
        raw.next_server,
        raw.server_hostname,
        raw.boot_file_name,
    )?;
    let key = match (raw.mac, raw.client_id, raw.circuit_id, raw.remote_id) {
        (Some(m), None, None, None) => {
            ReservedFor::Mac(ctx.check(format!("{path}.mac"), parse_mac(&m))?)
        }
        (None, Some(v), None, None) => {
            ReservedFor::ClientId(ctx.check(format!("{path}.clientId"), identifier(&v))?)
        }
        (None, None, Some(v), None) => {
            ReservedFor::CircuitId(ctx.check(format!("{path}.circuitId"), identifier(&v))?)
        }
        (None, None, None, Some(v)) => {
            ReservedFor::RemoteId(ctx.check(format!("{path}.remoteId"), identifier(&v))?)
        }
        _ => {
            return Err(ctx.fail(
                path,
                "needs exactly one of `mac`, `clientId`, `circuitId`, `remoteId`",
            ));
        }
    };
    Ok(Reservation {
        options,
        boot,
        key,
        ip: ctx.check(format!("{path}.ip"), parse_ipv4(&raw.ip))?,
        hostname: raw
            .hostname
            .map(|h| ctx.check(format!("{path}.hostname"), dns_name(&h)))
            .transpose()?,
    })
}

/// Reservations seen so far, by MAC and by IP, with the path of the first one: a MAC with two
/// reservations or an address reserved twice has no single right answer, across the whole hive.
#[derive(Default)]
struct Seen {
    macs: HashMap<ReservedFor, String>,
    ips: HashMap<Ipv4Addr, String>,
}

impl Seen {
    fn add(&mut self, ctx: &Ctx<'_>, path: &str, r: &Reservation) -> Result<(), ConfigError> {
        if let Some(first) = self.macs.get(&r.key) {
            let field = match r.key {
                ReservedFor::Mac(_) => "mac",
                ReservedFor::ClientId(_) => "clientId",
                ReservedFor::CircuitId(_) => "circuitId",
                ReservedFor::RemoteId(_) => "remoteId",
            };
            return Err(ctx.fail(
                format!("{path}.{field}"),
                format!("{} is already reserved at {first}", r.key),
            ));
        }
        if let Some(first) = self.ips.get(&r.ip) {
            return Err(ctx.fail(
                format!("{path}.ip"),
                format!("{} is already reserved at {first}", r.ip),
            ));
        }
        self.macs.insert(r.key.clone(), path.to_owned());
        self.ips.insert(r.ip, path.to_owned());
        Ok(())
    }
}

/// Why `id` cannot be the server identifier of a hive serving `subnets`, if it cannot: a client
/// given that address would answer for the whole hive.
fn server_id_clash(subnets: &[Subnet], id: Ipv4Addr) -> Result<(), String> {
    for (i, s) in subnets.iter().enumerate() {
        if !s.contains(id) {
            continue;
        }
        if id == s.net.network() || id == s.broadcast() {
            return Err(format!(
                "{id} is the network or broadcast address of subnets[{i}] ({})",
                s.net
            ));
        }
        if s.in_pool(id) {
            return Err(format!(
                "{id} is inside the pool of subnets[{i}] ({}-{}); a client could be given it",
                s.dyn_start, s.dyn_end
            ));
        }
        if let Some(r) = s.reservations.iter().find(|r| r.ip == id) {
            return Err(format!("{id} is reserved for {}", r.key));
        }
    }
    Ok(())
}

fn default_rebinding(lease_time: u32) -> u32 {
    // 7/8 of a u32 is a u32, so the fallback is never taken.
    u32::try_from(u64::from(lease_time) * 7 / 8).unwrap_or(lease_time)
}

// ---------------------------------------------------------------------------------------------
// Value checkers: text or number in, typed value or the problem out.

fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IPv4 address"))
}

fn parse_net(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 network like 192.0.2.0/24"))?;
    if net.trunc() != net {
        return Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    // /31 and /32 leave no address between network and broadcast for a pool (RFC 3021 links are
    // not served by DHCP); shorter than /8 would be a pool no Redis index should be asked to hold.
    if !(8..=30).contains(&net.prefix_len()) {
        return Err(format!(
            "prefix length /{} is not supported; use /8 to /30",
            net.prefix_len()
        ));
    }
    Ok(net)
}

/// `ip` is a usable host address of `net`: inside it, neither its network nor its broadcast.
fn host_of(net: Ipv4Net, ip: Ipv4Addr) -> Result<Ipv4Addr, String> {
    if !net.contains(&ip) {
        Err(format!("{ip} is outside {net}"))
    } else if ip == net.network() {
        Err(format!("{ip} is the network address of {net}"))
    } else if ip == net.broadcast() {
        Err(format!("{ip} is the broadcast address of {net}"))
    } else {
        Ok(ip)
    }
}

/// An address a client can send unicast to (a server identifier, a DNS server).
fn unicast(ip: Ipv4Addr) -> Result<Ipv4Addr, String> {
    if ip.is_unspecified() {
        Err(format!("{ip} is the unspecified address"))
    } else if ip.is_broadcast() {
        Err(format!("{ip} is the broadcast address"))
    } else if ip.is_multicast() {
        Err(format!("{ip} is a multicast address"))
    } else {
        Ok(ip)
    }
}

fn server_id(text: &str) -> Result<Ipv4Addr, String> {
    parse_ipv4(text).and_then(unicast)
}

/// "aa:bb:cc:dd:ee:ff" or "AA-BB-CC-DD-EE-FF": six two-digit hex octets, one kind of separator.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{text:?} is not a MAC address like aa:bb:cc:dd:ee:ff");
    let separator = if text.contains(':') { ':' } else { '-' };
    let mut parts = text.split(separator);
    let mut mac = [0u8; 6];
    for octet in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        // from_str_radix alone would accept "+a" and one-digit octets.
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    // None of these can be a client's chaddr, so a reservation for one is a typo.
    if mac == [0; 6] {
        Err(format!("{} is the all-zero MAC address", format_mac(&mac)))
    } else if mac == [0xff; 6] {
        Err(format!("{} is the broadcast MAC address", format_mac(&mac)))
    } else if mac[0] & 1 == 1 {
        Err(format!(
            "{} is a multicast MAC address (low bit of the first octet set)",
            format_mac(&mac)
        ))
    } else {
        Ok(mac)
    }
}

fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// A DNS name (RFC 1035 / RFC 1123): labels of 1 to 63 letters, digits and hyphens, not starting
/// or ending with a hyphen, at most 253 characters; one trailing dot allowed.
fn dns_name(text: &str) -> Result<String, String> {
    let body = text.strip_suffix('.').unwrap_or(text);
    if body.is_empty() {
        return Err(format!("{text:?} is not a DNS name: it is empty"));
    }
    if body.len() > 253 {
        return Err(format!(
            "{text:?} is not a DNS name: longer than 253 characters"
        ));
    }
    for label in body.split('.') {
        let problem = if label.is_empty() {
            "it has an empty label"
        } else if label.len() > 63 {
            "a label is longer than 63 characters"
        } else if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            "only letters, digits, hyphens and dots are allowed"
        } else if label.starts_with('-') || label.ends_with('-') {
            "a label starts or ends with a hyphen"
        } else {
            continue;
        };
        return Err(format!("{text:?} is not a DNS name: {problem}"));
    }
    Ok(text.to_owned())
}

/// A non-empty name without whitespace (hostname, interface, node name).
fn word(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty".to_owned())
    } else if text.contains(char::is_whitespace) {
        Err(format!("{text:?} contains whitespace"))
    } else {
        Ok(text.to_owned())
    }
}

fn key_prefix(text: &str) -> Result<String, String> {
    let prefix = word(text)?;
    // The hive wraps each subnet's part of a key in `{...}` so Redis Cluster hashes only that
    // part; a brace in the prefix would become the hash tag and put every subnet on one slot.
    if prefix.contains(['{', '}']) {
        return Err(format!(
            "{text:?} contains `{{` or `}}`, which would break Redis Cluster hash tags"
        ));
    }
    if prefix.contains(char::is_control) {
        return Err(format!("{text:?} contains a control character"));
    }
    Ok(prefix)
}

fn redis_url(text: &str) -> Result<String, String> {
    let Some(rest) = REDIS_SCHEMES.iter().find_map(|s| text.strip_prefix(s)) else {
        return Err(format!(
            "{text:?} is not a Redis URL; it must start with {}",
            REDIS_SCHEMES.join(", ")
        ));
    };
    if rest.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if text.contains(char::is_whitespace) {
        return Err(format!("{text:?} contains whitespace"));
    }
    Ok(text.to_owned())
}

/// `pools` (disjoint, each with its classes) minus `excluded`, sorted: the ranges the
/// allocator walks.
fn subtract(
    mut pools: Vec<(u32, u32, ClassSet)>,
    excluded: &[(u32, u32)],
) -> Vec<(u32, u32, ClassSet)> {
    for &(xa, xb) in excluded {
        pools = pools
            .into_iter()
            .flat_map(|(a, b, c)| {
                let mut left = Vec::with_capacity(2);
                if xb < a || xa > b {
                    left.push((a, b, c));
                } else {
                    if xa > a {
                        left.push((a, xa - 1, c));
                    }
                    if xb < b {
                        left.push((xb + 1, b, c));
                    }
                }
                left
            })
            .collect();
    }
    pools.sort_unstable();
    pools
}

/// An `options` list, or an empty set when absent.
fn option_set(
    ctx: &Ctx<'_>,
    path: &str,
    value: Option<&serde_json::Value>,
) -> Result<OptionSet, ConfigError> {
    match value {
        None => Ok(OptionSet::default()),
        Some(v) => {
            OptionSet::from_json(path, v).map_err(|(field, problem)| ctx.fail(field, problem))
        }
    }
}

/// The subnet keys that are options in disguise (3, 6, 15), as options.
fn shorthand_options(s: &Subnet) -> OptionSet {
    let ips = |v: &[Ipv4Addr]| v.iter().flat_map(|ip| ip.octets()).collect::<Vec<u8>>();
    let mut set = Vec::new();
    if let Some(r) = s.router {
        set.push(OptionData {
            code: 3,
            data: r.octets().to_vec(),
        });
    }
    if !s.dns.is_empty() {
        set.push(OptionData {
            code: 6,
            data: ips(&s.dns),
        });
    }
    if let Some(d) = &s.domain_name {
        set.push(OptionData {
            code: 15,
            data: d.trim_end_matches('.').as_bytes().to_vec(),
        });
    }
    OptionSet(set)
}

/// The boot fields of the level at `path` (`subnets[0]`; empty for the top level).
fn boot(
    ctx: &Ctx<'_>,
    path: &str,
    next_server: Option<String>,
    server_hostname: Option<String>,
    boot_file_name: Option<String>,
) -> Result<Boot, ConfigError> {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    Ok(Boot {
        // A client sends its TFTP requests there: it must be an address it can unicast to.
        next_server: next_server
            .map(|v| ctx.check(at("nextServer"), parse_ipv4(&v).and_then(unicast)))
            .transpose()?,
        server_hostname: server_hostname
            .map(|v| {
                ctx.check(
                    at("serverHostname"),
                    header_text(&v, "64-byte `sname`", MAX_SNAME),
                )
            })
            .transpose()?,
        boot_file_name: boot_file_name
            .map(|v| {
                ctx.check(
                    at("bootFileName"),
                    header_text(&v, "128-byte `file`", MAX_FILE),
                )
            })
            .transpose()?,
    })
}

/// Text for a fixed header field (`field` names it) that holds `max` bytes and the NUL after
/// them. A control character is refused: a NUL would cut the name short where the client
/// reads it, and the others are typos no TFTP server has a file for.
fn header_text(text: &str, field: &str, max: usize) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty; leave the key out instead".to_owned())
    } else if text.contains(char::is_control) {
        Err(format!("{text:?} contains a control character"))
    } else if text.len() > max {
        Err(format!(
            "is {} bytes long; at most {max} fit the header's {field} field with its \
             terminating NUL",
            text.len()
        ))
    } else {
        Ok(text.to_owned())
    }
}

/// An identifier as hex bytes (`01:02:ab`, `-` or no separators) or, failing that, text.
fn identifier(text: &str) -> Result<Vec<u8>, String> {
    if text.is_empty() || text.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    let hex: String = text.chars().filter(|c| !matches!(c, ':' | '-')).collect();
    let looks_hex = text.contains([':', '-']) || text.len().is_multiple_of(2);
    if looks_hex
        && hex.len().is_multiple_of(2)
        && hex.chars().all(|c| c.is_ascii_hexdigit())
        && !hex.is_empty()
    {
        return (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).map_err(|e| e.to_string()))
            .collect();
    }
    if !text.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(format!("{text:?} is neither hex bytes nor printable text"));
    }
    Ok(text.as_bytes().to_vec())
}

/// A readable PEM file with at least one certificate.
fn pem_file(path: &Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        Ok(())
    } else {
        Err(format!("{} holds no PEM certificate", path.display()))
    }
}

/// A bearer token: long enough not to be guessed, printable, no spaces.
fn api_token(text: &str) -> Result<String, String> {
    if text.len() < 16 || !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be at least 16 printable characters without spaces".into());
    }
    Ok(text.to_owned())
}

/// A whole number in `min..=max`.
fn bounded(value: i64, min: u32, max: u32) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| format!("{value} is out of range; it must be from {min} to {max}"))
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address and port like 127.0.0.1:9067"))
}

fn port(value: i64) -> Result<u16, String> {
    match u16::try_from(value) {
        // 65535 is out because the client port is port + 1.
        Ok(p) if (1..=65534).contains(&p) => Ok(p),
        _ => Err(format!(
            "{value} is not a usable port; it must be 1 to 65534 (the client port is port + 1)"
        )),
    }
}

fn seconds(value: i64) -> Result<u32, String> {
    if value <= 0 {
        return Err(format!("must be greater than 0 seconds, got {value}"));
    }
    u32::try_from(value).map_err(|_| format!("{value} is too large; at most {} seconds", u32::MAX))
}

fn optional_seconds(
    ctx: &Ctx<'_>,
    field: &str,
    value: Option<i64>,
    default: u32,
) -> Result<u32, ConfigError> {
    value.map_or(Ok(default), |v| ctx.check(field, seconds(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's sample `config/config.json`, verbatim from `seed/dhcp-hive-mind.md`.
    const SEED_SAMPLE: &str = r#"{
  "hostname": "dhcphm.localhost.localdomain",
  "interface": "localhost",
  "port": 1067,
  "subnets": [
    {
      "subnet": "67.201.192.0/24",
      "router": "67.201.192.1",
      "dynStart": "67.201.192.9",
      "dynEnd": "67.201.192.250",
      "leaseTime": 1200
    },
    {
      "subnet": "140.160.138.0/24",
      "router": "140.160.138.1",
      "dynStart": "140.160.138.2",
      "dynEnd": "140.160.138.254",
      "leaseTime": 1600
    }
  ]
}
"#;

    /// Every key the format knows, each set to a non-default value.
    const FULL: &str = r#"{
  "hostname": "dhcphm.test",
  "interface": "eth0",
  "port": 67,
  "redis": "redis-cluster://127.0.0.1:7000",
  "serverId": "192.0.2.2",
  "keyPrefix": "hive-test",
  "nodeName": "node-a",
  "offerTime": 15,
  "declineProbation": 3600,
  "authoritative": false,
  "httpListen": "127.0.0.1:9067",
  "stickyTime": 7200,
  "subnets": [
    {
      "subnet": "192.0.2.0/24",
      "router": "192.0.2.1",
      "dynStart": "192.0.2.100",
      "dynEnd": "192.0.2.199",
      "leaseTime": 3600,
      "renewalTime": 1000,
      "rebindingTime": 3000,
      "dns": ["192.0.2.53", "198.51.100.53"],
      "domainName": "example.test.",
      "reservations": [
        { "mac": "02:00:00:00:00:01", "ip": "192.0.2.10", "hostname": "printer" }
      ]
    },
    {
      "subnet": "198.51.100.0/25",
      "dynStart": "198.51.100.10",
      "dynEnd": "198.51.100.20",
      "leaseTime": 600
    }
  ],
  "reservations": [
    { "mac": "02-00-00-00-00-AB", "ip": "198.51.100.15" }
  ]
}"#;

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::from_json(Path::new("test.json"), json)
    }

    fn ok(json: &str) -> Config {
        parse(json).unwrap_or_else(|e| panic!("expected a valid config, got: {e}"))
    }

    /// Assert that `json` fails with a Field error at `field` whose problem mentions `word`.
    fn fails_at(json: &str, field: &str, word: &str) {
        match parse(json) {
            Err(ConfigError::Field {
                field: f, problem, ..
            }) => {
                assert_eq!(f, field, "problem was: {problem}");
                assert!(
                    problem.contains(word),
                    "problem at {f} should mention {word:?}: {problem}"
                );
            }
            other => panic!("expected a Field error at {field}, got {other:?}"),
        }
    }

    /// A minimal valid config with one 192.0.2.0/24 subnet; `subnet_extra` is spliced into the
    /// subnet object and `top_extra` into the top level.
    fn one_subnet(subnet_extra: &str, top_extra: &str) -> String {
        format!(
            r#"{{
  "hostname": "dhcphm.test", "interface": "127.0.0.1", "port": 1067, {top_extra}
  "subnets": [{{
    "subnet": "192.0.2.0/24", "router": "192.0.2.1",
    "dynStart": "192.0.2.100", "dynEnd": "192.0.2.199", "leaseTime": 1200 {subnet_extra}
  }}]
}}"#
        )
    }

    /// The subnet object with one key's value replaced.
    fn subnet_with(key: &str, value: &str) -> String {
        let base = one_subnet("", "");
        let needle = format!("\"{key}\": ");
        let start = base.find(&needle).map(|i| i + needle.len());
        let Some(start) = start else {
            panic!("no key {key}")
        };
        let end = start + base[start..].find([',', ' ', '\n']).unwrap_or(0);
        format!("{}{value}{}", &base[..start], &base[end..])
    }

    const CLASSES: &str = r#""clientClasses": [
        { "name": "pxe", "match": "vendor-class starts-with \"PXEClient\"" },
        { "name": "phone", "match": "mac starts-with 02:aa" } ],"#;

    #[test]
    fn classes_pools_and_shared_networks() {
        let c = ok(&one_subnet(
            r#", "pools": [{ "start": "192.0.2.10", "end": "192.0.2.19", "classes": ["phone"] },
                          { "start": "192.0.2.20", "end": "192.0.2.29", "classes": ["pxe"] }],
                "exclude": [{ "start": "192.0.2.15", "end": "192.0.2.15" }],
                "pingCheck": true, "bootp": true, "sharedNetwork": "lab""#,
            CLASSES,
        ));
        assert_eq!(c.classes.len(), 2);
        let s = &c.subnets[0];
        assert!(s.ping_check && s.bootp);
        assert_eq!(s.shared_network.as_deref(), Some("lab"));
        assert_eq!(c.ping_timeout_ms, DEFAULT_PING_TIMEOUT_MS);
        let n = |d: u8| u32::from(Ipv4Addr::new(192, 0, 2, d));
        // Nobody's classes: the open pool only. A phone: its pool (cut by the exclusion) first.
        assert_eq!(s.ranges_for(0), Some(format!("{}-{}", n(100), n(199))));
        assert_eq!(
            s.ranges_for(0b10),
            Some(format!(
                "{}-{},{}-{},{}-{}",
                n(10),
                n(14),
                n(16),
                n(19),
                n(100),
                n(199)
            ))
        );
        assert!(s.admits(0));
        // No classes anywhere: nothing to compute.
        assert_eq!(ok(&one_subnet("", "")).subnets[0].ranges_for(0), None);
    }

    #[test]
    fn bad_classes_are_named() {
        fails_at(
            &one_subnet(
                "",
                r#""clientClasses": [{ "name": "x", "match": "vendor-class startswith \"a\"" }],"#,
            ),
            "clientClasses[0].match",
            "column 14",
        );
        fails_at(
            &one_subnet(
                "",
                r#""clientClasses": [{ "name": "x", "match": "mac exists" },
                                     { "name": "x", "match": "mac exists" }],"#,
            ),
            "clientClasses[1].name",
            "already",
        );
        fails_at(
            &one_subnet(
                r#", "pools": [{ "start": "192.0.2.10", "end": "192.0.2.19", "classes": ["voip"] }]"#,
                CLASSES,
            ),
            "subnets[0].pools[0].classes[0]",
            "no client class \"voip\"",
        );
        fails_at(
            &one_subnet(r#", "classes": []"#, CLASSES),
            "subnets[0].classes",
            "empty",
        );
        fails_at(
            &one_subnet("", r#""pingTimeoutMs": 5000,"#),
            "pingTimeoutMs",
            "500",
        );
        fails_at(
            &one_subnet(r#", "sharedNetwork": "two words""#, ""),
            "subnets[0].sharedNetwork",
            "whitespace",
        );
    }

    #[test]
    fn seed_sample_parses_with_defaults() {
        let c = ok(SEED_SAMPLE);
        assert_eq!(c.file, Path::new("test.json"));
        assert_eq!(c.hostname, "dhcphm.localhost.localdomain");
        assert_eq!(c.interface, "localhost");
        assert_eq!(c.port, 1067);
        assert_eq!(c.redis, "redis://127.0.0.1:6379");
        assert_eq!(c.server_id, None);
        assert_eq!(c.key_prefix, DEFAULT_KEY_PREFIX);
        assert_eq!(c.node_name, None);
        assert_eq!(c.offer_time, 30);
        assert_eq!(c.decline_probation, 86_400);
        assert!(c.authoritative);
        assert_eq!(c.http_listen, None);
        assert_eq!(c.sticky_time, 86_400);
        assert_eq!(c.subnets.len(), 2);
        let s = &c.subnets[0];
        assert_eq!(s.net.to_string(), "67.201.192.0/24");
        assert_eq!(s.router, Some(Ipv4Addr::new(67, 201, 192, 1)));
        assert_eq!(s.dyn_start, Ipv4Addr::new(67, 201, 192, 9));
        assert_eq!(s.dyn_end, Ipv4Addr::new(67, 201, 192, 250));
        assert_eq!(s.lease_time, 1200);
        assert_eq!((s.renewal_time, s.rebinding_time), (None, None));
        assert!(s.dns.is_empty() && s.domain_name.is_none() && s.reservations.is_empty());
        assert_eq!(c.subnets[1].net.to_string(), "140.160.138.0/24");
        assert_eq!(c.subnets[1].lease_time, 1600);
    }

    #[test]
    fn shipped_config_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/config.json");
        let c = check(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.file, path);
        assert!(!c.subnets.is_empty());
    }

    #[test]
    fn full_config_parses() {
        let c = ok(FULL);
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.port, 67);
        assert_eq!(c.redis, "redis-cluster://127.0.0.1:7000");
        assert_eq!(c.server_id, Some(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(c.key_prefix, "hive-test");
        assert_eq!(c.node_name.as_deref(), Some("node-a"));
        assert_eq!(c.node_name(), "node-a");
        assert_eq!(
            (c.offer_time, c.decline_probation, c.sticky_time),
            (15, 3600, 7200)
        );
        assert!(!c.authoritative);
        assert_eq!(c.http_listen, "127.0.0.1:9067".parse().ok());
        let s = &c.subnets[0];
        assert_eq!((s.renewal_time, s.rebinding_time), (Some(1000), Some(3000)));
        assert_eq!((s.renewal_time(), s.rebinding_time()), (1000, 3000));
        assert_eq!(
            s.dns,
            vec![
                Ipv4Addr::new(192, 0, 2, 53),
                Ipv4Addr::new(198, 51, 100, 53)
            ]
        );
        assert_eq!(s.domain_name.as_deref(), Some("example.test."));
        assert_eq!(
            s.reservations,
            vec![Reservation {
                key: ReservedFor::Mac([2, 0, 0, 0, 0, 1]),
                ip: Ipv4Addr::new(192, 0, 2, 10),
                hostname: Some("printer".to_owned()),
                options: OptionSet::default(),
                boot: Boot::default(),
            }]
        );
        // The top-level reservation lands in the subnet holding its address; '-' separators and
        // upper case are accepted.
        let second = &c.subnets[1];
        assert_eq!(second.reservations.len(), 1);
        assert_eq!(
            second.reservations[0].key,
            ReservedFor::Mac([2, 0, 0, 0, 0, 0xab])
        );
        assert_eq!(second.reservations[0].ip, Ipv4Addr::new(198, 51, 100, 15));
    }

    #[test]
    fn subnet_helpers() {
        let c = ok(FULL);
        let s = &c.subnets[0];
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.broadcast(), Ipv4Addr::new(192, 0, 2, 255));
        assert!(s.contains(Ipv4Addr::new(192, 0, 2, 0)));
        assert!(!s.contains(Ipv4Addr::new(192, 0, 3, 1)));
        assert!(s.in_pool(Ipv4Addr::new(192, 0, 2, 100)));
        assert!(s.in_pool(Ipv4Addr::new(192, 0, 2, 199)));
        assert!(!s.in_pool(Ipv4Addr::new(192, 0, 2, 200)));
        assert_eq!(s.pool_size(), 100);
        assert_eq!(s.tag(), "192.0.2.0/24");
        let mac = [2, 0, 0, 0, 0, 1];
        let other = [2, 0, 0, 0, 0, 2];
        let reserved = Ipv4Addr::new(192, 0, 2, 10);
        assert_eq!(s.reservation_for_mac(&mac).map(|r| r.ip), Some(reserved));
        assert!(s.reservation_for_mac(&other).is_none());
        assert!(s.reservation_for_mac(&[2, 0]).is_none());

        // Defaults: T1 = lease/2, T2 = lease*7/8.
        let d = &c.subnets[1];
        assert_eq!((d.renewal_time(), d.rebinding_time()), (300, 525));
        assert_eq!(d.mask(), Ipv4Addr::new(255, 255, 255, 128));
        assert_eq!(d.tag(), "198.51.100.0/25");

        assert_eq!(
            c.subnet_for(Ipv4Addr::new(198, 51, 100, 127))
                .map(Subnet::tag),
            Some("198.51.100.0/25".to_owned())
        );
        assert!(c.subnet_for(Ipv4Addr::new(198, 51, 100, 128)).is_none());
    }

    #[test]
    fn default_node_name_is_host_and_pid() {
        let name = ok(SEED_SAMPLE).node_name();
        assert!(
            name.ends_with(&format!("-{}", std::process::id())),
            "{name}"
        );
        assert!(
            name.len() > 2 && !name.contains(char::is_whitespace),
            "{name}"
        );
    }

    #[test]
    fn bad_ip() {
        fails_at(
            &subnet_with("dynStart", r#""192.0.2.300""#),
            "subnets[0].dynStart",
            "\"192.0.2.300\" is not an IPv4 address",
        );
        fails_at(
            &one_subnet(r#", "dns": ["192.0.2.53", "dns.example"]"#, ""),
            "subnets[0].dns[1]",
            "not an IPv4",
        );
    }

    #[test]
    fn bad_cidr() {
        fails_at(
            &subnet_with("subnet", r#""192.0.2.0/33""#),
            "subnets[0].subnet",
            "not an IPv4 network",
        );
        fails_at(
            &subnet_with("subnet", r#""192.0.2.0""#),
            "subnets[0].subnet",
            "not an IPv4 network",
        );
    }

    #[test]
    fn host_bits_set() {
        fails_at(
            &subnet_with("subnet", r#""192.0.2.5/24""#),
            "subnets[0].subnet",
            "192.0.2.5/24 has host bits set; did you mean 192.0.2.0/24?",
        );
    }

    #[test]
    fn prefix_length_out_of_range() {
        fails_at(
            &subnet_with("subnet", r#""192.0.2.0/31""#),
            "subnets[0].subnet",
            "/31",
        );
        fails_at(
            &subnet_with("subnet", r#""192.0.0.0/7""#),
            "subnets[0].subnet",
            "/7",
        );
    }

    #[test]
    fn dyn_start_after_dyn_end() {
        fails_at(
            &subnet_with("dynEnd", r#""192.0.2.50""#),
            "subnets[0].dynEnd",
            "before dynStart",
        );
    }

    #[test]
    fn dyn_end_outside_subnet() {
        fails_at(
            &subnet_with("dynEnd", r#""192.0.3.10""#),
            "subnets[0].dynEnd",
            "outside 192.0.2.0/24",
        );
    }

    #[test]
    fn dyn_start_is_network_address() {
        fails_at(
            &subnet_with("dynStart", r#""192.0.2.0""#),
            "subnets[0].dynStart",
            "network address",
        );
    }

    #[test]
    fn dyn_end_is_broadcast_address() {
        fails_at(
            &subnet_with("dynEnd", r#""192.0.2.255""#),
            "subnets[0].dynEnd",
            "broadcast address",
        );
    }

    #[test]
    fn router_outside_subnet() {
        fails_at(
            &subnet_with("router", r#""198.51.100.1""#),
            "subnets[0].router",
            "outside",
        );
    }

    #[test]
    fn router_inside_pool() {
        fails_at(
            &subnet_with("router", r#""192.0.2.150""#),
            "subnets[0].router",
            "pool",
        );
    }

    #[test]
    fn overlapping_subnets() {
        let json = r#"{"hostname": "h", "interface": "lo", "port": 1067, "subnets": [
          {"subnet": "10.0.0.0/16", "dynStart": "10.0.0.10", "dynEnd": "10.0.0.20",
           "leaseTime": 60},
          {"subnet": "192.0.2.0/24", "dynStart": "192.0.2.10", "dynEnd": "192.0.2.20",
           "leaseTime": 60},
          {"subnet": "10.0.5.0/24", "dynStart": "10.0.5.10", "dynEnd": "10.0.5.20",
           "leaseTime": 60}
        ]}"#;
        fails_at(
            json,
            "subnets[2].subnet",
            "overlaps subnets[0] (10.0.0.0/16)",
        );
    }

    #[test]
    fn reservation_outside_subnet() {
        let r = r#", "reservations": [{"mac": "02:00:00:00:00:01", "ip": "198.51.100.7"}]"#;
        fails_at(
            &one_subnet(r, ""),
            "subnets[0].reservations[0].ip",
            "outside",
        );
        let top = r#""reservations": [{"mac": "02:00:00:00:00:01", "ip": "198.51.100.7"}],"#;
        fails_at(
            &one_subnet("", top),
            "reservations[0].ip",
            "not inside any configured subnet",
        );
    }

    #[test]
    fn reservation_on_router_or_broadcast() {
        let on_router = r#", "reservations": [{"mac": "02:00:00:00:00:01", "ip": "192.0.2.1"}]"#;
        fails_at(
            &one_subnet(on_router, ""),
            "subnets[0].reservations[0].ip",
            "router",
        );
        let top = r#""reservations": [{"mac": "02:00:00:00:00:01", "ip": "192.0.2.255"}],"#;
        fails_at(&one_subnet("", top), "reservations[0].ip", "broadcast");
    }

    #[test]
    fn reservation_inside_or_outside_pool_is_fine() {
        let r = r#", "reservations": [
            {"mac": "02:00:00:00:00:01", "ip": "192.0.2.150"},
            {"mac": "02:00:00:00:00:02", "ip": "192.0.2.20", "hostname": "host-2"}]"#;
        assert_eq!(ok(&one_subnet(r, "")).subnets[0].reservations.len(), 2);
    }

    #[test]
    fn duplicate_reservation_mac() {
        // Across the subnet list and the top-level list, with different spelling.
        let inner = r#", "reservations": [{"mac": "02:00:00:00:00:01", "ip": "192.0.2.10"}]"#;
        let top = r#""reservations": [{"mac": "02-00-00-00-00-01", "ip": "192.0.2.11"}],"#;
        fails_at(
            &one_subnet(inner, top),
            "reservations[0].mac",
            "already reserved at subnets[0].reservations[0]",
        );
    }

    #[test]
    fn duplicate_reservation_ip() {
        let r = r#", "reservations": [
            {"mac": "02:00:00:00:00:01", "ip": "192.0.2.10"},
            {"mac": "02:00:00:00:00:02", "ip": "192.0.2.10"}]"#;
        fails_at(
            &one_subnet(r, ""),
            "subnets[0].reservations[1].ip",
            "already reserved",
        );
    }

    #[test]
    fn bad_mac() {
        for (mac, word) in [
            ("02:00:00:00:00", "not a MAC"),
            ("02:00:00:00:00:01:02", "not a MAC"),
            ("02:00:00-00:00:01", "not a MAC"),
            ("02:00:00:00:00:0g", "not a MAC"),
            ("2:0:0:0:0:1", "not a MAC"),
            ("00:00:00:00:00:00", "all-zero"),
            ("ff:ff:ff:ff:ff:ff", "broadcast"),
            ("01:00:5e:00:00:01", "multicast"),
        ] {
            let r = format!(r#", "reservations": [{{"mac": "{mac}", "ip": "192.0.2.10"}}]"#);
            fails_at(&one_subnet(&r, ""), "subnets[0].reservations[0].mac", word);
        }
    }

    #[test]
    fn boot_fields_at_every_level() {
        let c = ok(&one_subnet(
            r#", "nextServer": "192.0.2.7", "serverHostname": "tftp-b.example",
                "reservations": [{ "mac": "02:00:00:00:00:01", "ip": "192.0.2.10",
                                   "bootFileName": "host-1/pxelinux.0" }]"#,
            r#""nextServer": "192.0.2.6", "bootFileName": "pxelinux.0",
               "clientClasses": [{ "name": "efi", "match": "vendor-class exists",
                                   "bootFileName": "efi/shim.efi", "nextServer": "192.0.2.8" }],"#,
        ));
        let s = &c.subnets[0];
        // The subnet's own fields win; the global file name fills the one it leaves unset.
        assert_eq!(
            s.boot,
            Boot {
                next_server: Some(Ipv4Addr::new(192, 0, 2, 7)),
                server_hostname: Some("tftp-b.example".to_owned()),
                boot_file_name: Some("pxelinux.0".to_owned()),
            }
        );
        assert_eq!(
            c.classes[0].boot.boot_file_name.as_deref(),
            Some("efi/shim.efi")
        );
        assert_eq!(
            c.classes[0].boot.next_server,
            Some(Ipv4Addr::new(192, 0, 2, 8))
        );
        // A reservation keeps only its own: the rest falls through at reply time.
        assert_eq!(
            s.reservations[0].boot,
            Boot {
                boot_file_name: Some("host-1/pxelinux.0".to_owned()),
                ..Boot::default()
            }
        );
        // Absent everywhere: nothing set, replies keep the server identifier in siaddr.
        assert_eq!(ok(&one_subnet("", "")).subnets[0].boot, Boot::default());
        // The longest names that leave room for the NUL.
        let longest = one_subnet(
            &format!(
                r#", "serverHostname": "{}", "bootFileName": "{}""#,
                "s".repeat(63),
                "f".repeat(127)
            ),
            "",
        );
        let boot = &ok(&longest).subnets[0].boot;
        assert_eq!(boot.server_hostname.as_ref().map(String::len), Some(63));
        assert_eq!(boot.boot_file_name.as_ref().map(String::len), Some(127));
    }

    #[test]
    fn bad_boot_fields_are_named() {
        fails_at(
            &one_subnet("", r#""nextServer": "tftp.example","#),
            "nextServer",
            "\"tftp.example\" is not an IPv4 address",
        );
        fails_at(
            &one_subnet(r#", "nextServer": "255.255.255.255""#, ""),
            "subnets[0].nextServer",
            "broadcast",
        );
        fails_at(
            &one_subnet(r#", "nextServer": "0.0.0.0""#, ""),
            "subnets[0].nextServer",
            "unspecified",
        );
        fails_at(
            &one_subnet(&format!(r#", "bootFileName": "{}""#, "f".repeat(128)), ""),
            "subnets[0].bootFileName",
            "is 128 bytes long; at most 127 fit the header's 128-byte `file` field",
        );
        fails_at(
            &one_subnet("", &format!(r#""serverHostname": "{}","#, "s".repeat(64))),
            "serverHostname",
            "at most 63 fit the header's 64-byte `sname` field",
        );
        fails_at(
            &one_subnet("", r#""bootFileName": "","#),
            "bootFileName",
            "must not be empty",
        );
        fails_at(
            &one_subnet(
                "",
                r#""clientClasses": [{ "name": "pxe", "match": "vendor-class exists",
                                       "bootFileName": "a\u0000b" }],"#,
            ),
            "clientClasses[0].bootFileName",
            "control character",
        );
        fails_at(
            &one_subnet(
                r#", "reservations": [{ "mac": "02:00:00:00:00:01", "ip": "192.0.2.10",
                                        "serverHostname": "tab\there" }]"#,
                "",
            ),
            "subnets[0].reservations[0].serverHostname",
            "control character",
        );
        fails_at(
            &one_subnet(
                "",
                r#""reservations": [{ "mac": "02:00:00:00:00:01", "ip": "192.0.2.10",
                                      "nextServer": "224.0.0.1" }],"#,
            ),
            "reservations[0].nextServer",
            "multicast",
        );
        // The whole line, as `check-config` and start-up print it.
        let line = parse(&one_subnet(r#", "nextServer": "192.0.2""#, ""))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            line.as_deref(),
            Some("test.json: subnets[0].nextServer: \"192.0.2\" is not an IPv4 address")
        );
    }

    /// Options 80 and 118 are signals of the exchange, which the server sends itself (as it
    /// does 52): refused at every level, by code or by name, naming file, field and problem.
    #[test]
    fn rapid_commit_and_subnet_selection_cannot_be_configured() {
        fails_at(
            &one_subnet(
                r#", "options": [{ "code": 80, "type": "hex", "value": "" }]"#,
                "",
            ),
            "subnets[0].options[0].code",
            "option 80 is set by the server (sent in the ACK to a DISCOVER that asks for it",
        );
        fails_at(
            &one_subnet(
                "",
                r#""options": [{ "name": "subnet-selection", "value": "192.0.2.0" }],"#,
            ),
            "options[0].name",
            "option 118 is set by the server (echoed to the client that sent it)",
        );
        fails_at(
            &one_subnet(
                "",
                r#""clientClasses": [{ "name": "c", "match": "vendor-class exists",
                    "options": [{ "code": 118, "type": "ip", "value": "192.0.2.0" }] }],"#,
            ),
            "clientClasses[0].options[0].code",
            "option 118 is set by the server",
        );
        fails_at(
            &one_subnet(
                r#", "reservations": [{ "mac": "02:00:00:00:00:01", "ip": "192.0.2.10",
                    "options": [{ "name": "rapid-commit", "value": "" }] }]"#,
                "",
            ),
            "subnets[0].reservations[0].options[0].name",
            "option 80 is set by the server",
        );
        // The whole line, as `check-config` and start-up print it.
        let line = parse(&one_subnet(
            r#", "options": [{ "code": 118, "type": "hex", "value": "c0000200" }]"#,
            "",
        ))
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            line.as_deref(),
            Some(
                "test.json: subnets[0].options[0].code: option 118 is set by the server \
                 (echoed to the client that sent it)"
            )
        );
    }

    #[test]
    fn bad_reservation_hostname() {
        let r = r#", "reservations": [
            {"mac": "02:00:00:00:00:01", "ip": "192.0.2.10", "hostname": "bob's laptop"}]"#;
        fails_at(
            &one_subnet(r, ""),
            "subnets[0].reservations[0].hostname",
            "DNS name",
        );
    }

    #[test]
    fn lease_time_zero() {
        fails_at(
            &subnet_with("leaseTime", "0"),
            "subnets[0].leaseTime",
            "greater than 0",
        );
        fails_at(
            &subnet_with("leaseTime", "-5"),
            "subnets[0].leaseTime",
            "greater than 0",
        );
        fails_at(
            &subnet_with("leaseTime", "4294967296"),
            "subnets[0].leaseTime",
            "too large",
        );
    }

    /// `minLeaseTime` and `maxLeaseTime` bound a lease time a client asks for; both default to
    /// `leaseTime`, so that asking changes nothing.
    #[test]
    fn lease_time_bounds() {
        let plain = ok(&one_subnet("", ""));
        let s = &plain.subnets[0];
        assert_eq!((s.min_lease_time, s.max_lease_time), (1200, 1200));
        assert_eq!(s.granted_lease(Some(60)), 1200);
        assert_eq!(s.granted_lease(None), 1200);

        let bounded = ok(&one_subnet(
            r#", "minLeaseTime": 300, "maxLeaseTime": 7200, "renewalTime": 400"#,
            "",
        ));
        let s = &bounded.subnets[0];
        assert_eq!(s.granted_lease(None), 1200);
        assert_eq!(s.granted_lease(Some(600)), 600);
        assert_eq!(s.granted_lease(Some(10)), 300);
        assert_eq!(s.granted_lease(Some(u32::MAX)), 7200);
        // T1 and T2 keep their share of the lease: 400/1200 and 7/8 (1050/1200).
        assert_eq!(s.timers_for(1200), (400, 1050));
        assert_eq!(s.timers_for(600), (200, 525));
        assert_eq!(s.timers_for(7200), (2400, 6300));

        fails_at(
            &one_subnet(r#", "minLeaseTime": 1300"#, ""),
            "subnets[0].minLeaseTime",
            "at most leaseTime (1200)",
        );
        fails_at(
            &one_subnet(r#", "maxLeaseTime": 600"#, ""),
            "subnets[0].maxLeaseTime",
            "at least leaseTime (1200)",
        );
        fails_at(
            &one_subnet(r#", "minLeaseTime": 0"#, ""),
            "subnets[0].minLeaseTime",
            "greater than 0",
        );
    }

    #[test]
    fn offer_time_zero() {
        fails_at(
            &one_subnet("", r#""offerTime": 0,"#),
            "offerTime",
            "greater than 0",
        );
        fails_at(
            &one_subnet("", r#""declineProbation": 0,"#),
            "declineProbation",
            "greater than 0",
        );
        fails_at(
            &one_subnet("", r#""stickyTime": 0,"#),
            "stickyTime",
            "greater than 0",
        );
    }

    #[test]
    fn rebinding_not_after_renewal() {
        let t = r#", "renewalTime": 600, "rebindingTime": 600"#;
        fails_at(
            &one_subnet(t, ""),
            "subnets[0].rebindingTime",
            "greater than the renewal time T1 (600)",
        );
        // Only T2 set, below the default T1 (lease/2 = 600).
        fails_at(
            &one_subnet(r#", "rebindingTime": 500"#, ""),
            "subnets[0].rebindingTime",
            "T1 (600)",
        );
        // Only T1 set, at or above the default T2 (lease*7/8 = 1050).
        fails_at(
            &one_subnet(r#", "renewalTime": 1100"#, ""),
            "subnets[0].renewalTime",
            "T2 (1050",
        );
    }

    #[test]
    fn timers_must_be_below_lease() {
        fails_at(
            &one_subnet(r#", "renewalTime": 1200"#, ""),
            "subnets[0].renewalTime",
            "less than leaseTime",
        );
        fails_at(
            &one_subnet(r#", "rebindingTime": 1300"#, ""),
            "subnets[0].rebindingTime",
            "less than leaseTime",
        );
        fails_at(
            &one_subnet(r#", "renewalTime": 0"#, ""),
            "subnets[0].renewalTime",
            "greater than 0",
        );
    }

    #[test]
    fn dns_list_rules() {
        let many = (1..=17)
            .map(|i| format!("\"192.0.2.{i}\""))
            .collect::<Vec<_>>()
            .join(",");
        fails_at(
            &one_subnet(&format!(r#", "dns": [{many}]"#), ""),
            "subnets[0].dns",
            "at most 16",
        );
        fails_at(
            &one_subnet(r#", "dns": ["0.0.0.0"]"#, ""),
            "subnets[0].dns[0]",
            "unspecified",
        );
    }

    #[test]
    fn bad_domain_name() {
        for name in ["", ".", "a..b", "-a.test", "a_b.test", &"a".repeat(64)] {
            let d = format!(r#", "domainName": "{name}""#);
            fails_at(
                &one_subnet(&d, ""),
                "subnets[0].domainName",
                "not a DNS name",
            );
        }
        assert!(
            ok(&one_subnet(r#", "domainName": "corp.example""#, "")).subnets[0]
                .domain_name
                .is_some()
        );
    }

    #[test]
    fn port_out_of_range() {
        let seed_port = |p: &str| SEED_SAMPLE.replace("1067", p);
        fails_at(&seed_port("0"), "port", "1 to 65534");
        fails_at(&seed_port("65535"), "port", "client port");
        fails_at(&seed_port("70000"), "port", "not a usable port");
    }

    #[test]
    fn bad_redis_url_scheme() {
        fails_at(
            &one_subnet("", r#""redis": "http://127.0.0.1:6379","#),
            "redis",
            "redis://",
        );
        fails_at(
            &one_subnet("", r#""redis": "redis://","#),
            "redis",
            "no host",
        );
        for good in [
            "redis://127.0.0.1:6379/0",
            "rediss://127.0.0.1",
            "redis-cluster://127.0.0.1:7000",
        ] {
            assert_eq!(
                ok(&one_subnet("", &format!(r#""redis": "{good}","#))).redis,
                good
            );
        }
    }

    #[test]
    fn bad_key_prefix() {
        fails_at(
            &one_subnet("", r#""keyPrefix": "hive{a}","#),
            "keyPrefix",
            "hash tags",
        );
        fails_at(&one_subnet("", r#""keyPrefix": "","#), "keyPrefix", "empty");
        fails_at(
            &one_subnet("", r#""keyPrefix": "a b","#),
            "keyPrefix",
            "whitespace",
        );
    }

    #[test]
    fn bad_names() {
        fails_at(
            &one_subnet("", r#""nodeName": "node a","#),
            "nodeName",
            "whitespace",
        );
        fails_at(
            &SEED_SAMPLE.replace("\"localhost\"", "\"\""),
            "interface",
            "empty",
        );
        fails_at(
            &SEED_SAMPLE.replace("dhcphm.localhost.localdomain", ""),
            "hostname",
            "empty",
        );
    }

    #[test]
    fn bad_server_id() {
        fails_at(
            &one_subnet("", r#""serverId": "255.255.255.255","#),
            "serverId",
            "broadcast",
        );
        fails_at(
            &one_subnet("", r#""serverId": "224.0.0.1","#),
            "serverId",
            "multicast",
        );
        fails_at(
            &one_subnet("", r#""serverId": "192.0.2.150","#),
            "serverId",
            "pool",
        );
        fails_at(
            &one_subnet("", r#""serverId": "192.0.2.0","#),
            "serverId",
            "network",
        );
        assert!(
            ok(&one_subnet("", r#""serverId": "192.0.2.1","#))
                .server_id
                .is_some()
        );
    }

    #[test]
    fn bad_http_listen() {
        fails_at(
            &one_subnet("", r#""httpListen": "127.0.0.1","#),
            "httpListen",
            "address and port",
        );
    }

    #[test]
    fn zero_subnets() {
        fails_at(
            r#"{"hostname": "h", "interface": "lo", "port": 1067, "subnets": []}"#,
            "subnets",
            "at least one",
        );
    }

    #[test]
    fn unknown_top_level_key() {
        fails_at(
            &one_subnet("", r#""hostName": "x","#),
            "hostName",
            "unknown key; expected one of `hostname`",
        );
    }

    #[test]
    fn unknown_subnet_key() {
        let json = one_subnet(r#", "leasetime": 60"#, "");
        fails_at(
            &json,
            "subnets[0].leasetime",
            "unknown key; expected one of",
        );
        fails_at(
            &one_subnet(r#", "lease time": 60"#, ""),
            r#"subnets[0]["lease time"]"#,
            "unknown key",
        );
        let r =
            r#", "reservations": [{"mac": "02:00:00:00:00:01", "ip": "192.0.2.10", "name": "x"}]"#;
        fails_at(
            &one_subnet(r, ""),
            "subnets[0].reservations[0].name",
            "unknown key",
        );
    }

    #[test]
    fn missing_keys() {
        let json = one_subnet("", "").replace(r#""dynEnd": "192.0.2.199","#, "");
        fails_at(&json, "subnets[0]", "missing key `dynEnd`");
        fails_at(
            r#"{"hostname": "h", "interface": "lo", "subnets": []}"#,
            "(top level)",
            "missing key `port`",
        );
    }

    #[test]
    fn wrong_types() {
        fails_at(
            &subnet_with("leaseTime", r#""abc""#),
            "subnets[0].leaseTime",
            "expected a whole number, found string \"abc\"",
        );
        fails_at(
            &subnet_with("leaseTime", "1.5"),
            "subnets[0].leaseTime",
            "whole number",
        );
        fails_at(
            &one_subnet("", r#""authoritative": "yes","#),
            "authoritative",
            "boolean",
        );
        fails_at(
            &one_subnet(r#", "dns": "192.0.2.53""#, ""),
            "subnets[0].dns",
            "expected a list",
        );
        fails_at("[]", "(top level)", "expected an object, found a list");
        // A struct written positionally is refused, not bound by position.
        let positional = r#"{"hostname": "h", "interface": "lo", "port": 1067,
            "subnets": [["192.0.2.0/24", null, "192.0.2.10", "192.0.2.20", 60]]}"#;
        fails_at(positional, "subnets[0]", "expected an object");
    }

    #[test]
    fn duplicate_key() {
        fails_at(
            &SEED_SAMPLE.replace("\"port\": 1067,", "\"port\": 1067, \"port\": 67,"),
            "port",
            "more than once",
        );
    }

    #[test]
    fn json_syntax_error_has_line_and_column() {
        let json = "{\n  \"hostname\": \"h\",\n  \"port\": 1067,,\n}";
        match parse(json) {
            Err(ConfigError::Syntax {
                line,
                column,
                message,
                ..
            }) => {
                assert_eq!((line, column), (3, 16), "{message}");
                assert!(!message.contains("at line"), "{message}");
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
        assert!(matches!(
            parse(""),
            Err(ConfigError::Syntax { line: 1, .. })
        ));
        let trailing = format!("{SEED_SAMPLE} {{}}");
        assert!(
            matches!(parse(&trailing),
                Err(ConfigError::Syntax { ref message, .. }) if message.contains("trailing")),
            "{:?}",
            parse(&trailing)
        );
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn apply_env_overrides() {
        let mut c = ok(SEED_SAMPLE);
        c.apply_env(env(&[
            ("HIVE_REDIS_URL", "redis://127.0.0.1:7777"),
            ("HIVE_NODE_NAME", "node-7"),
            ("HIVE_SERVER_ID", "127.0.0.5"),
            ("HIVE_HTTP_LISTEN", "127.0.0.1:9100"),
            ("HIVE_INTERFACE", "lo"),
            ("HIVE_PORT", "2067"),
            ("HIVE_KEY_PREFIX", "other"),
            ("HIVE_UNRELATED", "ignored"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.redis, "redis://127.0.0.1:7777");
        assert_eq!(c.node_name(), "node-7");
        assert_eq!(c.server_id, Some(Ipv4Addr::new(127, 0, 0, 5)));
        assert_eq!(c.http_listen, "127.0.0.1:9100".parse().ok());
        assert_eq!(c.interface, "lo");
        assert_eq!(c.port, 2067);
        assert_eq!(c.key_prefix, "other");

        // Nothing set, or set empty: nothing changes.
        let before = c.clone();
        c.apply_env(env(&[("HIVE_PORT", ""), ("HIVE_REDIS_URL", "")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c, before);
    }

    /// `redis.tlsCaFile` goes with a rediss:// URL, whether the file or HIVE_REDIS_URL (as the
    /// Helm chart and compose give it) names it; the pair is checked once both are known.
    #[test]
    fn a_redis_ca_file_goes_with_a_tls_url_from_the_file_or_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .expect("write ca");
        let with = |redis: &str| {
            one_subnet(
                "",
                &format!(r#""redis": {{ {redis} "tlsCaFile": "{}" }},"#, ca.display()),
            )
        };
        let field_of = |r: Result<(), ConfigError>| match r {
            Err(ConfigError::Field { field, .. }) => field,
            other => panic!("expected a Field error, got {other:?}"),
        };
        // In the file: checked at once.
        fails_at(
            &with(r#""url": "redis://127.0.0.1:6379","#),
            "redis.tlsCaFile",
            "rediss://",
        );
        let mut tls = ok(&with(r#""url": "rediss://127.0.0.1:6379","#));
        tls.apply_env(env(&[])).expect("no override");
        // No URL in the file: the environment's, which must be TLS.
        let mut from_env = ok(&with(""));
        let mut plain = from_env.clone();
        from_env
            .apply_env(env(&[("HIVE_REDIS_URL", "rediss://redis.example:6380")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_env.redis, "rediss://redis.example:6380");
        assert_eq!(from_env.redis_tls_ca.as_deref(), Some(ca.as_path()));
        assert_eq!(
            field_of(plain.apply_env(env(&[("HIVE_REDIS_URL", "redis://redis.example")]))),
            "HIVE_REDIS_URL"
        );
        // Neither: the default URL is no TLS one.
        assert_eq!(field_of(plain.apply_env(env(&[]))), "redis.tlsCaFile");
        // A TLS URL in the file, a plain one from the environment: refused.
        assert_eq!(
            field_of(tls.apply_env(env(&[("HIVE_REDIS_URL", "redis://redis.example")]))),
            "HIVE_REDIS_URL"
        );
    }

    #[test]
    fn apply_env_rejects_bad_values_naming_the_variable() {
        let mut c = ok(SEED_SAMPLE);
        let before = c.clone();
        let err = c.apply_env(env(&[
            ("HIVE_REDIS_URL", "redis://127.0.0.1:7777"),
            ("HIVE_SERVER_ID", "0.0.0.0"),
        ]));
        match err {
            Err(ConfigError::Field { field, problem, .. }) => {
                assert_eq!(field, "HIVE_SERVER_ID");
                assert!(problem.contains("unspecified"), "{problem}");
            }
            other => panic!("expected a Field error, got {other:?}"),
        }
        // All or nothing: the valid HIVE_REDIS_URL was not applied either.
        assert_eq!(c, before);

        for (var, value, word) in [
            ("HIVE_SERVER_ID", "67.201.192.20", "pool"),
            ("HIVE_PORT", "abc", "not a port number"),
            ("HIVE_PORT", "0", "1 to 65534"),
            ("HIVE_KEY_PREFIX", "a}", "hash tags"),
            ("HIVE_REDIS_URL", "127.0.0.1:6379", "redis://"),
            ("HIVE_HTTP_LISTEN", "nowhere", "address and port"),
            ("HIVE_NODE_NAME", "a b", "whitespace"),
            ("HIVE_INTERFACE", "eth 0", "whitespace"),
        ] {
            match c.apply_env(env(&[(var, value)])) {
                Err(ConfigError::Field { field, problem, .. }) => {
                    assert_eq!(field, var);
                    assert!(problem.contains(word), "{var}: {problem}");
                }
                other => panic!("{var}={value}: expected a Field error, got {other:?}"),
            }
        }
    }

    #[test]
    fn display_starts_with_the_file() {
        let missing = Path::new("/nonexistent/dhcp-hive-mind.json");
        let io = Config::load(missing).err().map(|e| e.to_string());
        assert!(
            io.as_deref()
                .is_some_and(|m| m.starts_with("/nonexistent/dhcp-hive-mind.json: cannot read: ")),
            "{io:?}"
        );
        let syntax = parse("{").err().map(|e| e.to_string());
        assert!(
            syntax
                .as_deref()
                .is_some_and(|m| m.starts_with("test.json: line 1 column 1: ")),
            "{syntax:?}"
        );
        let field = parse(&subnet_with("dynEnd", r#""192.0.3.10""#))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            field.as_deref(),
            Some("test.json: subnets[0].dynEnd: 192.0.3.10 is outside 192.0.2.0/24")
        );
    }

    /// Every fixture in tests/configs fails exactly as its row in tests/configs/README.md says.
    #[test]
    fn fixtures_match_readme() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs");
        let readme =
            std::fs::read_to_string(dir.join("README.md")).unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<[String; 3]> = readme
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<String> = l
                    .split('|')
                    .map(|c| c.trim().trim_matches('`').to_owned())
                    .collect();
                [cells[1].clone(), cells[2].clone(), cells[3].clone()]
            })
            .collect();
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json"))
            .collect();
        files.sort();
        let mut listed: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
        listed.sort();
        assert_eq!(files, listed, "every fixture needs exactly one README row");

        for [name, field, word] in rows {
            let (got_field, problem) = match check(&dir.join(&name)) {
                Err(ConfigError::Field { field, problem, .. }) => (field, problem),
                Err(ConfigError::Syntax {
                    line,
                    column,
                    message,
                    ..
                }) => (format!("line {line} column {column}"), message),
                other => panic!("{name}: expected rejection, got {other:?}"),
            };
            assert_eq!(got_field, field, "{name}: {problem}");
            assert!(
                problem.contains(&word),
                "{name}: {problem:?} lacks {word:?}"
            );
        }
    }

    #[test]
    fn reservations_by_client_id_circuit_id_and_remote_id() {
        let json = SEED_SAMPLE.replace(
            r#""subnets": ["#,
            r#""reservations": [
                { "clientId": "01:02:00:00:00:00:99", "ip": "67.201.192.5" },
                { "circuitId": "eth0/1", "ip": "67.201.192.6" },
                { "remoteId": "ab:cd", "ip": "67.201.192.7" }
            ],
            "subnets": ["#,
        );
        let c = Config::from_json(Path::new("c.json"), &json).expect("valid");
        let s = &c.subnets[0];
        let mac = [2, 0, 0, 0, 0, 1];
        let id = [1, 2, 0, 0, 0, 0, 0x99];
        assert_eq!(
            s.reservation_for(&mac, Some(&id), None, None).map(|r| r.ip),
            Some(Ipv4Addr::new(67, 201, 192, 5))
        );
        assert_eq!(
            s.reservation_for(&mac, None, Some(b"eth0/1"), None)
                .map(|r| r.ip),
            Some(Ipv4Addr::new(67, 201, 192, 6))
        );
        assert_eq!(
            s.reservation_for(&mac, None, None, Some(&[0xab, 0xcd]))
                .map(|r| r.ip),
            Some(Ipv4Addr::new(67, 201, 192, 7))
        );
        assert!(
            s.reservation_for(&mac, None, Some(b"eth0/2"), None)
                .is_none()
        );
        let two = SEED_SAMPLE.replace(r#""subnets": ["#, r#""reservations": [{ "mac": "02:00:00:00:00:01", "remoteId": "x", "ip": "67.201.192.5" }], "subnets": ["#);
        let err = Config::from_json(Path::new("c.json"), &two).expect_err("two identities");
        assert!(
            err.to_string()
                .contains("reservations[0]: needs exactly one"),
            "{err}"
        );
    }

    #[test]
    fn pools_and_exclusions_make_the_ranges() {
        let json = SEED_SAMPLE.replace(
            r#""dynEnd": "67.201.192.250","#,
            r#""dynEnd": "67.201.192.250",
            "pools": [{ "start": "67.201.192.2", "end": "67.201.192.5" }],
            "exclude": [{ "start": "67.201.192.100", "end": "67.201.192.109" }, { "start": "67.201.192.3", "end": "67.201.192.3" }],"#,
        );
        let c = Config::from_json(Path::new("c.json"), &json).expect("valid");
        let s = &c.subnets[0];
        let n = |d: u8| u32::from(Ipv4Addr::new(67, 201, 192, d));
        assert_eq!(
            s.ranges(),
            &[(n(2), n(2)), (n(4), n(5)), (n(9), n(99)), (n(110), n(250))]
        );
        assert_eq!(s.pool_size(), 1 + 2 + 91 + 141);
        assert!(!s.in_pool(Ipv4Addr::new(67, 201, 192, 105)));
        assert!(s.in_pool(Ipv4Addr::new(67, 201, 192, 4)));
        let overlap = SEED_SAMPLE.replace(r#""dynEnd": "67.201.192.250","#, r#""dynEnd": "67.201.192.250", "pools": [{ "start": "67.201.192.200", "end": "67.201.192.251" }],"#);
        let err = Config::from_json(Path::new("c.json"), &overlap).expect_err("overlap");
        assert!(
            err.to_string().contains("subnets[0].pools[0]: overlaps"),
            "{err}"
        );
        let all = SEED_SAMPLE.replace(r#""dynEnd": "67.201.192.250","#, r#""dynEnd": "67.201.192.250", "exclude": [{ "start": "67.201.192.2", "end": "67.201.192.254" }],"#);
        let err = Config::from_json(Path::new("c.json"), &all).expect_err("empty");
        assert!(
            err.to_string()
                .contains("subnets[0].exclude: leaves no address"),
            "{err}"
        );
    }
}
