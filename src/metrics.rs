//! Metric names, their descriptions, and the one place that records an exchange.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` histograms). Labels are
//! bounded sets (message types, reasons, outcomes): never a MAC or an IP.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

pub const PACKETS_RECEIVED: &str = "dhcp_hive_packets_received_total";
pub const REPLIES_SENT: &str = "dhcp_hive_replies_sent_total";
pub const DROPS: &str = "dhcp_hive_drops_total";
pub const NAKS: &str = "dhcp_hive_naks_total";
pub const ALLOCATIONS: &str = "dhcp_hive_allocations_total";
pub const GRANTS: &str = "dhcp_hive_grants_total";
pub const DECLINES: &str = "dhcp_hive_declines_total";
pub const RELEASES: &str = "dhcp_hive_releases_total";
pub const REDIS_ERRORS: &str = "dhcp_hive_redis_errors_total";
pub const SEND_ERRORS: &str = "dhcp_hive_send_errors_total";
pub const MESSAGE_DURATION: &str = "dhcp_hive_message_duration_seconds";
pub const READY: &str = "dhcp_hive_ready";
pub const PING_CHECKS: &str = "dhcp_hive_ping_checks_total";
pub const BACKLOG: &str = "dhcp_hive_backlog_messages";
pub const OPTIONS_IGNORED: &str = "dhcp_hive_options_ignored_total";

/// The labels `type_label` gives, and the BOOTP ones the node uses, in one place so that their
/// handles can be built once.
const TYPES: [&str; 12] = [
    "discover",
    "offer",
    "request",
    "decline",
    "ack",
    "nak",
    "release",
    "inform",
    "other",
    "invalid",
    "bootrequest",
    "bootreply",
];
/// Offer outcomes (`lease::Allocation`, and pool exhaustion): the `outcome` labels of
/// `dhcp_hive_allocations_total`, one per DISCOVER answered (or BOOTREQUEST, or rapid commit).
const ALLOCATION_OUTCOMES: [&str; 6] = [
    "new",
    "sticky",
    "bound",
    "requested",
    "reserved",
    "exhausted",
];
/// Grant outcomes (`lease::Grant`): the `outcome` labels of `dhcp_hive_grants_total`, one per
/// REQUEST acknowledged.
const GRANT_OUTCOMES: [&str; 4] = ["selected", "renewed", "recovered", "reserved"];
/// The scripts the packet path runs (`lease::redis`).
const SCRIPTS: [&str; 5] = ["discover", "request", "release", "decline", "claim"];

/// The message types a node receives from clients and relays, and those it sends: their
/// series are shown from the start (0). A series of another type (an OFFER received from some
/// other server, say) appears when one is counted.
const RECEIVED_TYPES: [&str; 5] = ["discover", "request", "decline", "release", "inform"];
const REPLY_TYPES: [&str; 3] = ["offer", "ack", "nak"];

/// Handles of the metrics every message records, resolved once. `counter!(name, label =>
/// value)` looks the series up in the recorder's registry (building and hashing its key) at
/// every call; a handle is the series itself. A label outside these tables (a new drop reason,
/// say) takes the `counter!` path: slower, never wrong. The per-type handles are made on first
/// use, so that /metrics shows no series of a type that never occurs in it (no `replies_sent`
/// of type `discover`).
struct Handles {
    received: [OnceLock<Counter>; TYPES.len()],
    replied: [OnceLock<Counter>; TYPES.len()],
    duration: [OnceLock<Histogram>; TYPES.len()],
    allocations: [Counter; ALLOCATION_OUTCOMES.len()],
    grants: [Counter; GRANT_OUTCOMES.len()],
    scripts: [Histogram; SCRIPTS.len()],
    backlog: Gauge,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// The handles, built on first use. They belong to the recorder installed at that moment, so
/// [`describe`] (called right after the recorder is installed) builds them; without a
/// recorder they are no-ops, as `counter!` would be.
fn handles() -> &'static Handles {
    HANDLES.get_or_init(|| Handles {
        received: std::array::from_fn(|_| OnceLock::new()),
        replied: std::array::from_fn(|_| OnceLock::new()),
        duration: std::array::from_fn(|_| OnceLock::new()),
        allocations: ALLOCATION_OUTCOMES.map(|o| counter!(ALLOCATIONS, "outcome" => o)),
        grants: GRANT_OUTCOMES.map(|o| counter!(GRANTS, "outcome" => o)),
        scripts: SCRIPTS.map(|s| histogram!(SCRIPT_DURATION, "script" => s)),
        backlog: gauge!(BACKLOG),
    })
}

/// Where `label` is in `labels`.
fn find(labels: &[&str], label: &str) -> Option<usize> {
    labels.iter().position(|l| *l == label)
}

/// Describes every metric once, at start-up, and builds the handles of the per-message ones.
pub fn describe() {
    describe_counter!(
        PACKETS_RECEIVED,
        Unit::Count,
        "DHCP datagrams received, by message type"
    );
    describe_counter!(
        REPLIES_SENT,
        Unit::Count,
        "DHCP replies sent, by message type"
    );
    describe_counter!(DROPS, Unit::Count, "Datagrams that got no reply, by reason");
    describe_counter!(
        OPTIONS_IGNORED,
        Unit::Count,
        "Client options left out for a wrong length (the message handled as if they were absent), by option code"
    );
    describe_counter!(NAKS, Unit::Count, "DHCPNAKs sent, by reason");
    describe_counter!(
        ALLOCATIONS,
        Unit::Count,
        "Addresses offered (or bound at once: rapid commit, BOOTP) by how they were chosen, and DISCOVERs that found the pool exhausted"
    );
    describe_counter!(
        GRANTS,
        Unit::Count,
        "REQUESTs acknowledged, by how the lease was granted"
    );
    describe_counter!(
        DECLINES,
        Unit::Count,
        "Addresses put on probation after a DHCPDECLINE"
    );
    describe_counter!(RELEASES, Unit::Count, "Leases given back with DHCPRELEASE");
    describe_counter!(REDIS_ERRORS, Unit::Count, "Failed Redis calls, by kind");
    describe_counter!(
        SEND_ERRORS,
        Unit::Count,
        "Replies the socket refused to send"
    );
    describe_histogram!(
        MESSAGE_DURATION,
        Unit::Seconds,
        "Time from the kernel's receipt (socket buffer wait included) to reply or drop, by message type"
    );
    describe_gauge!(
        BACKLOG,
        Unit::Count,
        "Datagrams waiting in the node for a slot (above zero only under overload)"
    );
    describe_gauge!(
        READY,
        Unit::Count,
        "1 when the node can serve (Redis reachable, scripts loaded)"
    );
    describe_histogram!(
        SCRIPT_DURATION,
        Unit::Seconds,
        "Time of one Redis script call, by script"
    );
    describe_gauge!(
        CONFIG_VERSION,
        "Config version in force: 1 at start-up, +1 per reload"
    );
    describe_counter!(CONFIG_RELOADS, Unit::Count, "Config reloads, by result");
    describe_counter!(
        PING_CHECKS,
        Unit::Count,
        "ICMP checks before an offer, by result (free, in_use, error)"
    );
    describe_gauge!(POOL_SIZE, "Addresses in the subnet's pool");
    describe_gauge!(
        POOL_USED,
        "Addresses with a live record (bound, offered or declined)"
    );
    describe_gauge!(OFFERS_HELD, "Addresses held for an offer");
    describe_gauge!(
        DECLINED_ADDRESSES,
        "Addresses on probation after a DHCPDECLINE"
    );
    // Shown from the start (0), not from the first overload on.
    handles().backlog.set(0.0);
    for t in RECEIVED_TYPES {
        received_counter(t);
    }
    for t in REPLY_TYPES {
        reply_counter(t);
    }
}

/// The handle of `packets_received{type=TYPES[i]}`, made on first use.
fn received_counter(t: &'static str) -> Option<&'static Counter> {
    let i = find(&TYPES, t)?;
    Some(handles().received[i].get_or_init(|| counter!(PACKETS_RECEIVED, "type" => TYPES[i])))
}

fn reply_counter(t: &'static str) -> Option<&'static Counter> {
    let i = find(&TYPES, t)?;
    Some(handles().replied[i].get_or_init(|| counter!(REPLIES_SENT, "type" => TYPES[i])))
}

/// The label of a message type.
pub fn type_label(t: Option<dhcproto::v4::MessageType>) -> &'static str {
    use dhcproto::v4::MessageType as M;
    match t {
        Some(M::Discover) => "discover",
        Some(M::Offer) => "offer",
        Some(M::Request) => "request",
        Some(M::Decline) => "decline",
        Some(M::Ack) => "ack",
        Some(M::Nak) => "nak",
        Some(M::Release) => "release",
        Some(M::Inform) => "inform",
        Some(_) => "other",
        None => "invalid",
    }
}

pub fn received(msg_type: &'static str) {
    match received_counter(msg_type) {
        Some(c) => c.increment(1),
        None => counter!(PACKETS_RECEIVED, "type" => msg_type).increment(1),
    }
}

pub fn dropped(reason: &'static str) {
    counter!(DROPS, "reason" => reason).increment(1);
}

/// An option of a served message left out for its length. The label is the code: a bounded
/// set (the options with a length rule, see `protocol::packet`). The text is made only here,
/// off the path of a well-formed message.
pub fn option_ignored(code: u8) {
    counter!(OPTIONS_IGNORED, "code" => code.to_string()).increment(1);
}

pub fn replied(msg_type: &'static str) {
    match reply_counter(msg_type) {
        Some(c) => c.increment(1),
        None => counter!(REPLIES_SENT, "type" => msg_type).increment(1),
    }
}

pub fn nak(reason: &'static str) {
    counter!(NAKS, "reason" => reason).increment(1);
}

pub fn allocation(outcome: &'static str) {
    match find(&ALLOCATION_OUTCOMES, outcome) {
        Some(i) => handles().allocations[i].increment(1),
        None => counter!(ALLOCATIONS, "outcome" => outcome).increment(1),
    }
}

pub fn grant(outcome: &'static str) {
    match find(&GRANT_OUTCOMES, outcome) {
        Some(i) => handles().grants[i].increment(1),
        None => counter!(GRANTS, "outcome" => outcome).increment(1),
    }
}

pub fn declined() {
    counter!(DECLINES).increment(1);
}

pub fn released() {
    counter!(RELEASES).increment(1);
}

pub fn redis_error(kind: &'static str) {
    counter!(REDIS_ERRORS, "kind" => kind).increment(1);
}

pub fn ping_check(result: &'static str) {
    counter!(PING_CHECKS, "result" => result).increment(1);
}

pub fn send_error() {
    counter!(SEND_ERRORS).increment(1);
}

pub fn duration(msg_type: &'static str, d: Duration) {
    match find(&TYPES, msg_type) {
        Some(i) => handles().duration[i]
            .get_or_init(|| histogram!(MESSAGE_DURATION, "type" => TYPES[i]))
            .record(d.as_secs_f64()),
        None => histogram!(MESSAGE_DURATION, "type" => msg_type).record(d.as_secs_f64()),
    }
}

pub fn backlog(waiting: usize) {
    handles().backlog.set(waiting as f64);
}

pub fn ready(up: bool) {
    gauge!(READY).set(if up { 1.0 } else { 0.0 });
}

pub const SCRIPT_DURATION: &str = "dhcp_hive_redis_script_duration_seconds";

pub fn script_duration(script: &'static str, d: Duration) {
    match find(&SCRIPTS, script) {
        Some(i) => handles().scripts[i].record(d.as_secs_f64()),
        None => histogram!(SCRIPT_DURATION, "script" => script).record(d.as_secs_f64()),
    }
}

pub const CONFIG_VERSION: &str = "dhcp_hive_config_version";
pub const CONFIG_RELOADS: &str = "dhcp_hive_config_reloads_total";

pub fn config_version(v: u64) {
    gauge!(CONFIG_VERSION).set(v as f64);
}

pub fn config_reload(ok: bool) {
    counter!(CONFIG_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

pub const POOL_SIZE: &str = "dhcp_hive_pool_size";
pub const POOL_USED: &str = "dhcp_hive_pool_used";
pub const OFFERS_HELD: &str = "dhcp_hive_offers_held";
pub const DECLINED_ADDRESSES: &str = "dhcp_hive_declined_addresses";

/// Per-subnet gauges; `subnet` comes from the config, so the label set is bounded.
pub fn pool(subnet: &str, size: u32, in_use: u64, offered: u64, declined: u64) {
    let label = subnet.to_owned();
    gauge!(POOL_SIZE, "subnet" => label.clone()).set(f64::from(size));
    gauge!(POOL_USED, "subnet" => label.clone()).set(in_use as f64);
    gauge!(OFFERS_HELD, "subnet" => label.clone()).set(offered as f64);
    gauge!(DECLINED_ADDRESSES, "subnet" => label).set(declined as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Allocation, Grant};

    /// The per-message labels all have a prebuilt handle (else they fall back to the slow path).
    #[test]
    fn hot_labels_have_handles() {
        use dhcproto::v4::MessageType as M;
        let types = [
            M::Discover,
            M::Offer,
            M::Request,
            M::Decline,
            M::Ack,
            M::Nak,
            M::Release,
            M::Inform,
            M::Unknown(99),
        ];
        for t in types.map(Some).into_iter().chain([None]) {
            assert!(find(&TYPES, type_label(t)).is_some(), "{t:?}");
        }
        let allocations = [
            Allocation::Reserved,
            Allocation::Bound,
            Allocation::Sticky,
            Allocation::Requested,
            Allocation::New,
        ];
        let grants = [
            Grant::Reserved,
            Grant::Renewed,
            Grant::Selected,
            Grant::Recovered,
        ];
        for label in allocations
            .map(Allocation::as_str)
            .into_iter()
            .chain(["exhausted"])
        {
            assert!(find(&ALLOCATION_OUTCOMES, label).is_some(), "{label}");
        }
        for label in grants.map(Grant::as_str) {
            assert!(find(&GRANT_OUTCOMES, label).is_some(), "{label}");
        }
        assert_eq!(find(&TYPES, "nope"), None);
    }
}
