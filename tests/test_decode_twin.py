"""The native decoder and its pure-Python twin agree on every shared capture, segment for segment.

Plus spot checks that the captures decode to what their peers (Zeek, Suricata, Arkime, tshark) say they hold.
"""
from __future__ import annotations

import pathlib

import pytest

from vxcap.capfile import open_capture
from vxcap import decode_py
from vxcap.decode import NATIVE_AVAILABLE, parse_vnis

if NATIVE_AVAILABLE:
    from vxcap import _decode

PCAPS = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "pcaps"
ALL = sorted(p.relative_to(PCAPS).as_posix() for p in PCAPS.glob("**/*.pcap"))

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE, reason="vxcap._decode not built")


def decode_file(path: pathlib.Path, pure: bool, **options):
    # The classes themselves, so VXCAP_PURE_PYTHON in the environment cannot make both runs pure.
    dec = (decode_py.Decoder if pure else _decode.Decoder)(**options)
    reader = open_capture(str(path), batch_frames=64)  # several batches per file, as in production
    segs = []
    for batch in reader:
        segs.extend(dec.decode(batch))
    assert reader.error is None, reader.error
    return segs, dec.counters(), dec.vni_stats(), reader.counters()


def test_corpus_present(pcaps_dir):
    assert len(ALL) >= 60, ALL


@pytest.mark.parametrize("name", ALL)
def test_native_equals_twin(name, pcaps_dir):
    native = decode_file(pcaps_dir / name, pure=False)
    twin = decode_file(pcaps_dir / name, pure=True)
    assert native[0] == twin[0]
    assert native[1] == twin[1]
    assert native[2] == twin[2]
    counters = native[1]
    # Every frame ends in exactly one outcome.
    outcomes = sum(v for k, v in counters.items()
                   if k not in ("frames", "bytes", "encapsulated", "truncated_frames"))
    assert outcomes == counters["frames"] == native[3]["frames"]


@pytest.mark.parametrize("pure", [False, True])
def test_zeek_vxlan_http_vni_1(pcaps_dir, pure):
    segs, counters, vnis, _ = decode_file(pcaps_dir / "zeek/vxlan-encapsulated-http.pcap", pure)
    assert segs and all(s[0][:4] == (1).to_bytes(4, "big") for s in segs)
    assert vnis == {1: (12, counters["bytes"])}
    payload = b"".join(s[6] for s in segs if s[1] == 1)
    assert payload.startswith(b"GET /image/svg HTTP/1.1\r\n")
    assert counters["encapsulated"] == 12


@pytest.mark.parametrize("pure", [False, True])
def test_arkime_gre_erspan_vxlan(pcaps_dir, pure):
    segs, counters, vnis, _ = decode_file(pcaps_dir / "arkime/gre-erspan-vxlan.pcap", pure)
    # GRE -> ERSPAN -> Ethernet -> IPv4 -> UDP 4789 -> VXLAN (VNI 0) -> Ethernet -> IPv4 -> TCP.
    assert vnis == {0: (7, counters["bytes"])}
    data = [s for s in segs if s[6]]
    assert len(data) == 2
    assert data[0][6].startswith(b"GET ") and len(data[0][6]) == 30
    assert data[1][6].startswith(b"HTTP/") and len(data[1][6]) == 27
    assert data[0][0] == data[1][0] and data[0][1] != data[1][1]
    # tunnel_src is the source of the packet carrying VXLAN, not of the outer GRE packet.
    assert {s[8] for s in segs} == {bytes([172, 16, 27, 131])}
    assert data[0][0][:5] == b"\x00\x00\x00\x00\x04"


@pytest.mark.parametrize("pure", [False, True])
def test_suricata_aws_mirror_vni(pcaps_dir, pure):
    segs, counters, vnis, _ = decode_file(pcaps_dir / "suricata/vxlan-decoder-03-aws-traffic-mirror.pcap", pure)
    assert list(vnis) == [5569041]
    assert vnis[5569041][0] == 100 == counters["encapsulated"]
    assert segs and {s[0][:4] for s in segs} == {(5569041).to_bytes(4, "big")}
    # Excluding that VNI drops every encapsulated frame before the inner layers are looked at.
    _, filtered, _, _ = decode_file(pcaps_dir / "suricata/vxlan-decoder-03-aws-traffic-mirror.pcap", pure,
                                    vnis=parse_vnis("-5569041"))
    assert filtered["vni_filtered"] == 100 and filtered["segments"] == 0


@pytest.mark.parametrize("pure", [False, True])
def test_triple_vxlan_depth(pcaps_dir, pure):
    _, counters, vnis, _ = decode_file(pcaps_dir / "zeek/vxlan-triple-v2.pcap", pure)
    assert vnis == {1: (1, counters["bytes"])} and counters["non_tcp"] == 1  # DNS inside three VXLANs
    _, counters, _, _ = decode_file(pcaps_dir / "zeek/vxlan-triple-v2.pcap", pure, max_depth=2)
    assert counters["encap_depth_exceeded"] == 1


@pytest.mark.parametrize("pure", [False, True])
def test_plain_captures(pcaps_dir, pure):
    # DLT_NULL loopback (host byte order family), IPv6.
    segs, counters, _, _ = decode_file(pcaps_dir / "suricata/http-ipv6.pcap", pure)
    assert segs and all(s[0][4] == 6 and len(s[0]) == 4 + 1 + 2 * 18 for s in segs)
    assert all(s[0][:4] == b"\xff\xff\xff\xff" and s[8] == b"" for s in segs)
    # IPv6 atomic fragments (RFC 6946) are whole packets.
    segs, counters, _, _ = decode_file(pcaps_dir / "zeek/ipv6-http-atomic-frag.pcap", pure)
    assert any(s[6].startswith(b"GET ") for s in segs) and counters["ip_fragment"] == 0
    # Ethernet padding never reaches the payload.
    segs, _, _, _ = decode_file(pcaps_dir / "zeek/tcp-http-with-padding.pcap", pure)
    assert segs and all(b"\x00\x00\x00" not in s[6][-3:] for s in segs if s[6])
    # VLAN/MPLS mix and QinQ.
    for name in ("zeek/mixed-vlan-mpls.pcap", "zeek/http-qinq-0.pcap", "arkime/twovlan.pcap"):
        segs, counters, _, _ = decode_file(pcaps_dir / name, pure)
        assert any(s[6].startswith(b"GET ") for s in segs), name
        assert counters["non_ip"] == 0, (name, counters)
