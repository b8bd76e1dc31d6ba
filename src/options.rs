//! Operator-configured DHCP options (Kea's `option-data`, dnsmasq's `dhcp-option`): the JSON
//! arrays of the config turned into wire payloads once, at config load.
//!
//! This module owns the table of known option names and types, the checks on each value, and
//! the two encodings that are more than bytes in a row: the RFC 3397 domain search list (with
//! RFC 1035 name compression) and the RFC 3442 classless static routes.
//!
//! It must not run per packet and does not know about requests: choosing which options a reply
//! carries (parameter request list, RFC 3442's "ignore option 3 when 121 is sent") belongs to
//! `protocol`, and splitting payloads longer than 255 bytes (RFC 3396) to the encoder.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

/// Largest payload accepted for one option. RFC 3396 lets the encoder split longer ones, but a
/// reply must still fit a client's maximum message size (576 bytes unless option 57 says more),
/// so a longer value is a pasted mistake rather than a deployment.
const MAX_PAYLOAD: usize = 1024;

/// Keys an option element may have.
const ELEMENT_KEYS: [&str; 4] = ["name", "code", "type", "value"];

/// One option ready for the wire: code and payload (payload may exceed 255 bytes; the encoder
/// splits it per RFC 3396).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionData {
    pub code: u8,
    pub data: Vec<u8>,
}

/// Options of one config level, in config order, at most one per code (a later duplicate is an
/// error).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OptionSet(pub Vec<OptionData>);

impl OptionSet {
    /// Parses the JSON array at config path `path` (e.g. "subnets[0].options");
    /// Err((json path of the bad element/field e.g. "subnets[0].options[2].value", problem)).
    pub fn from_json(path: &str, value: &Value) -> Result<Self, (String, String)> {
        let Value::Array(elements) = value else {
            return Err((
                path.to_owned(),
                format!("must be an array of options, not {}", json_noun(value)),
            ));
        };
        let mut options: Vec<OptionData> = Vec::with_capacity(elements.len());
        // Where each accepted option came from, to name both places of a duplicate.
        let mut origins: Vec<String> = Vec::with_capacity(elements.len());
        for (i, element) in elements.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let option = parse_element(&at, element)?;
            if let Some(k) = options.iter().position(|o| o.code == option.code) {
                return Err((
                    at,
                    format!(
                        "option {} is already set at {}",
                        describe(option.code),
                        origins[k]
                    ),
                ));
            }
            options.push(option);
            origins.push(at);
        }
        Ok(Self(options))
    }

    /// `self` overridden by `more_specific` (same code: the more specific wins), order: self's
    /// order then new codes.
    pub fn overlay(&self, more_specific: &Self) -> Self {
        let mut merged: Vec<OptionData> = self
            .0
            .iter()
            .map(|o| more_specific.get(o.code).unwrap_or(o).clone())
            .collect();
        merged.extend(
            more_specific
                .0
                .iter()
                .filter(|o| self.get(o.code).is_none())
                .cloned(),
        );
        Self(merged)
    }

    pub fn get(&self, code: u8) -> Option<&OptionData> {
        self.0.iter().find(|o| o.code == code)
    }
}

/// RFC 3397 encoding of a domain search list (option 119) with DNS name compression
/// (RFC 1035 4.1.4) across the list.
pub fn encode_domain_search(names: &[&str]) -> Result<Vec<u8>, String> {
    if names.is_empty() {
        return Err("the domain search list is empty".to_owned());
    }
    let mut out = Vec::new();
    // (offset, labels) of every name suffix written in full so far. RFC 3397 section 2: the
    // options are concatenated before decoding, so offsets count from the start of the whole
    // list, not from the start of any one 255-byte piece.
    let mut written: Vec<(usize, Vec<&str>)> = Vec::new();
    for name in names {
        let labels = domain_labels(name)?;
        let mut pointer = None;
        let mut first_reused = labels.len();
        // Longest suffix first, so the pointer replaces as many labels as possible. Suffixes are
        // compared byte for byte: folding case would change what the client is told.
        for start in 0..labels.len() {
            if let Some((offset, _)) = written.iter().find(|(_, l)| l[..] == labels[start..]) {
                pointer = Some(*offset);
                first_reused = start;
                break;
            }
        }
        for (k, label) in labels[..first_reused].iter().enumerate() {
            // A pointer has 14 bits of offset; a suffix beyond them is written but not offered.
            if out.len() < 0x4000 {
                written.push((out.len(), labels[k..].to_vec()));
            }
            // domain_labels bounds every label to 63 bytes, so the length fits a u8.
            out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(label.as_bytes());
        }
        match pointer {
            // The offset was below 0x4000 when recorded, so it fits the 14-bit field.
            Some(offset) => out.extend_from_slice(&(0xC000 | offset as u16).to_be_bytes()),
            None => out.push(0),
        }
    }
    Ok(out)
}

/// RFC 3442 encoding of classless static routes (option 121): (destination CIDR, router).
pub fn encode_classless_routes(routes: &[(Ipv4Net, Ipv4Addr)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(routes.len() * 9);
    for (destination, router) in routes {
        let width = destination.prefix_len();
        // RFC 3442 section 3: the mask width, then only the significant octets of the subnet
        // number (width / 8 rounded up); network() clears host bits the descriptor cannot carry.
        let significant = usize::from(width.div_ceil(8));
        out.push(width);
        out.extend_from_slice(&destination.network().octets()[..significant]);
        out.extend_from_slice(&router.octets());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The option table.

/// How an option's JSON value becomes bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ip,
    Ips,
    U8,
    U16,
    U32,
    /// Signed, sent as the two's complement u32 (option 2, RFC 2132 section 3.4).
    I32,
    Text,
    Bool,
    Hex,
    /// A domain search list, RFC 3397.
    Domains,
    /// Classless static routes, RFC 3442.
    Routes,
}

const KINDS: [Kind; 11] = [
    Kind::Ip,
    Kind::Ips,
    Kind::U8,
    Kind::U16,
    Kind::U32,
    Kind::I32,
    Kind::Text,
    Kind::Bool,
    Kind::Hex,
    Kind::Domains,
    Kind::Routes,
];

impl Kind {
    /// The name used in an element's `"type"`.
    const fn name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Ips => "ips",
            Self::U8 => "u8",
            Self::U16 => "u16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::Text => "string",
            Self::Bool => "bool",
            Self::Hex => "hex",
            Self::Domains => "domains",
            Self::Routes => "routes",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        KINDS.into_iter().find(|k| k.name() == name)
    }
}

/// A further rule on a number beyond its type's range.
#[derive(Debug, Clone, Copy)]
enum Limit {
    None,
    AtLeast(i64),
    OneOf(&'static [i64]),
}

#[derive(Debug)]
struct Known {
    code: u8,
    name: &'static str,
    kind: Kind,
    limit: Limit,
}

const fn known(code: u8, name: &'static str, kind: Kind) -> Known {
    Known {
        code,
        name,
        kind,
        limit: Limit::None,
    }
}

/// Options an operator may set by name (RFC 2132 unless noted).
const KNOWN: &[Known] = &[
    known(2, "time-offset", Kind::I32),
    known(3, "routers", Kind::Ips),
    known(4, "time-servers", Kind::Ips),
    known(6, "domain-name-servers", Kind::Ips),
    known(7, "log-servers", Kind::Ips),
    known(12, "host-name", Kind::Text),
    known(15, "domain-name", Kind::Text),
    // RFC 2132 section 5.1: the minimum legal MTU is 68.
    Known {
        limit: Limit::AtLeast(68),
        ..known(26, "interface-mtu", Kind::U16)
    },
    known(28, "broadcast-address", Kind::Ip),
    known(42, "ntp-servers", Kind::Ips),
    known(44, "netbios-name-servers", Kind::Ips),
    // RFC 2132 section 8.7: B-node, P-node, M-node, H-node.
    Known {
        limit: Limit::OneOf(&[1, 2, 4, 8]),
        ..known(46, "netbios-node-type", Kind::U8)
    },
    known(66, "tftp-server-name", Kind::Text),
    known(67, "boot-file-name", Kind::Text),
    known(119, "domain-search", Kind::Domains),
    known(121, "classless-static-routes", Kind::Routes),
    // Not in RFC 2132; used by PXE firmware (Cisco, later common) for TFTP servers.
    known(150, "tftp-server-address", Kind::Ips),
    // Not in RFC 2132; the de facto WPAD URL option.
    known(252, "wpad-url", Kind::Text),
];

/// Codes the server fills in from the subnet, the lease or the request itself; configuring them
/// would contradict the server (RFC 2131 section 4.3.1 table 3) or corrupt the framing (0, 255).
/// Names are Kea's, so a config copied from Kea gets this message rather than "unknown name".
const SERVER_OWNED: &[(u8, &str, &str)] = &[
    (0, "pad", ""),
    (1, "subnet-mask", " (from the subnet's prefix length)"),
    (50, "dhcp-requested-address", ""),
    (51, "dhcp-lease-time", " (from leaseTime)"),
    // With it a client reads the header's sname and file (`serverHostname`, `bootFileName`)
    // as more options (RFC 2132 section 9.3).
    (
        52,
        "dhcp-option-overload",
        " (sname and file are never overloaded)",
    ),
    (53, "dhcp-message-type", ""),
    (54, "dhcp-server-identifier", ""),
    (55, "dhcp-parameter-request-list", ""),
    (57, "dhcp-max-message-size", ""),
    (58, "dhcp-renewal-time", " (from renewalTime)"),
    (59, "dhcp-rebinding-time", " (from rebindingTime)"),
    (61, "dhcp-client-identifier", ""),
    // Protocol signals, not configuration: a configured 80 would tell every client its OFFER
    // was a commitment (RFC 4039), a configured 118 that its subnet selection was honoured
    // (RFC 3011), whatever happened.
    (
        80,
        "rapid-commit",
        " (sent in the ACK to a DISCOVER that asks for it, where `rapidCommit` is on)",
    ),
    (82, "dhcp-agent-options", ""),
    (
        118,
        "subnet-selection",
        " (echoed to the client that sent it)",
    ),
    (255, "end", ""),
];

/// "6 (domain-name-servers)" for a known code, "224" otherwise.
fn describe(code: u8) -> String {
    match KNOWN.iter().find(|k| k.code == code) {
        Some(k) => format!("{code} ({})", k.name),
        None => code.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// One element of an options array.

fn parse_element(at: &str, element: &Value) -> Result<OptionData, (String, String)> {
    let Value::Object(fields) = element else {
        return Err((
            at.to_owned(),
            format!(
                "an option must be an object like {{\"name\": \"routers\", \"value\": [...]}}, \
                 not {}",
                json_noun(element)
            ),
        ));
    };
    if let Some(key) = fields.keys().find(|k| !ELEMENT_KEYS.contains(&k.as_str())) {
        return Err((
            format!("{at}.{key}"),
            format!(
                "unknown key; an option has only {}",
                ELEMENT_KEYS.join(", ")
            ),
        ));
    }
    let field = |key: &str| format!("{at}.{key}");

    let by_name = match fields.get("name") {
        None => None,
        Some(name) => Some(name_to_code(name).map_err(|p| (field("name"), p))?),
    };
    let by_code = match fields.get("code") {
        None => None,
        Some(code) => Some(json_code(code).map_err(|p| (field("code"), p))?),
    };
    let (code, code_field) = match (by_name, by_code) {
        (Some(n), Some(c)) if n != c => {
            return Err((
                field("code"),
                format!("{c} does not match \"name\", which is option {n}"),
            ));
        }
        (Some(n), _) => (n, field("name")),
        (None, Some(c)) => (c, field("code")),
        (None, None) => {
            return Err((
                at.to_owned(),
                "an option needs a \"name\" or a \"code\"".to_owned(),
            ));
        }
    };
    if let Some((_, _, from)) = SERVER_OWNED.iter().find(|(c, ..)| *c == code) {
        return Err((
            code_field,
            format!("option {code} is set by the server{from}"),
        ));
    }
    let known = KNOWN.iter().find(|k| k.code == code);

    let kind = match (fields.get("type"), known) {
        (Some(ty), _) => {
            let kind = json_kind(ty).map_err(|p| (field("type"), p))?;
            // A known option keeps its type, so a typo cannot send routers as a string; "hex"
            // stays open as the escape hatch for raw bytes.
            if let Some(k) = known.filter(|k| kind != k.kind && kind != Kind::Hex) {
                return Err((
                    field("type"),
                    format!(
                        "option {} is of type \"{}\"; \"type\" may only be \"{}\" or \"hex\"",
                        describe(code),
                        k.kind.name(),
                        k.kind.name()
                    ),
                ));
            }
            kind
        }
        (None, Some(k)) => k.kind,
        (None, None) => {
            return Err((
                at.to_owned(),
                format!(
                    "option {code} is not a known option, so it needs a \"type\" (one of {})",
                    kind_names()
                ),
            ));
        }
    };
    // The table's extra rule only applies to the table's own type, not to raw hex.
    let limit = known
        .filter(|k| k.kind == kind)
        .map_or(Limit::None, |k| k.limit);

    let value_at = field("value");
    let Some(value) = fields.get("value") else {
        return Err((at.to_owned(), "an option needs a \"value\"".to_owned()));
    };
    let data = encode_value(&value_at, kind, limit, value)?;
    if data.len() > MAX_PAYLOAD {
        return Err((
            value_at,
            format!(
                "encodes to {} bytes; an option may have at most {MAX_PAYLOAD}",
                data.len()
            ),
        ));
    }
    Ok(OptionData { code, data })
}

fn name_to_code(name: &Value) -> Result<u8, String> {
    let Value::String(name) = name else {
        return Err(format!("must be a string, not {}", json_noun(name)));
    };
    if let Some(k) = KNOWN.iter().find(|k| k.name == name) {
        return Ok(k.code);
    }
    if let Some((code, ..)) = SERVER_OWNED.iter().find(|(_, n, _)| n == name) {
        return Ok(*code);
    }
    let names: Vec<&str> = KNOWN.iter().map(|k| k.name).collect();
    Err(format!(
        "unknown option name {name:?}; use {{\"code\": N, \"type\": ...}} or one of {}",
        names.join(", ")
    ))
}

fn json_code(code: &Value) -> Result<u8, String> {
    code.as_u64()
        .and_then(|c| u8::try_from(c).ok())
        .ok_or_else(|| format!("{code} is not an option code; it must be a number from 1 to 254"))
}

fn json_kind(ty: &Value) -> Result<Kind, String> {
    ty.as_str()
        .and_then(Kind::from_name)
        .ok_or_else(|| format!("{ty} is not a type; it must be one of {}", kind_names()))
}

fn kind_names() -> String {
    let names: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
    names.join(", ")
}

// ---------------------------------------------------------------------------------------------
// Values: JSON in, payload or (path, problem) out.

fn encode_value(
    at: &str,
    kind: Kind,
    limit: Limit,
    value: &Value,
) -> Result<Vec<u8>, (String, String)> {
    let here = |problem: String| (at.to_owned(), problem);
    match kind {
        Kind::Ip => Ok(json_ip(value).map_err(here)?.octets().to_vec()),
        Kind::Ips => {
            let mut out = Vec::new();
            for (j, item) in non_empty_array(value).map_err(here)?.iter().enumerate() {
                let ip = json_ip(item).map_err(|p| (format!("{at}[{j}]"), p))?;
                out.extend_from_slice(&ip.octets());
            }
            Ok(out)
        }
        Kind::U8 => number(value, 0, u8::MAX.into(), limit)
            .map(|n| vec![n as u8])
            .map_err(here),
        Kind::U16 => number(value, 0, u16::MAX.into(), limit)
            .map(|n| (n as u16).to_be_bytes().to_vec())
            .map_err(here),
        Kind::U32 => number(value, 0, u32::MAX.into(), limit)
            .map(|n| (n as u32).to_be_bytes().to_vec())
            .map_err(here),
        // Two's complement, as RFC 2132 section 3.4 asks for the offset from UTC.
        Kind::I32 => number(value, i32::MIN.into(), i32::MAX.into(), limit)
            .map(|n| (n as i32).to_be_bytes().to_vec())
            .map_err(here),
        Kind::Text => text(value).map(String::into_bytes).map_err(here),
        Kind::Bool => match value {
            Value::Bool(b) => Ok(vec![u8::from(*b)]),
            other => Err(here(format!(
                "must be true or false, not {}",
                json_noun(other)
            ))),
        },
        Kind::Hex => match value {
            Value::String(s) => hex(s).map_err(here),
            other => Err(here(format!(
                "must be a hex string like \"01:ab\" or \"01ab\", not {}",
                json_noun(other)
            ))),
        },
        Kind::Domains => {
            let items = non_empty_array(value).map_err(here)?;
            let mut names = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                let item_at = || format!("{at}[{j}]");
                let Value::String(name) = item else {
                    return Err((
                        item_at(),
                        format!("must be a domain name, not {}", json_noun(item)),
                    ));
                };
                // Checked one by one so that the error names the bad entry.
                domain_labels(name).map_err(|p| (item_at(), p))?;
                names.push(name.as_str());
            }
            encode_domain_search(&names).map_err(here)
        }
        Kind::Routes => {
            let items = non_empty_array(value).map_err(here)?;
            let mut routes = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                routes.push(route(&format!("{at}[{j}]"), item)?);
            }
            Ok(encode_classless_routes(&routes))
        }
    }
}

/// A whole number in `min..=max` that also obeys `limit`. The casts after it cannot truncate.
fn number(value: &Value, min: i64, max: i64, limit: Limit) -> Result<i64, String> {
    let Value::Number(n) = value else {
        return Err(format!("must be a number, not {}", json_noun(value)));
    };
    let Some(n) = n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)) else {
        return Err(format!("{n} is not a whole number"));
    };
    if !(min..=max).contains(&n) {
        return Err(format!(
            "{value} is out of range; it must be from {min} to {max}"
        ));
    }
    match limit {
        Limit::AtLeast(low) if n < low => {
            Err(format!("{n} is too small; it must be at least {low}"))
        }
        Limit::OneOf(allowed) if !allowed.contains(&n) => {
            let allowed: Vec<String> = allowed.iter().map(i64::to_string).collect();
            Err(format!("{n} must be one of {}", allowed.join(", ")))
        }
        _ => Ok(n),
    }
}

/// Printable ASCII: RFC 2132 strings are NVT ASCII, and a control character or a NUL would be
/// read differently by different clients.
fn text(value: &Value) -> Result<String, String> {
    let Value::String(s) = value else {
        return Err(format!("must be a string, not {}", json_noun(value)));
    };
    if s.is_empty() {
        // RFC 2132: every string option has a minimum length of 1.
        return Err("must not be empty".to_owned());
    }
    if let Some(c) = s.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "{s:?} contains {c:?}; only printable ASCII is allowed"
        ));
    }
    Ok(s.clone())
}

/// "01:ab:ff" (two digits per octet) or "01abff".
fn hex(text: &str) -> Result<Vec<u8>, String> {
    let bad = |why: &str| format!("{text:?} is not hex like \"01:ab\" or \"01ab\": {why}");
    let digits: String = if text.contains(':') {
        let parts: Vec<&str> = text.split(':').collect();
        if parts.iter().any(|p| p.len() != 2) {
            return Err(bad("each octet between colons needs two digits"));
        }
        parts.concat()
    } else {
        text.to_owned()
    };
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("only 0-9, a-f and colons are allowed"));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(bad("odd number of digits"));
    }
    // All digits were checked above, so each pair parses.
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad("bad digit")))
        .collect()
}

fn non_empty_array(value: &Value) -> Result<&Vec<Value>, String> {
    match value {
        Value::Array(items) if items.is_empty() => Err("must not be empty".to_owned()),
        Value::Array(items) => Ok(items),
        other => Err(format!("must be an array, not {}", json_noun(other))),
    }
}

/// An address a client can send to: not 0.0.0.0, not a broadcast, not multicast.
fn json_ip(value: &Value) -> Result<Ipv4Addr, String> {
    let Value::String(text) = value else {
        return Err(format!(
            "must be an IPv4 address string, not {}",
            json_noun(value)
        ));
    };
    unicast(parse_ipv4(text)?)
}

fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IPv4 address"))
}

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

/// `{"destination": "10.0.0.0/8", "router": "192.0.2.1"}` or `"10.0.0.0/8 via 192.0.2.1"`.
fn route(at: &str, item: &Value) -> Result<(Ipv4Net, Ipv4Addr), (String, String)> {
    let here = |problem: String| (at.to_owned(), problem);
    match item {
        Value::String(text) => {
            let words: Vec<&str> = text.split_whitespace().collect();
            let [destination, "via", router] = words[..] else {
                return Err(here(format!(
                    "{text:?} is not a route like \"10.0.0.0/8 via 192.0.2.1\""
                )));
            };
            Ok((
                destination_net(destination).map_err(here)?,
                route_router(router).map_err(here)?,
            ))
        }
        Value::Object(fields) => route_object(at, fields),
        other => Err(here(format!(
            "a route must be an object with \"destination\" and \"router\" or a string like \
             \"10.0.0.0/8 via 192.0.2.1\", not {}",
            json_noun(other)
        ))),
    }
}

fn route_object(
    at: &str,
    fields: &Map<String, Value>,
) -> Result<(Ipv4Net, Ipv4Addr), (String, String)> {
    if let Some(key) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "destination" | "router"))
    {
        return Err((
            format!("{at}.{key}"),
            "unknown key; a route has only destination, router".to_owned(),
        ));
    }
    let text_of = |key: &str| -> Result<&str, (String, String)> {
        match fields.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err((
                format!("{at}.{key}"),
                format!("must be a string, not {}", json_noun(other)),
            )),
            None => Err((at.to_owned(), format!("a route needs a {key:?}"))),
        }
    };
    let destination = text_of("destination")?;
    let router = text_of("router")?;
    Ok((
        destination_net(destination).map_err(|p| (format!("{at}.destination"), p))?,
        route_router(router).map_err(|p| (format!("{at}.router"), p))?,
    ))
}

fn destination_net(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| format!("{text:?} is not a destination like 10.0.0.0/8"))?;
    // The descriptor drops host bits (RFC 3442 section 3), so a route written with them would
    // silently become another route; say so instead.
    if net.trunc() != net {
        return Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn route_router(text: &str) -> Result<Ipv4Addr, String> {
    let ip = parse_ipv4(text)?;
    // 0.0.0.0 is allowed: several clients (systemd-networkd, dhcpcd) install such a route as
    // on-link, which is how an operator says "reachable without a gateway".
    if ip.is_unspecified() {
        Ok(ip)
    } else {
        unicast(ip)
    }
}

/// The labels of a search domain: RFC 1123 host name syntax (letters, digits, hyphens), labels
/// of 1 to 63 bytes, at most 255 bytes on the wire (RFC 1035 section 2.3.4); one trailing dot.
fn domain_labels(name: &str) -> Result<Vec<&str>, String> {
    let body = name.strip_suffix('.').unwrap_or(name);
    let bad = |why: &str| format!("{name:?} is not a domain name: {why}");
    if body.is_empty() {
        return Err(bad("it is empty"));
    }
    let labels: Vec<&str> = body.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(bad("it has an empty label"));
        } else if label.len() > 63 {
            return Err(bad("a label is longer than 63 characters"));
        } else if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("only letters, digits, hyphens and dots are allowed"));
        } else if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with a hyphen"));
        }
    }
    // Each label costs its length plus one length byte; the root label is one more.
    if labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1 > 255 {
        return Err(bad("longer than 255 bytes on the wire"));
    }
    Ok(labels)
}

/// "a string", "an object"... for messages about a value of the wrong JSON kind.
fn json_noun(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PATH: &str = "subnets[0].options";

    fn parse(value: &Value) -> Result<OptionSet, (String, String)> {
        OptionSet::from_json(PATH, value)
    }

    fn ok(value: &Value) -> OptionSet {
        parse(value).unwrap_or_else(|(at, p)| panic!("expected valid options, got {at}: {p}"))
    }

    /// The payload of a one-element array.
    fn one(element: Value) -> Vec<u8> {
        let set = ok(&json!([element]));
        assert_eq!(set.0.len(), 1);
        set.0[0].data.clone()
    }

    /// Assert that `value` fails at `at` (relative to `PATH`) with a problem mentioning `word`.
    fn fails(value: &Value, at: &str, word: &str) {
        match parse(value) {
            Err((path, problem)) => {
                assert_eq!(path, format!("{PATH}{at}"), "problem was: {problem}");
                assert!(
                    problem.contains(word),
                    "problem at {path} should mention {word:?}: {problem}"
                );
            }
            Ok(set) => panic!("expected an error at {at}, got {set:?}"),
        }
    }

    fn fails_one(element: Value, at: &str, word: &str) {
        fails(&json!([element]), at, word);
    }

    fn net(text: &str) -> Ipv4Net {
        text.parse()
            .unwrap_or_else(|e| panic!("{text} is a test network: {e}"))
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse()
            .unwrap_or_else(|e| panic!("{text} is a test address: {e}"))
    }

    // --- RFC 3397 -------------------------------------------------------------------------

    #[test]
    fn rfc3397_example_bytes() {
        // RFC 3397 section 3: the three 9-byte pieces of the example, concatenated.
        let expected: &[u8] = &[
            3, b'e', b'n', b'g', 5, b'a', b'p', b'p', b'l', //
            b'e', 3, b'c', b'o', b'm', 0, 9, b'm', b'a', //
            b'r', b'k', b'e', b't', b'i', b'n', b'g', 0xC0, 0x04,
        ];
        let encoded = encode_domain_search(&["eng.apple.com.", "marketing.apple.com."]);
        assert_eq!(encoded.as_deref(), Ok(expected));
        // Without the trailing dots the names are the same.
        let encoded = encode_domain_search(&["eng.apple.com", "marketing.apple.com"]);
        assert_eq!(encoded.as_deref(), Ok(expected));
    }

    #[test]
    fn domain_search_compression() {
        // A repeated name is a bare pointer; a whole-name match is preferred to a suffix.
        let encoded = encode_domain_search(&["example.com", "example.com", "a.example.com"]);
        let expected: &[u8] = &[
            7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, // at 0
            0xC0, 0x00, // "example.com" again
            1, b'a', 0xC0, 0x00, // "a" + pointer
        ];
        assert_eq!(encoded.as_deref(), Ok(expected));
        // A suffix written only as part of a later name is reusable too ("com" at offset 8).
        let encoded = encode_domain_search(&["example.com", "other.com"]);
        let expected: &[u8] = &[
            7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, //
            5, b'o', b't', b'h', b'e', b'r', 0xC0, 0x08,
        ];
        assert_eq!(encoded.as_deref(), Ok(expected));
        // Unrelated names share nothing.
        assert_eq!(
            encode_domain_search(&["a.b", "c.d"]).as_deref(),
            Ok(&[1, b'a', 1, b'b', 0, 1, b'c', 1, b'd', 0][..])
        );
    }

    #[test]
    fn domain_search_rejects_bad_names() {
        assert!(encode_domain_search(&[]).is_err());
        for bad in ["", ".", "a..b", "-a.com", "a_b.com", "é.com"] {
            assert!(encode_domain_search(&[bad]).is_err(), "{bad:?} accepted");
        }
        let long_label = "a".repeat(64);
        assert!(encode_domain_search(&[&long_label]).is_err());
        // 4 labels of 63 bytes: 4 * 64 + 1 = 257 bytes on the wire.
        let long_name = vec!["a".repeat(63); 4].join(".");
        assert!(encode_domain_search(&[&long_name]).is_err());
        let max_name = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "a".repeat(61));
        assert_eq!(encode_domain_search(&[&max_name]).map(|v| v.len()), Ok(255));
    }

    #[test]
    fn domain_search_long_list_exceeds_255_with_valid_pointers() {
        // Longer than one option: the encoder splits it (RFC 3396); pointers still use offsets
        // into the whole list.
        let names: Vec<String> = (0..40).map(|i| format!("host{i:02}.example.org")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let encoded = encode_domain_search(&refs).unwrap_or_default();
        // The first name in full (6+1 + 7+1 + 3+1 + 1 = 20), then 39 of "host" label + pointer.
        assert_eq!(encoded.len(), 20 + 39 * (7 + 2));
        assert_eq!(&encoded[27..29], &[0xC0, 7]);
    }

    // --- RFC 3442 -------------------------------------------------------------------------

    #[test]
    fn rfc3442_destination_descriptors() {
        // RFC 3442 section 3 table, each followed by the router.
        let router = ip("192.0.2.1");
        let cases: [(&str, &[u8]); 6] = [
            ("0.0.0.0/0", &[0]),
            ("10.0.0.0/8", &[8, 10]),
            ("10.17.0.0/16", &[16, 10, 17]),
            ("10.27.129.0/24", &[24, 10, 27, 129]),
            ("10.229.0.128/25", &[25, 10, 229, 0, 128]),
            ("10.198.122.47/32", &[32, 10, 198, 122, 47]),
        ];
        for (destination, descriptor) in cases {
            let mut expected = descriptor.to_vec();
            expected.extend_from_slice(&[192, 0, 2, 1]);
            assert_eq!(
                encode_classless_routes(&[(net(destination), router)]),
                expected,
                "{destination}"
            );
        }
    }

    #[test]
    fn rfc3442_routes_concatenate() {
        let routes = [
            (net("0.0.0.0/0"), ip("192.0.2.1")),
            (net("10.17.0.0/16"), ip("192.0.2.2")),
            (net("10.229.0.128/25"), ip("192.0.2.3")),
        ];
        assert_eq!(
            encode_classless_routes(&routes),
            [
                0, 192, 0, 2, 1, //
                16, 10, 17, 192, 0, 2, 2, //
                25, 10, 229, 0, 128, 192, 0, 2, 3,
            ]
        );
        assert!(encode_classless_routes(&[]).is_empty());
        // Host bits are not carried: the descriptor holds only the significant octets.
        assert_eq!(
            encode_classless_routes(&[(net("10.1.2.3/8"), ip("192.0.2.1"))]),
            [8, 10, 192, 0, 2, 1]
        );
    }

    #[test]
    fn routes_from_json_objects_and_strings() {
        let from_objects = one(json!({"name": "classless-static-routes", "value": [
            {"destination": "10.0.0.0/8", "router": "192.0.2.1"},
            {"destination": "0.0.0.0/0", "router": "192.0.2.254"},
        ]}));
        let from_strings = one(json!({"name": "classless-static-routes", "value": [
            "10.0.0.0/8 via 192.0.2.1", "0.0.0.0/0   via 192.0.2.254",
        ]}));
        let expected = [8, 10, 192, 0, 2, 1, 0, 192, 0, 2, 254];
        assert_eq!(from_objects, expected);
        assert_eq!(from_strings, expected);
        // On-link route: router 0.0.0.0.
        assert_eq!(
            one(json!({"code": 121, "value": ["192.0.2.0/24 via 0.0.0.0"]})),
            [24, 192, 0, 2, 0, 0, 0, 0]
        );
    }

    #[test]
    fn routes_rejected_with_paths() {
        let element = |value: Value| json!({"name": "classless-static-routes", "value": value});
        fails_one(element(json!([])), "[0].value", "empty");
        fails_one(
            element(json!("10.0.0.0/8 via 192.0.2.1")),
            "[0].value",
            "array",
        );
        fails_one(
            element(json!(["10.0.0.0/8 via 192.0.2.1", "10.0.0.0/8 192.0.2.1"])),
            "[0].value[1]",
            "not a route",
        );
        fails_one(
            element(json!(["10.0.0.1/8 via 192.0.2.1"])),
            "[0].value[0]",
            "did you mean 10.0.0.0/8",
        );
        fails_one(
            element(json!([{"destination": "10.0.0.0/33", "router": "192.0.2.1"}])),
            "[0].value[0].destination",
            "not a destination",
        );
        fails_one(
            element(json!([{"destination": "10.0.0.0/8", "router": "224.0.0.1"}])),
            "[0].value[0].router",
            "multicast",
        );
        fails_one(
            element(json!([{"destination": "10.0.0.0/8"}])),
            "[0].value[0]",
            "\"router\"",
        );
        fails_one(
            element(json!([{"destination": "10.0.0.0/8", "router": "192.0.2.1", "metric": 1}])),
            "[0].value[0].metric",
            "unknown key",
        );
        fails_one(
            element(json!([{"destination": 10, "router": "192.0.2.1"}])),
            "[0].value[0].destination",
            "must be a string",
        );
        fails_one(element(json!([7])), "[0].value[0]", "a route must be");
    }

    // --- Types ----------------------------------------------------------------------------

    #[test]
    fn ip_and_ips() {
        assert_eq!(
            one(json!({"name": "broadcast-address", "value": "192.0.2.255"})),
            [192, 0, 2, 255]
        );
        assert_eq!(
            one(json!({"name": "domain-name-servers", "value": ["192.0.2.53", "198.51.100.53"]})),
            [192, 0, 2, 53, 198, 51, 100, 53]
        );
        assert_eq!(
            one(json!({"code": 224, "type": "ip", "value": "10.0.0.1"})),
            [10, 0, 0, 1]
        );
        let dns = |value: Value| json!({"name": "domain-name-servers", "value": value});
        fails_one(dns(json!([])), "[0].value", "empty");
        fails_one(dns(json!("192.0.2.53")), "[0].value", "array");
        fails_one(
            dns(json!(["192.0.2.53", "192.0.2.300"])),
            "[0].value[1]",
            "not an IPv4",
        );
        fails_one(dns(json!(["0.0.0.0"])), "[0].value[0]", "unspecified");
        fails_one(dns(json!(["255.255.255.255"])), "[0].value[0]", "broadcast");
        fails_one(dns(json!(["239.1.1.1"])), "[0].value[0]", "multicast");
        fails_one(
            dns(json!([53])),
            "[0].value[0]",
            "must be an IPv4 address string",
        );
        fails_one(
            json!({"name": "broadcast-address", "value": ["192.0.2.255"]}),
            "[0].value",
            "must be an IPv4 address string",
        );
    }

    #[test]
    fn unsigned_numbers() {
        let typed = |ty: &str, value: Value| json!({"code": 224, "type": ty, "value": value});
        assert_eq!(one(typed("u8", json!(255))), [255]);
        assert_eq!(one(typed("u16", json!(0x1234))), [0x12, 0x34]);
        assert_eq!(one(typed("u32", json!(4_294_967_295u32))), [0xff; 4]);
        assert_eq!(one(typed("u32", json!(86_400))), [0, 1, 0x51, 0x80]);
        fails_one(typed("u8", json!(256)), "[0].value", "out of range");
        fails_one(typed("u8", json!(-1)), "[0].value", "out of range");
        fails_one(typed("u16", json!(65_536)), "[0].value", "out of range");
        fails_one(
            typed("u32", json!(4_294_967_296u64)),
            "[0].value",
            "out of range",
        );
        fails_one(typed("u32", json!(u64::MAX)), "[0].value", "out of range");
        fails_one(typed("u16", json!(1.5)), "[0].value", "whole number");
        fails_one(typed("u16", json!("1500")), "[0].value", "must be a number");
    }

    #[test]
    fn known_number_rules() {
        assert_eq!(
            one(json!({"name": "interface-mtu", "value": 1500})),
            [0x05, 0xdc]
        );
        assert_eq!(one(json!({"name": "interface-mtu", "value": 68})), [0, 68]);
        fails_one(
            json!({"name": "interface-mtu", "value": 67}),
            "[0].value",
            "at least 68",
        );
        assert_eq!(one(json!({"name": "netbios-node-type", "value": 8})), [8]);
        fails_one(
            json!({"name": "netbios-node-type", "value": 3}),
            "[0].value",
            "one of 1, 2, 4, 8",
        );
        // Raw hex bypasses the table's rule on purpose.
        assert_eq!(
            one(json!({"code": 26, "type": "hex", "value": "0010"})),
            [0, 0x10]
        );
    }

    #[test]
    fn time_offset_is_twos_complement() {
        let offset = |v: Value| one(json!({"name": "time-offset", "value": v}));
        assert_eq!(offset(json!(3600)), [0, 0, 0x0e, 0x10]);
        assert_eq!(offset(json!(-18_000)), [0xff, 0xff, 0xb9, 0xb0]);
        assert_eq!(offset(json!(i32::MIN)), [0x80, 0, 0, 0]);
        fails_one(
            json!({"name": "time-offset", "value": 2_147_483_648u32}),
            "[0].value",
            "out of range",
        );
        fails_one(
            json!({"code": 224, "type": "i32", "value": -2_147_483_649i64}),
            "[0].value",
            "out of range",
        );
    }

    #[test]
    fn strings() {
        assert_eq!(
            one(json!({"name": "tftp-server-name", "value": "boot.example.net"})),
            b"boot.example.net"
        );
        assert_eq!(
            one(json!({"name": "wpad-url", "value": "http://wpad/wpad.dat"})),
            b"http://wpad/wpad.dat"
        );
        let boot = |value: Value| json!({"name": "boot-file-name", "value": value});
        assert_eq!(one(boot(json!("pxelinux.0 ~"))), b"pxelinux.0 ~");
        fails_one(boot(json!("")), "[0].value", "empty");
        fails_one(boot(json!("a\tb")), "[0].value", "printable ASCII");
        fails_one(boot(json!("caf\u{e9}")), "[0].value", "printable ASCII");
        fails_one(boot(json!("a\u{0}")), "[0].value", "printable ASCII");
        fails_one(boot(json!(1)), "[0].value", "must be a string");
        fails_one(boot(json!("x".repeat(1025))), "[0].value", "at most 1024");
        assert_eq!(one(boot(json!("x".repeat(1024)))).len(), 1024);
    }

    #[test]
    fn bools() {
        let flag = |value: Value| json!({"code": 19, "type": "bool", "value": value});
        assert_eq!(one(flag(json!(true))), [1]);
        assert_eq!(one(flag(json!(false))), [0]);
        fails_one(flag(json!(1)), "[0].value", "true or false");
        fails_one(flag(json!("true")), "[0].value", "true or false");
    }

    #[test]
    fn hex_forms() {
        let raw = |value: Value| json!({"code": 43, "type": "hex", "value": value});
        assert_eq!(one(raw(json!("01:ab:FF"))), [0x01, 0xab, 0xff]);
        assert_eq!(one(raw(json!("01abFF"))), [0x01, 0xab, 0xff]);
        // Zero-length options exist (RFC 4039 rapid commit).
        assert_eq!(one(raw(json!(""))), Vec::<u8>::new());
        fails_one(raw(json!("abc")), "[0].value", "odd number");
        fails_one(raw(json!("1:ab")), "[0].value", "two digits");
        fails_one(raw(json!("01::ab")), "[0].value", "two digits");
        fails_one(raw(json!("0x01")), "[0].value", "only 0-9");
        fails_one(raw(json!("01 ab")), "[0].value", "only 0-9");
        fails_one(raw(json!([1, 2])), "[0].value", "hex string");
    }

    #[test]
    fn domain_search_from_json() {
        let search = |value: Value| json!({"name": "domain-search", "value": value});
        assert_eq!(
            one(search(json!(["eng.apple.com.", "marketing.apple.com."]))),
            encode_domain_search(&["eng.apple.com.", "marketing.apple.com."]).unwrap_or_default()
        );
        fails_one(search(json!([])), "[0].value", "empty");
        fails_one(
            search(json!(["ok.example", "bad..example"])),
            "[0].value[1]",
            "empty label",
        );
        fails_one(
            search(json!(["ok.example", 3])),
            "[0].value[1]",
            "must be a domain name",
        );
        fails_one(search(json!("example.com")), "[0].value", "array");
    }

    // --- Elements -------------------------------------------------------------------------

    #[test]
    fn by_name_and_by_code_give_the_same_bytes() {
        let cases = [
            ("routers", json!(["192.0.2.1"])),
            ("domain-name", json!("example.com")),
            ("interface-mtu", json!(9000)),
            ("time-offset", json!(-3600)),
            ("domain-search", json!(["a.example", "b.example"])),
            (
                "classless-static-routes",
                json!(["0.0.0.0/0 via 192.0.2.1"]),
            ),
            ("tftp-server-address", json!(["192.0.2.69"])),
        ];
        for (name, value) in cases {
            let known = KNOWN.iter().find(|k| k.name == name);
            let Some(known) = known else {
                panic!("{name} is in the table");
            };
            let by_name = ok(&json!([{"name": name, "value": value}]));
            let by_code = ok(&json!([{"code": known.code, "value": value}]));
            let typed =
                ok(&json!([{"code": known.code, "type": known.kind.name(), "value": value}]));
            let both = ok(&json!([{"name": name, "code": known.code, "value": value}]));
            assert_eq!(by_name, by_code, "{name}");
            assert_eq!(by_name, typed, "{name}");
            assert_eq!(by_name, both, "{name}");
            assert_eq!(by_name.0[0].code, known.code);
        }
    }

    #[test]
    fn table_is_consistent() {
        for (i, k) in KNOWN.iter().enumerate() {
            assert!(
                KNOWN[i + 1..]
                    .iter()
                    .all(|o| o.code != k.code && o.name != k.name),
                "{} twice",
                k.name
            );
            assert!(
                SERVER_OWNED
                    .iter()
                    .all(|(c, n, _)| *c != k.code && *n != k.name),
                "{} is server-owned",
                k.name
            );
        }
        for kind in KINDS {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
        }
    }

    #[test]
    fn server_owned_codes_refused() {
        for code in [
            0u8, 1, 50, 51, 52, 53, 54, 55, 57, 58, 59, 61, 80, 82, 118, 255,
        ] {
            fails_one(
                json!({"code": code, "type": "hex", "value": "00"}),
                "[0].code",
                &format!("option {code} is set by the server"),
            );
        }
        fails_one(
            json!({"name": "subnet-mask", "value": "255.255.255.0"}),
            "[0].name",
            "option 1 is set by the server",
        );
        fails_one(
            json!({"name": "dhcp-lease-time", "value": 3600}),
            "[0].name",
            "leaseTime",
        );
    }

    #[test]
    fn duplicates_refused() {
        fails(
            &json!([
                {"name": "domain-name", "value": "example.com"},
                {"name": "routers", "value": ["192.0.2.1"]},
                {"code": 3, "value": ["192.0.2.2"]},
            ]),
            "[2]",
            "option 3 (routers) is already set at subnets[0].options[1]",
        );
        fails(
            &json!([
                {"code": 224, "type": "u8", "value": 1},
                {"code": 224, "type": "hex", "value": "01"},
            ]),
            "[1]",
            "option 224 is already set at subnets[0].options[0]",
        );
    }

    #[test]
    fn element_shape_errors() {
        fails(&json!({"name": "routers"}), "", "must be an array");
        fails(&json!(["routers"]), "[0]", "must be an object");
        fails_one(
            json!({"name": "routers", "value": ["192.0.2.1"], "always-send": true}),
            "[0].always-send",
            "unknown key",
        );
        fails_one(json!({"value": "x"}), "[0]", "\"name\" or a \"code\"");
        fails_one(json!({"name": "routers"}), "[0]", "needs a \"value\"");
        fails_one(
            json!({"name": "router", "value": []}),
            "[0].name",
            "unknown option name",
        );
        fails_one(
            json!({"name": 3, "value": []}),
            "[0].name",
            "must be a string",
        );
        fails_one(
            json!({"code": 256, "value": 1}),
            "[0].code",
            "not an option code",
        );
        fails_one(
            json!({"code": "3", "value": []}),
            "[0].code",
            "not an option code",
        );
        fails_one(json!({"code": 224, "value": 1}), "[0]", "needs a \"type\"");
        fails_one(
            json!({"code": 224, "type": "int", "value": 1}),
            "[0].type",
            "not a type",
        );
        fails_one(
            json!({"name": "routers", "code": 6, "value": ["192.0.2.1"]}),
            "[0].code",
            "does not match",
        );
        fails_one(
            json!({"name": "routers", "type": "string", "value": "192.0.2.1"}),
            "[0].type",
            "may only be \"ips\" or \"hex\"",
        );
        // The first bad element is reported, with its index.
        fails(
            &json!([
                {"name": "routers", "value": ["192.0.2.1"]},
                {"name": "domain-name", "value": ""},
            ]),
            "[1].value",
            "empty",
        );
    }

    #[test]
    fn empty_array_and_config_order() {
        assert_eq!(ok(&json!([])), OptionSet::default());
        let set = ok(&json!([
            {"name": "ntp-servers", "value": ["192.0.2.123"]},
            {"name": "routers", "value": ["192.0.2.1"]},
            {"code": 224, "type": "hex", "value": "ff"},
        ]));
        let codes: Vec<u8> = set.0.iter().map(|o| o.code).collect();
        assert_eq!(codes, [42, 3, 224]);
        assert_eq!(
            set.get(3).map(|o| o.data.as_slice()),
            Some(&[192, 0, 2, 1][..])
        );
        assert_eq!(set.get(6), None);
    }

    #[test]
    fn overlay_precedence_and_order() {
        let data = |code: u8, byte: u8| OptionData {
            code,
            data: vec![byte],
        };
        let global = OptionSet(vec![data(6, 1), data(15, 1), data(42, 1)]);
        let subnet = OptionSet(vec![data(42, 2), data(3, 2), data(6, 2)]);
        let merged = global.overlay(&subnet);
        // Global order kept, the subnet's values win, the subnet's new code appended.
        assert_eq!(
            merged,
            OptionSet(vec![data(6, 2), data(15, 1), data(42, 2), data(3, 2)])
        );
        // Three levels: global < subnet < reservation.
        let reservation = OptionSet(vec![data(15, 3), data(12, 3)]);
        assert_eq!(
            merged.overlay(&reservation),
            OptionSet(vec![
                data(6, 2),
                data(15, 3),
                data(42, 2),
                data(3, 2),
                data(12, 3)
            ])
        );
        assert_eq!(global.overlay(&OptionSet::default()), global);
        assert_eq!(OptionSet::default().overlay(&subnet), subnet);
    }
}
