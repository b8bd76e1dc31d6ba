//! The ICMP echo check before a new address is offered (`pingCheck`): an address that answers
//! is in use by a host the hive does not know about (a static address, a stale device), so it
//! goes on probation and the client is offered another one.
//!
//! One socket per node, shared by every check: a reader task hands each echo reply to the
//! check waiting for it (by sequence number and source address), so a check costs its caller
//! only the wait, and other messages go on being served meanwhile.
//!
//! The socket is a raw ICMP socket (needs `CAP_NET_RAW`) or, failing that, an unprivileged
//! ICMP datagram socket (Linux, allowed by `net.ipv4.ping_group_range`, which container
//! runtimes open to every group).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
const PAYLOAD: &[u8; 8] = b"dhcphive";

type Waiting = Arc<Mutex<HashMap<u16, (Ipv4Addr, oneshot::Sender<()>)>>>;

/// The node's pinger. Dropping it stops its reader.
#[derive(Debug)]
pub struct Pinger {
    socket: Arc<UdpSocket>,
    /// Our echo identifier (raw sockets see every host's replies; datagram sockets get an
    /// identifier from the kernel and only their own replies).
    ident: u16,
    next_seq: AtomicU16,
    waiting: Waiting,
    reader: JoinHandle<()>,
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Pinger {
    /// Opens the socket and starts the reader (inside a tokio runtime).
    pub fn open() -> io::Result<Self> {
        let (socket, kind) = match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
            Ok(s) => (s, "raw"),
            Err(raw) => match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
                Ok(s) => (s, "datagram"),
                Err(dgram) => {
                    return Err(io::Error::new(
                        raw.kind(),
                        format!(
                            "no ICMP socket for pingCheck: raw: {raw} (needs CAP_NET_RAW); \
                             datagram: {dgram} (needs net.ipv4.ping_group_range to include \
                             this process's group)"
                        ),
                    ));
                }
            },
        };
        socket.set_nonblocking(true)?;
        // tokio has no ICMP type; a UDP socket's recv_from/send_to are the plain system calls,
        // which is all an ICMP socket needs.
        let socket = Arc::new(UdpSocket::from_std(std::net::UdpSocket::from(socket))?);
        let waiting: Waiting = Arc::default();
        let ident = (std::process::id() & 0xffff) as u16;
        let reader = tokio::spawn(read_replies(
            Arc::clone(&socket),
            Arc::clone(&waiting),
            (kind == "raw").then_some(ident),
        ));
        info!(socket = kind, "ICMP check ready");
        Ok(Self {
            socket,
            ident,
            next_seq: AtomicU16::new(0),
            waiting,
            reader,
        })
    }

    /// Sends one echo request to `ip` and waits up to `timeout` for its reply. `Err` when the
    /// request could not be sent (no route, say): the caller decides what an unknown means.
    pub async fn answers(&self, ip: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(seq, (ip, tx));
        }
        let forget = || {
            if let Ok(mut w) = self.waiting.lock() {
                w.remove(&seq);
            }
        };
        let packet = echo_request(self.ident, seq);
        if let Err(e) = self
            .socket
            .send_to(&packet, SocketAddr::new(ip.into(), 0))
            .await
        {
            forget();
            return Err(e);
        }
        let answered = matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())));
        forget();
        Ok(answered)
    }
}

/// Hands each echo reply to the check that waits for it. `ident` is checked on raw sockets.
async fn read_replies(socket: Arc<UdpSocket>, waiting: Waiting, ident: Option<u16>) {
    let mut buf = [0u8; 1500];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "ICMP receive error");
                continue;
            }
        };
        let SocketAddr::V4(from) = from else {
            continue;
        };
        let Some((id, seq)) = echo_reply(&buf[..len]) else {
            continue;
        };
        if ident.is_some_and(|ours| ours != id) {
            continue;
        }
        let Ok(mut w) = waiting.lock() else {
            continue;
        };
        if w.get(&seq).is_some_and(|(ip, _)| ip == from.ip())
            && let Some((_, tx)) = w.remove(&seq)
        {
            let _ = tx.send(());
        }
    }
}

/// An echo request: type 8, code 0, checksum, identifier, sequence, payload.
fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + PAYLOAD.len());
    p.extend_from_slice(&[ECHO_REQUEST, 0, 0, 0]);
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// (identifier, sequence) of an echo reply; the IPv4 header a raw socket delivers is skipped.
fn echo_reply(packet: &[u8]) -> Option<(u16, u16)> {
    let icmp = match packet.first()? >> 4 {
        4 => packet.get(usize::from(packet[0] & 0x0f) * 4..)?,
        _ => packet,
    };
    if icmp.len() < 8 || icmp[0] != ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    Some((
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// How long a check waits, from the config.
pub fn timeout(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checksum_verifies() {
        let p = echo_request(0x1234, 7);
        assert_eq!(p[0], ECHO_REQUEST);
        // A packet with its checksum in place sums to zero.
        assert_eq!(checksum(&p), 0);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn replies_are_read_with_or_without_ip_header() {
        let mut reply = echo_request(0xabcd, 9);
        reply[0] = ECHO_REPLY;
        assert_eq!(echo_reply(&reply), Some((0xabcd, 9)));
        let mut with_ip = vec![0x45; 20];
        with_ip.extend_from_slice(&reply);
        assert_eq!(echo_reply(&with_ip), Some((0xabcd, 9)));
        // A request (our own, looped back on a raw socket) is not a reply.
        assert_eq!(echo_reply(&echo_request(1, 1)), None);
        assert_eq!(echo_reply(&[0x45, 0, 0]), None);
        assert_eq!(echo_reply(&[]), None);
    }

    /// Against the loopback address, which always answers (needs an ICMP socket: root or
    /// ping_group_range; skipped where neither is allowed).
    #[tokio::test]
    async fn loopback_answers() {
        let Ok(p) = Pinger::open() else {
            eprintln!("no ICMP socket here; skipped");
            return;
        };
        let t = Duration::from_millis(500);
        assert!(
            p.answers(Ipv4Addr::new(127, 0, 0, 1), t)
                .await
                .expect("send")
        );
        // 127.x answers too, from every address of the block.
        assert!(
            p.answers(Ipv4Addr::new(127, 3, 2, 1), t)
                .await
                .expect("send")
        );
        assert!(
            p.waiting.lock().expect("lock").is_empty(),
            "nothing left waiting"
        );
    }
}
