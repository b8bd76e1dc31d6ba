//! Bytes to a checked request, and a reply to bytes.
//!
//! `dhcproto` decodes the BOOTP frame and the options, but it silently stops at the first option
//! it cannot read; a server must instead drop such a packet. So the options area is first walked
//! here, byte by byte: the instances of a code are joined (RFC 3396), and every length is
//! checked on the joined value (RFC 2131 section 2, RFC 2132 section 2).

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};

use super::Drop;
use crate::options::OptionData;

/// Fixed BOOTP header (RFC 2131 figure 1) before the magic cookie.
const HEADER_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// RFC 2131 section 2: every host accepts 576-byte datagrams, so 576 is the reply limit unless
/// the client announces more in option 57.
pub const MIN_MAX_SIZE: usize = 576;
/// IP (20) and UDP (8) headers, counted against option 57 (RFC 2132 section 9.10).
const IP_UDP_HEADERS: usize = 28;
/// The size of a BOOTP message (RFC 951: a 64-byte vendor area).
const BOOTP_SIZE: usize = 300;
/// Longest hostname kept (RFC 1035 name length).
const MAX_HOSTNAME: usize = 253;
/// The hardware type of IP over InfiniBand (RFC 4390), whose clients send no chaddr.
const HTYPE_INFINIBAND: u8 = 32;

/// A decoded, checked client message, with the fields the server uses pulled out.
#[derive(Debug, Clone)]
pub struct Request {
    pub msg: Message,
    pub msg_type: MessageType,
    /// The client's identity: `id-<hex>` of option 61 when present, else `hw-<hex>` of chaddr.
    pub client_id: String,
    /// chaddr as `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// chaddr's bytes (hlen of them).
    pub hwaddr: Vec<u8>,
    /// Option 12, cleaned of control characters.
    pub hostname: String,
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 51 in a DISCOVER or REQUEST: the lease time the client suggests (RFC 2131
    /// section 3.5), seconds.
    pub requested_lease: Option<u32>,
    pub server_id: Option<Ipv4Addr>,
    /// Option 55 as raw codes, in the client's order.
    pub parameters: Option<Vec<u8>>,
    /// Option 61, echoed in replies (RFC 6842).
    pub client_identifier: Option<Vec<u8>>,
    /// Option 82 as received (its instances joined, RFC 3396), echoed back to the relay
    /// (RFC 3046 section 2.2).
    pub relay_info: Option<Vec<u8>>,
    /// Largest reply the client takes, from option 57, IP and UDP headers deducted.
    pub max_reply: usize,
    /// The link the client is on, when a relay says so: option 82 sub-option 5 (RFC 3527) or
    /// option 118 (RFC 3011). Wins over giaddr for subnet selection.
    pub link_selection: Option<Ipv4Addr>,
    /// Option 118 exactly as received, echoed in replies (RFC 3011 section 2).
    pub subnet_selection: Option<Vec<u8>>,
    /// Option 82 sub-option 11 (RFC 5107): the address the relay wants as our identifier.
    pub server_override: Option<Ipv4Addr>,
    /// Option 82 sub-option 19 (RFC 8357): the relay listens on its source port.
    pub relay_source_port: bool,
    /// Option 80 (RFC 4039): the client accepts a two-message exchange.
    pub rapid_commit: bool,
    /// UDP source port of the datagram (set by the node; 0 when unknown).
    pub peer_port: u16,
    /// When the kernel received the datagram, by this host's clock (set by the node).
    pub received_at: Option<std::time::SystemTime>,
    /// A BOOTP request (RFC 951): no option 53. `msg_type` is then `Discover`, the closest
    /// DHCP meaning (a request for an address).
    pub bootp: bool,
    /// Option 60, for client classes.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77, for client classes.
    pub user_class: Option<Vec<u8>>,
    /// The codes of options left out for a length their RFC does not allow (only ones the
    /// server does without), for the node to count (`dhcp_hive_options_ignored_total`).
    pub ignored_options: Vec<u8>,
}

/// The body of sub-option `code` of a relay agent information option (RFC 3046 section 2.0).
pub fn relay_sub_option(relay: &[u8], code: u8) -> Option<&[u8]> {
    let mut at = 0;
    while at + 1 < relay.len() {
        let (c, len) = (relay[at], usize::from(relay[at + 1]));
        let body = relay.get(at + 2..at + 2 + len)?;
        if c == code {
            return Some(body);
        }
        at += 2 + len;
    }
    None
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
}

/// The raw body of option `code` in the options area (first occurrence): [`peek_type`]'s
/// quick look, not the reading of a message ([`Options`]).
fn raw_option(opts: &[u8], code: u8) -> Option<&[u8]> {
    let mut at = 0;
    while at < opts.len() {
        match opts[at] {
            0 => at += 1,
            255 => return None,
            c => {
                let len = usize::from(*opts.get(at + 1)?);
                let body = opts.get(at + 2..at + 2 + len)?;
                if c == code {
                    return Some(body);
                }
                at += 2 + len;
            }
        }
    }
    None
}

/// The message type (option 53) of a datagram, read without decoding it: enough to order the
/// node's backlog. None for BOOTP, a datagram too short to tell, or a type carried in an
/// overloaded `file` or `sname` field (such a message waits as a DISCOVER does).
pub fn peek_type(buf: &[u8]) -> Option<MessageType> {
    let opts = buf.get(HEADER_LEN..)?;
    if opts.get(..4)? != MAGIC {
        return None;
    }
    match raw_option(&opts[4..], 53)? {
        [t] => Some(MessageType::from(*t)),
        _ => None,
    }
}

/// A length rule of RFC 2132 (RFC 3011 for 118, RFC 4039 for 80): the whole value of the
/// option, its instances joined (RFC 3396), must be from `min` to `max` bytes long.
struct Length {
    code: u8,
    min: usize,
    max: usize,
    /// Whether the answer depends on the option, so that a packet whose value breaks the rule
    /// is dropped (`bad_option`). Any other option with a bad value is left out, as if the
    /// client had not sent it, and counted: the client still gets its answer.
    needed: bool,
}

const fn fixed_len(code: u8, len: usize, needed: bool) -> Length {
    Length {
        code,
        min: len,
        max: len,
        needed,
    }
}

const fn at_least(code: u8, min: usize, needed: bool) -> Length {
    Length {
        code,
        min,
        max: usize::MAX,
        needed,
    }
}

/// The options whose length is fixed or bounded. Option 52 is checked before the others, in
/// the options area alone: it says where the others are, so a bad one drops the packet.
///
/// Needed, so a bad one drops the packet rather than changing the answer:
/// - 53: without it the message would be taken for BOOTP.
/// - 50 and 54: in a REQUEST they make the client's state (RFC 2131 4.3.2); without 54 a
///   REQUEST to another server would look like ours and take an address, without 50 a
///   SELECTING one would renew ciaddr.
/// - 61: the client's identity; without it the client would be another (its chaddr) and get a
///   second lease beside the one it holds.
/// - 118: it picks the subnet, and a client that sent it discards a reply that does not echo
///   it (RFC 3011 section 3): an answer from another subnet would hold an address for nothing.
///
/// The others are asked for (12, 55, 57, 80) or only describe the client (1, 15, 28, 51, 58,
/// 59, 60, 81); the server does without them: no host name, every configured option, 576
/// bytes, four messages, no class match.
const LENGTHS: [Length; 17] = [
    fixed_len(53, 1, true),
    fixed_len(50, 4, true),
    fixed_len(54, 4, true),
    at_least(61, 2, true),
    fixed_len(118, 4, true),
    fixed_len(1, 4, false),
    fixed_len(28, 4, false),
    fixed_len(80, 0, false),
    fixed_len(57, 2, false),
    fixed_len(51, 4, false),
    fixed_len(58, 4, false),
    fixed_len(59, 4, false),
    at_least(12, 1, false),
    at_least(15, 1, false),
    at_least(60, 1, false),
    at_least(55, 1, false),
    // Flags and the two RCODEs come before the name (RFC 4702 section 2).
    at_least(81, 3, false),
];

/// The options of `area` in order, as (code, where the body starts in `area`, body), up to END
/// or the area's end (RFC 2131 requires END, but clients in the wild omit it when the options
/// end exactly at the datagram's end; everything was read, so that is accepted). An option
/// running past the area is an error, and the last item: nothing after it can be found.
fn walk(area: &[u8]) -> impl Iterator<Item = Result<(u8, usize, &[u8]), Drop>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        while let Some(&code) = area.get(at) {
            match code {
                0 => at += 1,
                255 => break,
                _ => {
                    let start = at + 2;
                    let body = area
                        .get(at + 1)
                        .and_then(|len| area.get(start..start + usize::from(*len)));
                    let Some(body) = body else {
                        at = area.len();
                        return Some(Err(Drop::BadOption));
                    };
                    at = start + body.len();
                    return Some(Ok((code, start, body)));
                }
            }
        }
        at = area.len();
        None
    })
}

/// The options of a message, found in one walk, with the instances of a code that came more
/// than once joined in order (RFC 3396 section 5: a sender may split a long option, or one
/// that straddles the options area and the overloaded fields, into several instances).
struct Options<'a> {
    area: &'a [u8],
    /// Per code, where the body of its first instance starts in `area`; 0 when absent (a body
    /// never starts at 0: its code and length come first). Cleared for every packet, hence
    /// u16: 512 bytes. Borrowed from the caller's stack: a table in the struct would be copied
    /// each time the struct moves (measured: 330 instructions a packet).
    first: &'a mut [u16; 256],
    /// The codes that came more than once, each with its instances' bodies joined. Nearly
    /// every packet has none, and then nothing is allocated for its options.
    joined: Vec<(u8, Vec<u8>)>,
}

impl<'a> Options<'a> {
    /// Finds the options of `area`, using `first` (whatever it held) as the table of where
    /// they are; an option running past the end of `area` drops the packet.
    fn read(area: &'a [u8], first: &'a mut [u16; 256]) -> Result<Self, Drop> {
        first.fill(0);
        let mut joined: Vec<(u8, Vec<u8>)> = Vec::new();
        for found in walk(area) {
            let (code, at, _) = found?;
            let slot = &mut first[usize::from(code)];
            if *slot == 0 {
                // The node reads at most 4 KiB, and unfolding adds at most 192 bytes: a larger
                // buffer is no DHCP message.
                *slot = u16::try_from(at).map_err(|_| Drop::TooLarge)?;
            } else if joined.iter().all(|(c, _)| *c != code) {
                joined.push((code, Vec::new()));
            }
        }
        if !joined.is_empty() {
            // The rare packet with a split option: a second walk joins each repeated code's
            // instances, in the order they came (the walk above found every one of them).
            for (code, _, body) in walk(area).flatten() {
                if let Some((_, value)) = joined.iter_mut().find(|(c, _)| *c == code) {
                    value.extend_from_slice(body);
                }
            }
        }
        Ok(Self {
            area,
            first,
            joined,
        })
    }

    /// Leaves option `code` out, as if the client had not sent it.
    fn remove(&mut self, code: u8) {
        self.first[usize::from(code)] = 0;
        self.joined.retain(|(c, _)| *c != code);
    }

    /// The value of option `code`: its body, or its instances' bodies joined.
    fn get(&self, code: u8) -> Option<&[u8]> {
        let at = usize::from(self.first[usize::from(code)]);
        if at == 0 {
            return None;
        }
        if let Some((_, value)) = self.joined.iter().find(|(c, _)| *c == code) {
            return Some(value);
        }
        // The length byte precedes the body (`at` is at least 2).
        let len = usize::from(*self.area.get(at - 1)?);
        self.area.get(at..at + len)
    }
}

/// `buf` with the options that option 52 put in `file` (1), `sname` (2) or both (3) appended to
/// the options area, in the RFC's order (main, then file, then sname: the order in which
/// RFC 3396 joins the instances of a split option), and those fields cleared.
fn unfold_overload(buf: &[u8], overload: u8) -> Result<Vec<u8>, Drop> {
    const SNAME: std::ops::Range<usize> = 44..108;
    const FILE: std::ops::Range<usize> = 108..236;
    let mut out = buf[..HEADER_LEN + 4].to_vec();
    let mut append = |area: &[u8]| -> Result<(), Drop> {
        for found in walk(area) {
            let (code, _, body) = found?;
            // Option 52 itself is not carried over: the result is not overloaded.
            if code != 52 {
                push_option(&mut out, code, body);
            }
        }
        Ok(())
    };
    append(&buf[HEADER_LEN + 4..])?;
    if overload & 1 != 0 {
        append(&buf[FILE])?;
    }
    if overload & 2 != 0 {
        append(&buf[SNAME])?;
    }
    out.push(255);
    if overload & 1 != 0 {
        out[FILE].fill(0);
    }
    if overload & 2 != 0 {
        out[SNAME].fill(0);
    }
    Ok(out)
}

/// Appends option `code` with `data`: one instance, or several of up to 255 bytes each when
/// `data` is longer (RFC 3396 section 6).
fn push_option(out: &mut Vec<u8>, code: u8, data: &[u8]) {
    if data.is_empty() {
        out.extend_from_slice(&[code, 0]);
    }
    for chunk in data.chunks(255) {
        out.push(code);
        // chunks(255) makes the length fit a byte.
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

/// The options dhcproto decodes for the server, in the order least likely to fail first (a
/// hostname that is not UTF-8 is the one dhcproto may refuse, so it comes last).
const DECODED: [u8; 7] = [53, 50, 54, 57, 61, 55, 12];

/// The header of a cookieless BOOTP request `buf`, with a cookie and no options.
fn without_vendor_area(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + MAGIC.len() + 1);
    out.extend_from_slice(&buf[..HEADER_LEN]);
    out.extend_from_slice(&MAGIC);
    out.push(255);
    out
}

/// `buf`'s header and cookie, followed by only the [`DECODED`] options of `opts` (already
/// length-checked).
///
/// A joined value may pass 255 bytes (53, 50, 54 and 57 cannot: their lengths are fixed; 61,
/// 55 and 12 can). It goes to dhcproto as a long option comes off the wire: consecutive
/// instances of up to 255 bytes, which dhcproto's decoder joins again (RFC 3396 for adjacent
/// instances, the only kind written here). Such a client is served like any other: RFC 3396
/// allows a long client identifier, host name or parameter list, and reading the three here
/// would copy dhcproto's decoders (and its UTF-8 rule for 12) for a case that hardly occurs.
fn decodable(buf: &[u8], opts: &Options<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len().min(HEADER_LEN + 4 + 312));
    out.extend_from_slice(&buf[..HEADER_LEN + 4]);
    for code in DECODED {
        if let Some(value) = opts.get(code) {
            push_option(&mut out, code, value);
        }
    }
    out.push(255);
    out
}

/// Lowercase hex digits by value: the table every hex text of the node is written from.
pub(crate) const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `b` as two lowercase hex digits (a table, not the formatting machinery: this runs
/// for every byte of every client's identity).
fn push_hex(s: &mut String, b: u8) {
    s.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
    s.push(char::from(HEX_DIGITS[usize::from(b & 0xf)]));
}

/// `prefix` followed by the hex of `bytes`, lowercase, no separators.
/// The hive's name for a client, its identity in every lease: `id-<hex>` of its option 61
/// (whole, type byte included) when it sends one, else `hw-<hex>` of its chaddr.
pub fn client_name(client_identifier: Option<&[u8]>, hwaddr: &[u8]) -> String {
    match client_identifier {
        Some(id) => hex_with("id-", id),
        None => hex_with("hw-", hwaddr),
    }
}

fn hex_with(prefix: &str, bytes: &[u8]) -> String {
    let mut s = String::with_capacity(prefix.len() + bytes.len() * 2);
    s.push_str(prefix);
    for b in bytes {
        push_hex(&mut s, *b);
    }
    s
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        push_hex(&mut s, *b);
    }
    s
}

/// Option 12 as text safe for logs and Redis: printable ASCII only, bounded.
fn clean_hostname(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_HOSTNAME)
        .collect()
}

/// The name in a client FQDN option (81, RFC 4702 section 2) as text for the lease's
/// hostname, or None when it holds none. With the E flag the name is in DNS wire format
/// (labels, RFC 1035 3.1; a partial name has no final empty label); without it, ASCII text
/// (deprecated, but sent by older Windows clients). Like option 12, only printable ASCII is
/// kept, bounded; a label longer than 63 bytes or a compression pointer makes the name
/// unreadable (RFC 4702 section 2.3.1 forbids compression).
fn fqdn_name(option: &[u8]) -> Option<String> {
    const ENCODED: u8 = 0x04;
    let (flags, name) = (option.first()?, option.get(3..)?);
    let text = if flags & ENCODED == 0 {
        clean_hostname(&String::from_utf8_lossy(name))
    } else {
        let mut text = String::with_capacity(name.len());
        let mut rest = name;
        while let Some((&len, tail)) = rest.split_first() {
            if len == 0 {
                break;
            }
            let label = tail.get(..usize::from(len)).filter(|_| len <= 63)?;
            if !text.is_empty() {
                text.push('.');
            }
            text.extend(
                label
                    .iter()
                    .filter(|b| b.is_ascii_graphic())
                    .map(|b| char::from(*b)),
            );
            rest = &tail[label.len()..];
        }
        text.truncate(MAX_HOSTNAME);
        text
    };
    let text = text.trim_end_matches('.');
    (!text.is_empty()).then(|| text.to_owned())
}

/// Decodes and checks one datagram from a client. Every refusal is a named drop.
pub fn parse(buf: &[u8]) -> Result<Request, Drop> {
    if buf.len() < HEADER_LEN + MAGIC.len() {
        return Err(Drop::Truncated);
    }
    let plain;
    let buf = if buf[HEADER_LEN..HEADER_LEN + 4] == MAGIC {
        buf
    } else {
        // RFC 2131 section 3: without the cookie this is plain BOOTP (RFC 951), whose 64-byte
        // vendor area is the client's own (zeros, or another vendor's format). Such a client
        // is served as a BOOTP client that sent no options, as ISC dhcpd does; whether BOOTP
        // is served at all is the subnet's call. Anything shorter is no BOOTP message.
        if buf.len() < BOOTP_SIZE {
            return Err(Drop::NoMagic);
        }
        plain = without_vendor_area(buf);
        &plain[..]
    };
    // dhcproto slices chaddr by hlen, so an hlen past the 16-byte field must not reach it.
    let hlen = usize::from(buf[2]);
    // RFC 4390 section 2.1: an IP-over-InfiniBand client's 20-byte address does not fit chaddr,
    // so it sends htype 32, hlen 0 and a zero chaddr, and is known by its client identifier.
    let infiniband = buf[1] == HTYPE_INFINIBAND && hlen == 0;
    if (hlen == 0 && !infiniband) || hlen > 16 {
        return Err(Drop::BadHardware);
    }
    let mut first = [0; 256];
    let main = Options::read(&buf[HEADER_LEN + 4..], &mut first)?;
    // RFC 2131 section 4.1 / RFC 2132 9.3: with option 52 more options sit in `file` and/or
    // `sname`. They are moved after the main ones, so one walk (and dhcproto) sees them all,
    // and an option split across the areas is joined in the RFC's order (RFC 3396 section 5).
    let overload = main.get(52).map(|value| match value {
        [overload @ 1..=3] => Ok(*overload),
        _ => Err(Drop::BadOption),
    });
    let flat;
    let (buf, mut opts) = match overload {
        None => (buf, main),
        Some(overload) => {
            // Its table is read again, for the unfolded options.
            drop(main);
            flat = unfold_overload(buf, overload?)?;
            (
                &flat[..],
                Options::read(&flat[HEADER_LEN + 4..], &mut first)?,
            )
        }
    };
    // RFC 2132 lengths, on each option's whole value: a split option is checked joined.
    let mut ignored_options = Vec::new();
    for rule in &LENGTHS {
        let bad = opts
            .get(rule.code)
            .is_some_and(|v| !(rule.min..=rule.max).contains(&v.len()));
        if bad && rule.needed {
            return Err(Drop::BadOption);
        }
        if bad {
            opts.remove(rule.code);
            ignored_options.push(rule.code);
        }
    }
    // Option 82 joined too: a relay that split it may have split a sub-option with it.
    let raw_relay = opts.get(82).map(<[u8]>::to_vec);
    let relay_sub = |code| raw_relay.as_deref().and_then(|r| relay_sub_option(r, code));
    let subnet_selection = opts.get(118).map(<[u8]>::to_vec);
    let link_selection = relay_sub(5)
        .and_then(ipv4)
        .or_else(|| subnet_selection.as_deref().and_then(ipv4))
        .filter(|ip| !ip.is_unspecified());
    let server_override = relay_sub(11)
        .and_then(ipv4)
        .filter(|ip| !ip.is_unspecified());
    let relay_source_port = relay_sub(19).is_some();
    let rapid_commit = opts.get(80).is_some();
    // dhcproto decodes only the options used here: its decoders for others trust the length
    // byte (debug assertions, underflows), and one that fails stops the decoding of the rest.
    let msg =
        Message::decode(&mut Decoder::new(&decodable(buf, &opts))).map_err(|_| Drop::Malformed)?;
    if msg.opcode() != Opcode::BootRequest {
        // RFC 2131 section 4.1: servers only answer BOOTREQUEST (op 1).
        return Err(Drop::BootReply);
    }
    let hwaddr = msg.chaddr().get(..hlen).ok_or(Drop::BadHardware)?.to_vec();
    if !infiniband && hwaddr.iter().all(|b| *b == 0) {
        return Err(Drop::BadHardware);
    }
    if msg.htype() == HType::Eth && (hlen != 6 || hwaddr[0] & 1 == 1) {
        // An Ethernet station address is 6 bytes and never a group (multicast/broadcast) address.
        return Err(Drop::BadHardware);
    }
    let decoded = msg.opts();
    // RFC 1534: a request without option 53 comes from a BOOTP client; whether it is served is
    // the subnet's call (`bootp`).
    let (msg_type, bootp) = match decoded.msg_type() {
        Some(t) => (t, false),
        None => (MessageType::Discover, true),
    };
    let client_identifier = match decoded.get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => Some(id.clone()),
        _ => None,
    };
    // RFC 4390 section 2.1: the client identifier MUST be sent; without chaddr there is
    // nothing else to know the client by.
    if infiniband && client_identifier.is_none() {
        return Err(Drop::BadHardware);
    }
    let client_id = client_name(client_identifier.as_deref(), &hwaddr);
    // Option 12, else the name of option 81: a client with a fully qualified name (Windows,
    // NetworkManager set up so) may send only the FQDN option.
    let hostname = match decoded.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => clean_hostname(h),
        _ => opts.get(81).and_then(fqdn_name).unwrap_or_default(),
    };
    let requested_ip = match decoded.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match decoded.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let parameters = match decoded.get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(codes)) => {
            Some(codes.iter().map(|c| u8::from(*c)).collect())
        }
        _ => None,
    };
    let max_reply = match decoded.get(OptionCode::MaxMessageSize) {
        // RFC 2132 section 9.10: the minimum legal value is 576; a smaller one is ignored.
        Some(DhcpOption::MaxMessageSize(n)) if usize::from(*n) >= MIN_MAX_SIZE => {
            usize::from(*n) - IP_UDP_HEADERS
        }
        // RFC 951 / RFC 1542 section 2.1: a BOOTP reply is a 300-byte message unless the client
        // said it takes more.
        _ if bootp => BOOTP_SIZE,
        _ => MIN_MAX_SIZE - IP_UDP_HEADERS,
    };
    let requested_lease = opts
        .get(51)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_be_bytes);
    let vendor_class = opts.get(60).map(<[u8]>::to_vec);
    let user_class = opts.get(77).map(<[u8]>::to_vec);
    Ok(Request {
        mac: mac_text(&hwaddr),
        msg,
        msg_type,
        client_id,
        hwaddr,
        hostname,
        requested_ip,
        requested_lease,
        server_id,
        parameters,
        client_identifier,
        relay_info: raw_relay,
        max_reply,
        link_selection,
        subnet_selection,
        server_override,
        relay_source_port,
        rapid_commit,
        peer_port: 0,
        received_at: None,
        bootp,
        vendor_class,
        user_class,
        ignored_options,
    })
}

/// The fixed header (RFC 2131 figure 1) and the magic cookie, written field by field: the
/// header's options are not encoded (the reply's go after it, see [`encode`]), and 192 bytes
/// of `sname` and `file` are mostly zeros, written at once.
fn encode_header(h: &Message, out: &mut Vec<u8>) -> Result<(), Drop> {
    out.extend_from_slice(&[
        u8::from(h.opcode()),
        u8::from(h.htype()),
        h.hlen(),
        h.hops(),
    ]);
    out.extend_from_slice(&h.xid().to_be_bytes());
    out.extend_from_slice(&h.secs().to_be_bytes());
    out.extend_from_slice(&u16::from(h.flags()).to_be_bytes());
    for addr in [h.ciaddr(), h.yiaddr(), h.siaddr(), h.giaddr()] {
        out.extend_from_slice(&addr.octets());
    }
    // chaddr is 16 bytes whatever hlen says; the request's hlen was checked to fit (parse).
    fixed(out, h.chaddr(), 16)?;
    fixed(out, h.sname().unwrap_or_default(), 64)?;
    fixed(out, h.fname().unwrap_or_default(), 128)?;
    out.extend_from_slice(&MAGIC);
    Ok(())
}

/// `bytes` in a field of `len` bytes, zero-padded.
fn fixed(out: &mut Vec<u8>, bytes: &[u8], len: usize) -> Result<(), Drop> {
    let pad = len.checked_sub(bytes.len()).ok_or(Drop::Encode)?;
    out.extend_from_slice(bytes);
    out.resize(out.len() + pad, 0);
    Ok(())
}

/// Options without which a client discards the reply: the message type and server identifier
/// (RFC 2131 table 3), the echoed client identifier (RFC 6842 section 3) and subnet selection
/// (RFC 3011 section 2), and rapid commit in an ACK to a DISCOVER (RFC 4039 section 4).
const KEPT: [u8; 5] = [53, 54, 61, 80, 118];

/// Encodes a reply: the fixed BOOTP header ([`encode_header`]), then the options in the given order (option
/// 53 first, 82 last, as RFC 3046 section 2.1 asks of the relay information), then END.
///
/// `options` are tried in order; an option that would push the reply past `max_len` is left out,
/// unless it is one of [`KEPT`]: then there is no reply. The caller puts those first, so only
/// options the client asked for are left out. Static routes (33) go out only when classless
/// routes (121) do not (RFC 3442: a client that gets 121 ignores 33). An option longer than 255
/// bytes goes out as several instances of its code (RFC 3396).
pub fn encode(
    header: &Message,
    options: &[OptionData],
    relay_info: Option<&[u8]>,
    max_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), Drop> {
    out.clear();
    encode_header(header, out)?;
    // Room for END. The relay information that goes last is not counted: the relay takes it
    // out before the reply reaches the client (RFC 3046 section 2.2), whose limit `max_len`
    // is; the datagram to the relay is longer by those bytes (see [`relay_info_len`]).
    let room = max_len.saturating_sub(1);
    // 33 waits until it is known whether 121 fit.
    let classless = options.iter().any(|o| o.code == 121);
    let mut static_routes = None;
    let mut classless_sent = false;
    for opt in options {
        if opt.code == 33 && classless {
            static_routes = Some(opt);
        } else if put(opt, room, out)? {
            classless_sent |= opt.code == 121;
        }
    }
    if let Some(opt) = static_routes.filter(|_| !classless_sent) {
        put(opt, room, out)?;
    }
    if let Some(relay) = relay_info {
        // RFC 3046 section 2.2: echoed byte for byte; a relay that split it (RFC 3396) gets it
        // back in instances of 255 bytes.
        push_option(out, 82, relay);
    }
    out.push(255);
    // BOOTP-era relays and clients expect at least the 300-byte BOOTP message (RFC 1542 2.1).
    if out.len() < 300 {
        out.resize(300, 0);
    }
    Ok(())
}

/// Appends `opt` if the message stays within `room` bytes, and says whether it did; an option
/// of [`KEPT`] that does not fit is an error.
/// The bytes that option 82 adds to a reply beyond the client's limit: `relay` in instances of
/// at most 255 bytes, each with its code and length.
pub fn relay_info_len(relay: Option<&[u8]>) -> usize {
    relay.map_or(0, |r| r.len() + 2 * r.len().div_ceil(255).max(1))
}

fn put(opt: &OptionData, room: usize, out: &mut Vec<u8>) -> Result<bool, Drop> {
    let chunks = opt.data.len().div_ceil(255).max(1);
    if out.len() + opt.data.len() + 2 * chunks > room {
        return if KEPT.contains(&opt.code) {
            Err(Drop::Encode)
        } else {
            Ok(false)
        };
    }
    push_option(out, opt.code, &opt.data);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover_bytes(extra: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = 1; // BOOTREQUEST
        b[1] = 1; // Ethernet
        b[2] = 6;
        b[4..8].copy_from_slice(&[1, 2, 3, 4]);
        b[28..34].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, 1]);
        b.extend_from_slice(extra);
        b.push(255);
        b
    }

    #[test]
    fn parses_a_discover() {
        let req = parse(&discover_bytes(&[12, 3, b'f', b'o', b'o'])).expect("valid");
        assert_eq!(req.msg_type, MessageType::Discover);
        assert_eq!(req.mac, "02:00:00:00:00:01");
        assert_eq!(req.client_id, "hw-020000000001");
        assert_eq!(req.hostname, "foo");
        assert_eq!(req.msg.xid(), 0x0102_0304);
        assert_eq!(req.max_reply, 548);
    }

    #[test]
    fn peek_type_reads_option_53_without_decoding() {
        let mut request = discover_bytes(&[50, 4, 192, 0, 2, 9]);
        assert_eq!(peek_type(&request), Some(MessageType::Discover));
        request[HEADER_LEN + 6] = 3;
        assert_eq!(peek_type(&request), Some(MessageType::Request));
        // Padding before the type, as some clients send.
        let mut padded = discover_bytes(&[]);
        padded.splice(HEADER_LEN + 4..HEADER_LEN + 4, [0, 0]);
        assert_eq!(peek_type(&padded), Some(MessageType::Discover));
        // BOOTP, a cut datagram, a wrong length: no type.
        let mut bootp = discover_bytes(&[]);
        bootp[HEADER_LEN..HEADER_LEN + 4].fill(0);
        assert_eq!(peek_type(&bootp), None);
        assert_eq!(peek_type(&request[..HEADER_LEN + 2]), None);
        assert_eq!(peek_type(&request[..HEADER_LEN + 6]), None);
        let mut two = discover_bytes(&[]);
        two[HEADER_LEN + 5] = 2;
        assert_eq!(peek_type(&two), None);
    }

    #[test]
    fn hex_texts_match_the_formatter() {
        let bytes: Vec<u8> = (0..=255).collect();
        let formatted: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex_with("id-", &bytes), format!("id-{formatted}"));
        assert_eq!(mac_text(&[0xff, 0x0a, 0x90]), "ff:0a:90");
        assert_eq!(mac_text(&[]), "");
    }

    #[test]
    fn client_identifier_is_the_identity() {
        let req = parse(&discover_bytes(&[61, 3, 1, 0xaa, 0xbb])).expect("valid");
        assert_eq!(req.client_id, "id-01aabb");
        assert_eq!(req.client_identifier.as_deref(), Some(&[1, 0xaa, 0xbb][..]));
    }

    #[test]
    fn option_running_past_the_end_is_dropped() {
        let mut b = discover_bytes(&[]);
        b.pop();
        b.extend_from_slice(&[12, 40, b'x']);
        assert_eq!(parse(&b).err(), Some(Drop::BadOption));
    }

    /// The options the answer depends on: a wrong length drops the packet.
    #[test]
    fn wrong_lengths_of_needed_options_are_dropped() {
        let needed: [&[u8]; 7] = [
            &[50, 3, 1, 2, 3],
            &[54, 5, 192, 0, 2, 1, 0],
            // A second message type: two bytes joined.
            &[53, 1, 3],
            &[61, 1, 1],
            &[118, 2, 192, 0],
            &[52, 2, 1, 1],
            &[52, 1, 0],
        ];
        for bad in needed {
            assert_eq!(
                parse(&discover_bytes(bad)).err(),
                Some(Drop::BadOption),
                "{bad:?}"
            );
        }
        let mut two_bytes = discover_bytes(&[]);
        two_bytes.splice(HEADER_LEN + 4..HEADER_LEN + 7, [53, 2, 1, 1]);
        assert_eq!(parse(&two_bytes).err(), Some(Drop::BadOption));
    }

    /// The options the server does without: a wrong length leaves the option out, as if the
    /// client had not sent it, and the request is served.
    #[test]
    fn wrong_lengths_of_optional_options_are_left_out() {
        let optional: [(&[u8], u8); 12] = [
            (&[12, 0], 12),
            (&[15, 0], 15),
            (&[60, 0], 60),
            (&[55, 0], 55),
            (&[57, 3, 5, 220, 0], 57),
            (&[80, 1, 0], 80),
            (&[1, 3, 255, 255, 255], 1),
            (&[28, 0], 28),
            (&[51, 2, 0, 60], 51),
            (&[58, 8, 0, 0, 0, 1, 0, 0, 0, 1], 58),
            (&[59, 3, 0, 0, 1], 59),
            // Two instances of 57: four bytes joined.
            (&[57, 2, 5, 220, 57, 2, 5, 220], 57),
        ];
        for (bad, code) in optional {
            let req = parse(&discover_bytes(bad)).unwrap_or_else(|d| panic!("{bad:?}: {d:?}"));
            assert_eq!(req.ignored_options, [code], "{bad:?}");
        }
        let req = parse(&discover_bytes(&[
            12, 0, 55, 0, 57, 3, 5, 220, 0, 60, 0, 80, 1, 0, 61, 3, 1, 0xaa, 0xbb,
        ]))
        .expect("served");
        assert_eq!(req.msg_type, MessageType::Discover);
        assert_eq!(req.hostname, "");
        assert_eq!(req.parameters, None);
        assert_eq!(req.max_reply, MIN_MAX_SIZE - IP_UDP_HEADERS);
        assert_eq!(req.vendor_class, None);
        assert!(!req.rapid_commit);
        // What was well-formed is read as usual.
        assert_eq!(req.client_id, "id-01aabb");
        assert_eq!(req.ignored_options, [80, 57, 12, 60, 55]);
        // Through an overloaded field too.
        let mut b = discover_bytes(&[52, 1, 1]);
        b[108..113].copy_from_slice(&[12, 0, 50, 4, 192]);
        b[113..117].copy_from_slice(&[0, 2, 9, 255]);
        let req = parse(&b).expect("served");
        assert_eq!(req.ignored_options, [12]);
        assert_eq!(req.requested_ip, Some(Ipv4Addr::new(192, 0, 2, 9)));
        // A well-formed packet leaves nothing out.
        let req = parse(&discover_bytes(&[12, 1, b'x'])).expect("valid");
        assert!(req.ignored_options.is_empty());
    }

    #[test]
    fn short_packets_and_short_cookieless_ones_are_dropped() {
        assert_eq!(parse(&[1; 100]).err(), Some(Drop::Truncated));
        let mut b = discover_bytes(&[]);
        b[HEADER_LEN] = 0;
        b.truncate(BOOTP_SIZE - 1);
        assert_eq!(parse(&b).err(), Some(Drop::NoMagic));
    }

    #[test]
    fn cookieless_request_is_bootp_without_options() {
        // An RFC 951 client: 236-byte header, then a 64-byte vendor area of its own.
        let mut b = discover_bytes(&[]);
        b.truncate(HEADER_LEN);
        b.extend_from_slice(&[0x35, 1, 3, 0xff]);
        b.resize(BOOTP_SIZE, 0x35);
        let req = parse(&b).expect("a cookieless BOOTP request parses");
        assert!(req.bootp);
        assert_eq!(req.msg_type, MessageType::Discover);
        assert_eq!(req.mac, "02:00:00:00:00:01");
        assert_eq!(req.max_reply, BOOTP_SIZE);
        assert!(req.msg.opts().get(OptionCode::MessageType).is_none());
    }

    /// RFC 4390: htype 32, hlen 0, a zero chaddr, and the client identifier as identity.
    #[test]
    fn infiniband_clients_are_known_by_their_client_identifier() {
        let guid = [
            0xff, 0, 0, 0, 0, 0, 2, 0, 0, 2, 0xc9, 0, 0, 2, 0xc9, 3, 0, 0x12, 0x34,
        ];
        let mut with_id = vec![61, guid.len() as u8];
        with_id.extend_from_slice(&guid);
        let mut b = discover_bytes(&with_id);
        b[1] = HTYPE_INFINIBAND;
        b[2] = 0;
        b[28..34].fill(0);
        let req = parse(&b).expect("an InfiniBand DISCOVER");
        assert!(req.hwaddr.is_empty());
        assert_eq!(req.mac, "");
        assert_eq!(req.client_id, hex_with("id-", &guid));
        // Without the client identifier such a client cannot be told from any other.
        let mut b = discover_bytes(&[]);
        b[1] = HTYPE_INFINIBAND;
        b[2] = 0;
        b[28..34].fill(0);
        assert_eq!(parse(&b).err(), Some(Drop::BadHardware));
        // hlen 0 is InfiniBand's alone.
        let mut b = discover_bytes(&with_id);
        b[2] = 0;
        assert_eq!(parse(&b).err(), Some(Drop::BadHardware));
    }

    #[test]
    fn replies_and_bad_hardware_are_dropped() {
        let mut b = discover_bytes(&[]);
        b[0] = 2;
        assert_eq!(parse(&b).err(), Some(Drop::BootReply));
        let mut b = discover_bytes(&[]);
        b[28..34].fill(0);
        assert_eq!(parse(&b).err(), Some(Drop::BadHardware));
        let mut b = discover_bytes(&[]);
        b[28..34].fill(0xff);
        assert_eq!(parse(&b).err(), Some(Drop::BadHardware));
        let mut b = discover_bytes(&[]);
        b[2] = 17;
        assert!(parse(&b).is_err());
    }

    #[test]
    fn missing_message_type_is_bootp() {
        let mut b = discover_bytes(&[60, 3, b'a', b'b', b'c', 77, 2, 1, b'x']);
        b[HEADER_LEN + 4] = 0; // turn option 53 into pads
        b[HEADER_LEN + 5] = 0;
        b[HEADER_LEN + 6] = 0;
        let req = parse(&b).expect("a BOOTP request parses");
        assert!(req.bootp);
        assert_eq!(req.msg_type, MessageType::Discover);
        assert_eq!(req.max_reply, BOOTP_SIZE);
        assert_eq!(req.vendor_class.as_deref(), Some(&b"abc"[..]));
        assert_eq!(req.user_class.as_deref(), Some(&b"\x01x"[..]));
        let req = parse(&discover_bytes(&[])).expect("DHCP");
        assert!(!req.bootp);
        assert_eq!(req.vendor_class, None);
    }

    #[test]
    fn overloaded_file_and_sname_are_read() {
        // Option 52 = 3: hostname in `file`, requested address in `sname`.
        let mut b = discover_bytes(&[52, 1, 3]);
        b[108..114].copy_from_slice(&[12, 3, b'b', b'a', b'r', 255]);
        b[44..51].copy_from_slice(&[50, 4, 192, 0, 2, 9, 255]);
        let req = parse(&b).expect("valid");
        assert_eq!(req.hostname, "bar");
        assert_eq!(req.requested_ip, Some(Ipv4Addr::new(192, 0, 2, 9)));
        // A broken option inside `file` is a bad option like anywhere else.
        let mut b = discover_bytes(&[52, 1, 1]);
        b[108..111].copy_from_slice(&[12, 200, b'x']);
        assert_eq!(parse(&b).err(), Some(Drop::BadOption));
        assert_eq!(
            parse(&discover_bytes(&[52, 1, 7])).err(),
            Some(Drop::BadOption)
        );
    }

    /// RFC 3396: the instances of a code are one option, joined in order, wherever the split
    /// falls (inside a relay sub-option too).
    #[test]
    fn split_options_are_joined_rfc_3396() {
        let req = parse(&discover_bytes(&[
            12, 3, b'f', b'o', b'o', 55, 2, 1, 3, 60, 2, b'P', b'X', 12, 3, b'b', b'a', b'r', 55,
            1, 6, 82, 3, 1, 4, b'a', 50, 2, 192, 0, 82, 3, b'b', b'c', b'd', 50, 2, 2, 9, 60, 1,
            b'E',
        ]))
        .expect("valid");
        assert_eq!(req.hostname, "foobar");
        assert_eq!(req.parameters.as_deref(), Some(&[1, 3, 6][..]));
        assert_eq!(req.vendor_class.as_deref(), Some(&b"PXE"[..]));
        assert_eq!(req.requested_ip, Some(Ipv4Addr::new(192, 0, 2, 9)));
        assert_eq!(
            req.relay_info.as_deref(),
            Some(&[1, 4, b'a', b'b', b'c', b'd'][..])
        );
        assert_eq!(
            relay_sub_option(req.relay_info.as_deref().unwrap_or_default(), 1),
            Some(&b"abcd"[..])
        );
        // Lengths are the joined value's: two message types are one of two bytes.
        assert_eq!(
            parse(&discover_bytes(&[53, 1, 3])).err(),
            Some(Drop::BadOption)
        );
        assert_eq!(
            parse(&discover_bytes(&[
                50, 4, 192, 0, 2, 9, 50, 4, 192, 0, 2, 10
            ]))
            .err(),
            Some(Drop::BadOption)
        );
    }

    /// The common packet, each code once, is read in place: nothing joined, nothing allocated.
    #[test]
    fn options_without_repeats_are_read_in_place() {
        let area = [
            53, 1, 1, 0, 12, 3, b'f', b'o', b'o', 55, 2, 1, 3, 255, 12, 1, b'x',
        ];
        let mut first = [0; 256];
        let opts = Options::read(&area, &mut first).expect("valid");
        assert!(opts.joined.is_empty() && opts.joined.capacity() == 0);
        assert_eq!(opts.get(12), Some(&b"foo"[..]));
        assert_eq!(opts.get(55), Some(&[1, 3][..]));
        assert_eq!(opts.get(53), Some(&[1][..]));
        assert_eq!(opts.get(61), None);
        // A zero-length option is there, with an empty value.
        let mut first = [0; 256];
        let opts = Options::read(&[80, 0], &mut first).expect("valid");
        assert_eq!(opts.get(80), Some(&[][..]));
        assert_eq!(
            Options::read(&[12, 5, b'x'], &mut first).err(),
            Some(Drop::BadOption)
        );
        assert_eq!(
            Options::read(&[12], &mut first).err(),
            Some(Drop::BadOption)
        );
    }

    /// RFC 4702: without option 12, the lease's hostname is the name in option 81, in
    /// wire format (E flag) or ASCII; option 12 wins when both are sent.
    #[test]
    fn the_fqdn_option_names_a_client_that_sends_no_host_name() {
        let hostname = |extra: &[u8]| parse(&discover_bytes(extra)).expect("valid").hostname;
        // E and S flags, "pc1.example.org." in labels, as NetworkManager sends it.
        let wire = [
            81, 20, 0x05, 0, 0, 3, b'p', b'c', b'1', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e',
            3, b'o', b'r', b'g', 0,
        ];
        assert_eq!(hostname(&wire), "pc1.example.org");
        // A partial name: no final empty label.
        assert_eq!(hostname(&[81, 7, 0x04, 0, 0, 3, b'p', b'c', b'2']), "pc2");
        // ASCII, as older Windows clients send it, a trailing dot dropped.
        assert_eq!(
            hostname(&[81, 8, 0x00, 0, 0, b'w', b'i', b'n', b'7', b'.']),
            "win7"
        );
        // Option 12 wins.
        assert_eq!(
            hostname(&[
                12, 3, b'f', b'o', b'o', 81, 7, 0x04, 0, 0, 3, b'p', b'c', b'2'
            ]),
            "foo"
        );
        // A label running past the option, a compression pointer, a label over 63 bytes or
        // an empty name: no name, and the request is still served.
        for bad in [
            &[81, 6, 0x04, 0, 0, 5, b'a', b'b'][..],
            &[81, 5, 0x04, 0, 0, 0xc0, 0x0c],
            &[81, 3, 0x04, 0, 0],
            &[81, 4, 0x04, 0, 0, 0],
        ] {
            assert_eq!(hostname(bad), "", "{bad:?}");
        }
        let mut long = vec![81, 68, 0x04, 0, 0, 64];
        long.extend_from_slice(&[b'a'; 64]);
        assert_eq!(hostname(&long), "");
        // Too short to hold the flags and RCODEs: left out and counted.
        let req = parse(&discover_bytes(&[81, 2, 0x04, 0])).expect("valid");
        assert_eq!(req.ignored_options, [81]);
    }

    /// A joined value longer than one option's 255 bytes reaches dhcproto whole.
    #[test]
    fn long_joined_values_are_read_whole() {
        let id: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        let mut extra = vec![61, 255];
        extra.extend_from_slice(&id[..255]);
        extra.extend_from_slice(&[61, 45]);
        extra.extend_from_slice(&id[255..]);
        extra.extend_from_slice(&[12, 200]);
        extra.extend_from_slice(&[b'a'; 200]);
        extra.extend_from_slice(&[12, 100]);
        extra.extend_from_slice(&[b'b'; 100]);
        let req = parse(&discover_bytes(&extra)).expect("valid");
        assert_eq!(req.client_identifier.as_deref(), Some(&id[..]));
        assert_eq!(req.client_id, hex_with("id-", &id));
        // 300 bytes joined, kept to a DNS name's length.
        assert_eq!(req.hostname.len(), MAX_HOSTNAME);
        assert!(req.hostname.starts_with(&"a".repeat(200)));
        let mut relay = vec![82, 255, 9, 253];
        relay.extend_from_slice(&[7; 253]);
        relay.extend_from_slice(&[82, 4, 1, 2, b'c', b'd']);
        let req = parse(&discover_bytes(&relay)).expect("valid");
        assert_eq!(req.relay_info.as_ref().map(Vec::len), Some(259));
        assert_eq!(
            relay_sub_option(req.relay_info.as_deref().unwrap_or_default(), 1),
            Some(&b"cd"[..])
        );
    }

    /// RFC 3396 section 5: an option split between the options area, `file` and `sname` is
    /// joined in that order, whatever the order of the fields in the header.
    #[test]
    fn options_split_across_overloaded_fields_are_joined_in_order() {
        let mut b = discover_bytes(&[52, 1, 3, 12, 2, b'a', b'b', 50, 2, 192, 0]);
        b[108..115].copy_from_slice(&[12, 2, b'c', b'd', 50, 2, 2]);
        b[115..118].copy_from_slice(&[9, 255, 0]);
        b[44..49].copy_from_slice(&[12, 2, b'e', b'f', 255]);
        let req = parse(&b).expect("valid");
        assert_eq!(req.hostname, "abcdef");
        assert_eq!(req.requested_ip, Some(Ipv4Addr::new(192, 0, 2, 9)));
        // Option 52 itself says where the options are: split or repeated, it is refused.
        assert_eq!(
            parse(&discover_bytes(&[52, 1, 1, 52, 1, 1])).err(),
            Some(Drop::BadOption)
        );
    }

    #[test]
    fn small_max_size_is_ignored() {
        let req = parse(&discover_bytes(&[57, 2, 0x01, 0x00])).expect("valid");
        assert_eq!(req.max_reply, 548);
        let req = parse(&discover_bytes(&[57, 2, 0x05, 0xdc])).expect("valid");
        assert_eq!(req.max_reply, 1472);
    }

    #[test]
    fn encode_puts_relay_info_last_and_pads() {
        let req = parse(&discover_bytes(&[])).expect("valid");
        let mut out = Vec::new();
        let opts = [OptionData {
            code: 53,
            data: vec![2],
        }];
        encode(&req.msg, &opts, Some(&[1, 2, 0xab, 0xcd]), 576, &mut out).expect("encodes");
        assert_eq!(out.len(), 300);
        assert_eq!(&out[240..243], &[53, 1, 2]);
        assert_eq!(&out[243..249], &[82, 4, 1, 2, 0xab, 0xcd]);
        assert_eq!(out[249], 255);
    }

    #[test]
    fn encode_leaves_out_what_does_not_fit() {
        let req = parse(&discover_bytes(&[])).expect("valid");
        let mut out = Vec::new();
        let opts = [
            OptionData {
                code: 53,
                data: vec![2],
            },
            OptionData {
                code: 15,
                data: vec![b'x'; 200],
            },
            OptionData {
                code: 15,
                data: vec![b'y'; 100],
            },
        ];
        encode(&req.msg, &opts, None, 400, &mut out).expect("encodes");
        assert!(out.len() <= 400);
        assert!(!out.windows(3).any(|w| w == b"xxx"));
        assert!(out.windows(3).any(|w| w == b"yyy"));
    }

    #[test]
    fn long_options_are_split_rfc_3396() {
        let req = parse(&discover_bytes(&[])).expect("valid");
        let mut out = Vec::new();
        let opts = [
            OptionData {
                code: 53,
                data: vec![2],
            },
            OptionData {
                code: 119,
                data: vec![7; 300],
            },
        ];
        encode(&req.msg, &opts, None, 1500, &mut out).expect("encodes");
        // 53 (3 bytes) then 119 as 255 + 45 bytes.
        assert_eq!(&out[243..245], &[119, 255]);
        assert_eq!(&out[243 + 257..243 + 259], &[119, 45]);
        assert_eq!(out[243 + 259 + 45], 255);
    }

    /// Relay information joined from several instances goes back split again, and still last.
    #[test]
    fn long_relay_information_is_echoed_in_instances() {
        let req = parse(&discover_bytes(&[])).expect("valid");
        let relay: Vec<u8> = std::iter::once(9)
            .chain(std::iter::once(253))
            .chain(std::iter::repeat_n(7, 253))
            .chain([1, 2, b'c', b'd'])
            .collect();
        let opts = [OptionData {
            code: 53,
            data: vec![2],
        }];
        let mut out = Vec::new();
        encode(&req.msg, &opts, Some(&relay), 576, &mut out).expect("encodes");
        assert_eq!(&out[243..245], &[82, 255]);
        assert_eq!(&out[243 + 257..243 + 259], &[82, 4]);
        assert_eq!(&out[243 + 259..243 + 264], &[1, 2, b'c', b'd', 255]);
        // The relay's bytes do not count against the client's size: the relay takes them out
        // before the client sees the reply, so a BOOTP-sized reply keeps its domain name.
        let big = [OptionData {
            code: 15,
            data: vec![b'x'; 40],
        }];
        encode(&req.msg, &big, Some(&relay), 300, &mut out).expect("encodes");
        assert_eq!(&out[240..242], &[15, 40]);
        assert_eq!(&out[282..284], &[82, 255]);
        assert_eq!(out.len(), 282 + relay_info_len(Some(&relay)) + 1);
        assert!(out.len() - relay_info_len(Some(&relay)) <= 300);
    }

    /// RFC 3442: 33 is left out only when 121 goes out too.
    #[test]
    fn static_routes_yield_to_classless_routes() {
        let req = parse(&discover_bytes(&[])).expect("valid");
        let opt = |code, len| OptionData {
            code,
            data: vec![code; len],
        };
        let sent = |opts: &[OptionData], max_len| {
            let mut out = Vec::new();
            encode(&req.msg, opts, None, max_len, &mut out).expect("encodes");
            let mut codes = Vec::new();
            let mut at = 240;
            while out[at] != 255 {
                codes.push(out[at]);
                at += 2 + usize::from(out[at + 1]);
            }
            codes
        };
        assert_eq!(sent(&[opt(53, 1), opt(33, 8), opt(121, 8)], 576), [53, 121]);
        assert_eq!(sent(&[opt(53, 1), opt(121, 8), opt(33, 8)], 576), [53, 121]);
        assert_eq!(sent(&[opt(53, 1), opt(33, 8)], 576), [53, 33]);
        // 121 does not fit: the client gets the static routes after all.
        assert_eq!(
            sent(&[opt(53, 1), opt(33, 8), opt(121, 200)], 400),
            [53, 33]
        );
    }

    /// The header is written field by field: byte for byte what dhcproto's encoder wrote, for
    /// a reply through a relay, a broadcast one, and a BOOTP one with sname and file.
    #[test]
    fn header_bytes_are_dhcprotos() {
        use dhcproto::v4::Flags;
        use dhcproto::{Encodable, Encoder};
        let hw = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let mut relayed = Message::new_with_id(
            0xdead_beef,
            Ipv4Addr::new(192, 0, 2, 7),
            Ipv4Addr::new(192, 0, 2, 8),
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(198, 51, 100, 1),
            &hw,
        );
        relayed
            .set_opcode(Opcode::BootReply)
            .set_hops(2)
            .set_secs(9);
        let mut broadcast = relayed.clone();
        broadcast.set_flags(Flags::default().set_broadcast());
        let mut bootp = relayed.clone();
        bootp.set_sname(b"boot.example").set_fname(b"pxelinux.0");
        for header in [relayed, broadcast, bootp] {
            let mut ours = Vec::new();
            encode_header(&header, &mut ours).expect("encodes");
            let mut theirs = Vec::new();
            let mut frame = header.clone();
            frame.opts_mut().clear();
            frame
                .encode(&mut Encoder::new(&mut theirs))
                .expect("encodes");
            assert_eq!(ours.len(), HEADER_LEN + MAGIC.len());
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn a_value_longer_than_its_fixed_field_is_an_encode_error() {
        let mut header = Message::default();
        header.set_sname(&[b'x'; 64]);
        let mut out = Vec::new();
        assert!(encode_header(&header, &mut out).is_ok());
        assert_eq!(fixed(&mut out, &[0; 65], 64), Err(Drop::Encode));
    }
}
