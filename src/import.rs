//! Leases of another DHCP server, written into the hive's Redis (`leases import-kea`): moving
//! from Kea without a window in which the hive takes a client's address for free.
//!
//! Kea's memfile backend keeps its DHCPv4 leases in a CSV file (`kea-leases4.csv`, and
//! `.csv.2` beside it between cleanups). The file is a log: every change appends the whole
//! lease again, so the last row of an address is its lease, and a row with a valid lifetime of
//! 0 says the lease was deleted. Columns are found by their header names, which Kea keeps from
//! version to version (later ones add columns at the end).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::lease::Imported;

/// Why a lease of the file is not imported, before the hive's Redis is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// Its end has passed.
    Expired,
    /// Deleted (valid lifetime 0), declined, or expired and reclaimed by Kea.
    NotActive,
    /// No Ethernet MAC (6 bytes): the hive records one with every lease.
    NoMac,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotActive => "not active",
            Self::NoMac => "no Ethernet MAC",
        }
    }
}

/// The leases of a Kea lease file, the last row of each address, in address order: the ones to
/// import, and the others with the reason they are not.
pub type KeaLeases = BTreeMap<Ipv4Addr, Result<Imported, Skip>>;

/// Reads a Kea DHCPv4 lease file (its text) as of `now_ms` (unix ms). A row that cannot be
/// read stops it: the error names its line and what is wrong, and nothing is imported.
pub fn read_kea_csv(text: &str, now_ms: u64) -> Result<KeaLeases, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err("empty file: no header line".to_owned());
    };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let column = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| format!("line 1: no `{name}` column (not a Kea DHCPv4 lease file?)"))
    };
    let address = column("address")?;
    let hwaddr = column("hwaddr")?;
    let client_id = column("client_id")?;
    let valid = column("valid_lifetime")?;
    let expire = column("expire")?;
    let hostname = column("hostname")?;
    let state = column("state")?;

    let mut leases = KeaLeases::new();
    for (at, line) in lines {
        let line_no = at + 1;
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != names.len() {
            return Err(format!(
                "line {line_no}: {} fields, the header has {}",
                fields.len(),
                names.len()
            ));
        }
        let bad = |what: &str, value: &str| format!("line {line_no}: {what} {value:?}");
        let ip: Ipv4Addr = fields[address]
            .parse()
            .map_err(|_| bad("address", fields[address]))?;
        let number =
            |i: usize, what: &str| fields[i].parse::<u64>().map_err(|_| bad(what, fields[i]));
        let valid = number(valid, "valid_lifetime")?;
        let expire = number(expire, "expire")?;
        // Absent in files of Kea before 1.1: every lease was then in its default state.
        let state = if fields[state].is_empty() {
            0
        } else {
            number(state, "state")?
        };
        let mac = hex_bytes(fields[hwaddr]).ok_or_else(|| bad("hwaddr", fields[hwaddr]))?;
        let id = hex_bytes(fields[client_id]).ok_or_else(|| bad("client_id", fields[client_id]))?;

        let lease = if valid == 0 || state != 0 {
            Err(Skip::NotActive)
        } else if expire.saturating_mul(1000) <= now_ms {
            Err(Skip::Expired)
        } else if mac.len() != 6 {
            Err(Skip::NoMac)
        } else {
            Ok(Imported {
                ip,
                // As the node names a client (protocol::packet): option 61 whole, else chaddr.
                client_id: if id.is_empty() {
                    format!("hw-{}", hex(&mac))
                } else {
                    format!("id-{}", hex(&id))
                },
                mac: mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
                // Kea writes a comma in a name as `&#x2c`.
                hostname: fields[hostname].replace("&#x2c", ","),
                expires_ms: expire.saturating_mul(1000),
            })
        };
        leases.insert(ip, lease);
    }
    Ok(leases)
}

/// Bytes written as colon-separated hex pairs (`aa:bb:cc`, as Kea writes hardware addresses
/// and client identifiers); the empty string is no bytes.
fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(':')
        .map(|pair| {
            (pair.len() == 2)
                .then(|| u8::from_str_radix(pair, 16).ok())
                .flatten()
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,\
                          fqdn_rev,hostname,state,user_context,pool_id";
    const NOW_MS: u64 = 1_800_000_000_000;

    fn read(rows: &[&str]) -> KeaLeases {
        let text = format!("{HEADER}\n{}\n", rows.join("\n"));
        read_kea_csv(&text, NOW_MS).expect("a readable file")
    }

    #[test]
    fn a_lease_is_named_as_the_node_names_its_client() {
        let leases = read(&[
            "192.0.2.10,02:00:00:00:00:01,,3600,1800003600,1,0,0,pc1,0,,0",
            "192.0.2.11,02:00:00:00:00:02,01:02:00:00:00:00:02,3600,1800003600,1,0,0,,0,,0",
        ]);
        let pc1 = leases[&Ipv4Addr::new(192, 0, 2, 10)]
            .clone()
            .expect("imported");
        assert_eq!(
            pc1,
            Imported {
                ip: Ipv4Addr::new(192, 0, 2, 10),
                client_id: "hw-020000000001".to_owned(),
                mac: "02:00:00:00:00:01".to_owned(),
                hostname: "pc1".to_owned(),
                expires_ms: 1_800_003_600_000,
            }
        );
        let with_id = leases[&Ipv4Addr::new(192, 0, 2, 11)]
            .clone()
            .expect("imported");
        assert_eq!(with_id.client_id, "id-01020000000002");
        assert_eq!(with_id.mac, "02:00:00:00:00:02");
    }

    #[test]
    fn the_last_row_of_an_address_wins_and_only_live_default_leases_count() {
        let leases = read(&[
            // Granted, then renewed: the renewal's end.
            "192.0.2.10,02:00:00:00:00:01,,3600,1800001000,1,0,0,a,0,,0",
            "192.0.2.10,02:00:00:00:00:01,,3600,1800002000,1,0,0,a,0,,0",
            // Granted, then deleted (released): valid lifetime 0.
            "192.0.2.11,02:00:00:00:00:02,,3600,1800001000,1,0,0,,0,,0",
            "192.0.2.11,02:00:00:00:00:02,,0,1800001000,1,0,0,,0,,0",
            // Declined; expired and reclaimed; run out.
            "192.0.2.12,02:00:00:00:00:03,,3600,1800001000,1,0,0,,1,,0",
            "192.0.2.13,02:00:00:00:00:04,,3600,1800001000,1,0,0,,2,,0",
            "192.0.2.14,02:00:00:00:00:05,,3600,1799999999,1,0,0,,0,,0",
            // No hardware address, or an InfiniBand one.
            "192.0.2.15,,01:aa,3600,1800001000,1,0,0,,0,,0",
        ]);
        let ip = |d| Ipv4Addr::new(192, 0, 2, d);
        assert_eq!(
            leases[&ip(10)].as_ref().map(|l| l.expires_ms),
            Ok(1_800_002_000_000)
        );
        assert_eq!(leases[&ip(11)], Err(Skip::NotActive));
        assert_eq!(leases[&ip(12)], Err(Skip::NotActive));
        assert_eq!(leases[&ip(13)], Err(Skip::NotActive));
        assert_eq!(leases[&ip(14)], Err(Skip::Expired));
        assert_eq!(leases[&ip(15)], Err(Skip::NoMac));
        assert_eq!(leases.len(), 6);
    }

    #[test]
    fn an_escaped_comma_in_a_name_is_a_comma() {
        let leases = read(&["192.0.2.10,02:00:00:00:00:01,,3600,1800003600,1,0,0,a&#x2cb,0,,0"]);
        let lease = leases[&Ipv4Addr::new(192, 0, 2, 10)]
            .clone()
            .expect("imported");
        assert_eq!(lease.hostname, "a,b");
    }

    #[test]
    fn columns_are_found_by_name_in_older_files() {
        // Kea 1.x: no user_context or pool_id.
        let text = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,\
                    hostname,state\n192.0.2.10,02:00:00:00:00:01,,3600,1800003600,1,0,0,pc,0\n";
        let leases = read_kea_csv(text, NOW_MS).expect("readable");
        assert!(leases[&Ipv4Addr::new(192, 0, 2, 10)].is_ok());
    }

    #[test]
    fn a_broken_file_names_the_line_and_the_problem() {
        let cases = [
            ("", "empty file"),
            ("address,hwaddr\n", "no `client_id` column"),
            (
                &format!("{HEADER}\n192.0.2.10,02:00:00:00:00:01,,3600\n"),
                "line 2: 4 fields, the header has 12",
            ),
            (
                &format!("{HEADER}\n192.0.2.300,02:00:00:00:00:01,,3600,1,1,0,0,,0,,0\n"),
                "line 2: address \"192.0.2.300\"",
            ),
            (
                &format!("{HEADER}\n\n192.0.2.1,02:00:00:00:00:01,,x,1,1,0,0,,0,,0\n"),
                "line 3: valid_lifetime \"x\"",
            ),
            (
                &format!("{HEADER}\n192.0.2.1,02:00:zz:00:00:01,,1,1,1,0,0,,0,,0\n"),
                "line 2: hwaddr",
            ),
        ];
        for (text, want) in cases {
            let err = read_kea_csv(text, NOW_MS).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
