//! UDP sockets: set-up with socket2 (SO_REUSEPORT so N nodes share a port, SO_BROADCAST for
//! replies to clients without an address, large buffers for bursts), and interface lookup.
//! Bytes and addresses only: no DHCP here.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Receive buffer asked of the kernel: room for a burst of ~8,000 DHCP datagrams while the
/// node is busy. The kernel caps it at net.core.rmem_max (212,992 bytes on a stock Debian) unless
/// the process may override that (CAP_NET_ADMIN); the granted size is logged, with a warning
/// when it is short. Kea keeps the kernel's default, and drops bursts (bench/RESULTS.md).
pub const RECV_BUFFER: usize = 4 << 20;
const SEND_BUFFER: usize = 1 << 20;

/// A network interface and its IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// Whether the link resolves addresses with ARP (Ethernet, veth, bridge, VLAN): not a
    /// loopback, point-to-point or NOARP link. Only there can a reply be unicast to a client
    /// that has no address yet ([`Neighbours`]).
    pub arp: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no interface named or addressed {0:?} (by name, IPv4 address or host name)")]
    NoInterface(String),
    #[error("cannot list interfaces: {0}")]
    List(#[source] nix::Error),
    #[error("cannot bind UDP {addr} on {device:?}: {source}")]
    Bind {
        addr: SocketAddr,
        device: Option<String>,
        #[source]
        source: io::Error,
    },
}

/// Lists the IPv4 interfaces of this host.
pub fn interfaces() -> Result<Vec<Interface>, TransportError> {
    let mut out: Vec<Interface> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(TransportError::List)? {
        let Some(addr) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|a| a.ip())
        else {
            continue;
        };
        let prefix = ifa
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
        use nix::net::if_::InterfaceFlags as F;
        let no_arp = F::IFF_LOOPBACK | F::IFF_POINTOPOINT | F::IFF_NOARP;
        match out.iter_mut().find(|i| i.name == ifa.interface_name) {
            Some(i) => i.addrs.push((addr, prefix)),
            None => out.push(Interface {
                name: ifa.interface_name,
                addrs: vec![(addr, prefix)],
                arp: !ifa.flags.intersects(no_arp),
            }),
        }
    }
    Ok(out)
}

/// Resolves the config's `interface`: an interface name (`eth0`), an IPv4 address on one, or a
/// host name that resolves to such an address (the seed's `localhost`).
pub fn resolve_interface(spec: &str) -> Result<Interface, TransportError> {
    let all = interfaces()?;
    if let Some(i) = all.iter().find(|i| i.name == spec) {
        return Ok(i.clone());
    }
    let wanted: Vec<Ipv4Addr> = match spec.parse::<Ipv4Addr>() {
        Ok(ip) => vec![ip],
        Err(_) => (spec, 0)
            .to_socket_addrs()
            .map(|it| {
                it.filter_map(|a| match a.ip() {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                })
                .collect()
            })
            .unwrap_or_default(),
    };
    all.into_iter()
        .find(|i| i.addrs.iter().any(|(a, _)| wanted.contains(a)))
        .ok_or_else(|| TransportError::NoInterface(spec.to_owned()))
}

/// Binds a UDP socket for a node: shared port (SO_REUSEPORT), broadcast allowed, and tied to
/// `device` when given so that broadcasts are received from, and sent to, that link only.
pub fn bind(addr: SocketAddrV4, device: Option<&str>) -> Result<UdpSocket, TransportError> {
    let fail = |source| TransportError::Bind {
        addr: addr.into(),
        device: device.map(str::to_owned),
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(true).map_err(fail)?;
    socket.set_broadcast(true).map_err(fail)?;
    // Best effort: the kernel caps buffers at rmem_max/wmem_max; what it granted is logged.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    if socket.recv_buffer_size().unwrap_or(0) < RECV_BUFFER {
        // Capped by rmem_max: SO_RCVBUFFORCE goes past it for a process with CAP_NET_ADMIN
        // (a DHCP server on port 67 often runs as root); otherwise it fails and the cap stays.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &RECV_BUFFER,
        );
    }
    let _ = socket.set_send_buffer_size(SEND_BUFFER);
    if let Some(dev) = device {
        socket.bind_device(Some(dev.as_bytes())).map_err(fail)?;
    }
    // The kernel stamps each datagram on arrival (SO_TIMESTAMPNS), so the node can tell how
    // long a message waited (behind a backlog, or while the process was stopped) before it
    // acts on it.
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &true,
    )
    .map_err(|e| fail(io::Error::from(e)))?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&SocketAddr::from(addr).into()).map_err(fail)?;
    let std: std::net::UdpSocket = socket.into();
    UdpSocket::from_std(std).map_err(fail)
}

/// The kernel's neighbour table (ARP cache) of the node's link, as far as replies need it.
///
/// RFC 2131 section 4.1: an OFFER or ACK to a client that has no address yet and left the
/// broadcast bit clear is unicast to the address being given, at the client's hardware
/// address. The client cannot answer ARP for an address it does not have, so the node first
/// tells the kernel which hardware address that IP has (as dnsmasq does): one rtnetlink
/// RTM_NEWNEIGH, made or replaced as REACHABLE, which the kernel ages out as any other entry.
/// It needs CAP_NET_ADMIN; where it is refused, the node broadcasts (which every client takes).
pub struct Neighbours {
    /// A route netlink socket; a lock so that a request and the error it may bring back are
    /// read together. Held for two system calls, never across an await.
    socket: std::sync::Mutex<std::os::fd::OwnedFd>,
    ifindex: u32,
    seq: std::sync::atomic::AtomicU32,
    /// The link's own prefixes, as (network, mask): only an address in one of them is reached
    /// on the link itself. Any other (a shared network's subnet that the interface has no
    /// address in) would be routed, to a gateway's hardware address, not the client's.
    prefixes: Vec<(u32, u32)>,
    /// The interface's own addresses: a datagram to one of them never leaves the host (a pool
    /// that holds one is a mistake, but its client must still get the reply, by broadcast).
    own: Vec<Ipv4Addr>,
}

/// rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h).
mod rtnl {
    pub(super) const RTM_NEWNEIGH: u16 = 28;
    pub(super) const NLMSG_ERROR: u16 = 2;
    pub(super) const NLM_F_REQUEST: u16 = 0x1;
    pub(super) const NLM_F_REPLACE: u16 = 0x100;
    pub(super) const NLM_F_CREATE: u16 = 0x400;
    pub(super) const NUD_REACHABLE: u16 = 0x02;
    pub(super) const NDA_DST: u16 = 1;
    pub(super) const NDA_LLADDR: u16 = 2;
    pub(super) const AF_INET: u8 = 2;
}

impl Neighbours {
    /// The table of `interface`, or None when its link does not use ARP (a loopback, as in the
    /// tests, has no hardware addresses: replies there are broadcast).
    pub fn open(interface: &Interface) -> io::Result<Option<Self>> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
        if !interface.arp {
            return Ok(None);
        }
        let ifindex = nix::net::if_::if_nametoindex(interface.name.as_str())?;
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        let prefixes = interface
            .addrs
            .iter()
            .map(|(addr, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                (u32::from(*addr) & mask, mask)
            })
            .collect();
        Ok(Some(Self {
            socket: std::sync::Mutex::new(socket),
            ifindex,
            seq: std::sync::atomic::AtomicU32::new(1),
            prefixes,
            own: interface.addrs.iter().map(|(addr, _)| *addr).collect(),
        }))
    }

    /// Whether `ip` is another host on the link: in one of the interface's own prefixes, and
    /// not one of its own addresses.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        self.prefixes.iter().any(|(net, mask)| n & mask == *net) && !self.own.contains(&ip)
    }

    /// Makes (or replaces) the entry `ip` -> `mac` on the link. An error is the kernel's
    /// answer (EPERM without CAP_NET_ADMIN) or the socket's.
    pub fn learn(&self, ip: Ipv4Addr, mac: [u8; 6]) -> io::Result<()> {
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{MsgFlags, NetlinkAddr, recv, sendto};
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = neighbour_request(self.ifindex, ip, mac, seq);
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        let fd = socket.as_raw_fd();
        sendto(fd, &request, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        // The kernel handles the request within sendto: an error is already queued, and
        // success (no NLM_F_ACK asked) leaves nothing to read.
        let mut answer = [0u8; 256];
        loop {
            match recv(fd, &mut answer, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    if let Some(errno) = netlink_error(&answer[..n], seq) {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// An RTM_NEWNEIGH request: `ip` is at `mac` on link `ifindex`, reachable (made or replaced).
fn neighbour_request(ifindex: u32, ip: Ipv4Addr, mac: [u8; 6], seq: u32) -> Vec<u8> {
    use rtnl::*;
    // nlmsghdr (16) + ndmsg (12) + NDA_DST (4 + 4) + NDA_LLADDR (4 + 6, padded to 12).
    const LEN: usize = 16 + 12 + 8 + 12;
    let mut m = Vec::with_capacity(LEN);
    m.extend_from_slice(&(LEN as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_NEWNEIGH.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ndmsg: family, 3 bytes of padding, ifindex, state, flags, type.
    m.extend_from_slice(&[AF_INET, 0, 0, 0]);
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m.extend_from_slice(&NUD_REACHABLE.to_ne_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&NDA_DST.to_ne_bytes());
    m.extend_from_slice(&ip.octets());
    m.extend_from_slice(&10u16.to_ne_bytes());
    m.extend_from_slice(&NDA_LLADDR.to_ne_bytes());
    m.extend_from_slice(&mac);
    m.extend_from_slice(&[0, 0]);
    debug_assert_eq!(m.len(), LEN);
    m
}

/// The errno of an NLMSG_ERROR answer to request `seq` (positive), or None for anything else
/// (an acknowledgement, error 0, included).
fn netlink_error(answer: &[u8], seq: u32) -> Option<i32> {
    let u16_at = |at: usize| {
        answer
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        answer
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u16_at(4)? != rtnl::NLMSG_ERROR || u32_at(8)? != seq {
        return None;
    }
    let error = u32_at(16)?.cast_signed();
    (error < 0).then_some(-error)
}

/// Receives one datagram: its length, sender, and when the kernel received it (this host's
/// realtime clock; now, when the kernel gave no timestamp).
pub async fn recv_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, SystemTime)> {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};
    use tokio::io::Interest;
    loop {
        socket.readable().await?;
        let got = socket.try_io(Interest::READABLE, || {
            let mut iov = [io::IoSliceMut::new(buf)];
            let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
            let msg = recvmsg::<SockaddrIn>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .map_err(io::Error::from)?;
            let stamp = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
                    _ => None,
                })
            });
            let from = msg
                .address
                .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |a| {
                    SocketAddr::from((a.ip(), a.port()))
                });
            Ok((msg.bytes, from, stamp))
        });
        match got {
            Ok((n, from, stamp)) => {
                let at = stamp
                    .and_then(|ts| {
                        let since = Duration::new(
                            u64::try_from(ts.tv_sec()).ok()?,
                            u32::try_from(ts.tv_nsec()).ok()?,
                        );
                        UNIX_EPOCH.checked_add(since)
                    })
                    .unwrap_or_else(SystemTime::now);
                return Ok((n, from, at));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The receive buffer the kernel granted (for the start-up log). Linux reports twice the size
/// asked (it counts its bookkeeping), so a full grant reads at least [`RECV_BUFFER`].
pub fn recv_buffer(socket: &UdpSocket) -> usize {
    socket2::SockRef::from(socket)
        .recv_buffer_size()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolves_by_name_address_and_host_name() {
        let by_addr = resolve_interface("127.0.0.1").expect("lo by address");
        assert!(by_addr.addrs.iter().any(|(a, _)| *a == Ipv4Addr::LOCALHOST));
        let by_name = resolve_interface(&by_addr.name).expect("lo by name");
        assert_eq!(by_name, by_addr);
        let by_host = resolve_interface("localhost").expect("localhost");
        assert_eq!(by_host.name, by_addr.name);
        assert!(resolve_interface("no-such-if0").is_err());
    }

    /// Only the link's own prefixes are reached on it; any other address would be routed, and
    /// the interface's own address never leaves the host.
    #[test]
    fn a_neighbour_entry_is_made_only_for_an_address_on_the_link() {
        let link = Interface {
            name: "lo".to_owned(),
            addrs: vec![
                (Ipv4Addr::new(192, 0, 2, 1), 24),
                (Ipv4Addr::new(198, 51, 100, 129), 25),
            ],
            arp: true,
        };
        let n = Neighbours::open(&link).expect("open").expect("an ARP link");
        assert!(n.on_link(Ipv4Addr::new(192, 0, 2, 200)));
        assert!(n.on_link(Ipv4Addr::new(198, 51, 100, 200)));
        assert!(!n.on_link(Ipv4Addr::new(198, 51, 100, 10)));
        assert!(!n.on_link(Ipv4Addr::new(203, 0, 113, 10)));
        // The interface's own address stays on the host.
        assert!(!n.on_link(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn loopback_has_no_neighbour_table() {
        let lo = resolve_interface("127.0.0.1").expect("lo");
        assert!(!lo.arp);
        assert!(Neighbours::open(&lo).expect("open").is_none());
    }

    /// The request's bytes, field by field (linux/rtnetlink.h, linux/neighbour.h).
    #[test]
    fn a_neighbour_request_says_ip_is_at_mac_on_the_link() {
        let mac = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        let m = neighbour_request(7, Ipv4Addr::new(192, 0, 2, 10), mac, 42);
        let u16_at = |at: usize| u16::from_ne_bytes([m[at], m[at + 1]]);
        let u32_at = |at: usize| u32::from_ne_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]);
        assert_eq!(u32_at(0) as usize, m.len());
        assert_eq!(m.len(), 48);
        assert_eq!(u16_at(4), rtnl::RTM_NEWNEIGH);
        assert_eq!(u16_at(6), 0x501, "request, create, replace");
        assert_eq!(u32_at(8), 42);
        assert_eq!(m[16], rtnl::AF_INET);
        assert_eq!(u32_at(20), 7, "ifindex");
        assert_eq!(u16_at(24), rtnl::NUD_REACHABLE);
        assert_eq!((u16_at(28), u16_at(30)), (8, rtnl::NDA_DST));
        assert_eq!(m[32..36], [192, 0, 2, 10]);
        assert_eq!((u16_at(36), u16_at(38)), (10, rtnl::NDA_LLADDR));
        assert_eq!(m[40..46], mac);
    }

    #[test]
    fn netlink_errors_are_read_for_their_request_only() {
        let answer = |kind: u16, seq: u32, error: i32| {
            let mut a = Vec::new();
            a.extend_from_slice(&36u32.to_ne_bytes());
            a.extend_from_slice(&kind.to_ne_bytes());
            a.extend_from_slice(&0u16.to_ne_bytes());
            a.extend_from_slice(&seq.to_ne_bytes());
            a.extend_from_slice(&0u32.to_ne_bytes());
            a.extend_from_slice(&error.to_ne_bytes());
            a.extend_from_slice(&[0; 16]);
            a
        };
        assert_eq!(netlink_error(&answer(2, 5, -1), 5), Some(1), "EPERM");
        assert_eq!(
            netlink_error(&answer(2, 5, 0), 5),
            None,
            "an acknowledgement"
        );
        assert_eq!(
            netlink_error(&answer(2, 4, -1), 5),
            None,
            "another request's"
        );
        assert_eq!(
            netlink_error(&answer(3, 5, -1), 5),
            None,
            "not an error message"
        );
        assert_eq!(netlink_error(&answer(2, 5, -1)[..10], 5), None, "truncated");
    }

    #[tokio::test]
    async fn two_sockets_share_a_port() {
        let a = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None).expect("bind");
        let port = a.local_addr().expect("addr").port();
        let b = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), None).expect("second bind");
        assert_eq!(b.local_addr().expect("addr").port(), port);
        assert!(recv_buffer(&a) > 0);
    }
}
