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
        match out.iter_mut().find(|i| i.name == ifa.interface_name) {
            Some(i) => i.addrs.push((addr, prefix)),
            None => out.push(Interface {
                name: ifa.interface_name,
                addrs: vec![(addr, prefix)],
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

    #[tokio::test]
    async fn two_sockets_share_a_port() {
        let a = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None).expect("bind");
        let port = a.local_addr().expect("addr").port();
        let b = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), None).expect("second bind");
        assert_eq!(b.local_addr().expect("addr").port(), port);
        assert!(recv_buffer(&a) > 0);
    }
}
