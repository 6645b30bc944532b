"""vxcap.bpf: the generated classic BPF, checked instruction by instruction, run by a small interpreter
written here (filter.rst semantics), and run by the kernel: attached to AF_PACKET sockets in a namespace."""
from __future__ import annotations

import itertools
import random
import socket
import struct
import time

import pytest

from test_ring import veth_pair  # noqa: F401 - the fixture
from vxcap import bpf
from vxcap.bpf import Insn

# -- frames ---------------------------------------------------------------------------------------------

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def eth(payload: bytes, etype: int, vlan: int | None = None, dst=MAC_B, src=MAC_A) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return dst + src + tag + struct.pack("!H", etype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, frag: int = 0) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def l4(sport: int, dport: int, payload: bytes = b"x", tcp: bool = True) -> bytes:
    if tcp:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x18, 1024, 0, 0) + payload
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ip(src: str, dst: str, proto: int, payload: bytes) -> tuple[int, bytes]:
    if ":" in src:
        return 0x86DD, ipv6(src, dst, proto, payload)
    return 0x0800, ipv4(src, dst, proto, payload)


def inner_frame(src, dst, sport, dport, vlan=None, tcp=True):
    et, pkt = ip(src, dst, 6 if tcp else 17, l4(sport, dport, b"hello", tcp))
    return eth(pkt, et, vlan)


def vxlan(vni: int, inner: bytes) -> bytes:
    return struct.pack("!II", 0x08000000, vni << 8) + inner


def geneve(vni: int, inner: bytes, proto: int = 0x6558, opt_words: int = 0) -> bytes:
    return struct.pack("!BBHI", opt_words, 0, proto, vni << 8) + b"\0" * (4 * opt_words) + inner


def outer(osrc, odst, sport, dport, tunnel_payload, vlan=None) -> bytes:
    et, pkt = ip(osrc, odst, 17, l4(sport, dport, tunnel_payload, tcp=False))
    return eth(pkt, et, vlan)


# -- an interpreter (Documentation/networking/filter.rst) ------------------------------------------------

class Abort(Exception):
    pass


def run(program, frame: bytes, *, outgoing: bool = False, data_at_l3: bool = False) -> int:
    """Run ``program`` on ``frame`` (an Ethernet frame). ``data_at_l3``: the data starts at the network
    header and the EtherType comes from skb->protocol, as a fanout program sees a received frame (a VLAN
    tag on the outer frame is taken out by the kernel first)."""
    protocol = struct.unpack("!H", frame[12:14])[0]
    data = frame
    if data_at_l3:
        if protocol == 0x8100:
            protocol = struct.unpack("!H", frame[16:18])[0]
            data = frame[18:]
        else:
            data = frame[14:]
    a = x = 0
    mem = [0] * 16
    pc = 0

    def load(off, size):
        if off < 0 and off >= bpf.SKF_AD_OFF:
            return {bpf.SKF_AD_PROTOCOL: protocol, bpf.SKF_AD_PKTTYPE: 4 if outgoing else 0}[off - bpf.SKF_AD_OFF]
        if off < 0 or off + size > len(data):
            raise Abort
        return int.from_bytes(data[off:off + size], "big")

    try:
        for _ in range(10000):
            i = program[pc]
            pc += 1
            cls, code = i.code & 7, i.code
            k = i.k - (1 << 32) if i.k & 0x80000000 else i.k
            if cls == bpf.BPF_LD:
                size = {bpf.BPF_W: 4, bpf.BPF_H: 2, bpf.BPF_B: 1}[code & 0x18]
                mode = code & 0xE0
                if mode == bpf.BPF_ABS:
                    a = load(k, size)
                elif mode == bpf.BPF_IND:
                    a = load(x + k, size)
                elif mode == bpf.BPF_MEM:
                    a = mem[i.k]
                else:
                    raise AssertionError(f"unexpected ld {i}")
            elif cls == bpf.BPF_LDX:
                x = i.k if code & 0xE0 == bpf.BPF_IMM else mem[i.k]
            elif cls == bpf.BPF_ST:
                mem[i.k] = a
            elif cls == bpf.BPF_STX:
                mem[i.k] = x
            elif cls == bpf.BPF_ALU:
                v = x if code & bpf.BPF_X else i.k
                op = code & 0xF0
                a = {bpf.BPF_ADD: lambda: a + v, bpf.BPF_SUB: lambda: a - v, bpf.BPF_MUL: lambda: a * v,
                     bpf.BPF_AND: lambda: a & v, bpf.BPF_OR: lambda: a | v, bpf.BPF_XOR: lambda: a ^ v,
                     bpf.BPF_LSH: lambda: a << v, bpf.BPF_RSH: lambda: a >> v,
                     bpf.BPF_MOD: lambda: a % v}[op]() & 0xFFFFFFFF
            elif cls == bpf.BPF_JMP:
                op = code & 0xF0
                if op == bpf.BPF_JA:
                    pc += i.k
                    continue
                v = x if code & bpf.BPF_X else i.k
                ok = {bpf.BPF_JEQ: a == v, bpf.BPF_JGT: a > v, bpf.BPF_JGE: a >= v, bpf.BPF_JSET: bool(a & v)}[op]
                pc += i.jt if ok else i.jf
            elif cls == bpf.BPF_RET:
                return a if code & 0x18 == bpf.BPF_A else i.k
            elif cls == bpf.BPF_MISC:
                if code & 0xF8 == bpf.BPF_TAX:
                    x = a
                else:
                    a = x
    except Abort:
        return 0
    raise AssertionError("program did not return")


# -- the instructions themselves -------------------------------------------------------------------------

def test_socket_filter_instructions():
    p = bpf.socket_filter([4789])
    assert p[0] == Insn(0x28, 0, 0, 12)  # ldh [12]
    assert p[1] == Insn(0x15, 3, 0, 0x8100) and p[2] == Insn(0x15, 2, 0, 0x88A8)  # jeq to the tag branch
    assert Insn(0x06, 0, 0, bpf.SNAP) in p and p[-1] == Insn(0x06, 0, 0, 0)  # ret #262144 / ret #0
    assert any(i.code == 0x15 and i.k == 4789 for i in p)  # jeq #4789
    for prog in (p, bpf.fanout_program(3, tcp=True), bpf.reuseport_program(2, "geneve")):
        for pc, i in enumerate(prog):  # every jump lands inside the program, forward
            if i.code & 7 == bpf.BPF_JMP:
                targets = [i.k] if i.code == 0x05 else [i.jt, i.jf]
                assert all(pc + 1 + t < len(prog) for t in targets)
    assert len(bpf.pack(p)) == 8 * len(p)
    assert bpf.pack([Insn(0x06, 0, 0, 7)]) == struct.pack("=HBBI", 6, 0, 0, 7)
    text = bpf.disassemble(p)
    assert text.splitlines()[0] == "{ 0x28, 0, 0, 0x0000000c }"


def test_fanout_program_instructions():
    p = bpf.fanout_program(4)
    assert p[0] == Insn(0x20, 0, 0, (bpf.SKF_AD_OFF + bpf.SKF_AD_PKTTYPE) & 0xFFFFFFFF)  # ld pkttype
    assert Insn(0x94, 0, 0, 4) in p  # mod #4
    assert p[-2] == Insn(0x16, 0, 0, 0) and p[-1] == Insn(0x06, 0, 0, 0)  # ret a; fallback ret #0
    assert len(p) < 200


def test_assembler_refuses_bad_programs():
    with pytest.raises(bpf.BpfError, match="fanout size 0: expected 1 to 65536 sockets"):
        bpf.fanout_program(0)
    with pytest.raises(bpf.BpfError, match="udp port 70000: expected a port number from 1 to 65535"):
        bpf.socket_filter([70000])
    with pytest.raises(bpf.BpfError, match="a filter accepting nothing"):
        bpf.socket_filter([])
    with pytest.raises(bpf.BpfError, match="encap 'gre': expected auto, vxlan or none"):
        bpf.capture_filter("gre")
    with pytest.raises(bpf.BpfError, match="tunnel 'gre': expected vxlan or geneve"):
        bpf.reuseport_program(2, "gre")
    many = bpf.socket_filter([], tcp=True, tcp_ports=range(1, 500))  # too many to list: any TCP
    assert run(many, eth(ipv4("1.1.1.1", "2.2.2.2", 6, l4(1234, 60000)), 0x0800)) == bpf.SNAP


# -- the socket filter, interpreted ----------------------------------------------------------------------

VX = outer("10.0.0.1", "10.0.0.2", 40000, 4789, vxlan(42, inner_frame("10.1.1.1", "10.1.1.2", 5555, 80)))


@pytest.mark.parametrize("frame,accepted", [
    (VX, True),
    (outer("10.0.0.1", "10.0.0.2", 40000, 4789, b"v" * 8, vlan=7), True),
    (outer("fd00::1", "fd00::2", 40000, 4789, b"v" * 8), True),
    (outer("fd00::1", "fd00::2", 40000, 4789, b"v" * 8, vlan=7), True),
    (outer("10.0.0.1", "10.0.0.2", 40000, 6081, b"g" * 8), True),
    (outer("10.0.0.1", "10.0.0.2", 4789, 53, b"d" * 8), False),  # source port 4789 is not the mirror
    (outer("10.0.0.1", "10.0.0.2", 40000, 4790, b"v" * 8), False),
    (inner_frame("10.1.1.1", "10.1.1.2", 5555, 4789), False),  # TCP to 4789
    (eth(ipv4("10.0.0.1", "10.0.0.2", 17, b"\0" * 16, frag=0x0010), 0x0800), False),  # non-first fragment
    (eth(b"\0" * 28, 0x0806), False),  # ARP
    (eth(b"\0" * 4, 0x0800), False),  # cut IPv4 header: the load falls off, program returns 0
])
def test_socket_filter_tunnel_mode(frame, accepted):
    assert run(bpf.capture_filter("vxlan"), frame) == (bpf.SNAP if accepted else 0)


@pytest.mark.parametrize("frame,accepted", [
    (inner_frame("10.1.1.1", "10.1.1.2", 5555, 80), True),  # request
    (inner_frame("10.1.1.2", "10.1.1.1", 80, 5555), True),  # response
    (inner_frame("fd00::1", "fd00::2", 5555, 8080, vlan=3), True),
    (inner_frame("10.1.1.1", "10.1.1.2", 5555, 81), False),
    (inner_frame("10.1.1.1", "10.1.1.2", 5555, 80, tcp=False), False),  # UDP to 80
    (VX, False),
])
def test_socket_filter_plain_tcp_mode(frame, accepted):
    assert run(bpf.capture_filter("none", ports=[80, 8080]), frame) == (bpf.SNAP if accepted else 0)


# -- the fanout hash, interpreted ------------------------------------------------------------------------

def both_directions(src, dst, sport, dport, *, vlan_in=None, vlan_out=None, tunnel="vxlan", v6_outer=False,
                    proto=0x6558, opts=0):
    """The two mirrored frames of one inner flow, each with its own outer source port (as AWS/Linux)."""
    o = ("fd00::a", "fd00::b") if v6_outer else ("10.0.0.1", "10.0.0.2")
    out = []
    for s, d, sp, dp, osport in ((src, dst, sport, dport, 49152), (dst, src, dport, sport, 61234)):
        inner = inner_frame(s, d, sp, dp, vlan=vlan_in)
        if tunnel == "vxlan":
            out.append(outer(*o, osport, 4789, vxlan(42, inner), vlan=vlan_out))
        else:
            if proto != 0x6558:
                inner = inner[14:]
            out.append(outer(*o, osport, 6081, geneve(42, inner, proto, opts), vlan=vlan_out))
    return out


CASES = [dict(), dict(vlan_in=5), dict(vlan_out=9), dict(vlan_in=5, vlan_out=9), dict(v6_outer=True),
         dict(tunnel="geneve"), dict(tunnel="geneve", opts=3), dict(tunnel="geneve", proto=0x0800)]


@pytest.mark.parametrize("case", CASES, ids=[str(c) or "plain" for c in CASES])
@pytest.mark.parametrize("v6", [False, True])
def test_fanout_hash_is_symmetric_and_spreads(case, v6):
    n = 4
    if v6 and case.get("proto") == 0x0800:
        case = dict(case, proto=0x86DD)
    prog = bpf.fanout_program(n)
    rng = random.Random(7)
    seen = set()
    for _ in range(64):
        if v6:
            src, dst = f"fd00:1::{rng.randrange(1, 65535):x}", f"fd00:2::{rng.randrange(1, 65535):x}"
        else:
            src, dst = f"10.1.{rng.randrange(256)}.{rng.randrange(256)}", "10.2.0.1"
        fwd, rev = both_directions(src, dst, rng.randrange(1024, 65535), 443, **case)
        for data_at_l3 in (True, False):
            a = run(prog, fwd, data_at_l3=data_at_l3, outgoing=not data_at_l3)
            b = run(prog, rev, data_at_l3=data_at_l3, outgoing=not data_at_l3)
            assert a == b, (case, src, dst)
            seen.add(a)
    assert seen == set(range(n))  # 64 flows reach every socket


def test_fanout_program_sends_what_it_cannot_place_to_socket_0():
    prog = bpf.fanout_program(8)
    for frame in (eth(b"\0" * 28, 0x0806), outer("10.0.0.1", "10.0.0.2", 1, 53, b"dns"),
                  outer("10.0.0.1", "10.0.0.2", 1, 4789, b"short")):
        assert run(prog, frame, data_at_l3=True) == 0
    plain = inner_frame("10.1.1.1", "10.1.1.2", 5555, 80)
    assert run(prog, plain, data_at_l3=True) == 0  # plain TCP only hashed with tcp=True
    tprog = bpf.fanout_program(8, tcp=True)
    assert run(tprog, plain, data_at_l3=True) == run(tprog, inner_frame("10.1.1.2", "10.1.1.1", 80, 5555),
                                                     data_at_l3=True)


def test_reuseport_program_matches_the_fanout_hash():
    """Same flow, same socket whichever way the tunnel payload reaches the program."""
    for n in (2, 3):
        fan, rp = bpf.fanout_program(n), bpf.reuseport_program(n, "vxlan")
        for i in range(40):
            fwd, rev = both_directions(f"10.9.0.{i}", "10.8.0.1", 2000 + i, 80)
            payload = fwd[14 + 20 + 8:]  # what the UDP socket sees: VXLAN header onwards
            rpayload = rev[14 + 20 + 8:]
            assert run(rp, payload) == run(rp, rpayload) == run(fan, fwd, data_at_l3=True)


# -- run by the kernel -----------------------------------------------------------------------------------

def recv_all(sock: socket.socket, wait: float = 0.3) -> list[bytes]:
    out = []
    deadline = time.monotonic() + wait
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(65536))
        except (socket.timeout, BlockingIOError):
            pass
    return out


FRAMES = {
    "vxlan4": (outer("10.0.0.1", "10.0.0.2", 40000, 4789, vxlan(42, inner_frame("10.1.1.1", "10.1.1.2", 5, 80))), True),
    "vxlan6": (outer("fd00::1", "fd00::2", 40001, 4789, vxlan(42, inner_frame("10.1.1.1", "10.1.1.2", 5, 80))), True),
    "vxlan4-vlan": (outer("10.0.0.1", "10.0.0.2", 40002, 4789, b"v" * 8, vlan=12), True),
    "vxlan6-vlan": (outer("fd00::1", "fd00::2", 40003, 4789, b"v" * 8, vlan=12), True),
    "geneve4": (outer("10.0.0.1", "10.0.0.2", 40004, 6081, b"g" * 8), True),
    "dns": (outer("10.0.0.1", "10.0.0.2", 40005, 53, b"d" * 8), False),
    "tcp4789": (inner_frame("10.1.1.1", "10.1.1.2", 5, 4789), False),
    "arp": (eth(b"\0" * 28, 0x0806), False),
}


@pytest.mark.root
def test_socket_filter_in_the_kernel(veth_pair):
    """Frames sent over a veth: the filter on the receiving side (data from the MAC header, tags taken out
    by the kernel) and on the sending side (outgoing frames keep an in-band 802.1Q tag)."""
    prog = bpf.capture_filter("vxlan")
    rx = veth_pair.call_in("b", _packet_socket, "eth0", prog)
    tx_seen = veth_pair.call_in("a", _packet_socket, "eth0", prog)
    tx = veth_pair.call_in("a", _packet_socket, "eth0", None)
    try:
        for name, (frame, _) in FRAMES.items():
            tx.send(frame.ljust(60, b"\0"))
        got_rx = recv_all(rx)
        got_tx = recv_all(tx_seen)
    finally:
        for s in (rx, tx_seen, tx):
            s.close()
    for got in (got_rx, got_tx):
        names = {n for n, (f, _) in FRAMES.items() if any(_same_flow(f, g) for g in got)}
        assert names == {n for n, (_, ok) in FRAMES.items() if ok}, names
    assert any(g[12:14] == b"\x81\x00" for g in got_tx)  # the sending side really saw the in-band tag


def _same_flow(sent: bytes, got: bytes) -> bool:
    # The kernel strips a received tag: compare from the EtherType on, tag-insensitive.
    strip = lambda f: f[:12] + f[16:] if f[12:14] == b"\x81\x00" else f  # noqa: E731
    s, g = strip(sent), strip(got)
    return g[:len(s)] == s


def _packet_socket(iface, program):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    if program is not None:
        bpf.attach_filter(s, program)
    s.bind((iface, 0x0003))
    return s


@pytest.mark.root
def test_fanout_program_in_the_kernel(veth_pair):
    """Two rings in one fanout group: VXLAN and Geneve flows, IPv4 and IPv6, inner VLAN tags; each flow's
    two directions (different outer source ports) land in one ring, and both rings get flows."""
    from vxcap.capture import RingOptions, open_ring

    group = 4242
    opts = RingOptions(device="eth0", block_size=128 << 10, blocks=16, timeout_ms=10,
                       filter=bpf.pack(bpf.capture_filter("vxlan")), fanout_group=group,
                       fanout_program=bpf.pack(bpf.fanout_program(2)))
    rings = [veth_pair.call_in("b", open_ring, opts) for _ in range(2)]
    tx = veth_pair.call_in("a", _packet_socket, "eth0", None)
    flows = {}
    try:
        for i, case in zip(range(48), itertools.cycle(CASES)):
            inner = (f"10.3.0.{i}", "10.4.0.1") if i % 2 else (f"fd00:3::{i + 1:x}", "fd00:4::1")
            if case.get("proto") == 0x0800 and ":" in inner[0]:
                case = dict(case, proto=0x86DD)
            fwd, rev = both_directions(*inner, 30000 + i, 443, **case)
            flows[i] = (fwd, rev)
            tx.send(fwd)
            tx.send(rev)
        time.sleep(0.3)
        got = [[f for f, *_ in r.read_frames()] for r in rings]
    finally:
        tx.close()
        for r in rings:
            r.close()
    placed = set()
    for i, (fwd, rev) in flows.items():
        where = {k for k in range(2) for g in got[k] if _same_flow(fwd, g) or _same_flow(rev, g)}
        count = sum(1 for k in range(2) for g in got[k] if _same_flow(fwd, g) or _same_flow(rev, g))
        assert count == 2 and len(where) == 1, (i, where)
        placed |= where
    assert placed == {0, 1}
