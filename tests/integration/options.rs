//! Option data: global, subnet and reservation levels (the more specific wins), known names and
//! raw codes, option 55 filtering, the RFC 3397 / RFC 3442 encodings on the wire, and the
//! header's boot fields (siaddr, sname, file) for network boot.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, OptionCode};

use crate::common::*;

const GIADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);

fn config(port: u16, redis: &str, prefix: &str) -> String {
    format!(
        r#"{{
  "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{redis}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}",
  "options": [
    {{ "name": "ntp-servers", "value": ["127.0.9.123"] }},
    {{ "name": "domain-name", "value": "global.test" }},
    {{ "name": "interface-mtu", "value": 1400 }}
  ],
  "subnets": [{{
    "subnet": "127.0.2.0/24", "router": "127.0.2.1", "dynStart": "127.0.2.10", "dynEnd": "127.0.2.250",
    "leaseTime": 600, "dns": ["127.0.2.53"],
    "options": [
      {{ "name": "domain-name", "value": "subnet.test" }},
      {{ "name": "domain-search", "value": ["eng.apple.com", "marketing.apple.com"] }},
      {{ "name": "classless-static-routes", "value": ["10.0.0.0/8 via 127.0.2.1", {{ "destination": "0.0.0.0/0", "router": "127.0.2.1" }}] }},
      {{ "code": 224, "type": "hex", "value": "01:02:03" }},
      {{ "name": "tftp-server-name", "value": "{long}" }}
    ],
    "reservations": [{{
      "mac": "02:00:00:00:00:77", "ip": "127.0.2.77", "hostname": "printer",
      "options": [ {{ "name": "interface-mtu", "value": 9000 }}, {{ "name": "boot-file-name", "value": "printer.cfg" }} ]
    }}]
  }}]
}}"#,
        long = "t".repeat(300)
    )
}

async fn offer_bytes(
    relay: &Relay,
    m: &[u8],
    xid: u32,
    prl: Option<Vec<u8>>,
    max_size: Option<u16>,
) -> Vec<u8> {
    let mut d = discover(m, xid, GIADDR);
    if let Some(p) = prl {
        d.opts_mut().insert(DhcpOption::ParameterRequestList(
            p.into_iter().map(OptionCode::from).collect(),
        ));
    }
    if let Some(s) = max_size {
        d.opts_mut().insert(DhcpOption::MaxMessageSize(s));
    }
    relay.send(&d).await;
    relay
        .recv_raw(Duration::from_secs(3))
        .await
        .expect("offer in time")
}

#[tokio::test]
async fn options_by_level_and_the_rfc_encodings() {
    let redis = Redis::start();
    let port = free_port();
    let hive = Hive::start(
        parse_config(&config(port, &redis.url(), &prefix("options"))),
        1,
    )
    .await;
    let relay = Relay::new(GIADDR, port).await;

    // A client asking for these, in this order.
    let prl = vec![121, 119, 15, 42, 26, 224, 3, 6];
    let bytes = offer_bytes(&relay, &mac(1), 1, Some(prl.clone()), Some(1500)).await;
    let opts = raw_options(&bytes);
    // RFC 3442: 10.0.0.0/8 via 127.0.2.1, then the default route.
    assert_eq!(
        get(&opts, 121),
        Some(&[8, 10, 127, 0, 2, 1, 0, 127, 0, 2, 1][..])
    );
    // RFC 3397 section 3's example, byte for byte (with compression).
    let rfc3397 = [
        3, b'e', b'n', b'g', 5, b'a', b'p', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, 9, b'm',
        b'a', b'r', b'k', b'e', b't', b'i', b'n', b'g', 0xc0, 4,
    ];
    assert_eq!(get(&opts, 119), Some(&rfc3397[..]));
    // The subnet's domain name beats the global one; the global NTP server and MTU come through.
    assert_eq!(get(&opts, 15), Some(&b"subnet.test"[..]));
    assert_eq!(get(&opts, 42), Some(&[127, 0, 9, 123][..]));
    assert_eq!(get(&opts, 26), Some(&1400u16.to_be_bytes()[..]));
    assert_eq!(get(&opts, 224), Some(&[1, 2, 3][..]));
    // Option 55 filters: 66 (configured, 300 bytes) was not asked for.
    assert!(get(&opts, 66).is_none());
    // And orders: the client's order after the mandatory ones.
    let codes: Vec<u8> = opts.iter().map(|(c, _)| *c).collect();
    let pos = |c: u8| codes.iter().position(|x| *x == c).expect("present");
    assert!(
        pos(121) < pos(119) && pos(119) < pos(15) && pos(15) < pos(3),
        "{codes:?}"
    );

    // A long option asked for is split into 255-byte pieces and joined back (RFC 3396).
    let bytes = offer_bytes(&relay, &mac(2), 2, Some(vec![66]), Some(1500)).await;
    assert_eq!(
        bytes.windows(2).filter(|w| w == &[66, 255]).count(),
        1,
        "first piece of 255"
    );
    assert_eq!(get(&raw_options(&bytes), 66).map(<[u8]>::len), Some(300));
    // Without option 57 the reply stays within 576 bytes: the long option is left out.
    let bytes = offer_bytes(&relay, &mac(3), 3, Some(vec![66, 3]), None).await;
    assert!(bytes.len() <= 576 - 28, "{} bytes", bytes.len());
    let opts = raw_options(&bytes);
    assert!(get(&opts, 66).is_none() && get(&opts, 3).is_some());

    // The reservation's own options win over the subnet's; its name is sent when asked for.
    let bytes = offer_bytes(
        &relay,
        &[2, 0, 0, 0, 0, 0x77],
        4,
        Some(vec![26, 67, 12, 42]),
        Some(1500),
    )
    .await;
    let opts = raw_options(&bytes);
    assert_eq!(get(&opts, 26), Some(&9000u16.to_be_bytes()[..]));
    assert_eq!(get(&opts, 67), Some(&b"printer.cfg"[..]));
    assert_eq!(get(&opts, 12), Some(&b"printer"[..]));
    assert_eq!(
        get(&opts, 42),
        Some(&[127, 0, 9, 123][..]),
        "global still under both"
    );
    // The broadcast address is sent by default (nothing configures option 28).
    let bytes = offer_bytes(&relay, &mac(5), 5, Some(vec![28, 3]), Some(1500)).await;
    assert_eq!(get(&raw_options(&bytes), 28), Some(&[127, 0, 2, 255][..]));
    // Without option 55: every configured option and the broadcast address, but not the
    // reserved name (sent only when asked for).
    let bytes = offer_bytes(&relay, &[2, 0, 0, 0, 0, 0x77], 6, None, Some(1500)).await;
    let opts = raw_options(&bytes);
    assert_eq!(get(&opts, 28), Some(&[127, 0, 2, 255][..]));
    assert_eq!(get(&opts, 67), Some(&b"printer.cfg"[..]));
    assert!(get(&opts, 12).is_none(), "name only on request");
    hive.stop().await;
}

#[test]
fn bad_option_config_names_the_element() {
    let json =
        config(1067, "redis://127.0.0.1:1", "x").replace(r#""value": 1400"#, r#""value": 20"#);
    let err = dhcp_hive_mind::config::Config::from_json(std::path::Path::new("o.json"), &json)
        .expect_err("mtu 20 refused");
    let text = err.to_string();
    assert!(text.contains("options[2].value"), "{text}");
    let json = config(1067, "redis://127.0.0.1:1", "x")
        .replace(r#""name": "ntp-servers""#, r#""code": 51"#);
    let text = dhcp_hive_mind::config::Config::from_json(std::path::Path::new("o.json"), &json)
        .expect_err("51 refused")
        .to_string();
    assert!(text.contains("set by the server"), "{text}");
}

/// (siaddr, sname, file) of an encoded reply, the text fields up to their NUL.
fn boot_fields(b: &[u8]) -> (Ipv4Addr, Vec<u8>, Vec<u8>) {
    let text = |field: &[u8]| field.iter().copied().take_while(|c| *c != 0).collect();
    (
        Ipv4Addr::new(b[20], b[21], b[22], b[23]),
        text(&b[44..108]),
        text(&b[108..236]),
    )
}

/// PXE: the config's `nextServer`, `serverHostname` and `bootFileName` reach the header of a
/// DHCP client's OFFER and ACK and of a BOOTP client's BOOTREPLY; a reservation's file wins.
#[tokio::test]
async fn pxe_boot_fields_reach_dhcp_and_bootp_clients() {
    let redis = Redis::start();
    let port = free_port();
    let json = format!(
        r#"{{
  "hostname": "hive.test", "interface": "127.0.0.1", "port": {port}, "redis": "{url}",
  "serverId": "127.0.0.1", "keyPrefix": "{prefix}",
  "nextServer": "127.0.9.6", "bootFileName": "pxelinux.0",
  "subnets": [{{
    "subnet": "127.0.2.0/24", "router": "127.0.2.1", "dynStart": "127.0.2.10",
    "dynEnd": "127.0.2.250", "leaseTime": 600, "bootp": true, "serverHostname": "tftp.test",
    "reservations": [ {{ "mac": "02:00:00:00:00:09", "ip": "127.0.2.9", "bootFileName": "host-9.0" }} ]
  }}]
}}"#,
        url = redis.url(),
        prefix = prefix("pxe")
    );
    let hive = Hive::start(parse_config(&json), 1).await;
    let relay = Relay::new(GIADDR, port).await;
    let expected = |file: &[u8]| {
        (
            Ipv4Addr::new(127, 0, 9, 6),
            b"tftp.test".to_vec(),
            file.to_vec(),
        )
    };

    // A DHCP client: OFFER and ACK.
    relay.send(&discover(&mac(1), 1, GIADDR)).await;
    let offer = relay.recv_raw(Duration::from_secs(3)).await.expect("offer");
    assert_eq!(get(&raw_options(&offer), 53), Some(&[2][..]));
    assert_eq!(boot_fields(&offer), expected(b"pxelinux.0"));
    let ip = Ipv4Addr::new(offer[16], offer[17], offer[18], offer[19]);
    relay
        .send(&request_selecting(
            &mac(1),
            1,
            GIADDR,
            ip,
            Ipv4Addr::LOCALHOST,
        ))
        .await;
    let ack = relay.recv_raw(Duration::from_secs(3)).await.expect("ack");
    assert_eq!(get(&raw_options(&ack), 53), Some(&[5][..]));
    assert_eq!(boot_fields(&ack), expected(b"pxelinux.0"));

    // BOOTP clients (no option 53): the same fields, the reservation's file for its client.
    for (id, file) in [(2, &b"pxelinux.0"[..]), (9, &b"host-9.0"[..])] {
        let mut bootrequest = discover(&mac(id), 10 + id, GIADDR);
        bootrequest.opts_mut().remove(OptionCode::MessageType);
        relay.send(&bootrequest).await;
        let reply = relay
            .recv_raw(Duration::from_secs(3))
            .await
            .expect("BOOTREPLY");
        assert_eq!(get(&raw_options(&reply), 53), None, "a BOOTREPLY");
        assert_eq!(boot_fields(&reply), expected(file), "client {id}");
    }
    hive.stop().await;
}
