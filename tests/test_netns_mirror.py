"""The mirror lab reproduces an AWS VPC Traffic Mirroring session with kernel parts (vxcap.testing.netns).

The capture is read back with a small struct-based pcap reader written here (not vxcap's decoder, which is
what the lab exists to test), and cross-checked with tshark where it is installed.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import pathlib
import re
import shutil
import socket
import struct
import subprocess

import pytest

from vxcap.testing import make_sample
from vxcap.testing.netns import MirrorLab, list_netns

SAMPLES = pathlib.Path(__file__).resolve().parent.parent / "samples"
# The lab tests need root (marked one by one); the check of the committed sample does not.


# -- a minimal reader: pcap -> outer IP/UDP/VXLAN -> inner Ethernet/IP/TCP ----------------------------------

def read_pcap(path):
    """Yield (captured bytes, original length) per record of a classic pcap file (what tcpdump -w writes)."""
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:4]
    # Microsecond and nanosecond variants, either byte order (pcap-savefile(5)).
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
              b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[magic]
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    assert linktype == 1, f"expected Ethernet (DLT_EN10MB), got {linktype}"
    pos = 24
    while pos < len(data):
        _sec, _frac, incl, orig = struct.unpack(endian + "IIII", data[pos:pos + 16])
        yield data[pos + 16:pos + 16 + incl], orig
        pos += 16 + incl


def ip_layer(frame):
    """(family, src, dst, proto, payload, total_len, fragmented) of an Ethernet frame's IP packet, or None."""
    ethertype = struct.unpack("!H", frame[12:14])[0]
    p = frame[14:]
    if ethertype == 0x0800:
        ihl = (p[0] & 0x0F) * 4
        total, flags_frag = struct.unpack("!H2xH", p[2:8])
        fragmented = bool(flags_frag & 0x2000) or (flags_frag & 0x1FFF) != 0  # MF or offset, RFC 791
        return 4, socket.inet_ntop(socket.AF_INET, p[12:16]), socket.inet_ntop(socket.AF_INET, p[16:20]), \
            p[9], p[ihl:total], total, fragmented
    if ethertype == 0x86DD:
        plen, nxt = struct.unpack("!HB", p[4:7])
        return 6, socket.inet_ntop(socket.AF_INET6, p[8:24]), socket.inet_ntop(socket.AF_INET6, p[24:40]), \
            nxt, p[40:40 + plen], 40 + plen, nxt == 44
    return None


Mirrored = collections.namedtuple("Mirrored", "outer_family outer_dport vni inner fragmented cut_by_capture")


def decapsulate(path):
    """Every VXLAN datagram of the capture: outer facts, VNI and the inner frame."""
    out = []
    for frame, orig in read_pcap(path):
        ip = ip_layer(frame)
        assert ip is not None, "only IP on the mirror path"
        family, _src, _dst, proto, payload, _total, fragmented = ip
        assert proto == 17, "the capture filter kept UDP only"
        _sport, dport, ulen = struct.unpack("!HHH", payload[:6])
        vx = payload[8:ulen]
        # VXLAN header, RFC 7348 section 5: flags byte with the I bit (0x08), 24 reserved bits, VNI, 8 reserved.
        flags, vni_field = struct.unpack("!B3xI", vx[:8])
        assert flags & 0x08, "I flag (valid VNI) must be set"
        out.append(Mirrored(family, dport, vni_field >> 8, vx[8:], fragmented, len(frame) < orig))
    return out


def tcp_streams(mirrored, vni):
    """{(src, sport, dst, dport): reassembled payload} of the TCP flows inside one VNI.

    Duplicates (same sequence number) are kept once; segments are ordered by sequence number relative to
    the first one seen (uint32 serial arithmetic, RFC 1982), enough for these short, loss-free flows.
    """
    segs = collections.defaultdict(dict)
    for m in mirrored:
        if m.vni != vni:
            continue
        ip = ip_layer(m.inner)
        if ip is None or ip[3] != 6:
            continue
        _family, src, dst, _proto, tcp, _total, _frag = ip
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        off = (tcp[12] >> 4) * 4
        if len(tcp) > off:
            segs[(src, sport, dst, dport)].setdefault(seq, tcp[off:])
    streams = {}
    for key, by_seq in segs.items():
        base = next(iter(by_seq))  # first data segment seen: the capture is in order and loss-free
        buf = bytearray()
        for seq in sorted(by_seq, key=lambda s: (s - base) & 0xFFFFFFFF):
            rel = (seq - base) & 0xFFFFFFFF
            data = by_seq[seq]
            if rel + len(data) > len(buf):
                buf += data[len(buf) - rel:]
        streams[key] = bytes(buf)
    return streams


# Unanchored: a request may follow the previous one's body directly. No body here contains these patterns.
REQUEST_LINE = re.compile(rb"(GET|POST|HEAD) (/\S*) HTTP/1\.1\r\n")
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def count_http(streams, server_ports=(80, 8080)):
    requests, statuses = [], []
    for (_src, sport, _dst, dport), data in streams.items():
        if dport in server_ports:
            requests += [m.group(1).decode() for m in REQUEST_LINE.finditer(data)]
        elif sport in server_ports:
            statuses += [m.group(1).decode() for m in STATUS_LINE.finditer(data)]
    return requests, statuses


def tshark_fields(path, *fields):
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    argv = ["tshark", "-r", str(path), "-T", "fields"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines()]


# -- the lab with two sessions and the sample's calls -------------------------------------------------------

@pytest.fixture(scope="module")
def two_sessions(tmp_path_factory):
    """Lab with sessions 42 and 43 on the app's interface, the sample client's 17 calls, the capture."""
    path = tmp_path_factory.mktemp("mirror") / "two.pcap"
    with MirrorLab(vni=42, second_vni=43, mirror_mtu=9001) as lab:
        lab.start_nginx(80)
        lab.start_aiohttp(8080)
        cap = lab.tcpdump("capture", lab.capture_iface, path)
        calls = asyncio.run(make_sample.run_client(lab))
        stats = cap.stop()
    assert stats.dropped == 0 and stats.captured == stats.received > 0, stats
    return path, calls, decapsulate(path)


@pytest.mark.root
@pytest.mark.slow
def test_both_directions_arrive_vxlan_encapsulated(two_sessions):
    _path, calls, mirrored = two_sessions
    assert {m.outer_dport for m in mirrored} == {4789}
    streams = tcp_streams(mirrored, 42)
    requests, statuses = count_http(streams)
    # Every request the client sent and every response it read crossed the mirror, in the right direction.
    assert sorted(requests) == sorted(c["method"] for c in calls)
    final = [s for s in statuses if s != "100"]
    assert sorted(final) == sorted(c["status"] for c in calls)
    assert statuses.count("100") == 1  # the Expect: 100-continue exchange's interim response
    # Byte for byte: each connection's mirrored client->server stream is what the client wrote.
    sent = collections.defaultdict(bytes)
    for c in calls:
        sent[c["client"]] += base64.b64decode(c["request_raw_b64"])
    mirrored_sent = {}
    for (src, sport, _dst, dport), data in streams.items():
        if dport in (80, 8080):
            mirrored_sent[f"[{src}]:{sport}" if ":" in src else f"{src}:{sport}"] = data
    assert mirrored_sent == dict(sent)
    # IPv6 on the application link is mirrored too.
    assert any(ip_layer(m.inner) and ip_layer(m.inner)[0] == 6 and ip_layer(m.inner)[3] == 6 for m in mirrored)


@pytest.mark.root
@pytest.mark.slow
def test_second_session_carries_same_traffic_under_its_vni(two_sessions):
    path, _calls, mirrored = two_sessions
    per_vni = collections.Counter(m.vni for m in mirrored)
    assert set(per_vni) == {42, 43}
    # Same interface, two sessions: each frame once per VNI, identical inner bytes (overlapping addresses).
    assert per_vni[42] == per_vni[43]
    assert sorted(m.inner for m in mirrored if m.vni == 42) == sorted(m.inner for m in mirrored if m.vni == 43)
    assert tcp_streams(mirrored, 42) == tcp_streams(mirrored, 43)
    # An independent dissector agrees on port and VNIs.
    rows = tshark_fields(path, "udp.dstport", "vxlan.vni")
    assert {tuple(r) for r in rows} == {("4789", "42"), ("4789", "43")}


@pytest.mark.root
@pytest.mark.slow
def test_jumbo_mirror_path_carries_full_frames(two_sessions):
    _path, _calls, mirrored = two_sessions
    sizes = []
    for m in mirrored:
        assert not m.fragmented, "outer packet fragmented: VXLAN MTU too small for the mirror path"
        assert not m.cut_by_capture, "tcpdump's snap length cut a frame"
        ip = ip_layer(m.inner)
        if ip is None:
            continue
        # Inner IP total length equals what arrived: nothing of the mirrored frame was cut.
        assert len(m.inner) == 14 + ip[5]
        sizes.append(len(m.inner))
    # The 100 KB response went as full-size frames: 1500-byte IP packets in 1514-byte Ethernet frames,
    # and none larger (wire-sized frames, no GSO super-packets on the mirror).
    assert max(sizes) == 1514
    assert sizes.count(1514) >= 2 * 60  # ~70 segments of /large.txt, once per VNI


# -- other lab settings ---------------------------------------------------------------------------------

def _get(lab, host, port, path):
    s = lab.connect("client", host, port)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data
    finally:
        s.close()


def _running(pid):
    # A zombie (state Z) has exited; only its parent's reaping is pending (an orphan's falls to init).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.root
@pytest.mark.slow
def test_single_session_and_close_leaves_nothing(tmp_path):
    path = tmp_path / "one.pcap"
    lab = MirrorLab(vni=7)
    try:
        lab.start()
        names = set(lab.namespaces.values())
        assert names <= set(list_netns())
        lab.start_nginx(80)
        lab.start_aiohttp(8080)
        cap = lab.tcpdump("capture", lab.capture_iface, path)
        assert _get(lab, lab.app_ip, 8080, "/items?a=1").startswith(b"HTTP/1.1 200")
        assert _get(lab, lab.app_ip6, 80, "/api/status").startswith(b"HTTP/1.1 200")
        cap.stop()
        pids = [p.pid for p in lab.processes]
        assert len(pids) == 3  # nginx, aiohttp, tcpdump
        worker_pids = [int(x) for x in subprocess.run(["ip", "netns", "pids", lab.ns_app], capture_output=True,
                                                      text=True).stdout.split()]
    finally:
        lab.close()
    mirrored = decapsulate(path)
    assert {m.vni for m in mirrored} == {7}  # the second session exists only when asked for
    requests, statuses = count_http(tcp_streams(mirrored, 7))
    assert requests == ["GET", "GET"] and statuses == ["200", "200"]
    assert not names & set(list_netns())
    for pid in set(pids) | set(worker_pids):  # nginx's worker is not a child of ours: checked too
        assert not _running(pid), f"process {pid} survived close()"


@pytest.mark.root
@pytest.mark.slow
def test_packet_length_truncates_like_aws(tmp_path):
    path = tmp_path / "cut.pcap"
    with MirrorLab(vni=42, packet_length=128) as lab:
        lab.start_nginx(80)
        cap = lab.tcpdump("capture", lab.capture_iface, path)
        body = _get(lab, lab.app_ip, 80, "/large.txt")
        stats = cap.stop()
    assert len(body) > 100_000 and stats.dropped == 0
    mirrored = decapsulate(path)
    assert mirrored and {m.vni for m in mirrored} == {42}
    assert max(len(m.inner) for m in mirrored) == 128
    # Frames were cut, not dropped: inner IP headers still announce the full 1500-byte packets.
    assert any(ip_layer(m.inner)[5] == 1500 for m in mirrored if ip_layer(m.inner))


@pytest.mark.root
@pytest.mark.slow
def test_mirror_over_ipv6(tmp_path):
    path = tmp_path / "v6.pcap"
    with MirrorLab(vni=42, mirror_ipv6=True) as lab:
        lab.start_aiohttp(8080)
        cap = lab.tcpdump("capture", lab.capture_iface, path)
        assert _get(lab, lab.app_ip, 8080, "/stream").startswith(b"HTTP/1.1 200")
        cap.stop()
    mirrored = decapsulate(path)
    assert {(m.outer_family, m.outer_dport, m.vni) for m in mirrored} == {(6, 4789, 42)}
    requests, statuses = count_http(tcp_streams(mirrored, 42))
    assert requests == ["GET"] and statuses == ["200"]


# -- the committed sample ---------------------------------------------------------------------------------

def test_committed_sample_matches_calls():
    """samples/: the pcap's streams are exactly the bytes calls.json says the client sent and received."""
    import json

    calls = json.loads((SAMPLES / "mirror-sample.calls.json").read_text())
    pcap = SAMPLES / "mirror-sample.pcap"
    assert 12 <= len(calls) <= 20 and pcap.stat().st_size < 300_000
    mirrored = decapsulate(pcap)
    assert {m.vni for m in mirrored} == {42} and {m.outer_dport for m in mirrored} == {4789}
    sent, received = collections.defaultdict(bytes), collections.defaultdict(bytes)
    for c in calls:
        assert c["vni"] == 42
        sent[(c["client"], c["server"])] += base64.b64decode(c["request_raw_b64"])
        received[(c["client"], c["server"])] += base64.b64decode(c["response_raw_b64"])

    def addr(ip, port):
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

    up, down = {}, {}
    for (src, sport, dst, dport), data in tcp_streams(mirrored, 42).items():
        if dport in (80, 8080):
            up[(addr(src, sport), addr(dst, dport))] = data
        else:
            # The interim response of the Expect: 100-continue call is on the wire but is no call.
            down[(addr(dst, dport), addr(src, sport))] = data.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    assert up == dict(sent)
    assert down == dict(received)
    methods = [c["method"] for c in calls]
    assert {"GET", "POST", "HEAD"} <= set(methods)
    assert {"200", "204", "304"} <= {c["status"] for c in calls}
    assert any(c["client"].startswith("[") for c in calls), "one call over IPv6"
