//! Fuzz target: one datagram through a node's per-packet path, without sockets or Redis.
//!
//! bytes -> `protocol::parse` -> `protocol::select_subnet` -> `protocol::handle` (against an
//! in-memory store) -> `protocol::encode`, exactly the sequence of `Node::exchange` and
//! `Node::handle_datagram` in src/node.rs. Any panic (index out of range, overflow, unwrap,
//! slice bounds) on any input is a bug: the node promises that nothing panics on client input.
//!
//! The fake store answers at once. Which answer it gives (success of each kind, or each error a
//! real store can return) is taken from the low byte of the message's xid, so the fuzzer also
//! reaches the NAK, silence and drop branches of `handle` without any extra input format.
//! The subnet of the "arrival interface" passed to `select_subnet` comes from the next byte.

#![no_main]

use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context as TaskContext, Poll, Waker};

use dhcp_hive_mind::config::Config;
use dhcp_hive_mind::lease::{
    Allocation, Exchange, Grant, Hold, LeaseError, Offered, Pool, Refusal, Store,
};
use dhcp_hive_mind::protocol::{self, Answer, Context};
use libfuzzer_sys::fuzz_target;

/// Two 127.x subnets as in tests/integration/common/mod.rs `config_json`: the first with
/// reservations by MAC (with a hostname and options), circuit id and client id, and options
/// of its own; the second with rapid commit and a 300-byte option (split per RFC 3396, and
/// left out when the client's size limit has no room for it).
const CONFIG: &str = r#"{
  "hostname": "hive.fuzz",
  "interface": "127.0.0.1",
  "port": 67,
  "redis": "redis://127.0.0.1:6379",
  "serverId": "127.0.0.1",
  "keyPrefix": "fuzz",
  "offerTime": 10,
  "declineProbation": 300,
  "subnets": [
    {
      "subnet": "127.0.2.0/24",
      "router": "127.0.2.1",
      "dynStart": "127.0.2.10",
      "dynEnd": "127.0.2.200",
      "leaseTime": 600,
      "dns": ["127.0.2.53", "127.0.2.54"],
      "domainName": "hive.test",
      "reservations": [
        { "mac": "02:00:00:00:aa:01", "ip": "127.0.2.5", "hostname": "printer",
          "options": [ { "name": "boot-file-name", "value": "printer.cfg" },
                       { "name": "ntp-servers", "value": ["127.0.2.124"] } ] },
        { "circuitId": "port-7", "ip": "127.0.2.7" },
        { "clientId": "ff:00:00:00:08", "ip": "127.0.2.8" }
      ],
      "options": [
        { "name": "ntp-servers", "value": ["127.0.2.123"] },
        { "name": "domain-search", "value": ["eng.hive.test", "hive.test"] },
        { "name": "classless-static-routes",
          "value": ["10.0.0.0/8 via 127.0.2.1", "0.0.0.0/0 via 127.0.2.1"] }
      ]
    },
    {
      "subnet": "127.0.3.0/24",
      "router": "127.0.3.1",
      "dynStart": "127.0.3.10",
      "dynEnd": "127.0.3.250",
      "leaseTime": 1200,
      "rapidCommit": true,
      "options": [
        { "name": "wpad-url", "value": "http://wpad.hive.test/wpad.dat" },
        { "code": 224, "type": "hex", "value": "00:01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10:11:12:13:14:15:16:17:18:19:1a:1b:1c:1d:1e:1f:20:21:22:23:24:25:26:27:28:29:2a:2b:2c:2d:2e:2f:30:31:32:33:34:35:36:37:38:39:3a:3b:3c:3d:3e:3f:40:41:42:43:44:45:46:47:48:49:4a:4b:4c:4d:4e:4f:50:51:52:53:54:55:56:57:58:59:5a:5b:5c:5d:5e:5f:60:61:62:63:64:65:66:67:68:69:6a:6b:6c:6d:6e:6f:70:71:72:73:74:75:76:77:78:79:7a:7b:7c:7d:7e:7f:80:81:82:83:84:85:86:87:88:89:8a:8b:8c:8d:8e:8f:90:91:92:93:94:95:96:97:98:99:9a:9b:9c:9d:9e:9f:a0:a1:a2:a3:a4:a5:a6:a7:a8:a9:aa:ab:ac:ad:ae:af:b0:b1:b2:b3:b4:b5:b6:b7:b8:b9:ba:bb:bc:bd:be:bf:c0:c1:c2:c3:c4:c5:c6:c7:c8:c9:ca:cb:cc:cd:ce:cf:d0:d1:d2:d3:d4:d5:d6:d7:d8:d9:da:db:dc:dd:de:df:e0:e1:e2:e3:e4:e5:e6:e7:e8:e9:ea:eb:ec:ed:ee:ef:f0:f1:f2:f3:f4:f5:f6:f7:f8:f9:fa:fb:fc:fd:fe:ff:00:01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10:11:12:13:14:15:16:17:18:19:1a:1b:1c:1d:1e:1f:20:21:22:23:24:25:26:27:28:29:2a:2b" }
      ]
    }
  ]
}"#;

struct Fixture {
    config: Config,
    pools: Vec<Pool>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let config = match Config::from_json(Path::new("fuzz.json"), CONFIG) {
        Ok(c) => c,
        Err(e) => panic!("the fuzz config does not load: {e}"),
    };
    let pools = config
        .subnets
        .iter()
        .map(|s| Pool::new(&config, s))
        .collect();
    Fixture { config, pools }
});

/// A store that answers at once; `mode` picks the answer.
struct FakeStore {
    mode: u8,
}

impl FakeStore {
    /// An address of the exchange's pool: the wish when there is one, else the reservation,
    /// else the first host of the subnet's range.
    fn address(ex: &Exchange<'_>, wish: Option<Ipv4Addr>) -> Ipv4Addr {
        wish.or(ex.reservation)
            .unwrap_or_else(|| Ipv4Addr::from(ex.pool.hosts().0))
    }

    /// The errors every call can end in, by `mode`.
    fn error(&self) -> LeaseError {
        match self.mode % 8 {
            0 => LeaseError::Duplicate,
            1 => LeaseError::Exhausted,
            2 => LeaseError::Limited("relay"),
            3 => LeaseError::Limited("subnet"),
            4 => LeaseError::NotHolder,
            5 => LeaseError::Backend("fuzz".into()),
            6 => LeaseError::NotReplicated { got: 0, want: 1 },
            _ => LeaseError::BadReply(vec!["fuzz".into()]),
        }
    }

    fn refusal(&self) -> Refusal {
        match self.mode % 5 {
            0 => Refusal::Reservation,
            1 => Refusal::OutsidePool,
            2 => Refusal::Declined,
            3 => Refusal::Taken,
            _ => Refusal::NoRecord,
        }
    }

    /// Mostly success (the paths that build replies), sometimes an error.
    fn succeeds(&self) -> bool {
        self.mode & 0xc0 != 0xc0
    }
}

impl Store for FakeStore {
    async fn offer(
        &self,
        ex: &Exchange<'_>,
        requested: Option<Ipv4Addr>,
        _hold: Hold,
    ) -> Result<Offered, LeaseError> {
        if !self.succeeds() {
            return Err(self.error());
        }
        let how = match self.mode % 5 {
            0 => Allocation::Reserved,
            1 => Allocation::Bound,
            2 => Allocation::Sticky,
            3 => Allocation::Requested,
            _ => Allocation::New,
        };
        Ok(Offered {
            ip: Self::address(ex, requested),
            how,
            fresh: self.mode & 1 == 0,
        })
    }

    async fn request(
        &self,
        _: &Exchange<'_>,
        _: Ipv4Addr,
        authoritative: bool,
    ) -> Result<Grant, LeaseError> {
        if !self.succeeds() {
            return Err(self.error());
        }
        match self.mode % 6 {
            0 => Ok(Grant::Reserved),
            1 => Ok(Grant::Renewed),
            2 => Ok(Grant::Selected),
            3 => Ok(Grant::Recovered),
            4 => Err(LeaseError::Refused {
                reason: self.refusal(),
                nak: authoritative,
            }),
            _ => Err(LeaseError::Refused {
                reason: self.refusal(),
                nak: false,
            }),
        }
    }

    async fn release(&self, _: &Exchange<'_>, _: Ipv4Addr, _: bool) -> Result<(), LeaseError> {
        if self.succeeds() {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    async fn decline(&self, _: &Exchange<'_>, _: Ipv4Addr) -> Result<(), LeaseError> {
        if self.succeeds() {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    async fn inform(&self, _: &Exchange<'_>) -> Result<(), LeaseError> {
        if self.succeeds() {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    async fn prepare(&self, _: &[Pool]) -> Result<(), LeaseError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), LeaseError> {
        Ok(())
    }
}

/// Runs a future that completes without waiting (the store above never waits).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = TaskContext::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = protocol::parse(data) else {
        return;
    };
    let fx = &*FIXTURE;
    let xid = req.msg.xid().to_le_bytes();
    // The interface the datagram "arrived on": none, each subnet, or one out of range (the
    // node filters that, and so must select_subnet).
    let local = match xid[1] % 4 {
        0 => None,
        n => Some(usize::from(n - 1)),
    };
    let Some(index) = protocol::select_subnet(&fx.config, &req, local) else {
        return;
    };
    let ctx = Context {
        config: &fx.config,
        subnet: &fx.config.subnets[index],
        pool: &fx.pools[index],
        server_id: Ipv4Addr::new(127, 0, 0, 1),
        pools: &fx.pools,
        pinger: None,
        classes: 0,
    };
    let store = FakeStore { mode: xid[0] };
    let Ok(Answer::Reply(reply)) = ready(protocol::handle(&req, &ctx, &store)) else {
        return;
    };
    let mut out = Vec::with_capacity(protocol::MIN_MAX_SIZE);
    if protocol::encode(
        &reply.header,
        &reply.options,
        reply.relay_info.as_deref(),
        reply.max_len,
        &mut out,
    )
    .is_ok()
    {
        // What the client gets must fit what it said it takes (option 57, RFC 2132 9.10):
        // the relay information goes only to the relay, which takes it out (RFC 3046). And
        // it must be a BOOTREPLY of the client's transaction.
        let relay = protocol::relay_info_len(reply.relay_info.as_deref());
        assert!(
            out.len() - relay <= reply.max_len,
            "reply of {} bytes ({relay} of relay information) exceeds the client's limit of {}",
            out.len(),
            reply.max_len
        );
        assert_eq!(out[0], 2, "reply is not a BOOTREPLY");
        assert_eq!(
            out[4..8],
            req.msg.xid().to_be_bytes(),
            "reply has another xid"
        );
    }
});
