//! `hive-loadgen`: many DHCPv4 clients behind relay agents, for sizing a hive (or any DHCP
//! server) and for the benchmark in `bench/`.
//!
//! Every exchange is a 4-way DORA of a client with a MAC address of its own, sent as a relay
//! agent would (giaddr set, from the server port, one UDP socket per relay address) to the ONE
//! server address it is given. It starts exchanges at a fixed rate (`--rate`) or keeps a window of
//! them in flight as fast as possible (`--rate 0`), and stops by itself after `--duration` and/or
//! `--count`, then waits `--timeout` for the last answers. It reports DORA/s, the share of
//! exchanges left incomplete, and DISCOVER-OFFER and REQUEST-ACK latency percentiles.
//!
//! Point it only at servers you run yourself: on loopback, or inside network namespaces that
//! you created (as `bench/run.sh` does). It sends nothing anywhere else.
//!
//! Why it is built the way it is: perfdhcp tops out at a few thousand DISCOVERs a second on one
//! core, below what a hive can serve. So this tool is one thread with no allocation per packet:
//! packets are patched copies of two templates, replies are read by hand (only op, xid, yiaddr
//! and options 53/54 matter), and sockets are read and written with recvmmsg/sendmmsg, many
//! datagrams per system call.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, recvmmsg, sendmmsg,
    setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use socket2::{Domain, Protocol, Socket, Type};

/// Bytes of a DHCP message we build: header, cookie and options, padded to the 300 bytes of a
/// BOOTP message (RFC 1542 2.1), as real clients send.
const PACKET: usize = 300;
/// Largest reply read; longer ones are truncated, and the parts we read are at the start.
const REPLY: usize = 1500;
/// Kernel socket buffers asked for: a burst of several thousand datagrams.
const SOCKET_BUFFER: usize = 4 << 20;
/// At a fixed rate the tool works in ticks of this length: it sends what is due and reads what
/// came, then sleeps to the next tick, so each system call carries several datagrams. Replies
/// are timed by the kernel's arrival stamp (SO_TIMESTAMPNS), so the wait adds nothing to the
/// delays measured.
const TICK: Duration = Duration::from_micros(250);

#[derive(Parser, Debug)]
#[command(
    name = "hive-loadgen",
    version,
    about = "DHCPv4 load generator: 4-way DORA of unique clients behind relay addresses",
    long_about = "DHCPv4 load generator: 4-way DORA of unique clients behind relay addresses.\n\n\
        Sends only to --server, which must be a server you run yourself, on loopback or inside \
        network namespaces you created (see bench/README.md). Bounded by --duration and/or \
        --count; stops by itself."
)]
struct Args {
    /// The DHCP server (or hive service address) and its port, e.g. 10.77.0.1:67.
    #[arg(long)]
    server: SocketAddrV4,
    /// The first relay address (giaddr). Each socket is bound to its own relay address, the
    /// next ones counting up from this: they must be addresses of this host.
    #[arg(long)]
    relay: Ipv4Addr,
    /// Sockets, one per relay address (replies come back to giaddr at the server port, so
    /// several relays also spread the load over the server's SO_REUSEPORT sockets).
    #[arg(long, default_value_t = 4)]
    sockets: u8,
    /// New exchanges (DISCOVERs) per second; 0 = as fast as possible, `--window` in flight.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Exchanges in flight at most when `--rate 0`.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Seconds during which exchanges are started.
    #[arg(long)]
    duration: Option<f64>,
    /// Exchanges to start, at most.
    #[arg(long)]
    count: Option<u64>,
    /// Seconds a DISCOVER or REQUEST waits for its answer before the exchange counts as
    /// incomplete (perfdhcp's -d); also how long the tool waits for the last answers.
    #[arg(long, default_value_t = 1.0)]
    timeout: f64,
    /// Datagrams per sendmmsg/recvmmsg call, at most.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// First MAC address: 02:<id>:<32-bit counter>. Default: a random id and counter start,
    /// so that runs against the same lease store use new clients.
    #[arg(long, value_parser = parse_mac)]
    first_mac: Option<[u8; 6]>,
    /// Clients' MACs in counter order (first-mac, first-mac + 1, ...). By default the counter
    /// is scattered (multiplied by an odd constant: still one MAC per client), as perfdhcp's
    /// random MACs are: a server whose lease index is ordered by MAC does less work on keys
    /// that arrive in order.
    #[arg(long)]
    sequential_macs: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!(
            "{s:?}: a MAC address is six hex bytes, aa:bb:cc:dd:ee:ff"
        ));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?}: {p:?} is not a hex byte"))?;
    }
    Ok(mac)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.json(&args));
            } else {
                print!("{}", report.table(&args));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hive-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where one exchange stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// DISCOVER sent at the instant, OFFER awaited.
    Discover(Instant),
    /// REQUEST sent at the instant, ACK awaited.
    Request(Instant),
    /// ACK received.
    Done,
    /// NAK received (counted as incomplete).
    Nak,
}

/// One relay agent: its socket, its address (giaddr) and the datagrams waiting to go out.
struct Relay {
    socket: UdpSocket,
    addr: Ipv4Addr,
    /// Built packets not yet accepted by the kernel (sendmmsg may take fewer than offered).
    queue: VecDeque<[u8; PACKET]>,
    send_headers: MultiHeaders<SockaddrIn>,
    recv_headers: MultiHeaders<SockaddrIn>,
}

impl Relay {
    fn bind(addr: Ipv4Addr, port: u16, batch: usize) -> Result<Self, String> {
        let local = SocketAddrV4::new(addr, port);
        let fail = |what: &str, e: std::io::Error| format!("relay socket {local}: {what}: {e}");
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| fail("socket", e))?;
        // A server on the same host may hold 0.0.0.0:<port>; a relay's own address is more
        // specific, so replies to giaddr still reach this socket.
        socket
            .set_reuse_address(true)
            .map_err(|e| fail("SO_REUSEADDR", e))?;
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        socket
            .set_nonblocking(true)
            .map_err(|e| fail("non-blocking", e))?;
        socket
            .bind(&SocketAddr::from(local).into())
            .map_err(|e| fail("bind (is it an address of this host?)", e))?;
        setsockopt(&socket, sockopt::ReceiveTimestampns, &true)
            .map_err(|e| fail("SO_TIMESTAMPNS", e.into()))?;
        Ok(Self {
            socket: socket.into(),
            addr,
            queue: VecDeque::new(),
            send_headers: MultiHeaders::preallocate(batch, None),
            recv_headers: MultiHeaders::preallocate(batch, Some(nix::cmsg_space!(TimeSpec))),
        })
    }

    /// Hands queued datagrams to the kernel, a batch per call, until the queue is empty or
    /// the socket is full (the rest waits for the next turn).
    fn flush(&mut self, to: SockaddrIn, batch: usize) -> Result<(), String> {
        let fd = self.socket.as_raw_fd();
        while !self.queue.is_empty() {
            let n = self.queue.len().min(batch);
            let (a, b) = self.queue.as_slices();
            let slices: Vec<[IoSlice<'_>; 1]> = a
                .iter()
                .chain(b)
                .take(n)
                .map(|p| [IoSlice::new(p)])
                .collect();
            let addrs = vec![Some(to); n];
            let none: [ControlMessage<'_>; 0] = [];
            let sent = match sendmmsg(
                fd,
                &mut self.send_headers,
                &slices,
                &addrs,
                none,
                MsgFlags::empty(),
            ) {
                Ok(r) => r.count(),
                Err(Errno::EAGAIN | Errno::ENOBUFS) => 0,
                Err(e) => return Err(format!("sendmmsg from {}: {e}", self.addr)),
            };
            drop(slices);
            self.queue.drain(..sent);
            if sent < n {
                break;
            }
        }
        Ok(())
    }

    /// Reads up to one batch of what the socket holds into `bufs`, their lengths and the
    /// kernel's arrival stamps into `lens`.
    fn receive(
        &mut self,
        bufs: &mut [[u8; REPLY]],
        lens: &mut Vec<(usize, Option<TimeSpec>)>,
        batch: usize,
    ) -> Result<(), String> {
        lens.clear();
        let fd = self.socket.as_raw_fd();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
            .iter_mut()
            .take(batch)
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        match recvmmsg(
            fd,
            &mut self.recv_headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(r) => lens.extend(r.map(|m| {
                let stamp = m.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|c| match c {
                        ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
                        _ => None,
                    })
                });
                (m.bytes, stamp)
            })),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            // ICMP errors of earlier sends (e.g. port unreachable while the server starts)
            // surface here; they are not the tool's failure.
            Err(Errno::ECONNREFUSED | Errno::EHOSTUNREACH | Errno::ENETUNREACH) => {}
            Err(e) => return Err(format!("recvmmsg on {}: {e}", self.addr)),
        }
        Ok(())
    }
}

/// The two request templates: a relayed DISCOVER and REQUEST (RFC 2131 tables 5 and 3).
struct Templates {
    discover: [u8; PACKET],
    request: [u8; PACKET],
}

/// Offsets in the fixed BOOTP header (RFC 2131 figure 1).
const XID: usize = 4;
const YIADDR: usize = 16;
const GIADDR: usize = 24;
const CHADDR: usize = 28;
const OPTIONS: usize = 240;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Option 55: subnet mask, router, DNS, domain name, broadcast, lease, server id, T1, T2.
const PARAMETERS: [u8; 9] = [1, 3, 6, 15, 28, 51, 54, 58, 59];
/// Where option 50's and option 54's values sit in the REQUEST template.
const REQ_IP_AT: usize = OPTIONS + 3 + 2;
const SERVER_ID_AT: usize = REQ_IP_AT + 4 + 2;

impl Templates {
    fn new() -> Self {
        let mut header = [0u8; PACKET];
        header[0] = 1; // BOOTREQUEST
        header[1] = 1; // Ethernet
        header[2] = 6; // hlen
        header[3] = 1; // hops: one relay
        header[236..240].copy_from_slice(&MAGIC);
        let mut discover = header;
        let opts = [
            &[53, 1, 1][..],
            &[55, PARAMETERS.len() as u8],
            &PARAMETERS,
            &[255],
        ]
        .concat();
        discover[OPTIONS..OPTIONS + opts.len()].copy_from_slice(&opts);
        let mut request = header;
        let opts = [
            &[53, 1, 3][..],
            &[50, 4, 0, 0, 0, 0],
            &[54, 4, 0, 0, 0, 0],
            &[55, PARAMETERS.len() as u8],
            &PARAMETERS,
            &[255],
        ]
        .concat();
        request[OPTIONS..OPTIONS + opts.len()].copy_from_slice(&opts);
        Self { discover, request }
    }

    fn discover(&self, xid: u32, mac: [u8; 6], relay: Ipv4Addr) -> [u8; PACKET] {
        let mut p = self.discover;
        p[XID..XID + 4].copy_from_slice(&xid.to_be_bytes());
        p[GIADDR..GIADDR + 4].copy_from_slice(&relay.octets());
        p[CHADDR..CHADDR + 6].copy_from_slice(&mac);
        p
    }

    fn request(
        &self,
        xid: u32,
        mac: [u8; 6],
        relay: Ipv4Addr,
        ip: [u8; 4],
        server_id: [u8; 4],
    ) -> [u8; PACKET] {
        let mut p = self.request;
        p[XID..XID + 4].copy_from_slice(&xid.to_be_bytes());
        p[GIADDR..GIADDR + 4].copy_from_slice(&relay.octets());
        p[CHADDR..CHADDR + 6].copy_from_slice(&mac);
        p[REQ_IP_AT..REQ_IP_AT + 4].copy_from_slice(&ip);
        p[SERVER_ID_AT..SERVER_ID_AT + 4].copy_from_slice(&server_id);
        p
    }
}

/// What the tool needs of a reply: its transaction id, message type, yiaddr and option 54.
struct ReplyInfo {
    xid: u32,
    msg_type: u8,
    yiaddr: [u8; 4],
    server_id: Option<[u8; 4]>,
}

/// Reads a BOOTREPLY by hand. Anything malformed is `None` (and counted by the caller).
fn read_reply(p: &[u8]) -> Option<ReplyInfo> {
    if p.len() < OPTIONS || p[0] != 2 || p[236..240] != MAGIC {
        return None;
    }
    let xid = u32::from_be_bytes(p[XID..XID + 4].try_into().ok()?);
    let yiaddr: [u8; 4] = p[YIADDR..YIADDR + 4].try_into().ok()?;
    let (mut msg_type, mut server_id) = (None, None);
    let mut at = OPTIONS;
    while at < p.len() {
        match p[at] {
            0 => at += 1,
            255 => break,
            code => {
                let len = usize::from(*p.get(at + 1)?);
                let body = p.get(at + 2..at + 2 + len)?;
                match (code, len) {
                    (53, 1) => msg_type = Some(body[0]),
                    (54, 4) => server_id = body.try_into().ok(),
                    _ => {}
                }
                at += 2 + len;
            }
        }
    }
    Some(ReplyInfo {
        xid,
        msg_type: msg_type?,
        yiaddr,
        server_id,
    })
}

/// Counts and latencies of one run.
#[derive(Default)]
struct Tally {
    started: u64,
    completed: u64,
    lost_offer: u64,
    lost_ack: u64,
    naks: u64,
    /// Replies for exchanges already given up, or with an unknown xid or type.
    stray: u64,
    malformed: u64,
    /// DISCOVER-OFFER and REQUEST-ACK latencies, in nanoseconds.
    offer_ns: Vec<u64>,
    ack_ns: Vec<u64>,
    elapsed: Duration,
    /// Time spent starting exchanges (for the offered rate).
    sending: Duration,
}

fn run(args: &Args) -> Result<Tally, String> {
    if args.duration.is_none() && args.count.is_none() {
        return Err("give --duration and/or --count: a run must be bounded".into());
    }
    let server = *args.server.ip();
    if server.is_broadcast() || server.is_multicast() || server.is_unspecified() {
        return Err(format!(
            "--server {server}: give the one unicast address of the server under test"
        ));
    }
    if args.sockets == 0 || args.batch == 0 || args.timeout <= 0.0 {
        return Err("--sockets, --batch and --timeout must be positive".into());
    }
    let duration = match args.duration {
        Some(d) if !(d > 0.0 && d.is_finite()) => {
            return Err(format!("--duration {d}: a positive number of seconds"));
        }
        Some(d) => Some(Duration::from_secs_f64(d)),
        None => None,
    };
    let count = args.count.unwrap_or(u64::MAX).min(u64::from(u32::MAX));
    let timeout = Duration::from_secs_f64(args.timeout);
    let first_relay = u32::from(args.relay);
    let n_relays = u64::from(args.sockets);
    let mut relays = (0..u32::from(args.sockets))
        .map(|i| {
            Relay::bind(
                Ipv4Addr::from(first_relay + i),
                args.server.port(),
                args.batch,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let to = SockaddrIn::from(args.server);
    let templates = Templates::new();
    let first_mac = args.first_mac.unwrap_or_else(random_mac);
    let mac_base = u32::from_be_bytes([first_mac[2], first_mac[3], first_mac[4], first_mac[5]]);
    let scatter = if args.sequential_macs { 1 } else { MAC_SCATTER };
    let mac_of = |seq: u64| mac_at(first_mac, mac_base, scatter, seq);

    let mut tally = Tally::default();
    // Exchanges not yet resolved, oldest first; `front` is the sequence number of the first.
    // The xid is the sequence number, so a reply finds its exchange by subtraction.
    let mut pending: VecDeque<Stage> = VecDeque::new();
    let mut front: u64 = 0;
    let mut bufs = vec![[0u8; REPLY]; args.batch];
    let mut lens = Vec::with_capacity(args.batch);
    let start = Instant::now();
    // Kernel stamps are wall-clock times: taken back to this run's monotonic clock.
    let wall_start = SystemTime::now();
    let arrival = |stamp: Option<TimeSpec>| {
        stamp
            .and_then(|ts| {
                let wall = UNIX_EPOCH
                    + Duration::new(
                        u64::try_from(ts.tv_sec()).ok()?,
                        u32::try_from(ts.tv_nsec()).ok()?,
                    );
                Some(match wall.duration_since(wall_start) {
                    Ok(d) => start + d,
                    Err(e) => start.checked_sub(e.duration()).unwrap_or(start),
                })
            })
            .unwrap_or_else(Instant::now)
    };
    let mut last_ack = start;
    let mut stop_sending_at: Option<Instant> = None;
    // Sockets that poll found readable (all, before the first poll): only these are read, so a
    // wakeup for one reply costs one recvmmsg, not one per socket.
    let mut readable = vec![true; relays.len()];
    loop {
        let now = Instant::now();
        // 1. Start the exchanges now due.
        if stop_sending_at.is_none() {
            let elapsed = now - start;
            let over = duration.is_some_and(|d| elapsed >= d) || tally.started >= count;
            if over {
                stop_sending_at = Some(now);
                tally.sending = elapsed;
            } else {
                let due = if args.rate == 0 {
                    args.window.saturating_sub(pending.len()) as u64
                } else {
                    let target = (elapsed.as_secs_f64() * f64::from(args.rate)) as u64 + 1;
                    target.saturating_sub(tally.started)
                };
                // Bounded per turn so replies keep being read while far behind.
                let due = due
                    .min(count - tally.started)
                    .min((args.batch * relays.len()) as u64);
                for _ in 0..due {
                    let seq = tally.started;
                    let r = &mut relays[(seq % n_relays) as usize];
                    r.queue
                        .push_back(templates.discover(seq as u32, mac_of(seq), r.addr));
                    pending.push_back(Stage::Discover(now));
                    tally.started += 1;
                }
            }
        }
        for r in &mut relays {
            r.flush(to, args.batch)?;
        }
        // 2. Read the answers; an OFFER is answered with a REQUEST at once.
        for i in 0..relays.len() {
            if !readable[i] {
                continue;
            }
            loop {
                relays[i].receive(&mut bufs, &mut lens, args.batch)?;
                let got = lens.len();
                for (buf, &(len, stamp)) in bufs.iter().zip(lens.iter()) {
                    let at = arrival(stamp);
                    let Some(reply) = read_reply(&buf[..len]) else {
                        tally.malformed += 1;
                        continue;
                    };
                    // The xid is the sequence number (runs stop before 2^32 exchanges).
                    let seq = u64::from(reply.xid);
                    let Some(stage) = seq
                        .checked_sub(front)
                        .and_then(|k| pending.get_mut(k as usize))
                    else {
                        tally.stray += 1;
                        continue;
                    };
                    match (*stage, reply.msg_type) {
                        (Stage::Discover(sent), 2) => {
                            tally
                                .offer_ns
                                .push(nanos(at.saturating_duration_since(sent)));
                            let relay = &mut relays[(seq % n_relays) as usize];
                            let sid = reply.server_id.unwrap_or(server.octets());
                            relay.queue.push_back(templates.request(
                                reply.xid,
                                mac_of(seq),
                                relay.addr,
                                reply.yiaddr,
                                sid,
                            ));
                            *stage = Stage::Request(Instant::now());
                        }
                        (Stage::Request(sent), 5) => {
                            tally.ack_ns.push(nanos(at.saturating_duration_since(sent)));
                            tally.completed += 1;
                            last_ack = at;
                            *stage = Stage::Done;
                        }
                        (Stage::Request(_), 6) => {
                            tally.naks += 1;
                            *stage = Stage::Nak;
                        }
                        _ => tally.stray += 1,
                    }
                }
                if got < args.batch {
                    break;
                }
            }
        }
        for r in &mut relays {
            r.flush(to, args.batch)?;
        }
        // 3. Give up on exchanges whose answer is late. They are in send order, so only the
        // front ones can be; a REQUEST sent later keeps its exchange (and those behind) a while.
        let now = Instant::now();
        while let Some(stage) = pending.front() {
            match *stage {
                Stage::Done | Stage::Nak => {}
                Stage::Discover(t) if now - t >= timeout => tally.lost_offer += 1,
                Stage::Request(t) if now - t >= timeout => tally.lost_ack += 1,
                _ => break,
            }
            pending.pop_front();
            front += 1;
        }
        if stop_sending_at.is_some() && pending.is_empty() {
            break;
        }
        // 4. At a fixed rate: sleep to the next tick, then look which sockets have replies.
        // As fast as possible, or waiting for the last answers: until a reply comes (1 ms at
        // most).
        let wait = if stop_sending_at.is_none() && args.rate > 0 {
            std::thread::sleep(TICK);
            PollTimeout::ZERO
        } else {
            PollTimeout::from(1u8)
        };
        let mut fds: Vec<PollFd<'_>> = relays
            .iter()
            .map(|r| PollFd::new(r.socket.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, wait) {
            Ok(_) => {
                for (ready, fd) in readable.iter_mut().zip(&fds) {
                    *ready = fd.revents().is_some_and(|r| !r.is_empty());
                }
            }
            Err(Errno::EINTR) => readable.fill(true),
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
    tally.elapsed = if tally.completed > 0 {
        last_ack - start
    } else {
        start.elapsed()
    };
    Ok(tally)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An odd multiplier (2^32 / golden ratio): multiplying by it is a bijection on 32-bit
/// counters, so scattered MACs stay unique.
const MAC_SCATTER: u32 = 0x9e37_79b1;

/// The MAC of exchange `seq`: the first MAC's two leading bytes, then its 32-bit counter plus
/// `seq` times `scatter` (1: in order).
fn mac_at(first: [u8; 6], base: u32, scatter: u32, seq: u64) -> [u8; 6] {
    // The counter wraps at 2^32 exchanges, as it did in order.
    let n = base
        .wrapping_add((seq as u32).wrapping_mul(scatter))
        .to_be_bytes();
    [first[0], first[1], n[0], n[1], n[2], n[3]]
}

/// A locally administered unicast MAC (02:..) with a random id byte and counter start, from
/// the clock and the pid: new clients on every run without a random-number crate.
fn random_mac() -> [u8; 6] {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let x = (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = x.to_be_bytes();
    [0x02, b[0], b[1], b[2], b[3], 0]
}

/// p50, p99, max and mean of a sample, in milliseconds.
#[derive(Clone, Copy, Default)]
struct Summary {
    p50: f64,
    p99: f64,
    max: f64,
    avg: f64,
}

fn summarize(samples: &mut [u64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    samples.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        ms(samples[i])
    };
    let sum: u128 = samples.iter().map(|&n| u128::from(n)).sum();
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        max: ms(samples[samples.len() - 1]),
        avg: sum as f64 / samples.len() as f64 / 1e6,
    }
}

impl Tally {
    fn incomplete_pct(&self) -> f64 {
        if self.started == 0 {
            return 0.0;
        }
        (self.started - self.completed) as f64 * 100.0 / self.started as f64
    }

    fn dora_per_s(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn offered_per_s(&self) -> f64 {
        self.started as f64 / self.sending.as_secs_f64().max(1e-9)
    }

    fn table(mut self, args: &Args) -> String {
        let offer = summarize(&mut self.offer_ns);
        let ack = summarize(&mut self.ack_ns);
        let rate = match args.rate {
            0 => format!("as fast as possible ({} in flight)", args.window),
            r => format!("{r}/s"),
        };
        let mut s = format!(
            "hive-loadgen -> {} from {} relay(s) at {}, rate {rate}\n",
            args.server, args.sockets, args.relay
        );
        s += &format!(
            "  exchanges started    {:>10}   ({:.0} DISCOVER/s over {:.2} s)\n",
            self.started,
            self.offered_per_s(),
            self.sending.as_secs_f64()
        );
        s += &format!(
            "  DORA completed       {:>10}   ({:.0} DORA/s)\n",
            self.completed,
            self.dora_per_s()
        );
        s += &format!(
            "  incomplete           {:>9.3}%   (no OFFER {}, no ACK {}, NAK {}; stray replies {}, malformed {})\n",
            self.incomplete_pct(),
            self.lost_offer,
            self.lost_ack,
            self.naks,
            self.stray,
            self.malformed
        );
        s += "  latency (ms)               p50       p99       max       avg\n";
        for (name, l) in [("DISCOVER-OFFER", offer), ("REQUEST-ACK", ack)] {
            s += &format!(
                "  {name:<18} {:>11.3} {:>9.3} {:>9.3} {:>9.3}\n",
                l.p50, l.p99, l.max, l.avg
            );
        }
        s
    }

    fn json(mut self, args: &Args) -> serde_json::Value {
        let lat = |l: Summary| serde_json::json!({"p50": l.p50, "p99": l.p99, "max": l.max, "avg": l.avg});
        let offer = summarize(&mut self.offer_ns);
        let ack = summarize(&mut self.ack_ns);
        serde_json::json!({
            "server": args.server.to_string(),
            "relays": args.sockets,
            "rate": args.rate,
            "started": self.started,
            "completed": self.completed,
            "dora_per_s": self.dora_per_s(),
            "offered_per_s": self.offered_per_s(),
            "incomplete_pct": self.incomplete_pct(),
            "lost_discover_offer": self.lost_offer,
            "lost_request_ack": self.lost_ack,
            "naks": self.naks,
            "stray": self.stray,
            "malformed": self.malformed,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "sending_s": self.sending.as_secs_f64(),
            "discover_offer_ms": lat(offer),
            "request_ack_ms": lat(ack),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_macs_are_unique_and_out_of_order() {
        let first = [2, 0x42, 0xff, 0xff, 0xff, 0xf0];
        let base = u32::from_be_bytes([0xff, 0xff, 0xff, 0xf0]);
        let macs: Vec<[u8; 6]> = (0..100_000)
            .map(|seq| mac_at(first, base, MAC_SCATTER, seq))
            .collect();
        let unique: std::collections::HashSet<_> = macs.iter().collect();
        assert_eq!(unique.len(), macs.len(), "one MAC per client");
        assert!(macs.iter().all(|m| m[..2] == [2, 0x42]));
        assert_eq!(macs[0], first);
        let ascending = macs.windows(2).filter(|w| w[1] > w[0]).count();
        assert!(
            ascending < 60_000,
            "scattered, not in counter order: {ascending} of 99,999 steps go up"
        );
        // In order when asked, wrapping at the 32-bit counter.
        assert_eq!(mac_at(first, base, 1, 16), [2, 0x42, 0, 0, 0, 0]);
    }

    #[test]
    fn templates_decode_as_dhcp() {
        use dhcproto::{Decodable, Decoder, v4};
        let t = Templates::new();
        let mac = [2, 0, 0, 0, 0, 7];
        let d = t.discover(42, mac, Ipv4Addr::new(127, 0, 2, 1));
        let m = v4::Message::decode(&mut Decoder::new(&d)).expect("discover decodes");
        assert_eq!(m.xid(), 42);
        assert_eq!(m.giaddr(), Ipv4Addr::new(127, 0, 2, 1));
        assert_eq!(m.chaddr(), &mac);
        assert_eq!(m.opts().msg_type(), Some(v4::MessageType::Discover));
        let r = t.request(42, mac, Ipv4Addr::LOCALHOST, [127, 0, 2, 9], [127, 0, 0, 1]);
        let m = v4::Message::decode(&mut Decoder::new(&r)).expect("request decodes");
        assert_eq!(m.opts().msg_type(), Some(v4::MessageType::Request));
        assert_eq!(
            m.opts().get(v4::OptionCode::RequestedIpAddress),
            Some(&v4::DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                127, 0, 2, 9
            )))
        );
        assert_eq!(
            m.opts().get(v4::OptionCode::ServerIdentifier),
            Some(&v4::DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST))
        );
    }

    #[test]
    fn replies_are_read_and_garbage_is_not() {
        let mut p = Templates::new().discover(7, [2, 0, 0, 0, 0, 1], Ipv4Addr::LOCALHOST);
        p[0] = 2;
        p[YIADDR..YIADDR + 4].copy_from_slice(&[10, 0, 0, 5]);
        p[OPTIONS + 2] = 2; // OFFER
        let r = read_reply(&p).expect("an offer");
        assert_eq!((r.xid, r.msg_type, r.yiaddr), (7, 2, [10, 0, 0, 5]));
        assert!(read_reply(&p[..100]).is_none());
        p[OPTIONS + 1] = 200; // option 53 running past the end
        assert!(read_reply(&p[..260]).is_none());
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        let s = summarize(&mut v);
        assert_eq!((s.p50, s.p99, s.max), (50.0, 99.0, 100.0));
        assert!((s.avg - 50.5).abs() < 1e-9);
    }
}
