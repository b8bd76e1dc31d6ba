#!/usr/bin/env python3
"""Writes seed inputs for the `packet` fuzz target: valid DHCP client messages of each type
the server takes, direct and relayed, with the options the parser treats specially.

Usage: python3 fuzz/seeds.py [DIR]   (default: fuzz/corpus/packet next to this script)

Byte layout as in src/protocol/packet.rs tests (`discover_bytes`) and benches/packet.rs.
The fuzz target derives the fake store's answer from the xid's low byte and the arrival
subnet from the next one, so the seeds vary the xid too.
"""

import os
import struct
import sys

MAGIC = bytes([99, 130, 83, 99])
DISCOVER, REQUEST, DECLINE, RELEASE, INFORM = 1, 3, 4, 7, 8


def ip(s):
    return bytes(int(p) for p in s.split("."))


def opt(code, body):
    return bytes([code, len(body)]) + body


def message(msg_type, xid, mac=b"\x02\x00\x00\x00\x00\x01", ciaddr="0.0.0.0",
            giaddr="0.0.0.0", flags=0, options=b"", sname=b"", file=b"", pad_to=300):
    b = bytearray(236)
    b[0] = 1  # BOOTREQUEST
    b[1] = 1  # Ethernet
    b[2] = len(mac)
    struct.pack_into(">I", b, 4, xid)
    struct.pack_into(">H", b, 10, flags)
    b[12:16] = ip(ciaddr)
    b[24:28] = ip(giaddr)
    b[28:28 + len(mac)] = mac
    b[44:44 + len(sname)] = sname
    b[108:108 + len(file)] = file
    b += MAGIC
    b += opt(53, bytes([msg_type]))
    b += options
    b.append(255)
    if len(b) < pad_to:
        b += bytes(pad_to - len(b))
    return bytes(b)


PRL = opt(55, bytes([1, 3, 6, 12, 15, 28, 42, 51, 54, 58, 59, 66, 67, 119, 121, 224, 252]))
SID = opt(54, ip("127.0.0.1"))


def relay(*subs):
    return opt(82, b"".join(opt(c, v) for c, v in subs))


SEEDS = {
    # Direct (no relay): the subnet comes from the fuzz target's "arrival interface".
    "discover": message(DISCOVER, 0x01020104, options=opt(12, b"foo") + PRL),
    "discover-requested": message(DISCOVER, 0x01020205,
                                  options=opt(50, ip("127.0.3.20")) + opt(57, struct.pack(">H", 1500)) + PRL),
    "discover-rapid": message(DISCOVER, 0x01020306, giaddr="127.0.3.1",
                              options=opt(80, b"") + opt(61, b"\x01\xaa\xbb\xcc") + PRL),
    "discover-reserved-mac": message(DISCOVER, 0x01020307, mac=b"\x02\x00\x00\x00\xaa\x01",
                                     giaddr="127.0.2.1", options=PRL),
    "discover-reserved-clientid": message(DISCOVER, 0x01020308, giaddr="127.0.2.1",
                                          options=opt(61, b"\xff\x00\x00\x00\x08") + PRL),
    # Relayed with option 82: circuit id (a reservation), remote id, link selection, server
    # id override, relay source port.
    "discover-relay82": message(DISCOVER, 0x11223344, giaddr="127.0.2.1",
                                options=PRL + relay((1, b"port-7"), (2, b"remote-1"))),
    "discover-linksel": message(DISCOVER, 0x11223345, giaddr="10.0.0.1",
                                options=PRL + relay((1, b"c"), (5, ip("127.0.3.0")),
                                                    (11, ip("127.0.3.1")), (19, b""))),
    "discover-opt118": message(DISCOVER, 0x11223346, giaddr="10.0.0.1",
                               options=opt(118, ip("127.0.2.0")) + PRL),
    # Option overload (52): more options in `file` and `sname`.
    "discover-overload": message(DISCOVER, 0x11223347, giaddr="127.0.2.1",
                                 options=opt(52, b"\x03"),
                                 file=opt(12, b"inthefile") + PRL + b"\xff",
                                 sname=opt(61, b"\x01\x02\x03") + b"\xff"),
    # REQUEST in each state.
    "request-selecting": message(REQUEST, 0x0a0b0c00, giaddr="127.0.2.1",
                                 options=opt(50, ip("127.0.2.10")) + SID + PRL),
    "request-other-server": message(REQUEST, 0x0a0b0c01, giaddr="127.0.2.1",
                                    options=opt(50, ip("127.0.2.10")) + opt(54, ip("127.0.0.9")) + PRL),
    "request-init-reboot": message(REQUEST, 0x0a0b0c02, giaddr="127.0.2.1",
                                   options=opt(50, ip("127.0.2.11")) + PRL),
    "request-init-reboot-wrong": message(REQUEST, 0x0a0b0c04, giaddr="127.0.2.1",
                                         options=opt(50, ip("127.0.3.11")) + PRL),
    "request-renewing": message(REQUEST, 0x0a0b0c05, ciaddr="127.0.3.12", options=PRL),
    "request-rebinding-bcast": message(REQUEST, 0x0a0b0c06, ciaddr="127.0.2.12", flags=0x8000,
                                       options=PRL),
    # RELEASE, DECLINE, INFORM.
    "release": message(RELEASE, 0x55667700, ciaddr="127.0.2.13", options=SID),
    "decline": message(DECLINE, 0x55667701, giaddr="127.0.2.1",
                       options=opt(50, ip("127.0.2.14")) + SID),
    "inform": message(INFORM, 0x55667702, ciaddr="127.0.3.15",
                      options=PRL + opt(57, struct.pack(">H", 576))),
    # A long client identifier and hostname, to push replies toward the size limit.
    "discover-big": message(DISCOVER, 0x77000000, giaddr="127.0.2.1",
                            options=opt(61, bytes(range(1, 250))) + opt(12, b"h" * 250)
                            + opt(55, bytes(range(1, 255)))
                            + relay((1, b"x" * 100), (2, b"y" * 100))),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "corpus", "packet")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
