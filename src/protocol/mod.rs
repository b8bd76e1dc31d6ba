//! DHCP decisions: classify a client message, ask the lease store, build the answer and pick
//! where it goes (RFC 2131). No sockets and no Redis here: the store is the [`Store`] seam.

mod packet;

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{Flags, Message, MessageType, Opcode};

use crate::classify::{ClassSet, Facts};
use crate::config::{Boot, Config, Reservation, Subnet};
use crate::icmp::Pinger;
use crate::lease::{Exchange, Hold, LeaseError, Pool, Refusal, Store};
use crate::metrics;
use crate::options::{OptionData, OptionSet};

pub(crate) use self::packet::HEX_DIGITS;
pub use self::packet::{
    MIN_MAX_SIZE, Request, client_name, encode, mac_text, parse, peek_type, relay_info_len,
    relay_sub_option,
};

/// Why a datagram got no answer. Each is counted under its label; none is an error of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Shorter than a BOOTP header plus cookie.
    Truncated,
    /// No DHCP magic cookie, and too short for a BOOTP message (300 bytes).
    NoMagic,
    /// An option runs past the datagram, or one the answer depends on (52, 53, 50, 54, 61,
    /// 118) has a wrong length. Other options with a wrong length are left out instead.
    BadOption,
    /// The frame did not decode.
    Malformed,
    /// A BOOTREPLY: servers take only requests.
    BootReply,
    /// Zero, oversized or group hardware address.
    BadHardware,
    /// A BOOTP request (no option 53) for a subnet without `bootp`.
    BootpDisabled,
    /// No pool of the subnet (or its shared network) is open to the client's classes.
    NoClassPool,
    /// Every address tried answered the ICMP check: in use by a host the hive does not know.
    PingConflict,
    /// A message type a server does not take (OFFER, ACK, ...).
    UnexpectedType,
    /// A message missing a field its type requires (e.g. REQUEST without an address).
    MissingField,
    /// No configured subnet for the link or relay.
    NoSubnet,
    /// The message names another server, or is for an address we do not serve.
    NotForUs,
    /// The client chose another server (our offer, if any, was withdrawn), or renews with one.
    OtherServer,
    /// Another node answers this exchange.
    Duplicate,
    /// No free address.
    Exhausted,
    /// The per-subnet cap on new allocations per second bit.
    SubnetRate,
    /// The per-relay cap on new allocations per second bit.
    RelayRate,
    /// The per-client cap on messages per second bit.
    ClientRate,
    /// RELEASE or DECLINE from a client that does not hold the address.
    NotHolder,
    /// Refused, and RFC 2131 wants silence rather than a NAK.
    Silent,
    /// Redis failed or is unreachable: fail closed.
    Backend,
    /// The ACK's lease did not reach `redis.waitReplicas` replicas in time.
    NotReplicated,
    /// The node is not ready (Redis down, or not yet prepared): fail closed.
    NotReady,
    /// The handler ran out of time.
    Timeout,
    /// The reply could not be encoded.
    Encode,
    /// The datagram was larger than any DHCP message.
    TooLarge,
    /// The datagram waited too long in the node (overload, or the process was stopped).
    TooOld,
    /// The node's backlog was full: the oldest waiting datagram of its class made room for a
    /// newer one (see `backlog`).
    Shed,
}

impl Drop {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::NoMagic => "no_magic_cookie",
            Self::BadOption => "bad_option",
            Self::Malformed => "malformed",
            Self::BootReply => "bootreply",
            Self::BadHardware => "bad_hardware_address",
            Self::BootpDisabled => "bootp_not_enabled",
            Self::NoClassPool => "no_pool_for_class",
            Self::PingConflict => "ping_conflict",
            Self::UnexpectedType => "unexpected_message_type",
            Self::MissingField => "missing_field",
            Self::NoSubnet => "no_subnet",
            Self::NotForUs => "not_for_us",
            Self::OtherServer => "other_server",
            Self::Duplicate => "duplicate",
            Self::Exhausted => "pool_exhausted",
            Self::NotHolder => "not_holder",
            Self::SubnetRate => "rate_limited_subnet",
            Self::RelayRate => "rate_limited_relay",
            Self::ClientRate => "rate_limited_client",
            Self::Silent => "silent",
            Self::Backend => "redis_unavailable",
            Self::NotReady => "not_ready",
            Self::NotReplicated => "not_replicated",
            Self::Timeout => "timeout",
            Self::Encode => "encode",
            Self::TooLarge => "too_large",
            Self::TooOld => "too_old",
            Self::Shed => "shed",
        }
    }
}

/// Everything the handler needs to know about where a message arrived and whom it speaks for.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub config: &'a Config,
    pub subnet: &'a Subnet,
    pub pool: &'a Pool,
    /// The hive's server identifier (option 54), shared by all nodes.
    pub server_id: Ipv4Addr,
    /// Every subnet's pool, indexed like `config.subnets` (a shared network's other subnets
    /// are served from here). May be empty where no shared network is configured.
    pub pools: &'a [Pool],
    /// The ICMP check, when a subnet asks for it (`pingCheck`).
    pub pinger: Option<&'a Pinger>,
    /// The client's classes; [`handle`] computes them.
    pub classes: ClassSet,
}

impl<'a> Context<'a> {
    /// The same exchange in `subnets[index]` (a subnet of the same shared network).
    fn at(&self, index: usize) -> Option<Self> {
        Some(Self {
            subnet: self.config.subnets.get(index)?,
            pool: self.pools.get(index)?,
            ..*self
        })
    }

    /// This subnet and then the others of its shared network, in config order.
    fn network(&self) -> impl Iterator<Item = Self> + '_ {
        std::iter::once(*self).chain(self.subnet.siblings.iter().filter_map(|i| self.at(*i)))
    }

    /// The subnet of the shared network that holds `ip` (this one when none does).
    fn holding(&self, ip: Ipv4Addr) -> Self {
        self.network()
            .find(|c| c.subnet.contains(ip))
            .unwrap_or(*self)
    }
}

/// The classes of a client, in config order (see [`crate::classify`]).
pub fn classes_of(config: &Config, req: &Request, subnet: &Subnet) -> ClassSet {
    if config.classes.is_empty() {
        return 0;
    }
    let facts = Facts {
        vendor_class: req.vendor_class.as_deref(),
        user_class: req.user_class.as_deref(),
        mac: &req.hwaddr,
        client_id: req.client_identifier.as_deref(),
        hostname: req.hostname.as_bytes(),
        relay: req.relay_info.as_deref(),
        subnet: Some(subnet.net),
    };
    crate::classify::classify(config.classes.iter().map(|c| &c.expr), &facts)
}

/// Offers made per DISCOVER when the ICMP check finds addresses in use; then the client's
/// retransmission tries again.
const PING_ATTEMPTS: usize = 3;

/// A reply ready to encode and send.
#[derive(Debug, Clone)]
pub struct Reply {
    pub msg_type: MessageType,
    pub header: Message,
    pub options: Vec<OptionData>,
    pub relay_info: Option<Vec<u8>>,
    pub max_len: usize,
    pub to: SocketAddrV4,
    /// The client's Ethernet address when `to` is the address it is being given and it has
    /// none yet (RFC 2131 section 4.1: no giaddr, no ciaddr, broadcast bit clear). The sender
    /// must first tell the kernel that address's link-layer address (the client cannot answer
    /// ARP for it yet), or broadcast instead ([`Reply::broadcast_to`]).
    pub link: Option<[u8; 6]>,
    /// Allocation or NAK detail for the one log line and metric label.
    pub detail: &'static str,
    /// A BOOTREPLY to a BOOTP client (no option 53).
    pub bootp: bool,
}

impl Reply {
    /// Where the reply goes when the node cannot reach the client at `to` (see [`Reply::link`]):
    /// a broadcast, which every client takes whatever its broadcast bit says.
    pub fn broadcast_to(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, self.to.port())
    }
}

/// What became of a message that was handled without fault.
#[derive(Debug, Clone)]
pub enum Answer {
    Reply(Box<Reply>),
    /// Handled, and the RFC wants no reply (RELEASE, DECLINE).
    Done(&'static str),
}

/// Picks the subnet a message belongs to (RFC 2131 section 4.3.1 and DESIGN.md):
/// the relay's giaddr when relayed; ciaddr for a renewal unicast straight to the hive (it may
/// have crossed a router without a relay); else the subnet of the interface it arrived on.
/// Returns the subnet's index in `config.subnets`.
pub fn select_subnet(config: &Config, req: &Request, local: Option<usize>) -> Option<usize> {
    let find = |ip: Ipv4Addr| config.subnets.iter().position(|s| s.contains(ip));
    // RFC 3527 / RFC 3011: the relay (or client) names the link; that wins over giaddr, which
    // may be an address the relay uses to reach us rather than one on the client's link.
    if let Some(link) = req.link_selection {
        return find(link);
    }
    let giaddr = req.msg.giaddr();
    if !giaddr.is_unspecified() {
        return find(giaddr);
    }
    let ciaddr = req.msg.ciaddr();
    if !ciaddr.is_unspecified()
        && let Some(i) = find(ciaddr)
    {
        return Some(i);
    }
    local.filter(|i| *i < config.subnets.len())
}

/// Where a reply goes, RFC 2131 section 4.1, and the client's Ethernet address when the node
/// must make a neighbour entry to get it there ([`Reply::link`]):
/// - relayed: the relay at the server port; a relay that announced RFC 8357's source port
///   sub-option gets it on the port it sent from (`relay_port`);
/// - a NAK: broadcast (the client may have no usable address);
/// - ciaddr set: unicast to it at the client port;
/// - an OFFER or ACK giving `yiaddr` to a client on Ethernet with the broadcast bit clear:
///   unicast to `yiaddr` at the client port, by its hardware address;
/// - else broadcast to the client port (the broadcast bit set, or no Ethernet address).
pub fn reply_address(
    msg: &Message,
    msg_type: MessageType,
    yiaddr: Ipv4Addr,
    server_port: u16,
    relay_port: Option<u16>,
) -> (SocketAddrV4, Option<[u8; 6]>) {
    let client_port = server_port.wrapping_add(1);
    let giaddr = msg.giaddr();
    if !giaddr.is_unspecified() {
        let port = relay_port.filter(|p| *p != 0).unwrap_or(server_port);
        return (SocketAddrV4::new(giaddr, port), None);
    }
    let broadcast = (SocketAddrV4::new(Ipv4Addr::BROADCAST, client_port), None);
    if msg_type == MessageType::Nak {
        return broadcast;
    }
    let ciaddr = msg.ciaddr();
    if !ciaddr.is_unspecified() {
        return (SocketAddrV4::new(ciaddr, client_port), None);
    }
    let ethernet = msg.htype() == dhcproto::v4::HType::Eth && msg.hlen() == 6;
    match <[u8; 6]>::try_from(msg.chaddr().get(..6).unwrap_or_default()) {
        Ok(mac) if ethernet && !msg.flags().broadcast() && !yiaddr.is_unspecified() => {
            (SocketAddrV4::new(yiaddr, client_port), Some(mac))
        }
        _ => broadcast,
    }
}

/// Maps a store outcome that ends the exchange without a reply to its drop reason.
fn store_drop(e: &LeaseError) -> Drop {
    match e {
        LeaseError::Duplicate => Drop::Duplicate,
        LeaseError::Exhausted => Drop::Exhausted,
        LeaseError::Limited("relay") => Drop::RelayRate,
        LeaseError::Limited(_) => Drop::SubnetRate,
        LeaseError::NotHolder => Drop::NotHolder,
        LeaseError::Refused { .. } => Drop::Silent,
        LeaseError::Backend(_) | LeaseError::BadReply(_) => Drop::Backend,
        LeaseError::NotReplicated { .. } => Drop::NotReplicated,
    }
}

/// The RFC 2131 section 4.3.2 client states a REQUEST can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Selecting,
    InitReboot,
    /// RENEWING (unicast) or REBINDING (broadcast): both carry ciaddr and nothing else; the
    /// server treats them alike.
    Renewing,
}

impl RequestState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Selecting => "selecting",
            Self::InitReboot => "init-reboot",
            Self::Renewing => "renewing",
        }
    }
}

/// Classifies a REQUEST by what it carries (RFC 2131 section 4.3.2): SELECTING names a server
/// and an address (50), INIT-REBOOT an address and no server, RENEWING and REBINDING neither,
/// their address in ciaddr.
///
/// A REQUEST with a server identifier and ciaddr but no option 50 breaks both rules (SELECTING
/// must carry 50, RENEWING must not carry 54), yet clients send it when they renew; it is taken
/// for RENEWING with ciaddr, as Kea takes ciaddr when 50 is absent. Whether the server it names
/// is this one is [`handle`]'s question.
pub fn request_state(req: &Request) -> Option<(RequestState, Ipv4Addr)> {
    let ciaddr = req.msg.ciaddr();
    match (req.server_id, req.requested_ip) {
        (Some(_), Some(ip)) => Some((RequestState::Selecting, ip)),
        (None, Some(ip)) if ciaddr.is_unspecified() => Some((RequestState::InitReboot, ip)),
        (None, _) | (Some(_), None) if !ciaddr.is_unspecified() => {
            Some((RequestState::Renewing, ciaddr))
        }
        _ => None,
    }
}

/// The store's view of one exchange of `req` in `ctx`'s subnet; `ranges` as
/// [`Subnet::ranges_for`] gives them.
fn exchange<'a>(
    req: &'a Request,
    ctx: &Context<'a>,
    ranges: Option<&'a str>,
    phase: &'static str,
) -> Exchange<'a> {
    let sub = |code| {
        req.relay_info
            .as_deref()
            .and_then(|r| relay_sub_option(r, code))
    };
    Exchange {
        pool: ctx.pool,
        xid: req.msg.xid(),
        client_id: &req.client_id,
        mac: &req.mac,
        hostname: &req.hostname,
        relay: Some(req.msg.giaddr()).filter(|g| !g.is_unspecified()),
        reservation: reservation(ctx.subnet, req).map(|r| r.ip),
        phase,
        received_at: req.received_at,
        ranges,
        circuit_id: sub(1),
        remote_id: sub(2),
        lease_time: Some(ctx.subnet.granted_lease(req.requested_lease))
            .filter(|t| *t != ctx.subnet.lease_time),
    }
}

/// Handles one message. `Err` is a counted drop; nothing here panics on client input.
pub async fn handle<S: Store>(req: &Request, ctx: &Context<'_>, store: &S) -> Result<Answer, Drop> {
    let ctx = &Context {
        classes: classes_of(ctx.config, req, ctx.subnet),
        ..*ctx
    };
    match req.msg_type {
        MessageType::Discover => discover(req, ctx, store).await,
        MessageType::Request => {
            let Some((state, ip)) = request_state(req) else {
                return Err(Drop::MissingField);
            };
            // On a shared network the address may belong to another subnet of the link.
            let ctx = &ctx.holding(ip);
            let subnet = ctx.subnet;
            let ranges = subnet.ranges_for(ctx.classes);
            let ex = exchange(req, ctx, ranges.as_deref(), state.as_str());
            let foreign = req.server_id.is_some_and(|id| id != server_id(req, ctx));
            match state {
                RequestState::Selecting if foreign => {
                    // RFC 2131 4.3.2: the client chose another server; withdraw our offer, if
                    // any.
                    return match store.release(&ex, ip, true).await {
                        Ok(()) | Err(LeaseError::NotHolder | LeaseError::Duplicate) => {
                            Err(Drop::OtherServer)
                        }
                        Err(e) => Err(store_drop(&e)),
                    };
                }
                RequestState::Renewing if foreign => {
                    // A renewal that names another server (`request_state`): that server's
                    // lease, not ours to extend, and no offer of ours to withdraw.
                    return Err(Drop::OtherServer);
                }
                _ => {}
            }
            if !subnet.contains(ip) {
                // RFC 2131 4.3.2 INIT-REBOOT: an address on the wrong network gets a NAK; a
                // renewal of an address we do not serve is not ours to answer.
                return match state {
                    RequestState::Renewing => Err(Drop::NotForUs),
                    _ if ctx.config.authoritative => Ok(reply(
                        req,
                        ctx,
                        MessageType::Nak,
                        Ipv4Addr::UNSPECIFIED,
                        "wrong_subnet",
                    )),
                    _ => Err(Drop::Silent),
                };
            }
            match store.request(&ex, ip, ctx.config.authoritative).await {
                Ok(grant) => Ok(reply(req, ctx, MessageType::Ack, ip, grant.as_str())),
                Err(LeaseError::Refused { reason, nak: true }) => Ok(reply(
                    req,
                    ctx,
                    MessageType::Nak,
                    Ipv4Addr::UNSPECIFIED,
                    nak_label(reason),
                )),
                Err(e) => Err(store_drop(&e)),
            }
        }
        MessageType::Release | MessageType::Decline => {
            if req.server_id.is_some_and(|id| id != server_id(req, ctx)) {
                return Err(Drop::NotForUs);
            }
            // RFC 2131 4.3.4/4.3.5: RELEASE names the address in ciaddr, DECLINE in option 50.
            let ip = if req.msg_type == MessageType::Release {
                Some(req.msg.ciaddr()).filter(|ip| !ip.is_unspecified())
            } else {
                req.requested_ip
            };
            let Some((ip, ctx)) = ip
                .map(|ip| (ip, ctx.holding(ip)))
                .filter(|(ip, c)| c.subnet.contains(*ip))
            else {
                return Err(Drop::MissingField);
            };
            let ex = exchange(req, &ctx, None, "");
            let done = if req.msg_type == MessageType::Release {
                store.release(&ex, ip, false).await.map(|()| "released")
            } else {
                store.decline(&ex, ip).await.map(|()| "declined")
            };
            done.map(Answer::Done).map_err(|e| store_drop(&e))
        }
        MessageType::Inform => {
            // RFC 2131 4.3.5: configuration only, no lease; the client has its address.
            let ciaddr = req.msg.ciaddr();
            if ciaddr.is_unspecified() {
                return Err(Drop::MissingField);
            }
            // The parameters of the client's own network: on a shared network, the subnet its
            // address is in, whichever of the link's subnets the relay's giaddr names.
            let ctx = &ctx.holding(ciaddr);
            store
                .inform(&exchange(req, ctx, None, ""))
                .await
                .map_err(|e| store_drop(&e))?;
            Ok(reply(
                req,
                ctx,
                MessageType::Ack,
                Ipv4Addr::UNSPECIFIED,
                "inform",
            ))
        }
        _ => Err(Drop::UnexpectedType),
    }
}

/// DISCOVER, or a BOOTP request: an address from the first subnet of the link that has one
/// for this client (the arrival subnet, then the rest of its shared network in config order;
/// the subnet of the address the client asks for goes first, so a client keeps its address,
/// and the subnet of its reservation before that).
async fn discover<S: Store>(req: &Request, ctx: &Context<'_>, store: &S) -> Result<Answer, Drop> {
    if ctx.subnet.siblings.is_empty() {
        // The common case: one subnet on the link, nothing to order.
        return discover_in(req, ctx, store)
            .await
            .unwrap_or(Err(nothing_for(req)));
    }
    let mut candidates: Vec<Context<'_>> = ctx.network().collect();
    if let Some(wish) = req.requested_ip
        && let Some(at) = candidates.iter().position(|c| c.subnet.contains(wish))
    {
        candidates[..=at].rotate_right(1);
    }
    // A reservation anywhere on the link wins over both (as in Kea).
    if let Some(at) = candidates
        .iter()
        .position(|c| reservation(c.subnet, req).is_some())
    {
        candidates[..=at].rotate_right(1);
    }
    let mut last = nothing_for(req);
    for c in &candidates {
        match discover_in(req, c, store).await {
            None => {}
            Some(Err(d @ (Drop::Exhausted | Drop::PingConflict))) => last = d,
            Some(done) => return done,
        }
    }
    Err(last)
}

/// Why a client no subnet of its link would serve gets nothing.
fn nothing_for(req: &Request) -> Drop {
    if req.bootp {
        Drop::BootpDisabled
    } else {
        Drop::NoClassPool
    }
}

/// A DISCOVER in one subnet; `None` when the subnet has nothing for this client (BOOTP not
/// enabled, or no pool open to its classes and no reservation).
async fn discover_in<S: Store>(
    req: &Request,
    ctx: &Context<'_>,
    store: &S,
) -> Option<Result<Answer, Drop>> {
    let reserved = reservation(ctx.subnet, req).is_some();
    if req.bootp && !ctx.subnet.bootp {
        return None;
    }
    if !ctx.subnet.admits(ctx.classes) && !reserved {
        return None;
    }
    let ranges = ctx.subnet.ranges_for(ctx.classes);
    if ranges.as_deref() == Some("") && !reserved {
        return None;
    }
    Some(offer_checked(req, ctx, ranges.as_deref(), store).await)
}

/// One subnet's offer, with the ICMP check when the subnet wants it: an address that answers
/// goes on probation (as if the client had declined it) and another is tried.
async fn offer_checked<S: Store>(
    req: &Request,
    ctx: &Context<'_>,
    ranges: Option<&str>,
    store: &S,
) -> Result<Answer, Drop> {
    let subnet = ctx.subnet;
    // RFC 2131 4.3.1: a requested address is a wish, honoured if free.
    let mut wish = req.requested_ip.filter(|ip| subnet.contains(*ip));
    // RFC 4039: rapid commit when both the client and the subnet want it.
    let hold = if req.bootp {
        Hold::Permanent
    } else if req.rapid_commit && subnet.rapid_commit {
        Hold::Lease
    } else {
        Hold::Offer
    };
    let ex = exchange(req, ctx, ranges, "");
    let pinger = ctx.pinger.filter(|_| subnet.ping_check);
    for _ in 0..PING_ATTEMPTS {
        let offered = store
            .offer(&ex, wish, hold)
            .await
            .map_err(|e| store_drop(&e))?;
        let answer = |how: &'static str| {
            let msg_type = if hold == Hold::Offer {
                MessageType::Offer
            } else {
                MessageType::Ack
            };
            Ok(reply(req, ctx, msg_type, offered.ip, how))
        };
        // A reservation is its client's whatever answers there (dhcpd and Kea skip it too).
        let check = offered.fresh && offered.how != crate::lease::Allocation::Reserved;
        let Some(pinger) = pinger.filter(|_| check) else {
            return answer(offered.how.as_str());
        };
        let timeout = crate::icmp::timeout(ctx.config.ping_timeout_ms);
        match pinger.answers(offered.ip, timeout).await {
            Ok(false) => {
                metrics::ping_check("free");
                return answer(offered.how.as_str());
            }
            Err(e) => {
                // Unknown is not "in use": the check is a safeguard, not a gate.
                metrics::ping_check("error");
                tracing::debug!(ip = %offered.ip, error = %e, "ICMP check could not be sent");
                return answer(offered.how.as_str());
            }
            Ok(true) => {
                metrics::ping_check("in_use");
                tracing::info!(ip = %offered.ip, subnet = %subnet.net,
                    "address answers ICMP echo: on probation, offering another");
                // The hold is this client's, so it declines it; received now, after the hold.
                let now = Exchange {
                    received_at: Some(std::time::SystemTime::now()),
                    ..ex
                };
                match store.decline(&now, offered.ip).await {
                    Ok(()) | Err(LeaseError::NotHolder | LeaseError::Duplicate) => {}
                    Err(e) => return Err(store_drop(&e)),
                }
                wish = None;
            }
        }
    }
    Err(Drop::PingConflict)
}

/// The client's reservation in `subnet`, by MAC, client identifier, or its relay's circuit or
/// remote id.
fn reservation<'s>(subnet: &'s Subnet, req: &Request) -> Option<&'s Reservation> {
    let sub = |code| {
        req.relay_info
            .as_deref()
            .and_then(|r| relay_sub_option(r, code))
    };
    subnet.reservation_for(
        &req.hwaddr,
        req.client_identifier.as_deref(),
        sub(1),
        sub(2),
    )
}

/// The identifier this exchange sees: the relay's override (RFC 5107: the client then renews
/// through the relay, which knows the real server) or the hive's.
fn server_id(req: &Request, ctx: &Context<'_>) -> Ipv4Addr {
    req.server_override.unwrap_or(ctx.server_id)
}

fn nak_label(reason: Refusal) -> &'static str {
    reason.as_str()
}

/// Builds the reply message: header fields per RFC 2131 table 3, options per table 3 and the
/// client's option 55.
fn reply(
    req: &Request,
    ctx: &Context<'_>,
    msg_type: MessageType,
    yiaddr: Ipv4Addr,
    detail: &'static str,
) -> Answer {
    let m = &req.msg;
    let mut header = Message::new_with_id(
        m.xid(),
        Ipv4Addr::UNSPECIFIED,
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        m.giaddr(),
        &req.hwaddr,
    );
    header.set_opcode(Opcode::BootReply).set_htype(m.htype());
    let reservation = reservation(ctx.subnet, req);
    let options = reply_options(req, ctx, msg_type, reservation);
    match msg_type {
        MessageType::Nak => {
            // Table 3: a NAK carries no addresses, sname or file; through a relay it asks for
            // a broadcast.
            if !m.giaddr().is_unspecified() {
                header.set_flags(Flags::default().set_broadcast());
            }
        }
        _ => {
            // Table 3: ciaddr is echoed in an ACK; flags and giaddr are the client's.
            if msg_type == MessageType::Ack {
                header.set_ciaddr(m.ciaddr());
            }
            header.set_flags(m.flags());
            set_boot_fields(&mut header, req, ctx, reservation, &options);
        }
    }
    header.set_secs(0);
    let (to, link) = reply_address(
        m,
        msg_type,
        header.yiaddr(),
        ctx.config.port,
        req.relay_source_port.then_some(req.peer_port),
    );
    Answer::Reply(Box::new(Reply {
        msg_type,
        header,
        options,
        relay_info: req.relay_info.clone(),
        max_len: req.max_reply,
        to,
        link,
        detail,
        bootp: req.bootp,
    }))
}

/// The boot fields of an OFFER or ACK (an INFORM's ACK too, as in Kea), RFC 2131 table 3:
/// `siaddr`, `sname` and `file`, each from the most specific level that sets `nextServer`,
/// `serverHostname` or `bootFileName`: the reservation, the client's classes (the first in
/// config order wins a tie), the subnet (which holds the global ones under its own).
///
/// Unset, siaddr is the server identifier (the seed's `server_ip`), and a BOOTP client's sname
/// and file come from options 66 and 67 of the reply (RFC 951: it reads them from the header).
/// The hive never sends option 52, so these are the fields themselves, not overloaded options
/// (RFC 2132 section 9.3).
fn set_boot_fields(
    header: &mut Message,
    req: &Request,
    ctx: &Context<'_>,
    reservation: Option<&Reservation>,
    options: &[OptionData],
) {
    let levels = || boot_levels(ctx, reservation);
    let next_server = levels().find_map(|b| b.next_server);
    header.set_siaddr(next_server.unwrap_or_else(|| server_id(req, ctx)));
    // A BOOTP client's fallback: an option whose payload leaves room for the field's NUL.
    let from_option = |code: u8, field_len: usize| {
        options
            .iter()
            .find(|o| o.code == code && o.data.len() < field_len)
            .filter(|_| req.bootp)
            .map(|o| o.data.as_slice())
    };
    // dhcproto panics past 64 and 128 bytes; config validation keeps the configured names to
    // 63 and 127, and the options are checked above.
    let sname = levels()
        .find_map(|b| b.server_hostname.as_deref())
        .map(str::as_bytes)
        .or_else(|| from_option(66, 64));
    if let Some(sname) = sname {
        header.set_sname(sname);
    }
    let file = levels()
        .find_map(|b| b.boot_file_name.as_deref())
        .map(str::as_bytes)
        .or_else(|| from_option(67, 128));
    if let Some(file) = file {
        header.set_fname(file);
    }
}

/// The levels that may set boot fields, most specific first: the reservation, the client's
/// classes in config order, the subnet (which holds the global ones under its own).
fn boot_levels<'a>(
    ctx: &'a Context<'_>,
    reservation: Option<&'a Reservation>,
) -> impl Iterator<Item = &'a Boot> {
    let classes = ctx
        .config
        .classes
        .iter()
        .enumerate()
        .filter(|(bit, _)| ctx.classes & (1 << bit) != 0)
        .map(|(_, c)| &c.boot);
    reservation
        .map(|r| &r.boot)
        .into_iter()
        .chain(classes)
        .chain(std::iter::once(&ctx.subnet.boot))
}

/// The options of a reply, in the order they are encoded: the mandatory ones, then those the
/// client asked for in option 55 in its order (or all configured ones if it sent no list). Each
/// code appears once: a receiver joins repeated instances of a code into one option (RFC 3396).
///
/// Configured options come from the subnet (over the global ones), the client's classes (the
/// first class in config order wins a tie), and its `reservation`, the most specific winning.
/// A BOOTP reply (RFC 1497 vendor extensions) has no DHCP-only options (53, 54, 51, 58, 59).
pub fn reply_options(
    req: &Request,
    ctx: &Context<'_>,
    msg_type: MessageType,
    reservation: Option<&Reservation>,
) -> Vec<OptionData> {
    let subnet = ctx.subnet;
    let mut opts = Vec::new();
    if !req.bootp {
        opts.push(option(53, [u8::from(msg_type)]));
        opts.push(option(54, server_id(req, ctx).octets()));
        // A client discards a reply without these, so they come before anything `encode` may
        // leave out for space. RFC 6842 section 3 and RFC 3011 section 2: echoed unchanged.
        if let Some(id) = &req.client_identifier {
            opts.push(option(61, id.clone()));
        }
        if let Some(link) = &req.subnet_selection {
            opts.push(option(118, link.clone()));
        }
        if msg_type == MessageType::Ack && req.msg_type == MessageType::Discover {
            // RFC 4039 section 4: an ACK to a DISCOVER carries the rapid commit option.
            opts.push(option(80, []));
        }
    }
    if msg_type == MessageType::Nak {
        return opts;
    }
    let lease = !req.bootp
        && (msg_type == MessageType::Offer
            || (msg_type == MessageType::Ack && req.msg_type != MessageType::Inform));
    if lease {
        // RFC 2131 table 3: a lease time MUST be in OFFER and ACK (not in an INFORM's ACK):
        // the one the client asked for, within the subnet's bounds (what the store recorded).
        let lease = subnet.granted_lease(req.requested_lease);
        let (t1, t2) = subnet.timers_for(lease);
        opts.push(option(51, lease.to_be_bytes()));
        opts.push(option(58, t1.to_be_bytes()));
        opts.push(option(59, t2.to_be_bytes()));
    }
    // The mask is sent whatever option 55 says: an address without it is unusable.
    opts.push(option(1, subnet.mask().octets()));
    // Borrowed from the config unless a class or the reservation overlays it: most replies
    // copy only the options they send.
    let mut configured = class_options(ctx);
    if let Some(r) = reservation.filter(|r| !r.options.0.is_empty()) {
        configured = Cow::Owned(configured.overlay(&r.options));
    }
    // Defaults for what the config does not set, looked up after it.
    let broadcast = option(28, subnet.broadcast().octets());
    // A reserved name goes to the client that asks for option 12 (as Kea does).
    let name = reservation
        .and_then(|r| r.hostname.as_ref())
        .map(|n| option(12, n.as_bytes()));
    // `serverHostname` and `bootFileName` also go as options 66 and 67 to a client that asks
    // for them (as dnsmasq does): PXE and iPXE firmware that lists 67 may read the name there
    // rather than in the header. Only looked up when asked for.
    let boot_option = |code: u8| {
        let asked = req.parameters.as_ref().is_some_and(|p| p.contains(&code));
        asked
            .then(|| {
                boot_levels(ctx, reservation).find_map(|b| match code {
                    66 => b.server_hostname.as_deref(),
                    _ => b.boot_file_name.as_deref(),
                })
            })
            .flatten()
            .map(|name| option(code, name.as_bytes()))
    };
    let (boot_66, boot_67) = (boot_option(66), boot_option(67));
    let get = |code: u8| {
        configured.get(code).or(match code {
            28 => Some(&broadcast),
            12 => name.as_ref(),
            66 => boot_66.as_ref(),
            67 => boot_67.as_ref(),
            _ => None,
        })
    };
    // A code the client lists twice, or one already in the reply, is not added again.
    let mut add = |o: &OptionData| {
        if opts.iter().all(|s| s.code != o.code) {
            opts.push(o.clone());
        }
    };
    match &req.parameters {
        // RFC 2132 9.8: what the client asked for, in its order of preference.
        Some(order) => order
            .iter()
            .filter_map(|code| get(*code))
            .for_each(&mut add),
        // No list: every configured option (what BOOTP-era clients expect), bar the name,
        // then the broadcast address when the config has none.
        None => {
            configured
                .0
                .iter()
                .filter(|o| o.code != 12)
                .for_each(&mut add);
            add(&broadcast);
        }
    }
    opts
}

/// The subnet's options with those of the client's classes over them.
fn class_options<'a>(ctx: &Context<'a>) -> Cow<'a, OptionSet> {
    let classes = &ctx.config.classes;
    if ctx.classes == 0 || classes.is_empty() {
        return Cow::Borrowed(&ctx.subnet.options);
    }
    // Applied last to first, so that the first class in config order wins a tie.
    classes
        .iter()
        .enumerate()
        .rev()
        .filter(|(bit, c)| ctx.classes & (1 << bit) != 0 && !c.options.0.is_empty())
        .fold(Cow::Borrowed(&ctx.subnet.options), |set, (_, c)| {
            Cow::Owned(set.overlay(&c.options))
        })
}

fn option(code: u8, data: impl Into<Vec<u8>>) -> OptionData {
    OptionData {
        code,
        data: data.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);

    /// A request of type `msg_type` from 02:00:00:00:00:01 with the `extra` options.
    fn request(msg_type: u8, extra: &[u8]) -> Request {
        let mut with_type = vec![53, 1, msg_type];
        with_type.extend_from_slice(extra);
        message(&with_type)
    }

    /// A BOOTP request (no option 53) from 02:00:00:00:00:01 with the `extra` options.
    fn bootp_request(extra: &[u8]) -> Request {
        let req = message(extra);
        assert!(req.bootp);
        req
    }

    /// A BOOTREQUEST from 02:00:00:00:00:01 carrying the options `opts`.
    fn message(opts: &[u8]) -> Request {
        let mut b = vec![0; 236];
        b[..3].copy_from_slice(&[1, 1, 6]);
        b[28..34].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(opts);
        b.push(255);
        parse(&b).expect("valid request")
    }

    /// One subnet, 127.0.2.0/24, with the options array `options`.
    fn config(options: &str) -> Config {
        Config::from_json(
            Path::new("t.json"),
            &format!(
                r#"{{ "hostname": "h", "interface": "127.0.0.1", "port": 1067,
                     "serverId": "127.0.2.1",
                     "subnets": [{{ "subnet": "127.0.2.0/24", "dynStart": "127.0.2.10",
                                    "dynEnd": "127.0.2.20", "leaseTime": 600,
                                    "options": {options} }}] }}"#
            ),
        )
        .expect("config")
    }

    /// The context of the config's first subnet, whose pool is `pool`.
    fn first_subnet<'a>(config: &'a Config, pool: &'a Pool, classes: ClassSet) -> Context<'a> {
        Context {
            config,
            subnet: &config.subnets[0],
            pool,
            server_id: SERVER,
            pools: &[],
            pinger: None,
            classes,
        }
    }

    /// The reply to `req` as the node would build it.
    fn answer(config: &Config, req: &Request, msg_type: MessageType) -> Reply {
        let subnet = &config.subnets[0];
        let pool = Pool::new(config, subnet);
        let ctx = first_subnet(config, &pool, classes_of(config, req, subnet));
        match reply(req, &ctx, msg_type, Ipv4Addr::new(127, 0, 2, 10), "test") {
            Answer::Reply(r) => *r,
            Answer::Done(d) => panic!("no reply: {d}"),
        }
    }

    /// The options of an encoded reply, instances of a code joined (RFC 3396), in first order.
    fn decoded(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut opts: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut at = 240;
        while bytes[at] != 255 {
            let (code, len) = (bytes[at], usize::from(bytes[at + 1]));
            let body = &bytes[at + 2..at + 2 + len];
            match opts.iter_mut().find(|(c, _)| *c == code) {
                Some((_, data)) => data.extend_from_slice(body),
                None => opts.push((code, body.to_vec())),
            }
            at += 2 + len;
        }
        opts
    }

    fn codes(opts: &[OptionData]) -> Vec<u8> {
        opts.iter().map(|o| o.code).collect()
    }

    /// An in-memory store that grants every REQUEST and records each call and its address.
    #[derive(Default)]
    struct Recorder {
        calls: std::sync::Mutex<Vec<(&'static str, Ipv4Addr)>>,
    }

    impl Recorder {
        fn note(&self, call: &'static str, ip: Ipv4Addr) {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push((call, ip));
            }
        }

        fn calls(&self) -> Vec<(&'static str, Ipv4Addr)> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
    }

    impl Store for Recorder {
        async fn offer(
            &self,
            _: &Exchange<'_>,
            _: Option<Ipv4Addr>,
            _: Hold,
        ) -> Result<crate::lease::Offered, LeaseError> {
            Err(LeaseError::Exhausted)
        }
        async fn request(
            &self,
            _: &Exchange<'_>,
            ip: Ipv4Addr,
            _: bool,
        ) -> Result<crate::lease::Grant, LeaseError> {
            self.note("request", ip);
            Ok(crate::lease::Grant::Renewed)
        }
        async fn release(&self, _: &Exchange<'_>, ip: Ipv4Addr, _: bool) -> Result<(), LeaseError> {
            self.note("release", ip);
            Ok(())
        }
        async fn decline(&self, _: &Exchange<'_>, ip: Ipv4Addr) -> Result<(), LeaseError> {
            self.note("decline", ip);
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

    /// `req` handled in the config's first subnet, against `store`.
    async fn handled(config: &Config, req: &Request, store: &Recorder) -> Result<Answer, Drop> {
        let pool = Pool::new(config, &config.subnets[0]);
        handle(req, &first_subnet(config, &pool, 0), store).await
    }

    /// A REQUEST with the `extra` options and ciaddr `ciaddr`.
    fn request_from(ciaddr: Ipv4Addr, extra: &[u8]) -> Request {
        let mut req = request(3, extra);
        req.msg.set_ciaddr(ciaddr);
        req
    }

    const HELD: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 15);

    #[test]
    fn request_states_follow_what_the_request_carries() {
        let ours = [54, 4, 127, 0, 2, 1];
        let wants = [50, 4, 127, 0, 2, 16];
        let both = [ours, wants].concat();
        let none = Ipv4Addr::UNSPECIFIED;
        let wanted = Ipv4Addr::new(127, 0, 2, 16);
        let renewing = Some((RequestState::Renewing, HELD));
        let cases: [(Ipv4Addr, &[u8], _); 7] = [
            (none, &both, Some((RequestState::Selecting, wanted))),
            (HELD, &both, Some((RequestState::Selecting, wanted))),
            (none, &wants, Some((RequestState::InitReboot, wanted))),
            (HELD, &[], renewing),
            (HELD, &wants, renewing),
            // 54 without 50, with ciaddr: a renewal, whatever RFC 2131 says of 54 in one.
            (HELD, &ours, renewing),
            (none, &ours, None),
        ];
        for (ciaddr, extra, state) in cases {
            assert_eq!(
                request_state(&request_from(ciaddr, extra)),
                state,
                "{ciaddr} {extra:?}"
            );
        }
    }

    /// A renewal carrying this server's identifier and no requested address is served from
    /// ciaddr; one naming no server as before.
    #[tokio::test]
    async fn renewal_with_our_server_id_and_no_requested_address_is_acked() {
        let config = config("[]");
        for extra in [&[54, 4, 127, 0, 2, 1][..], &[]] {
            let store = Recorder::default();
            let answer = handled(&config, &request_from(HELD, extra), &store).await;
            let Ok(Answer::Reply(reply)) = answer else {
                panic!("{extra:?}: no reply: {answer:?}");
            };
            assert_eq!(reply.msg_type, MessageType::Ack);
            assert_eq!(reply.header.yiaddr(), HELD);
            assert_eq!(reply.header.ciaddr(), HELD);
            assert_eq!(store.calls(), [("request", HELD)]);
        }
        // RFC 5107: the relay's override is the identifier the client was given.
        let mut extra = vec![54, 4, 192, 0, 2, 7];
        extra.extend_from_slice(&[82, 6, 11, 4, 192, 0, 2, 7]);
        let store = Recorder::default();
        let answer = handled(&config, &request_from(HELD, &extra), &store).await;
        assert!(matches!(answer, Ok(Answer::Reply(r)) if r.msg_type == MessageType::Ack));
        assert_eq!(store.calls(), [("request", HELD)]);
    }

    /// A renewal naming another server is that server's: dropped, and nothing of the client's
    /// is released here.
    #[tokio::test]
    async fn renewal_naming_another_server_is_dropped_and_releases_nothing() {
        let config = config("[]");
        let store = Recorder::default();
        let req = request_from(HELD, &[54, 4, 127, 0, 2, 99]);
        let answer = handled(&config, &req, &store).await;
        assert_eq!(answer.err(), Some(Drop::OtherServer));
        assert_eq!(store.calls(), []);
    }

    /// SELECTING (50 present) for another server still withdraws our offer of that address.
    #[tokio::test]
    async fn selecting_another_server_withdraws_our_offer() {
        let config = config("[]");
        let store = Recorder::default();
        let req = request_from(HELD, &[54, 4, 127, 0, 2, 99, 50, 4, 127, 0, 2, 16]);
        let answer = handled(&config, &req, &store).await;
        assert_eq!(answer.err(), Some(Drop::OtherServer));
        assert_eq!(store.calls(), [("release", Ipv4Addr::new(127, 0, 2, 16))]);
        // Naming no address at all, and no ciaddr: nothing to serve.
        let req = request_from(Ipv4Addr::UNSPECIFIED, &[54, 4, 127, 0, 2, 1]);
        let store = Recorder::default();
        let answer = handled(&config, &req, &store).await;
        assert_eq!(answer.err(), Some(Drop::MissingField));
        assert_eq!(store.calls(), []);
    }

    #[test]
    fn subnet_selection_is_echoed_unchanged() {
        let config = config("[]");
        let link = [118, 4, 127, 0, 2, 0];
        let selected = [
            (MessageType::Offer, 1),
            (MessageType::Ack, 3),
            (MessageType::Nak, 3),
        ];
        for (reply_type, request_type) in selected {
            let reply = answer(&config, &request(request_type, &link), reply_type);
            let echoed = reply.options.iter().filter(|o| o.code == 118);
            assert_eq!(
                echoed.map(|o| o.data.as_slice()).collect::<Vec<_>>(),
                [&link[2..]],
                "{reply_type:?}"
            );
        }
        let plain = answer(&config, &request(1, &[]), MessageType::Offer);
        assert!(!codes(&plain.options).contains(&118));
    }

    /// RFC 6842 and RFC 4039: options the client only asked for make room for 61 and 80.
    #[test]
    fn echoed_and_rapid_commit_options_survive_a_small_max_size() {
        let config = config(&format!(
            r#"[{{ "code": 119, "type": "hex", "value": "{}" }},
                {{ "code": 121, "type": "hex", "value": "{}" }},
                {{ "code": 43, "type": "hex", "value": "{}" }}]"#,
            "07".repeat(200),
            "08".repeat(70),
            "09".repeat(20),
        ));
        let id = [61, 7, 1, 0x02, 0, 0, 0, 0, 1];
        let mut extra = vec![57, 2, 0x02, 0x40, 80, 0, 55, 3, 119, 121, 43];
        extra.extend_from_slice(&id);
        let req = request(1, &extra);
        let reply = answer(&config, &req, MessageType::Ack);
        let mut out = Vec::new();
        encode(&reply.header, &reply.options, None, reply.max_len, &mut out).expect("encodes");
        assert!(out.len() <= 576 - 28);
        let sent = decoded(&out);
        let find = |code| {
            sent.iter()
                .find(|(c, _)| *c == code)
                .map(|(_, d)| d.as_slice())
        };
        assert_eq!(find(61), Some(&id[2..]));
        assert_eq!(find(80), Some(&[][..]));
        assert_eq!(find(53), Some(&[5][..]));
        // Of what the client only asked for, what fits goes out, in its order.
        assert!(find(119).is_some());
        assert_eq!(find(121), None);
        assert!(find(43).is_some());
    }

    #[test]
    fn a_code_listed_twice_goes_out_once() {
        let config = config(
            r#"[{ "name": "domain-name", "value": "example.org" },
                { "name": "domain-name-servers", "value": ["192.0.2.53"] }]"#,
        );
        let reply = answer(
            &config,
            &request(1, &[55, 4, 15, 15, 6, 15]),
            MessageType::Offer,
        );
        assert_eq!(codes(&reply.options), [53, 54, 51, 58, 59, 1, 15, 6]);
        let mut out = Vec::new();
        encode(&reply.header, &reply.options, None, reply.max_len, &mut out).expect("encodes");
        let sent = decoded(&out);
        assert!(sent.contains(&(15, b"example.org".to_vec())));
    }

    /// PXE boot fields at every level: global `nextServer` and `bootFileName`, a subnet
    /// `serverHostname`, a class for PXE firmware, a reservation for 02:00:00:00:00:01.
    fn boot_config() -> Config {
        Config::from_json(
            Path::new("t.json"),
            r#"{ "hostname": "h", "interface": "127.0.0.1", "port": 1067,
                 "serverId": "127.0.2.1",
                 "nextServer": "127.0.9.6", "bootFileName": "pxelinux.0",
                 "clientClasses": [
                   { "name": "efi", "match": "vendor-class starts-with \"PXEClient:Arch:00007\"",
                     "bootFileName": "efi/shim.efi", "serverHostname": "efi-boot" },
                   { "name": "pxe", "match": "vendor-class starts-with \"PXEClient\"",
                     "nextServer": "127.0.9.8", "bootFileName": "bios/pxelinux.0" } ],
                 "subnets": [{ "subnet": "127.0.2.0/24", "dynStart": "127.0.2.10",
                               "dynEnd": "127.0.2.20", "leaseTime": 600,
                               "serverHostname": "tftp.test",
                               "reservations": [{ "mac": "02:00:00:00:00:01",
                                                  "ip": "127.0.2.5",
                                                  "bootFileName": "host-1.0" }] }] }"#,
        )
        .expect("config")
    }

    /// (siaddr, sname, file) of a reply header, the fields as their bytes on the wire.
    fn boot_fields(reply: &Reply) -> (Ipv4Addr, Vec<u8>, Vec<u8>) {
        let mut out = Vec::new();
        encode(&reply.header, &reply.options, None, reply.max_len, &mut out).expect("encodes");
        let text = |field: &[u8]| field.iter().copied().take_while(|b| *b != 0).collect();
        (
            Ipv4Addr::new(out[20], out[21], out[22], out[23]),
            text(&out[44..108]),
            text(&out[108..236]),
        )
    }

    /// Option 60 with `text`.
    fn vendor_class(text: &str) -> Vec<u8> {
        let mut o = vec![60, u8::try_from(text.len()).expect("short")];
        o.extend_from_slice(text.as_bytes());
        o
    }

    #[test]
    fn offers_and_acks_carry_the_boot_fields_and_naks_do_not() {
        let config = boot_config();
        let mut unreserved = request(1, &[]);
        unreserved.hwaddr = vec![0x02, 0, 0, 0, 0, 2];
        let mut inform = request(8, &[]);
        inform.hwaddr = vec![0x02, 0, 0, 0, 0, 2];
        let global = (
            Ipv4Addr::new(127, 0, 9, 6),
            b"tftp.test".to_vec(),
            b"pxelinux.0".to_vec(),
        );
        for (req, reply_type) in [
            (&unreserved, MessageType::Offer),
            (&unreserved, MessageType::Ack),
            // An INFORM's ACK too, as Kea does.
            (&inform, MessageType::Ack),
        ] {
            let reply = answer(&config, req, reply_type);
            assert_eq!(boot_fields(&reply), global, "{reply_type:?}");
            // Real fields: nothing in the reply says they hold options.
            assert!(!codes(&reply.options).contains(&52));
        }
        // RFC 2131 table 3: a NAK has siaddr 0 and no sname or file.
        let nak = answer(&config, &request(3, &[]), MessageType::Nak);
        assert_eq!(
            boot_fields(&nak),
            (Ipv4Addr::UNSPECIFIED, Vec::new(), Vec::new())
        );
    }

    #[test]
    fn the_most_specific_level_sets_each_boot_field() {
        let config = boot_config();
        let field = |req: &Request| boot_fields(&answer(&config, req, MessageType::Offer));
        let vci = vendor_class("PXEClient:Arch:00007:UNDI:003016");
        // The reservation names the file; its classes and the subnet the rest. Of the two
        // classes it is in, the first in config order sets the server name, the second
        // (the only one that sets it) the next server.
        assert_eq!(
            field(&request(1, &vci)),
            (
                Ipv4Addr::new(127, 0, 9, 8),
                b"efi-boot".to_vec(),
                b"host-1.0".to_vec()
            )
        );
        let mut unreserved = request(1, &vci);
        unreserved.hwaddr = vec![0x02, 0, 0, 0, 0, 2];
        assert_eq!(field(&unreserved).2, b"efi/shim.efi");
        // In the second class only: its file and server over the subnet's and global ones.
        let mut bios = request(1, &vendor_class("PXEClient:Arch:00000"));
        bios.hwaddr = vec![0x02, 0, 0, 0, 0, 2];
        assert_eq!(
            field(&bios),
            (
                Ipv4Addr::new(127, 0, 9, 8),
                b"tftp.test".to_vec(),
                b"bios/pxelinux.0".to_vec()
            )
        );
    }

    /// RFC 2131 section 4.1, every case: relay, NAK, ciaddr, broadcast bit, no Ethernet.
    #[test]
    fn replies_go_where_rfc_2131_section_4_1_says() {
        let yiaddr = Ipv4Addr::new(127, 0, 2, 10);
        let mac = [0x02, 0, 0, 0, 0, 1];
        let client = |ip: Ipv4Addr| SocketAddrV4::new(ip, 1068);
        let direct = request(1, &[]).msg;
        // No address yet, broadcast bit clear: to yiaddr, by the client's Ethernet address.
        for t in [MessageType::Offer, MessageType::Ack] {
            assert_eq!(
                reply_address(&direct, t, yiaddr, 1067, None),
                (client(yiaddr), Some(mac))
            );
        }
        // A NAK, or nothing to give: broadcast.
        let broadcast = (client(Ipv4Addr::BROADCAST), None);
        assert_eq!(
            reply_address(&direct, MessageType::Nak, Ipv4Addr::UNSPECIFIED, 1067, None),
            broadcast
        );
        assert_eq!(
            reply_address(&direct, MessageType::Ack, Ipv4Addr::UNSPECIFIED, 1067, None),
            broadcast
        );
        // The broadcast bit set: broadcast.
        let mut asks = direct.clone();
        asks.set_flags(Flags::default().set_broadcast());
        assert_eq!(
            reply_address(&asks, MessageType::Offer, yiaddr, 1067, None),
            broadcast
        );
        // Not Ethernet (IP over InfiniBand has no chaddr): broadcast.
        let mut ib = direct.clone();
        ib.set_htype(dhcproto::v4::HType::from(32)).set_chaddr(&[]);
        assert_eq!(
            reply_address(&ib, MessageType::Offer, yiaddr, 1067, None),
            broadcast
        );
        // ciaddr set (renewing): to it, no neighbour entry needed.
        let mut renewing = direct.clone();
        renewing.set_ciaddr(yiaddr);
        assert_eq!(
            reply_address(&renewing, MessageType::Ack, yiaddr, 1067, None),
            (client(yiaddr), None)
        );
        // Relayed: to the relay at the server port (or its own port, RFC 8357), even a NAK.
        let mut relayed = direct;
        relayed.set_giaddr(Ipv4Addr::new(127, 0, 2, 1));
        for t in [MessageType::Offer, MessageType::Nak] {
            assert_eq!(
                reply_address(&relayed, t, yiaddr, 1067, None),
                (SocketAddrV4::new(Ipv4Addr::new(127, 0, 2, 1), 1067), None)
            );
        }
        assert_eq!(
            reply_address(&relayed, MessageType::Ack, yiaddr, 1067, Some(3000)).0,
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 2, 1), 3000)
        );
        // The node's fallback when it cannot make the neighbour entry.
        let reply = answer(&config("[]"), &request(1, &[]), MessageType::Offer);
        assert_eq!(reply.link, Some(mac));
        assert_eq!(reply.broadcast_to(), client(Ipv4Addr::BROADCAST));
    }

    #[test]
    fn a_client_that_asks_for_66_and_67_gets_the_boot_names_as_options_too() {
        let config = boot_config();
        let value = |reply: &Reply, code: u8| {
            reply
                .options
                .iter()
                .find(|o| o.code == code)
                .map(|o| o.data.clone())
        };
        // UEFI firmware listing 66 and 67: the most specific level's names, as in the header.
        let mut uefi = request(
            1,
            &[
                &vendor_class("PXEClient:Arch:00007")[..],
                &[55, 3, 1, 67, 66],
            ]
            .concat(),
        );
        uefi.hwaddr = vec![0x02, 0, 0, 0, 0, 2];
        let offer = answer(&config, &uefi, MessageType::Offer);
        assert_eq!(value(&offer, 67), Some(b"efi/shim.efi".to_vec()));
        assert_eq!(value(&offer, 66), Some(b"efi-boot".to_vec()));
        assert_eq!(boot_fields(&offer).2, b"efi/shim.efi");
        // In the client's order after the mandatory ones.
        let order = codes(&offer.options);
        assert_eq!(&order[order.len() - 2..], [67, 66]);
        // Not asked for, not sent: the header carries them.
        let plain = answer(&config, &request(1, &[55, 1, 3]), MessageType::Offer);
        assert_eq!(value(&plain, 67), None);
        assert_eq!(boot_fields(&plain).2, b"host-1.0");
        // A configured option 67 wins over `bootFileName` in the option; the header keeps
        // `bootFileName`.
        let mut with_option = config.clone();
        with_option.subnets[0].options = OptionSet(vec![option(67, *b"opt.0")]);
        let mut asks = request(1, &[55, 1, 67]);
        asks.hwaddr = vec![0x02, 0, 0, 0, 0, 2];
        let reply = answer(&with_option, &asks, MessageType::Ack);
        assert_eq!(value(&reply, 67), Some(b"opt.0".to_vec()));
        assert_eq!(boot_fields(&reply).2, b"pxelinux.0");
    }

    #[test]
    fn without_boot_fields_siaddr_is_the_server_id_and_bootp_reads_66_and_67() {
        let config = config(
            r#"[{ "name": "tftp-server-name", "value": "opt66.test" },
                { "name": "boot-file-name", "value": "opt67.0" }]"#,
        );
        // A DHCP client: the server identifier in siaddr (the seed's server_ip), options
        // 66 and 67 stay options.
        let dhcp = answer(&config, &request(1, &[]), MessageType::Offer);
        assert_eq!(boot_fields(&dhcp), (SERVER, Vec::new(), Vec::new()));
        // A BOOTP client reads them from the header (RFC 951).
        let bootp = answer(&config, &bootp_request(&[]), MessageType::Ack);
        assert_eq!(
            boot_fields(&bootp),
            (SERVER, b"opt66.test".to_vec(), b"opt67.0".to_vec())
        );
        // `bootFileName` and `nextServer` win over option 67 and the identifier.
        let mut with_boot = config.clone();
        with_boot.subnets[0].boot = Boot {
            next_server: Some(Ipv4Addr::new(127, 0, 9, 6)),
            boot_file_name: Some("pxelinux.0".to_owned()),
            ..Default::default()
        };
        let bootp = answer(&with_boot, &bootp_request(&[]), MessageType::Ack);
        assert_eq!(
            boot_fields(&bootp),
            (
                Ipv4Addr::new(127, 0, 9, 6),
                b"opt66.test".to_vec(),
                b"pxelinux.0".to_vec()
            )
        );
    }
}
