"""Table-driven decoder tests on hand-built frames: every branch, native decoder and pure twin side by side.

Each case builds one frame with ``struct``, runs it through both implementations (which must agree on
segments, counters and VNI statistics) and checks the outcome: the drop reason counted, or the segment.
"""
from __future__ import annotations

import struct

import pytest

from vxcap._pcapfile import FrameBatch
from vxcap.decode import NATIVE_AVAILABLE, COUNTER_NAMES, DecodeConfigError, Decoder, VniFilter, parse_vnis
from vxcap import decode as decode_mod
from vxcap import decode_py

NO_VNI = b"\xff\xff\xff\xff"
A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6, B6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
OUTER_SRC, OUTER_DST = bytes([192, 0, 2, 7]), bytes([192, 0, 2, 8])
MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
ACK, PSH, SYN, FIN, RST = 0x10, 0x08, 0x02, 0x01, 0x04
DATA = b"GET / HTTP/1.1\r\n\r\n"


# -- frame builders ------------------------------------------------------------------------------------------

def tcp(payload=DATA, sport=40000, dport=80, seq=1000, ack=2000, flags=ACK | PSH, doff=5, options=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0) + options + payload


def udp(payload, sport=50000, dport=53):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(payload, proto=6, src=A4, dst=B4, total=None, ihl=5, frag=0, options=b"", version=4):
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0,
                      20 + len(options) + len(payload) if total is None else total,
                      1, frag, 64, proto, 0, src, dst)
    return hdr + options + payload


def ipv6(payload, nh=6, src=A6, dst=B6, plen=None, ext=b""):
    body = ext + payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(body) if plen is None else plen, nh, 64, src, dst) + body


def ext6(nh, length_units=0, kind="generic"):
    """An IPv6 extension header followed by header ``nh``."""
    if kind == "ah":  # (len + 2) * 4 bytes
        return bytes([nh, length_units]) + bytes((length_units + 2) * 4 - 2)
    return bytes([nh, length_units]) + bytes((length_units + 1) * 8 - 2)


def frag6(nh, offset=0, more=False):
    return struct.pack("!BBHI", nh, 0, (offset << 3) | int(more), 77)


def eth(payload, etype=0x0800, tags=()):
    out = MAC
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", etype) + payload


def vxlan(inner, vni=42, flags=0x08, reserved=0):
    return struct.pack("!BBHI", flags, 0, reserved, (vni << 8) | (reserved & 0xFF)) + inner


def geneve(inner, vni=7, proto=0x6558, opt_words=0, ver=0):
    return struct.pack("!BBHI", (ver << 6) | opt_words, 0, proto, vni << 8) + bytes(4 * opt_words) + inner


def gre(inner, proto=0x6558, c=False, k=False, s=False, flags_extra=0):
    flags = (0x8000 if c else 0) | (0x2000 if k else 0) | (0x1000 if s else 0) | flags_extra
    out = struct.pack("!HH", flags, proto)
    if c:
        out += b"\x00\x00\x00\x00"
    if k:
        out += b"\x00\x00\x00\x09"
    if s:
        out += b"\x00\x00\x00\x01"
    return out + inner


def erspan2(inner):
    return struct.pack("!HHI", (1 << 12), 20, 1) + inner


def erspan3(inner, o=False, ft=0):
    word3 = (ft << 10) | (1 if o else 0)  # SGT (16) | P | FT (5) | Hw ID (6) | D | Gra (2) | O
    return struct.pack("!HHII", (2 << 12), 20, 0, word3) + (bytes(8) if o else b"") + inner


def mpls(payload, labels=(100,)):
    out = b""
    for i, label in enumerate(labels):
        out += struct.pack("!I", (label << 12) | (0x100 if i == len(labels) - 1 else 0) | 64)
    return out + payload


def plain(payload=DATA, **kw):
    """Ethernet / IPv4 / TCP from A4:40000 to B4:80."""
    return eth(ipv4(tcp(payload, **kw)))


def vx(inner_frame, vni=42, sport=50001, dport=4789, flags=0x08, src=OUTER_SRC):
    return eth(ipv4(udp(vxlan(inner_frame, vni=vni, flags=flags), sport=sport, dport=dport), proto=17, src=src,
                    dst=OUTER_DST))


def key(vni=NO_VNI, version=4, a=A4, pa=40000, b=B4, pb=80):
    return vni + bytes([version]) + a + struct.pack("!H", pa) + b + struct.pack("!H", pb)


def vni_bytes(v):
    return v.to_bytes(4, "big")


# -- harness -------------------------------------------------------------------------------------------------

IMPLS = [True] + ([False] if NATIVE_AVAILABLE else [])


def impl(pure):
    """The implementation itself, so that VXCAP_PURE_PYTHON in the environment cannot merge the two."""
    return decode_py.Decoder if pure else decode_mod._decode.Decoder


def run(frames, **options):
    """Decode ``frames`` ((linktype, bytes[, wirelen]) or bytes for Ethernet) with both implementations."""
    items = []
    for i, f in enumerate(frames):
        if isinstance(f, bytes):
            f = (1, f)
        lt, data = f[0], f[1]
        wirelen = f[2] if len(f) > 2 else len(data)
        items.append((1_700_000_000_000_000_000 + i, lt, wirelen, data))
    results = []
    for pure in IMPLS:
        dec = impl(pure)(**options)
        batch = FrameBatch.from_frames(items)
        segs = dec.decode(batch)
        results.append((segs, dec.counters(), dec.vni_stats()))
    for other in results[1:]:
        assert other[0] == results[0][0], "native and pure decoders disagree on segments"
        assert other[1] == results[0][1], "native and pure decoders disagree on counters"
        assert other[2] == results[0][2], "native and pure decoders disagree on VNI statistics"
    segs, counters, vnis = results[0]
    outcomes = sum(v for k, v in counters.items()
                   if k not in ("frames", "bytes", "encapsulated", "truncated_frames"))
    assert outcomes == counters["frames"] == len(frames)
    return segs, counters, vnis


# (id, frame or (linktype, bytes[, wirelen]), decoder options, expected drop reason)
DROPS = [
    ("short-ethernet", b"\x00" * 13, {}, "short_ethernet"),
    ("vlan-tag-cut", MAC + b"\x81\x00\x00\x01", {}, "short_ethernet"),
    ("arp", eth(bytes(28), etype=0x0806), {}, "non_ip"),
    ("8023-length", eth(bytes(46), etype=46), {}, "non_ip"),
    ("mpls-cut", eth(b"\x00\x06\x40", etype=0x8847), {}, "short_mpls"),
    ("mpls-nothing-after", eth(mpls(b""), etype=0x8847), {}, "short_mpls"),
    ("mpls-not-ip", eth(mpls(b"\x00" * 20), etype=0x8847), {}, "non_ip"),
    ("ipv4-19-bytes", eth(ipv4(b"")[:19]), {}, "bad_ipv4_header"),
    ("ipv4-ihl-4", eth(ipv4(tcp(), ihl=4)), {}, "bad_ipv4_header"),
    ("ipv4-version-5", eth(ipv4(tcp(), version=5)), {}, "bad_ipv4_header"),
    ("ipv4-ihl-beyond", eth(ipv4(b"", ihl=15)), {}, "bad_ipv4_header"),
    ("ipv4-total-lt-ihl", eth(ipv4(tcp(), total=19)), {}, "bad_ip_length"),
    ("ipv4-mf", eth(ipv4(tcp(), frag=0x2000)), {}, "ip_fragment"),
    ("ipv4-offset", eth(ipv4(tcp(), frag=0x0010)), {}, "ip_fragment"),
    ("ipv4-df-is-fine-but-icmp", eth(ipv4(bytes(8), proto=1, frag=0x4000)), {}, "non_tcp"),
    ("ipv6-short", eth(ipv6(b"")[:39], etype=0x86DD), {}, "bad_ipv6_header"),
    ("ipv6-version-4", eth(ipv4(tcp()) + bytes(20), etype=0x86DD), {}, "bad_ipv6_header"),
    ("ipv6-fragment", eth(ipv6(frag6(6, offset=0, more=True) + tcp(), nh=44), etype=0x86DD), {}, "ip_fragment"),
    ("ipv6-fragment-offset", eth(ipv6(frag6(6, offset=3) + tcp(), nh=44), etype=0x86DD), {}, "ip_fragment"),
    ("ipv6-esp", eth(ipv6(bytes(16), nh=50), etype=0x86DD), {}, "non_tcp"),
    ("ipv6-no-next", eth(ipv6(b"", nh=59), etype=0x86DD), {}, "non_tcp"),
    ("ipv6-ext-overflow", eth(ipv6(bytes([6, 3]) + bytes(6), nh=0), etype=0x86DD), {}, "bad_ipv6_ext_header"),
    ("ipv6-ext-cut", eth(ipv6(b"\x06", nh=60), etype=0x86DD), {}, "bad_ipv6_ext_header"),
    ("ipv6-frag-cut", eth(ipv6(b"\x06\x00\x00", nh=44), etype=0x86DD), {}, "bad_ipv6_ext_header"),
    ("udp-dns", eth(ipv4(udp(bytes(12)), proto=17)), {}, "non_tcp"),
    ("udp-short", eth(ipv4(b"\x00" * 7, proto=17)), {}, "short_udp"),
    ("icmp", eth(ipv4(bytes(8), proto=1)), {}, "non_tcp"),
    ("vxlan-short", eth(ipv4(udp(b"\x08\x00\x00", dport=4789), proto=17)), {}, "short_vxlan"),
    ("vxlan-no-i-flag", vx(plain(), flags=0x00), {}, "vxlan_no_i_flag"),
    ("geneve-short", eth(ipv4(udp(b"\x00\x00", dport=6081), proto=17)), {}, "short_geneve"),
    ("geneve-version-1", eth(ipv4(udp(geneve(plain(), ver=1), dport=6081), proto=17)), {}, "bad_geneve_header"),
    ("geneve-options-beyond", eth(ipv4(udp(geneve(b"", opt_words=4)[:12], dport=6081), proto=17)), {},
     "short_geneve"),
    ("gre-short", eth(ipv4(b"\x00\x00", proto=47)), {}, "short_gre"),
    ("gre-optional-fields-cut", eth(ipv4(gre(b"", c=True, k=True)[:8], proto=47)), {}, "short_gre"),
    ("gre-version-1-pptp", eth(ipv4(gre(plain(), proto=0x880B, flags_extra=1), proto=47)), {}, "gre_unsupported"),
    ("gre-routing", eth(ipv4(gre(plain(), flags_extra=0x4000), proto=47)), {}, "gre_unsupported"),
    ("gre-unknown-proto", eth(ipv4(gre(bytes(20), proto=0x1234), proto=47)), {}, "non_ip"),
    ("erspan2-cut", eth(ipv4(gre(b"\x10\x00\x00", proto=0x88BE, s=True), proto=47)), {}, "short_erspan"),
    ("erspan3-cut", eth(ipv4(gre(bytes(11), proto=0x22EB, s=True), proto=47)), {}, "short_erspan"),
    ("erspan3-subheader-cut", eth(ipv4(gre(erspan3(b"", o=True)[:16], proto=0x22EB, s=True), proto=47)), {},
     "short_erspan"),
    ("erspan3-ip-frame-type", eth(ipv4(gre(erspan3(ipv4(tcp()), ft=2), proto=0x22EB, s=True), proto=47)), {},
     "erspan_unsupported"),
    ("depth-exceeded", vx(vx(plain(), vni=2), vni=1), {"max_depth": 1}, "encap_depth_exceeded"),
    ("vni-excluded", vx(plain(), vni=42), {"vnis": parse_vnis("-42")}, "vni_filtered"),
    ("vni-not-included", vx(plain(), vni=42), {"vnis": parse_vnis("1 2")}, "vni_filtered"),
    ("vni-filter-uses-outermost", vx(vx(plain(), vni=42), vni=1), {"vnis": parse_vnis("42")}, "vni_filtered"),
    ("vxlan-mode-plain", plain(), {"encap": "vxlan"}, "not_encapsulated"),
    ("vxlan-mode-gre-only", eth(ipv4(gre(plain()), proto=47)), {"encap": "vxlan"}, "not_encapsulated"),
    ("none-mode-vxlan", vx(plain()), {"encap": "none"}, "encap_ignored"),
    ("none-mode-geneve", eth(ipv4(udp(geneve(plain()), dport=6081), proto=17)), {"encap": "none"},
     "encap_ignored"),
    ("none-mode-gre", eth(ipv4(gre(plain()), proto=47)), {"encap": "none"}, "encap_ignored"),
    ("vxlan-port-disabled", vx(plain()), {"vxlan_port": 0}, "non_tcp"),
    ("tcp-19-bytes-promised", eth(ipv4(tcp(b"")[:19])), {}, "bad_tcp_header"),
    ("tcp-cut-by-capture", (1, eth(ipv4(tcp(b"")))[:40], 54), {}, "short_tcp"),
    ("tcp-doff-4", plain(doff=4), {}, "bad_tcp_header"),
    ("tcp-doff-beyond-ip", eth(ipv4(tcp(b"", doff=15))), {}, "bad_tcp_header"),
    ("tcp-options-cut-by-capture", (1, eth(ipv4(tcp(b"", doff=8, options=bytes(12))))[:60], 66), {}, "short_tcp"),
    ("pure-ack", plain(b"", flags=ACK), {}, "pure_ack"),
    ("port-filtered", plain(), {"ports": frozenset({443})}, "port_filtered"),
    ("unsupported-linktype", (147, plain()), {}, "unsupported_linktype"),
    ("sll-short", (113, bytes(15)), {}, "short_link_header"),
    ("sll2-short", (276, bytes(19)), {}, "short_link_header"),
    ("null-short", (0, b"\x02\x00\x00"), {}, "short_link_header"),
    ("loop-short", (108, b"\x00\x00"), {}, "short_link_header"),
    ("null-unknown-family", (0, struct.pack("<I", 7) + ipv4(tcp())), {}, "non_ip"),
    ("raw-empty", (101, b""), {}, "non_ip"),
    ("raw-version-5", (101, b"\x50" + bytes(30)), {}, "non_ip"),
    ("sll-arp", (113, struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0806) + bytes(28)), {}, "non_ip"),
]


@pytest.mark.parametrize("frame,options,reason", [c[1:] for c in DROPS], ids=[c[0] for c in DROPS])
def test_drop_reasons(frame, options, reason):
    segs, counters, _ = run([frame], **options)
    assert segs == []
    assert counters[reason] == 1, {k: v for k, v in counters.items() if v}


def test_every_drop_reason_has_a_case():
    assert COUNTER_NAMES[5] == "unsupported_linktype"  # drop reasons start here
    assert set(COUNTER_NAMES[5:]) == {c[3] for c in DROPS}


# (id, frame, options, expected segment fields: key, dir, payload, missing, tunnel_src, flags)
SEG = {"key": key(), "dir": 0, "payload": DATA, "missing": 0, "tsrc": b"", "flags": ACK | PSH}
EMITS = [
    ("plain", plain(), {}, {}),
    ("reverse-direction", eth(ipv4(tcp(sport=80, dport=40000), src=B4, dst=A4)), {},
     {"dir": 1, "key": key()}),
    ("same-address-port-decides", eth(ipv4(tcp(sport=9000, dport=8000), src=A4, dst=A4)), {},
     {"dir": 1, "key": key(a=A4, pa=8000, b=A4, pb=9000)}),
    ("vlan", eth(ipv4(tcp()), tags=[(0x8100, 5)]), {}, {}),
    ("qinq-8021ad", eth(ipv4(tcp()), tags=[(0x88A8, 5), (0x8100, 6)]), {}, {}),
    ("qinq-9100-three-tags", eth(ipv4(tcp()), tags=[(0x9100, 1), (0x9100, 2), (0x8100, 3)]), {}, {}),
    ("mpls-two-labels-v4", eth(mpls(ipv4(tcp()), labels=(16, 17)), etype=0x8847), {}, {}),
    ("mpls-multicast-v6", eth(mpls(ipv6(tcp())), etype=0x8848), {},
     {"key": key(version=6, a=A6, b=B6)}),
    ("vlan-then-mpls", eth(mpls(ipv4(tcp())), etype=0x8847, tags=[(0x8100, 9)]), {}, {}),
    ("ipv4-options", eth(ipv4(tcp(), ihl=7, options=bytes(8))), {}, {}),
    ("ethernet-padding-dropped", eth(ipv4(tcp(b"hi"))) + bytes(20), {}, {"payload": b"hi"}),
    ("ipv4-total-0-tso", eth(ipv4(tcp(), total=0)), {}, {}),
    ("ipv4-df", eth(ipv4(tcp(), frag=0x4000)), {}, {}),
    ("snaplen-truncated", (1, plain(DATA + bytes(100))[:-60], len(plain(DATA + bytes(100)))), {},
     {"payload": DATA + bytes(40), "missing": 60}),
    ("payload-entirely-missing", (1, plain(bytes(100))[:54], len(plain(bytes(100)))), {},
     {"payload": b"", "missing": 100}),
    ("tcp-options", plain(doff=8, options=bytes(12)), {}, {}),
    ("syn", plain(b"", flags=SYN), {}, {"payload": b"", "flags": SYN}),
    ("fin", plain(b"", flags=FIN | ACK), {}, {"payload": b"", "flags": FIN | ACK}),
    ("rst", plain(b"", flags=RST), {}, {"payload": b"", "flags": RST}),
    ("port-matches-dport", plain(), {"ports": frozenset({80})}, {}),
    ("port-matches-sport", plain(), {"ports": frozenset({40000, 8080})}, {}),
    ("ipv6", eth(ipv6(tcp()), etype=0x86DD), {}, {"key": key(version=6, a=A6, b=B6)}),
    # hop-by-hop -> routing -> destination options -> AH -> TCP
    ("ipv6-ext-chain", eth(ipv6(tcp(), nh=0, ext=ext6(43, 1) + ext6(60) + ext6(51) + ext6(6, 4, "ah")),
                           etype=0x86DD), {}, {"key": key(version=6, a=A6, b=B6)}),
    ("ipv6-atomic-fragment", eth(ipv6(frag6(6) + tcp(), nh=44), etype=0x86DD), {},
     {"key": key(version=6, a=A6, b=B6)}),
    ("ipv6-plen-0", eth(ipv6(tcp(), plen=0), etype=0x86DD), {}, {"key": key(version=6, a=A6, b=B6)}),
    ("ipv6-truncated", (1, eth(ipv6(tcp(DATA + bytes(10))), etype=0x86DD)[:-10],
                        len(eth(ipv6(tcp(DATA + bytes(10))), etype=0x86DD))), {},
     {"key": key(version=6, a=A6, b=B6), "missing": 10}),
    ("vxlan", vx(plain()), {}, {"key": key(vni=vni_bytes(42)), "tsrc": OUTER_SRC}),
    ("vxlan-reserved-bits-ignored", eth(ipv4(udp(vxlan(plain(), vni=11, flags=0xFF, reserved=0xFFFF),
                                                 dport=4789), proto=17, src=OUTER_SRC)), {},
     {"key": key(vni=vni_bytes(11)), "tsrc": OUTER_SRC}),
    ("vxlan-by-source-port", vx(plain(), sport=4789, dport=4790), {},
     {"key": key(vni=vni_bytes(42)), "tsrc": OUTER_SRC}),
    ("vxlan-custom-port", vx(plain(), dport=8472), {"vxlan_port": 8472},
     {"key": key(vni=vni_bytes(42)), "tsrc": OUTER_SRC}),
    ("vxlan-max-vni", vx(plain(), vni=0xFFFFFF), {}, {"key": key(vni=vni_bytes(0xFFFFFF)), "tsrc": OUTER_SRC}),
    ("vxlan-over-ipv6", eth(ipv6(udp(vxlan(plain(), vni=5), dport=4789), nh=17), etype=0x86DD), {},
     {"key": key(vni=vni_bytes(5)), "tsrc": A6}),
    ("vxlan-nested-outermost-vni", vx(vx(plain(), vni=2, src=B4), vni=1), {},
     {"key": key(vni=vni_bytes(1)), "tsrc": OUTER_SRC}),
    ("vxlan-inner-truncated-by-mirror", vx(eth(ipv4(tcp(DATA), total=20 + 20 + len(DATA) + 500))), {},
     {"key": key(vni=vni_bytes(42)), "tsrc": OUTER_SRC, "missing": 500}),
    ("vni-included", vx(plain(), vni=42), {"vnis": parse_vnis("42,43")},
     {"key": key(vni=vni_bytes(42)), "tsrc": OUTER_SRC}),
    ("vni-filter-ignores-plain", plain(), {"vnis": parse_vnis("42")}, {}),
    ("vxlan-mode-vxlan", vx(plain()), {"encap": "vxlan"}, {"key": key(vni=vni_bytes(42)), "tsrc": OUTER_SRC}),
    ("none-mode-plain", plain(), {"encap": "none"}, {}),
    ("geneve", eth(ipv4(udp(geneve(plain(), vni=7, opt_words=2), dport=6081), proto=17, src=OUTER_SRC)), {},
     {"key": key(vni=vni_bytes(7)), "tsrc": OUTER_SRC}),
    ("geneve-carrying-ipv4", eth(ipv4(udp(geneve(ipv4(tcp()), vni=8, proto=0x0800), dport=6081), proto=17,
                                      src=OUTER_SRC)), {}, {"key": key(vni=vni_bytes(8)), "tsrc": OUTER_SRC}),
    ("gre-teb", eth(ipv4(gre(plain()), proto=47)), {}, {}),
    ("gre-all-optional-fields", eth(ipv4(gre(plain(), c=True, k=True, s=True), proto=47)), {}, {}),
    ("gre-ipv4", eth(ipv4(gre(ipv4(tcp()), proto=0x0800), proto=47)), {}, {}),
    ("erspan1", eth(ipv4(gre(plain(), proto=0x88BE), proto=47)), {}, {}),
    ("erspan2", eth(ipv4(gre(erspan2(plain()), proto=0x88BE, s=True), proto=47)), {}, {}),
    ("erspan3", eth(ipv4(gre(erspan3(plain()), proto=0x22EB, s=True), proto=47)), {}, {}),
    ("erspan3-subheader", eth(ipv4(gre(erspan3(plain(), o=True), proto=0x22EB, s=True), proto=47)), {}, {}),
    ("gre-erspan-vxlan", eth(ipv4(gre(erspan2(vx(plain(), vni=0)), proto=0x88BE, s=True), proto=47)), {},
     {"key": key(vni=vni_bytes(0)), "tsrc": OUTER_SRC}),
    ("sll", (113, struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0800) + ipv4(tcp())), {}, {}),
    ("sll-vlan", (113, struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x8100) + b"\x00\x05\x08\x00" + ipv4(tcp())),
     {}, {}),
    ("sll2", (276, struct.pack("!HHIHBB8s", 0x86DD, 0, 3, 1, 0, 6, bytes(8)) + ipv6(tcp())), {},
     {"key": key(version=6, a=A6, b=B6)}),
    ("raw-101-v4", (101, ipv4(tcp())), {}, {}),
    ("raw-12-v6", (12, ipv6(tcp())), {}, {"key": key(version=6, a=A6, b=B6)}),
    ("raw-14-v4", (14, ipv4(tcp())), {}, {}),
    ("ipv4-228", (228, ipv4(tcp())), {}, {}),
    ("ipv6-229", (229, ipv6(tcp())), {}, {"key": key(version=6, a=A6, b=B6)}),
    ("null-little-endian", (0, struct.pack("<I", 2) + ipv4(tcp())), {}, {}),
    ("null-big-endian-writer", (0, struct.pack(">I", 2) + ipv4(tcp())), {}, {}),
    ("null-inet6-bsd", (0, struct.pack("<I", 24) + ipv6(tcp())), {}, {"key": key(version=6, a=A6, b=B6)}),
    ("null-inet6-freebsd", (0, struct.pack("<I", 28) + ipv6(tcp())), {}, {"key": key(version=6, a=A6, b=B6)}),
    ("null-inet6-macos", (0, struct.pack("<I", 30) + ipv6(tcp())), {}, {"key": key(version=6, a=A6, b=B6)}),
    ("loop-inet6-linux", (108, struct.pack(">I", 10) + ipv6(tcp())), {}, {"key": key(version=6, a=A6, b=B6)}),
    ("loop", (108, struct.pack(">I", 2) + ipv4(tcp())), {}, {}),
]


@pytest.mark.parametrize("frame,options,expect", [c[1:] for c in EMITS], ids=[c[0] for c in EMITS])
def test_segments(frame, options, expect):
    segs, counters, _ = run([frame], **options)
    assert counters["segments"] == 1, {k: v for k, v in counters.items() if v}
    want = dict(SEG, **expect)
    k, direction, seq, ack, flags, ts_ns, payload, missing, tsrc = segs[0]
    assert (k, direction, payload, missing, tsrc, flags) == (
        want["key"], want["dir"], want["payload"], want["missing"], want["tsrc"], want["flags"])
    if direction == 0:
        assert (seq, ack) == (1000, 2000)
    assert ts_ns == 1_700_000_000_000_000_000
    assert isinstance(payload, bytes) and isinstance(k, bytes) and isinstance(tsrc, bytes)


def test_counters_and_vni_stats():
    frames = [vx(plain(), vni=5), vx(plain(b"", flags=ACK), vni=5), vx(plain(), vni=6),
              plain(), (1, plain()[:50], len(plain())), eth(bytes(28), etype=0x0806)]
    segs, counters, vnis = run(frames, vnis=parse_vnis("-6"))
    assert len(segs) == 2
    assert vnis == {5: (2, len(frames[0]) + len(frames[1])), 6: (1, len(frames[2]))}
    assert counters["frames"] == 6
    assert counters["bytes"] == sum(len(f if isinstance(f, bytes) else f[1]) for f in frames)
    assert counters["encapsulated"] == 3
    assert counters["truncated_frames"] == 1
    assert (counters["pure_ack"], counters["vni_filtered"], counters["short_tcp"], counters["non_ip"]) == (1, 1, 1, 1)
    assert list(counters) == list(COUNTER_NAMES)


def test_many_vnis_grow_the_native_table():
    frames = [vx(plain(), vni=v * 4097) for v in range(300)]
    _, _, vnis = run(frames)
    assert vnis == {v * 4097: (1, len(frames[v])) for v in range(300)}


def test_batches_accumulate_and_output_is_fresh_per_call():
    for pure in IMPLS:
        dec = impl(pure)()
        batch = FrameBatch.from_frames([(1, 1, len(plain()), plain())])
        first = dec.decode(batch)
        second = dec.decode(batch)
        assert first == second and first is not second and len(first) == 1
        assert dec.counters()["segments"] == 2


# -- configuration -------------------------------------------------------------------------------------------

def test_parse_vnis():
    assert parse_vnis("1, 2 -3") == VniFilter(include=frozenset({1, 2}), exclude=frozenset({3}))
    assert parse_vnis("") == VniFilter()
    assert parse_vnis("  ,, ") == VniFilter()
    assert parse_vnis("16777215\t-0") == VniFilter(include=frozenset({16777215}), exclude=frozenset({0}))
    for bad in ("x", "16777216", "1-2", "-", "+5", "--3", "1.5"):
        with pytest.raises(DecodeConfigError) as e:
            parse_vnis(f"1 {bad}")
        assert str(e.value) == f"invalid VNI '{bad}': expected an integer 0..16777215, or -N to exclude N"
    assert not VniFilter(exclude=frozenset({3})).allows(3) and VniFilter().allows(3)
    assert not VniFilter(include=frozenset({1}), exclude=frozenset({1})).allows(1)


@pytest.mark.parametrize("pure", IMPLS)
@pytest.mark.parametrize("options,message", [
    ({"vxlan_port": 70000}, "vxlan_port must be an integer 0..65535 (0 disables it), got 70000"),
    ({"vxlan_port": True}, "vxlan_port must be an integer 0..65535 (0 disables it), got True"),
    ({"geneve_port": "6081"}, "geneve_port must be an integer 0..65535 (0 disables it), got '6081'"),
    ({"geneve_port": 4789}, "vxlan_port and geneve_port must differ, both are 4789"),
    ({"encap": "gre"}, "encap must be one of 'auto', 'vxlan', 'none', got 'gre'"),
    ({"vnis": "1,2"}, "vnis must be a VniFilter (see parse_vnis), got str"),
    ({"ports": "80"}, "ports must be a set of integers 1..65535, got '80'"),
    ({"ports": {0}}, "ports must be a set of integers 1..65535, got 0 in it"),
    ({"max_depth": 0}, "max_depth must be an integer 1..16, got 0"),
    ({"max_depth": 17}, "max_depth must be an integer 1..16, got 17"),
    ({"pure": "yes"}, "pure must be a bool, got 'yes'"),
])
def test_config_errors(pure, options, message):
    make = Decoder if "pure" in options else impl(pure)  # "pure" is an option of the factory only
    with pytest.raises(DecodeConfigError) as e:
        make(**options)
    assert str(e.value) == message


def test_vni_filter_validates():
    with pytest.raises(DecodeConfigError, match="VniFilter.include must be a frozenset of integers 0..16777215"):
        VniFilter(include=frozenset({1 << 24}))
    with pytest.raises(DecodeConfigError, match="VniFilter.exclude"):
        VniFilter(exclude={1})  # type: ignore[arg-type]


def test_selection(monkeypatch):
    monkeypatch.delenv("VXCAP_PURE_PYTHON", raising=False)
    assert Decoder(pure=True).pure is True
    if NATIVE_AVAILABLE:
        assert Decoder().pure is False
        monkeypatch.setenv("VXCAP_PURE_PYTHON", "1")
        assert Decoder().pure is True
        monkeypatch.setenv("VXCAP_PURE_PYTHON", "0")
        assert Decoder().pure is False
    assert decode_mod.Decoder(ports={80, 443}).ports == frozenset({80, 443})
