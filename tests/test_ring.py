"""The TPACKET_V3 ring (vxcap._ring via vxcap.capture): option validation, and a real ring in a namespace
receiving frames over a veth: IPv4/IPv6, jumbo frames uncut, GRO off and on, kernel statistics."""
from __future__ import annotations

import itertools
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time

import pytest

from vxcap import bpf
from vxcap.capture import MIN_FRAME_SIZE, PAGE_SIZE, RingConfigError, RingOptions, open_ring
from vxcap.decode import Decoder, parse_vnis
from vxcap.testing.netns import _setns

# -- options --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,message", [
    (dict(device="x" * 16), "ring device 'xxxxxxxxxxxxxxxx': expected an interface name of at most 15 bytes "
                            "('' for all interfaces)"),
    (dict(block_size="4M"), "ring block_size '4M': expected an integer"),
    (dict(frame_size=2048), f"ring frame_size 2048: expected at least {MIN_FRAME_SIZE} bytes "
                            "(a 64 KiB GRO packet plus headers, never cut)"),
    (dict(frame_size=MIN_FRAME_SIZE + 8), f"ring frame_size {MIN_FRAME_SIZE + 8}: expected a multiple of "
                                          "TPACKET_ALIGNMENT (16)"),
    (dict(block_size=1 << 20 | 100), f"ring block_size {1 << 20 | 100}: expected a positive multiple of the "
                                     f"page size ({PAGE_SIZE})"),
    (dict(block_size=64 << 10), f"ring block_size 65536: expected at least frame_size ({MIN_FRAME_SIZE}): "
                                "a block holds whole frames"),
    (dict(blocks=0), "ring blocks 0: expected 1 to 65536"),
    (dict(blocks=65536, block_size=2 << 20), "ring blocks 65536: expected a ring of at most 64 GiB "
                                             "(blocks x block_size)"),
    (dict(timeout_ms=-1), "ring timeout_ms -1: expected 0 to 60000 milliseconds (0: the kernel's choice)"),
    (dict(promisc=1), "ring promisc 1: expected a bool"),
    (dict(fanout_group=70000), "ring fanout_group 70000: expected None or a group id from 0 to 65535"),
    (dict(filter=b"123"), "ring filter '<3 bytes>': expected None or a packed BPF program "
                          "(vxcap.bpf.pack: 1 to 4096 instructions)"),
    (dict(fanout_program=b"\0" * 8), "ring fanout_program '<8 bytes>': expected a fanout_group to serve"),
])
def test_options_are_validated_with_one_precise_message(kw, message):
    with pytest.raises(RingConfigError) as e:
        RingOptions(**kw).validate()
    assert str(e.value) == message


def test_defaults_fit_jumbo_and_gro_frames():
    o = RingOptions()
    o.validate()
    assert o.frame_size >= 65536 + 256 and o.block_size % PAGE_SIZE == 0 and o.block_size >= o.frame_size


# -- a veth pair between two namespaces -----------------------------------------------------------------

_seq = itertools.count()


class VethPair:
    """Namespaces ``a`` and ``b`` joined by a veth (eth0 on both ends), IPv4 and IPv6 addresses."""

    ip = {"a": ("10.50.0.1", "fd00:50::1"), "b": ("10.50.0.2", "fd00:50::2")}
    mac = {"a": "02:00:00:00:50:01", "b": "02:00:00:00:50:02"}

    def __init__(self, mtu: int = 9000) -> None:
        tag = f"vxring-{os.getpid()}-{next(_seq)}"
        self.ns = {"a": f"{tag}-a", "b": f"{tag}-b"}
        for name in self.ns.values():
            self._run("ip", "netns", "add", name)
            self.run_in(name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
            self._run("ip", "-n", name, "link", "set", "lo", "up")
        a, b = self.ns["a"], self.ns["b"]
        self._run("ip", "-n", a, "link", "add", "eth0", "mtu", str(mtu), "address", self.mac["a"], "type", "veth",
                  "peer", "name", "eth0", "netns", b, "mtu", str(mtu), "address", self.mac["b"])
        for side, name in self.ns.items():
            v4, v6 = self.ip[side]
            peer = "b" if side == "a" else "a"
            self._run("ip", "-n", name, "addr", "add", f"{v4}/24", "dev", "eth0")
            self._run("ip", "-n", name, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
            self._run("ip", "-n", name, "link", "set", "eth0", "up")
            # Static neighbours: no ARP/ND round (IPv6 ND can take a 1 s retransmit right after link-up),
            # so the first datagram of a test leaves at once and only the test's frames cross the link.
            for addr in self.ip[peer]:
                self._run("ip", "-n", name, "neigh", "replace", addr, "lladdr", self.mac[peer], "nud", "permanent",
                          "dev", "eth0")

    @staticmethod
    def _run(*argv: str) -> str:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if p.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
        return p.stdout

    def run_in(self, ns: str, *argv: str) -> str:
        return self._run("ip", "netns", "exec", self.ns.get(ns, ns), *argv)

    def call_in(self, side: str, fn, *args, **kw):
        box = {}

        def target():
            try:
                _setns(pathlib.Path("/run/netns") / self.ns[side])
                box["v"] = fn(*args, **kw)
            except BaseException as e:  # re-raised below
                box["e"] = e

        t = threading.Thread(target=target)
        t.start()
        t.join()
        if "e" in box:
            raise box["e"]
        return box["v"]

    def close(self) -> None:
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def veth_pair():
    pair = VethPair()
    try:
        yield pair
    finally:
        pair.close()


def ring_opts(**kw):
    base = dict(device="eth0", block_size=256 << 10, blocks=16, timeout_ms=10)
    base.update(kw)
    return RingOptions(**base)


def drain(ring, wait: float = 0.3):
    time.sleep(wait)
    return ring.read_frames()


# -- receiving ------------------------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_udp_frames_up_to_jumbo_arrive_uncut(veth_pair, family):
    ring = veth_pair.call_in("b", open_ring, ring_opts(filter=bpf.pack(bpf.socket_filter([4789]))))
    v = 0 if family == socket.AF_INET else 1
    tx = veth_pair.call_in("a", socket.socket, family, socket.SOCK_DGRAM)
    overhead = 14 + (20 if v == 0 else 40) + 8
    sizes = [1, 1400, 8000, 9000 - (overhead - 14)]  # the last makes a 9014-byte frame: MTU 9000
    try:
        for n in sizes:
            tx.sendto(bytes([n & 0xFF]) * n, (VethPair.ip["b"][v], 4789))
        tx.sendto(b"other port", (VethPair.ip["b"][v], 4790))  # filtered out in the kernel
        frames = drain(ring)
        packets, drops, _ = ring.read_stats()
        c = ring.counters()
    finally:
        tx.close()
        ring.close()
    assert sorted(wire for _, wire, _, _ in frames) == [n + overhead for n in sizes]
    assert all(len(f) == wire for f, wire, _, _ in frames)
    assert max(len(f) for f, *_ in frames) == 9014
    assert c["cut_frames"] == 0 and c["packets"] == 4 and c["wire_bytes"] == sum(sizes) + 4 * overhead
    assert packets == 4 and drops == 0 and c["kernel_packets"] == 4
    now = time.time_ns()
    assert all(0 < now - ts < 10_000_000_000 for _, _, ts, _ in frames)  # kernel timestamps, realtime clock


@pytest.mark.root
@pytest.mark.parametrize("gro", ["off", "on"])
def test_tcp_stream_gro_off_and_on_is_never_cut(veth_pair, gro):
    """The sender segments (TSO/GSO off), so frames are MTU sized on the wire; with GRO on the receiving
    veth the kernel merges them into packets up to 64 KiB before the tap: the ring keeps them whole."""
    if shutil.which("ethtool") is None:
        pytest.fail("ethtool is needed (apt-get install ethtool)")
    veth_pair.run_in("a", "ethtool", "-K", "eth0", "tso", "off", "gso", "off")
    veth_pair.run_in("b", "ethtool", "-K", "eth0", "gro", gro)
    ring = veth_pair.call_in("b", open_ring, ring_opts(  # 16 MiB: holds the whole transfer unread
        blocks=64, timeout_ms=100, filter=bpf.pack(bpf.socket_filter([], tcp=True, tcp_ports=[8080]))))
    srv = veth_pair.call_in("b", socket.create_server, ("10.50.0.2", 8080))
    got = bytearray()

    def serve():
        conn, _ = srv.accept()
        with conn:
            while chunk := conn.recv(1 << 20):
                got.extend(chunk)

    t = threading.Thread(target=serve)
    t.start()
    data = os.urandom(2 << 20)
    try:
        cli = veth_pair.call_in("a", socket.create_connection, ("10.50.0.2", 8080))
        cli.sendall(data)
        cli.close()
        t.join(10)
        frames = drain(ring)
        packets, drops, _ = ring.read_stats()
        c = ring.counters()
    finally:
        srv.close()
        ring.close()
    assert bytes(got) == data
    assert drops == 0 and c["cut_frames"] == 0 and all(len(f) == w for f, w, _, _ in frames)
    biggest = max(w for _, w, _, _ in frames)
    if gro == "off":
        assert biggest <= 9014
    else:
        assert biggest > 9014, "GRO merged nothing"
        assert biggest <= 65536 + 14


@pytest.mark.root
def test_poll_decodes_vxlan_frames_into_segments(veth_pair):
    """The ring's poll hands every frame to the native decoder: VXLAN datagrams carrying TCP segments."""
    from test_bpf import inner_frame, vxlan

    decoder = Decoder(vnis=parse_vnis("42"))
    ring = veth_pair.call_in("b", open_ring, ring_opts(filter=bpf.pack(bpf.socket_filter([4789]))))
    tx = veth_pair.call_in("a", socket.socket, socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        for vni in (42, 43):
            tx.sendto(vxlan(vni, inner_frame("10.1.1.1", "10.1.1.2", 5555, 80)), ("fd00:50::2", 4789))
        time.sleep(0.3)
        segs = ring.poll(decoder)
        assert ring.poll(decoder) == []  # nothing left: every block went back to the kernel
        c = ring.counters()
    finally:
        tx.close()
        ring.close()
    assert len(segs) == 1
    key, direction, seq, ack, flags, ts, payload, missing, tunnel_src = segs[0]
    assert payload == b"hello" and missing == 0 and key[:4] == (42).to_bytes(4, "big")
    assert tunnel_src == socket.inet_pton(socket.AF_INET6, "fd00:50::1")
    assert decoder.counters()["vni_filtered"] == 1 and c["packets"] == 2 and c["blocks"] >= 1


@pytest.mark.root
def test_ring_errors_are_os_errors(veth_pair):
    with pytest.raises(OSError, match="interface 'nosuch0'"):
        veth_pair.call_in("b", open_ring, ring_opts(device="nosuch0"))
    ring = veth_pair.call_in("b", open_ring, ring_opts(promisc=True))
    # A PACKET_MR_PROMISC membership raises the device's promiscuity count (not the IFF_PROMISC flag).
    shown = veth_pair.run_in("b", "ip", "-d", "link", "show", "eth0")
    ring.close()
    assert "promiscuity 1" in shown
    assert "promiscuity 0" in veth_pair.run_in("b", "ip", "-d", "link", "show", "eth0")  # gone with the socket
    with pytest.raises(ValueError, match="closed ring"):
        ring.poll(Decoder())
