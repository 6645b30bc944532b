"""Classic BPF programs for live capture: the ring's socket filter and the inner-flow fanout program.

Classic BPF (Documentation/networking/filter.rst) has an accumulator A, an index register X, sixteen 32-bit
scratch words M[0..15], forward-only jumps (conditional jumps reach at most 255 instructions) and loads that
end the program with return value 0 when they fall off the packet. Three programs are built here:

``socket_filter(...)`` - attached with SO_ATTACH_FILTER to the AF_PACKET ring socket. It runs on the frame
  from its MAC header (packet(7) SOCK_RAW) and returns the number of bytes to keep: ``SNAP`` (more than any
  frame, so nothing is cut) or 0 (drop before the frame costs ring space).

      Ethernet [802.1Q/802.1ad tag] -> IPv4 (options ok, non-first fragments rejected) | IPv6 (no extension
      headers) -> UDP with destination port in ``udp_ports``   (VXLAN 4789, Geneve 6081: the mirror traffic)
                                       TCP with either port in ``tcp_ports`` (plain traffic, encap none/auto;
                                       ``tcp_ports`` empty: any TCP)

``fanout_program(n, ...)`` - PACKET_FANOUT_CBPF (packet(7) "PACKET_FANOUT"): the kernel runs it for every
  frame of the fanout group and delivers the frame to socket ``return value % n``. It hashes the *inner*
  flow symmetrically, so both directions of an inner TCP connection reach the same worker although their
  outer UDP source ports differ (AWS and Linux pick the outer source port per flow and per direction).

  A fanout program does not start at the MAC header: af_packet.c runs it on the skb as the tap got it, whose
  data starts at the network header on receive (eth_type_trans pulled the Ethernet header and the core
  already moved any 802.1Q tag into skb->vlan_tci) and at the MAC header on transmit. So the program looks
  at the packet type (SKF_AD_PKTTYPE) first: PACKET_OUTGOING frames are parsed from an Ethernet header,
  received ones from the network header with the EtherType taken from skb->protocol (SKF_AD_PROTOCOL).
  Positive offsets are used throughout (not SKF_NET_OFF), because the kernel reads them through
  skb_header_pointer, which also works when the inner headers sit in paged fragments.

      outer:  [Ethernet [VLAN]] IPv4 | IPv6                    (only the network layer on receive)
                 UDP dst = vxlan_port                   UDP dst = geneve_port           TCP (tcp=True)
                 +-----------------------------+        +-------------------------+      hash this layer
                 |flags|   reserved   |        |        |Ver|OptLen|O|C| Protocol |
                 | VNI (24 bits)      | rsvd   |        | VNI (24)       | rsvd   |
                 +-----------------------------+        | options (OptLen x 4)    |
                 RFC 7348 section 5, 8 bytes            +-------------------------+ RFC 8926 3.4
      inner:  Ethernet [802.1Q tag] (Geneve: or IP directly, by Protocol)
              IPv4 | IPv6 (no extension headers)
              TCP | UDP | SCTP ports (skipped for fragments: addresses only)

      hash   = (xor of the address words of both ends) + source port + destination port   (symmetric)
      mixed  = h ^= h >> 16; h *= 0x45d9f3b; h ^= h >> 16;  return mixed % n

  Frames it cannot place (no IP, not VXLAN/Geneve, an unknown inner EtherType, a header beyond the frame,
  a non-first outer IPv4 fragment when PACKET_FANOUT_FLAG_DEFRAG is off) go to socket 0: they are not API
  traffic, the socket filter of socket 0 drops them, and a fixed choice keeps such a flow in one place.

``reuseport_program(n, tunnel)`` - the same hash for SO_ATTACH_REUSEPORT_CBPF on UDP sockets bound to the
  VXLAN (or Geneve) port: there the kernel runs the program with skb->data at the UDP payload
  (sock_reuseport.c pulls the UDP header first), so it starts at the tunnel header. An index >= n makes
  the kernel fall back to its own hash, which is why the program reduces modulo ``n`` itself.

Programs are lists of ``Insn(code, jt, jf, k)``; ``pack()`` gives the ``struct sock_filter`` array.
"""
from __future__ import annotations

import ctypes
import socket
import struct
from typing import NamedTuple, Sequence

# <linux/bpf_common.h> / <linux/filter.h>
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH, BPF_NEG, BPF_MOD, BPF_XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0)
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10
BPF_TAX, BPF_TXA = 0x00, 0x80
BPF_MAXINSNS = 4096
BPF_MEMWORDS = 16

# Ancillary loads (filter.rst "ancillary"): ld [SKF_AD_OFF + n] reads skb fields instead of packet bytes.
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0  # skb->protocol, host byte order
SKF_AD_PKTTYPE = 4  # skb->pkt_type: PACKET_HOST 0 ... PACKET_OUTGOING 4 (packet(7))
PACKET_OUTGOING = 4

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>
SO_ATTACH_REUSEPORT_CBPF = 51

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD, ETH_P_TEB = 0x0800, 0x86DD, 0x8100, 0x88A8, 0x6558
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP = 6, 17, 132

# Bytes kept per accepted frame. Anything above the largest skb (64 KiB GSO/GRO plus headers) means "all";
# libpcap uses 262144 for the same reason. The ring's block size is the real bound (see capture.RingOptions).
SNAP = 262144
# Application ports matched one by one; past this the filter accepts any TCP (the decoder's port bitmap
# still filters), because a conditional jump reaches only 255 instructions ahead.
MAX_FILTER_PORTS = 100


class Insn(NamedTuple):
    code: int
    jt: int
    jf: int
    k: int

    def __str__(self) -> str:
        return f"{{ 0x{self.code:02x}, {self.jt}, {self.jf}, 0x{self.k & 0xFFFFFFFF:08x} }}"


class BpfError(ValueError):
    """A program could not be assembled (a jump too long, too many instructions, a bad argument)."""


class _Asm:
    """A tiny assembler: instructions with symbolic forward jump targets, resolved by ``program()``."""

    def __init__(self) -> None:
        self._items: list[tuple] = []  # ("insn", code, jt, jf, k) or ("label", name)
        self._n = 0

    def label(self, name: str) -> None:
        self._items.append(("label", name))

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}.{self._n}"

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self._items.append(("insn", code, jt, jf, k))

    # mnemonics used below (filter.rst syntax in the comments)
    def ld_abs(self, size: int, k: int) -> None:  # ld{,h,b} [k]
        self.op(BPF_LD | size | BPF_ABS, k)

    def ld_ind(self, size: int, k: int) -> None:  # ld{,h,b} [x + k]
        self.op(BPF_LD | size | BPF_IND, k)

    def ld_mem(self, i: int) -> None:  # ld M[i]
        self.op(BPF_LD | BPF_MEM, i)

    def ldx_imm(self, k: int) -> None:  # ldx #k
        self.op(BPF_LDX | BPF_W | BPF_IMM, k)

    def ldx_mem(self, i: int) -> None:  # ldx M[i]
        self.op(BPF_LDX | BPF_W | BPF_MEM, i)

    def st(self, i: int) -> None:  # st M[i]
        self.op(BPF_ST, i)

    def stx(self, i: int) -> None:  # stx M[i]
        self.op(BPF_STX, i)

    def alu_k(self, aop: int, k: int) -> None:
        self.op(BPF_ALU | aop | BPF_K, k & 0xFFFFFFFF)

    def alu_x(self, aop: int) -> None:
        self.op(BPF_ALU | aop | BPF_X)

    def tax(self) -> None:
        self.op(BPF_MISC | BPF_TAX)

    def txa(self) -> None:
        self.op(BPF_MISC | BPF_TXA)

    def jeq(self, k: int, jt: str | int, jf: str | int = 0) -> None:
        self.op(BPF_JMP | BPF_JEQ | BPF_K, k, jt, jf)

    def jset(self, k: int, jt: str | int, jf: str | int = 0) -> None:
        self.op(BPF_JMP | BPF_JSET | BPF_K, k, jt, jf)

    def ja(self, target: str) -> None:
        self.op(BPF_JMP | BPF_JA, 0, target)  # k resolved from jt's label below

    def ret_k(self, k: int) -> None:
        self.op(BPF_RET | BPF_K, k)

    def ret_a(self) -> None:
        self.op(BPF_RET | BPF_A)

    def program(self) -> list[Insn]:
        where: dict[str, int] = {}
        n = 0
        for item in self._items:
            if item[0] == "label":
                if item[1] in where:
                    raise BpfError(f"label {item[1]} defined twice")
                where[item[1]] = n
            else:
                n += 1
        out: list[Insn] = []
        for item in self._items:
            if item[0] == "label":
                continue
            _, code, jt, jf, k = item
            pc = len(out)

            def rel(target: str | int) -> int:
                if isinstance(target, int):
                    return target
                if target not in where:
                    raise BpfError(f"jump to undefined label {target}")
                d = where[target] - pc - 1
                if d < 0:
                    raise BpfError(f"backward jump to {target} (classic BPF jumps forward only)")
                return d

            if code == BPF_JMP | BPF_JA:
                out.append(Insn(code, 0, 0, rel(jt)))
                continue
            jt_r, jf_r = rel(jt), rel(jf)
            if jt_r > 255 or jf_r > 255:
                raise BpfError(f"conditional jump of {max(jt_r, jf_r)} instructions at {pc} (limit 255)")
            out.append(Insn(code, jt_r, jf_r, k & 0xFFFFFFFF))
        if not out or len(out) > BPF_MAXINSNS:
            raise BpfError(f"program of {len(out)} instructions (1 to {BPF_MAXINSNS})")
        if out[-1].code & 0x07 != BPF_RET:
            raise BpfError("a program must end with a return")
        return out


def _check_port(name: str, port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise BpfError(f"{name} {port!r}: expected a port number from 1 to 65535")
    return port


# -- the ring's socket filter ---------------------------------------------------------------------------

def socket_filter(udp_ports: Sequence[int] = (4789,), tcp: bool = False,
                  tcp_ports: Sequence[int] = ()) -> list[Insn]:
    """Accept UDP to one of ``udp_ports`` (tunnels) and, when ``tcp``, TCP from or to ``tcp_ports`` (any if
    empty); everything else is dropped in the kernel. IPv4 and IPv6, with or without one VLAN tag."""
    udp = sorted({_check_port("udp port", p) for p in udp_ports})
    tports = sorted({_check_port("tcp port", p) for p in tcp_ports})
    if not udp and not tcp:
        raise BpfError("a filter accepting nothing: give udp_ports or tcp=True")
    if len(udp) > MAX_FILTER_PORTS:
        raise BpfError(f"{len(udp)} tunnel ports: at most {MAX_FILTER_PORTS}")
    if len(tports) > MAX_FILTER_PORTS:
        tports = []  # any TCP: the decoder's port filter applies (see MAX_FILTER_PORTS)
    a = _Asm()
    a.ld_abs(BPF_H, 12)  # EtherType, or the TPID of a tag (IEEE 802.1Q: TPID 2 bytes, TCI 2 bytes)
    a.jeq(ETH_P_8021Q, "vlan")
    a.jeq(ETH_P_8021AD, "vlan")
    a.ldx_imm(14)
    a.ja("l3")
    a.label("vlan")
    a.ld_abs(BPF_H, 16)
    a.ldx_imm(18)
    a.label("l3")  # A = EtherType, X = offset of the IP header
    a.jeq(ETH_P_IP, "v4")
    a.jeq(ETH_P_IPV6, "v6", "drop")
    a.label("v4")
    a.ld_ind(BPF_H, 6)  # flags + fragment offset (RFC 791)
    a.jset(0x1FFF, "drop")  # a non-first fragment has no transport header
    a.ld_ind(BPF_B, 9)  # protocol
    a.st(0)
    a.ld_ind(BPF_B, 0)  # X += IHL * 4 (ldxb 4*([k]&0xf) takes only an absolute offset, hence by hand)
    a.alu_k(BPF_AND, 0x0F)
    a.alu_k(BPF_LSH, 2)
    a.alu_x(BPF_ADD)
    a.tax()
    a.ld_mem(0)
    a.ja("l4")
    a.label("v6")
    a.ld_ind(BPF_B, 6)  # next header; extension headers are not walked (the frame is dropped)
    a.st(0)
    a.txa()
    a.alu_k(BPF_ADD, 40)
    a.tax()
    a.ld_mem(0)
    a.label("l4")  # A = protocol, X = offset of the transport header
    if udp:
        a.jeq(IPPROTO_UDP, "udp")
    if tcp:
        a.jeq(IPPROTO_TCP, "tcp")
    a.ret_k(0)
    if udp:
        a.label("udp")
        a.ld_ind(BPF_H, 2)  # destination port
        for p in udp:
            a.jeq(p, "accept")
        a.ret_k(0)
    if tcp:
        a.label("tcp")
        if tports:
            a.ld_ind(BPF_H, 0)  # either end may be the server: requests and responses
            for p in tports:
                a.jeq(p, "accept_tcp")
            a.ld_ind(BPF_H, 2)
            for p in tports:
                a.jeq(p, "accept_tcp")
            a.ret_k(0)
        a.label("accept_tcp")
        a.ret_k(SNAP)
    a.label("accept")
    a.ret_k(SNAP)
    a.label("drop")
    a.ret_k(0)
    return a.program()


def capture_filter(encap: str, vxlan_port: int = 4789, geneve_port: int = 6081,
                   ports: Sequence[int] = ()) -> list[Insn]:
    """The socket filter matching a decoder's ``encap`` mode (vxcap.decode_py.ENCAP_MODES)."""
    if encap == "vxlan":
        return socket_filter([vxlan_port, geneve_port] if geneve_port else [vxlan_port])
    if encap == "none":
        return socket_filter([], tcp=True, tcp_ports=ports)
    if encap == "auto":
        return socket_filter([vxlan_port, geneve_port] if geneve_port else [vxlan_port], tcp=True,
                             tcp_ports=ports)
    raise BpfError(f"encap {encap!r}: expected auto, vxlan or none")


# -- the symmetric inner-flow hash ----------------------------------------------------------------------

# Scratch words: M0 saved base offset, M1 hash accumulator, M2 scratch.
_BASE, _HASH, _TMP = 0, 1, 2


def _emit_hash_tail(a: _Asm, n: int) -> None:
    """hash4 / hash6 / ports / mix, entered with X = offset of an IP header (see the module doc)."""
    a.label("hash4")
    a.stx(_BASE)
    a.ld_ind(BPF_W, 12)  # source address
    a.st(_HASH)
    a.ld_ind(BPF_W, 16)  # destination address
    a.ldx_mem(_HASH)
    a.alu_x(BPF_XOR)  # xor is symmetric: src ^ dst == dst ^ src
    a.st(_HASH)
    a.ldx_mem(_BASE)
    a.ld_ind(BPF_H, 6)
    a.jset(0x3FFF, "mix")  # MF or an offset: a fragment, whose ports only the first one has
    a.ld_ind(BPF_B, 9)
    a.jeq(IPPROTO_TCP, "l4_4")
    a.jeq(IPPROTO_UDP, "l4_4")
    a.jeq(IPPROTO_SCTP, "l4_4", "mix")
    a.label("l4_4")
    a.ld_ind(BPF_B, 0)
    a.alu_k(BPF_AND, 0x0F)
    a.alu_k(BPF_LSH, 2)
    a.alu_x(BPF_ADD)
    a.tax()
    a.ja("ports")

    a.label("hash6")
    a.stx(_BASE)
    a.ld_ind(BPF_W, 8)  # source address 8..23, destination 24..39 (RFC 8200 section 3)
    a.st(_HASH)
    for off in range(12, 40, 4):
        a.ldx_mem(_BASE)
        a.ld_ind(BPF_W, off)
        a.ldx_mem(_HASH)
        a.alu_x(BPF_XOR)
        a.st(_HASH)
    a.ldx_mem(_BASE)
    a.ld_ind(BPF_B, 6)  # next header; with extension headers the flow hashes on addresses only
    a.jeq(IPPROTO_TCP, "l4_6")
    a.jeq(IPPROTO_UDP, "l4_6")
    a.jeq(IPPROTO_SCTP, "l4_6", "mix")
    a.label("l4_6")
    a.txa()
    a.alu_k(BPF_ADD, 40)
    a.tax()

    a.label("ports")  # X = transport header: hash += sport + dport (addition is symmetric too)
    a.ld_ind(BPF_H, 0)
    a.st(_TMP)
    a.ld_ind(BPF_H, 2)
    a.ldx_mem(_TMP)
    a.alu_x(BPF_ADD)
    a.ldx_mem(_HASH)
    a.alu_x(BPF_ADD)
    a.st(_HASH)

    a.label("mix")  # spread the bits (a 32-bit finaliser), then pick the socket
    a.ld_mem(_HASH)
    for mul in (0x045D9F3B, None):
        a.st(_TMP)
        a.alu_k(BPF_RSH, 16)
        a.ldx_mem(_TMP)
        a.alu_x(BPF_XOR)
        if mul is not None:
            a.alu_k(BPF_MUL, mul)
    a.alu_k(BPF_MOD, n)
    a.ret_a()


def _emit_inner_ethernet(a: _Asm) -> None:
    """Entered with X = offset of the inner Ethernet header; continues at inner dispatch."""
    a.label("inner_eth")
    a.ld_ind(BPF_H, 12)
    a.jeq(ETH_P_8021Q, "inner_vlan")
    a.jeq(ETH_P_8021AD, "inner_vlan")
    a.st(_TMP)
    a.txa()
    a.alu_k(BPF_ADD, 14)
    a.tax()
    a.ld_mem(_TMP)
    a.ja("inner_ip")
    a.label("inner_vlan")
    a.ld_ind(BPF_H, 16)
    a.st(_TMP)
    a.txa()
    a.alu_k(BPF_ADD, 18)
    a.tax()
    a.ld_mem(_TMP)
    a.label("inner_ip")  # A = inner EtherType, X = inner IP header
    a.jeq(ETH_P_IP, "hash4")
    a.jeq(ETH_P_IPV6, "hash6", "fallback")


def _emit_geneve(a: _Asm, uo: int) -> None:
    """Entered with X such that the UDP header is at X + uo (the Geneve header follows it)."""
    a.label("geneve")
    a.ld_ind(BPF_H, uo + 8 + 2)  # Protocol Type
    a.st(_TMP)
    a.ld_ind(BPF_B, uo + 8)  # Ver (2) | Opt Len (6), in 4-byte words
    a.jset(0xC0, "fallback")  # version 0 only (RFC 8926 section 3.4)
    a.alu_k(BPF_AND, 0x3F)
    a.alu_k(BPF_LSH, 2)
    a.alu_k(BPF_ADD, uo + 16)
    a.alu_x(BPF_ADD)
    a.tax()
    a.ld_mem(_TMP)
    a.jeq(ETH_P_TEB, "inner_eth")
    a.jeq(ETH_P_IP, "hash4")
    a.jeq(ETH_P_IPV6, "hash6", "fallback")


def fanout_program(n: int, vxlan_port: int | None = 4789, geneve_port: int | None = 6081,
                   tcp: bool = False) -> list[Insn]:
    """PACKET_FANOUT_CBPF program for a group of ``n`` sockets (see the module doc).

    ``tcp=True`` also hashes plain (not encapsulated) TCP on its own addresses and ports (encap none/auto).
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 65536:
        raise BpfError(f"fanout size {n!r}: expected 1 to 65536 sockets")
    vx = _check_port("vxlan port", vxlan_port) if vxlan_port else None
    gn = _check_port("geneve port", geneve_port) if geneve_port else None
    if vx is None and gn is None and not tcp:
        raise BpfError("a fanout program with nothing to hash: give a tunnel port or tcp=True")
    a = _Asm()
    a.ld_abs(BPF_W, SKF_AD_OFF + SKF_AD_PKTTYPE)
    a.jeq(PACKET_OUTGOING, "out", "in")
    a.label("out")  # transmitted: skb->data is the MAC header
    a.ld_abs(BPF_H, 12)
    a.ldx_imm(14)
    a.jeq(ETH_P_8021Q, "out_vlan")
    a.jeq(ETH_P_8021AD, "out_vlan", "outer_ip")
    a.label("out_vlan")
    a.ld_abs(BPF_H, 16)
    a.ldx_imm(18)
    a.ja("outer_ip")
    a.label("in")  # received: skb->data is the network header, tags already taken out
    a.ld_abs(BPF_W, SKF_AD_OFF + SKF_AD_PROTOCOL)
    a.ldx_imm(0)
    a.jeq(ETH_P_8021Q, "in_vlan")  # a second (QinQ) tag is left in the data
    a.jeq(ETH_P_8021AD, "in_vlan", "outer_ip")
    a.label("in_vlan")
    a.ld_abs(BPF_H, 2)
    a.ldx_imm(4)
    a.label("outer_ip")  # A = EtherType, X = outer IP header
    a.jeq(ETH_P_IP, "outer4")
    a.jeq(ETH_P_IPV6, "outer6", "fallback")
    a.label("outer4")
    a.ld_ind(BPF_H, 6)
    a.jset(0x1FFF, "fallback")  # non-first fragment (PACKET_FANOUT_FLAG_DEFRAG reassembles them first)
    a.ld_ind(BPF_B, 9)
    if tcp:
        a.jeq(IPPROTO_TCP, "hash4")
    a.jeq(IPPROTO_UDP, "udp4", "fallback")
    a.label("udp4")
    a.ld_ind(BPF_B, 0)
    a.alu_k(BPF_AND, 0x0F)
    a.alu_k(BPF_LSH, 2)
    a.alu_x(BPF_ADD)
    a.tax()
    a.ja("udp")
    a.label("outer6")
    a.ld_ind(BPF_B, 6)
    if tcp:
        a.jeq(IPPROTO_TCP, "hash6")
    a.jeq(IPPROTO_UDP, "udp6", "fallback")
    a.label("udp6")
    a.txa()
    a.alu_k(BPF_ADD, 40)
    a.tax()
    a.label("udp")  # X = outer UDP header
    a.ld_ind(BPF_H, 2)
    if vx is not None:
        a.jeq(vx, "vxlan")
    if gn is not None:
        a.jeq(gn, "geneve")
    a.ret_k(0)
    if vx is not None:
        a.label("vxlan")  # UDP 8 + VXLAN 8, then the inner Ethernet frame
        a.txa()
        a.alu_k(BPF_ADD, 16)
        a.tax()
        a.ja("inner_eth")
    if gn is not None:
        _emit_geneve(a, 0)
    _emit_inner_ethernet(a)
    _emit_hash_tail(a, n)
    a.label("fallback")
    a.ret_k(0)
    return a.program()


def reuseport_program(n: int, tunnel: str = "vxlan") -> list[Insn]:
    """SO_ATTACH_REUSEPORT_CBPF program: the inner-flow hash of a UDP payload that is a VXLAN (or Geneve)
    packet; skb->data is the tunnel header there (see the module doc)."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 65536:
        raise BpfError(f"reuseport group size {n!r}: expected 1 to 65536 sockets")
    a = _Asm()
    if tunnel == "vxlan":
        a.ldx_imm(8)
        a.ja("inner_eth")
        _emit_inner_ethernet(a)
    elif tunnel == "geneve":
        a.ldx_imm(0)
        _emit_geneve(a, -8)  # "UDP header" 8 bytes before the data, never read
        _emit_inner_ethernet(a)
    else:
        raise BpfError(f"tunnel {tunnel!r}: expected vxlan or geneve")
    _emit_hash_tail(a, n)
    a.label("fallback")
    a.ret_k(0)
    return a.program()


# -- attaching ------------------------------------------------------------------------------------------

def pack(program: Sequence[Insn]) -> bytes:
    """``struct sock_filter[]`` in host byte order (u16 code, u8 jt, u8 jf, u32 k)."""
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k & 0xFFFFFFFF) for i in program)


def _fprog(program: Sequence[Insn]) -> tuple[bytes, ctypes.Array]:
    """``struct sock_fprog`` (u16 len, pointer) and the buffer it points to (keep it alive for the call)."""
    buf = ctypes.create_string_buffer(pack(program))
    return struct.pack("HL", len(program), ctypes.addressof(buf)), buf


def attach_filter(sock: socket.socket, program: Sequence[Insn]) -> None:
    """SO_ATTACH_FILTER; the kernel copies and checks the program (EINVAL when it rejects it)."""
    fprog, _keep = _fprog(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def attach_reuseport(sock: socket.socket, program: Sequence[Insn]) -> None:
    """SO_ATTACH_REUSEPORT_CBPF: the program picks the socket of the SO_REUSEPORT group (socket(7))."""
    fprog, _keep = _fprog(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def disassemble(program: Sequence[Insn]) -> str:
    """One C initializer per line (the form ``tcpdump -dd`` prints), for documentation and debugging."""
    return "\n".join(str(i) for i in program)


__all__ = ["BpfError", "Insn", "SNAP", "attach_filter", "attach_reuseport", "capture_filter", "disassemble",
           "fanout_program", "pack", "reuseport_program", "socket_filter"]
