"""Pure-Python packet decoder: the readable specification of ``src_c/decode.pyx``, and its fallback.

The native decoder must produce exactly what this module produces (same segments, same counters,
``tests/test_decode.py`` and ``tests/test_decode_twin.py`` hold them to it), so every rule lives here in the
same order as in the Cython code. It is selected by ``VXCAP_PURE_PYTHON=1`` or ``Decoder(..., pure=True)``.

A frame is walked from its link layer down to TCP and ends in exactly one outcome: a segment is emitted, or
one drop reason is counted. So ``segments + sum(drop reasons) == frames`` always holds; ``encapsulated`` and
``truncated_frames`` are per-frame observations on top of that.

Segment tuple: ``(key, dir, seq, ack, flags, ts_ns, payload, missing, tunnel_src)``.

  key = VNI (4 bytes BE, 0xFFFFFFFF if no VXLAN/Geneve) + IP version (1) + addrA + portA + addrB + portB,
        with (addrA + portA) <= (addrB + portB) bytewise, so both directions of a connection share a key;
        the VNI keeps overlapping inner address spaces of different mirror sessions apart.
  dir = 0 if the packet was sent by A, else 1.
  payload = captured TCP payload, bounded by the IP length (Ethernet padding is never payload).
  missing = payload bytes the IP length promises that the capture lacks (snaplen or mirror truncation).
  tunnel_src = outer source address of the outermost VXLAN/Geneve packet (b"" when not encapsulated).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

NO_VNI = 0xFFFFFFFF
MAX_VNI = 0xFFFFFF  # 24 bits (RFC 7348 section 5, RFC 8926 section 3.4)
MAX_DEPTH_LIMIT = 16
ENCAP_MODES = ("auto", "vxlan", "none")

# Order matters: the native decoder keeps the same counters in a C array indexed in this order.
COUNTER_NAMES = (
    "frames",
    "bytes",                 # captured bytes of all frames
    "segments",              # TCP segments emitted
    "encapsulated",          # frames that went through at least one tunnel header (VXLAN, Geneve, GRE)
    "truncated_frames",      # caplen < wirelen, or an IP length promising more bytes than captured
    # -- drop reasons: exactly one per frame that yields no segment --
    "unsupported_linktype",
    "short_link_header",     # SLL, SLL2, BSD NULL / LOOP header cut
    "short_ethernet",        # Ethernet header or an 802.1Q/802.1ad tag cut
    "short_mpls",
    "non_ip",                # ARP, LLDP, 802.3 length frames, unknown address families ...
    "bad_ipv4_header",
    "bad_ipv6_header",
    "bad_ip_length",         # IPv4 total length shorter than its own header
    "bad_ipv6_ext_header",
    "ip_fragment",           # reassembling IP fragments is out of scope; mirrored TCP is not fragmented
    "non_tcp",               # UDP not to a tunnel port, ICMP, ESP, ...
    "short_udp",
    "short_vxlan",
    "vxlan_no_i_flag",
    "short_geneve",
    "bad_geneve_header",
    "short_gre",
    "gre_unsupported",       # GRE version != 0 (PPTP) or RFC 1701 routing present
    "short_erspan",
    "erspan_unsupported",    # ERSPAN III frame type other than Ethernet
    "encap_depth_exceeded",
    "encap_ignored",         # encap="none": a tunnel packet was seen and deliberately not opened
    "vni_filtered",
    "not_encapsulated",      # encap="vxlan": plain TCP
    "short_tcp",             # TCP header not fully captured
    "bad_tcp_header",        # data offset < 5 words or beyond the IP payload
    "port_filtered",
    "pure_ack",
)

TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04

# https://www.tcpdump.org/linktypes.html
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 113, 228, 229, 276
DLT_RAW_12, DLT_RAW_14 = 12, 14  # DLT_RAW as numbered by some BSDs / OpenBSD

ETH_IPV4, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806
ETH_8021Q, ETH_8021AD, ETH_QINQ_OLD = 0x8100, 0x88A8, 0x9100
ETH_MPLS_UC, ETH_MPLS_MC = 0x8847, 0x8848
ETH_TEB = 0x6558          # transparent Ethernet bridging (RFC 1701 protocol type; Geneve RFC 8926)
ETH_ERSPAN_2 = 0x88BE     # ERSPAN type I/II (draft-foschiano-erspan)
ETH_ERSPAN_3 = 0x22EB

# Address families in BSD NULL / LOOP headers: AF_INET is 2 everywhere, AF_INET6 differs per OS
# (Linux 10, NetBSD/OpenBSD 24, FreeBSD 28, macOS 30).
AF_INET = 2
AF_INET6 = frozenset({10, 24, 28, 30})

IPPROTO_TCP, IPPROTO_UDP, IPPROTO_GRE = 6, 17, 47
# IPv6 extension headers walked to reach the transport (RFC 8200 section 4; AH RFC 4302).
IP6_HOPOPTS, IP6_ROUTING, IP6_FRAGMENT, IP6_DSTOPTS, IP6_AH = 0, 43, 44, 60, 51

GRE_C, GRE_R, GRE_K, GRE_S, GRE_VER = 0x8000, 0x4000, 0x2000, 0x1000, 0x0007


class DecodeConfigError(ValueError):
    """A decoder option is invalid; the message names the option and the accepted values."""


@dataclass(frozen=True)
class VniFilter:
    """Which VXLAN/Geneve VNIs to follow: ``include`` empty means all; ``exclude`` always wins."""

    include: frozenset[int] = field(default_factory=frozenset)
    exclude: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if not isinstance(value, frozenset) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_VNI for v in value
            ):
                raise DecodeConfigError(f"VniFilter.{name} must be a frozenset of integers 0..{MAX_VNI}")

    def allows(self, vni: int) -> bool:
        if vni in self.exclude:
            return False
        return not self.include or vni in self.include


_VNI_DIGITS = re.compile(r"[0-9]{1,8}")


def parse_vnis(text: str) -> VniFilter:
    """Parse ``"1, 2 -3"`` (comma- or space-separated; ``-N`` excludes N; empty means every VNI)."""
    if not isinstance(text, str):
        raise DecodeConfigError(f"VNI list must be a string, got {type(text).__name__}")
    include: set[int] = set()
    exclude: set[int] = set()
    for token in re.split(r"[,\s]+", text.strip()):
        if not token:
            continue
        negative = token.startswith("-")
        digits = token[1:] if negative else token
        if not _VNI_DIGITS.fullmatch(digits) or int(digits) > MAX_VNI:
            raise DecodeConfigError(
                f"invalid VNI {token!r}: expected an integer 0..{MAX_VNI}, or -N to exclude N"
            )
        (exclude if negative else include).add(int(digits))
    return VniFilter(include=frozenset(include), exclude=frozenset(exclude))


def _check_port(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise DecodeConfigError(f"{name} must be an integer 0..65535 (0 disables it), got {value!r}")
    return value


def validate_config(
    vxlan_port: Any, geneve_port: Any, encap: Any, vnis: Any, ports: Any, max_depth: Any
) -> tuple[int, int, str, VniFilter, frozenset[int], int]:
    """Check every decoder option; shared by both implementations so the messages are identical."""
    vxlan_port = _check_port("vxlan_port", vxlan_port)
    geneve_port = _check_port("geneve_port", geneve_port)
    if vxlan_port and vxlan_port == geneve_port:
        raise DecodeConfigError(f"vxlan_port and geneve_port must differ, both are {vxlan_port}")
    if encap not in ENCAP_MODES:
        raise DecodeConfigError(f"encap must be one of 'auto', 'vxlan', 'none', got {encap!r}")
    if not isinstance(vnis, VniFilter):
        raise DecodeConfigError(f"vnis must be a VniFilter (see parse_vnis), got {type(vnis).__name__}")
    if isinstance(ports, (str, bytes)) or not isinstance(ports, Iterable):
        raise DecodeConfigError(f"ports must be a set of integers 1..65535, got {ports!r}")
    ports = frozenset(ports)
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise DecodeConfigError(f"ports must be a set of integers 1..65535, got {port!r} in it")
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise DecodeConfigError(f"max_depth must be an integer 1..{MAX_DEPTH_LIMIT}, got {max_depth!r}")
    return vxlan_port, geneve_port, encap, vnis, ports, max_depth


class Decoder:
    """Decode ``FrameBatch`` objects into TCP segment tuples (see the module docstring)."""

    pure = True

    def __init__(
        self,
        vxlan_port: int = 4789,
        geneve_port: int = 6081,
        encap: str = "auto",
        vnis: VniFilter = VniFilter(),
        ports: frozenset[int] = frozenset(),
        max_depth: int = 4,
    ) -> None:
        (self.vxlan_port, self.geneve_port, self.encap, self.vnis, self.ports, self.max_depth) = validate_config(
            vxlan_port, geneve_port, encap, vnis, ports, max_depth
        )
        self._follow_tunnels = self.encap != "none"
        self._need_tunnel = self.encap == "vxlan"
        self._filter_vnis = bool(self.vnis.include or self.vnis.exclude)
        self._c = dict.fromkeys(COUNTER_NAMES, 0)
        self._vni_stats: dict[int, list[int]] = {}
        self._out: list = []
        # Per-frame state (reset by decode_frame).
        self._vni = NO_VNI
        self._tunnel_src = b""
        self._tunneled = False
        self._depth = 0
        self._trunc = False
        self._src = self._dst = b""
        self._ipver = 4

    def counters(self) -> dict[str, int]:
        return dict(self._c)

    def vni_stats(self) -> dict[int, tuple[int, int]]:
        """Outermost VNI -> (frames, captured bytes), counted before the VNI filter."""
        return {vni: (v[0], v[1]) for vni, v in sorted(self._vni_stats.items())}

    def decode(self, batch: Any) -> list:
        self._out = out = []
        for i in range(len(batch)):
            ts_ns, linktype, wirelen, data = batch.frame(i)
            self.decode_frame(data, len(data), wirelen, linktype, ts_ns)
        self._out = []
        return out

    def decode_frame(self, buf: bytes, caplen: int, wirelen: int, linktype: int, ts_ns: int) -> None:
        c = self._c
        c["frames"] += 1
        c["bytes"] += caplen
        self._vni = NO_VNI
        self._tunnel_src = b""
        self._tunneled = False
        self._depth = 0
        self._trunc = caplen < wirelen
        self._ts = ts_ns
        self._caplen = caplen
        self._buf = buf
        reason = self._link(0, min(caplen, len(buf)), linktype)
        if reason is None:
            c["segments"] += 1
        else:
            c[reason] += 1
        if self._depth:
            c["encapsulated"] += 1
        if self._trunc:
            c["truncated_frames"] += 1

    # -- link layer ----------------------------------------------------------------------------------------

    def _link(self, pos: int, end: int, linktype: int) -> str | None:
        b = self._buf
        if linktype == LINKTYPE_ETHERNET:
            return self._ether(pos, end)
        if linktype == LINKTYPE_LINUX_SLL:
            # packet type (2), ARPHRD (2), address length (2), address (8), protocol (2)
            if end - pos < 16:
                return "short_link_header"
            return self._ethertype(pos + 16, end, int.from_bytes(b[pos + 14:pos + 16], "big"))
        if linktype == LINKTYPE_LINUX_SLL2:
            # protocol (2), reserved (2), ifindex (4), ARPHRD (2), packet type (1), addr len (1), address (8)
            if end - pos < 20:
                return "short_link_header"
            return self._ethertype(pos + 20, end, int.from_bytes(b[pos:pos + 2], "big"))
        if linktype in (LINKTYPE_RAW, DLT_RAW_12, DLT_RAW_14):
            return self._raw_ip(pos, end)
        if linktype == LINKTYPE_IPV4:
            return self._ipv4(pos, end)
        if linktype == LINKTYPE_IPV6:
            return self._ipv6(pos, end)
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if end - pos < 4:
                return "short_link_header"
            if linktype == LINKTYPE_LOOP:
                family = int.from_bytes(b[pos:pos + 4], "big")
            else:
                # DLT_NULL stores the family in the capturing host's byte order; families are small, so a
                # value above 16 bits means the writer was the other endianness (Wireshark does the same).
                family = int.from_bytes(b[pos:pos + 4], "little")
                if family > 0xFFFF:
                    family = int.from_bytes(b[pos:pos + 4], "big")
            if family == AF_INET:
                return self._ipv4(pos + 4, end)
            if family in AF_INET6:
                return self._ipv6(pos + 4, end)
            return "non_ip"
        return "unsupported_linktype"

    def _raw_ip(self, pos: int, end: int) -> str | None:
        if end - pos < 1:
            return "non_ip"
        version = self._buf[pos] >> 4
        if version == 4:
            return self._ipv4(pos, end)
        if version == 6:
            return self._ipv6(pos, end)
        return "non_ip"

    def _ether(self, pos: int, end: int) -> str | None:
        if end - pos < 14:
            return "short_ethernet"
        return self._ethertype(pos + 14, end, int.from_bytes(self._buf[pos + 12:pos + 14], "big"))

    def _ethertype(self, pos: int, end: int, etype: int) -> str | None:
        b = self._buf
        # Any number of 802.1Q / 802.1ad / pre-standard QinQ tags: TCI (2) then the next EtherType (2).
        while etype in (ETH_8021Q, ETH_8021AD, ETH_QINQ_OLD):
            if end - pos < 4:
                return "short_ethernet"
            etype = int.from_bytes(b[pos + 2:pos + 4], "big")
            pos += 4
        if etype == ETH_IPV4:
            return self._ipv4(pos, end)
        if etype == ETH_IPV6:
            return self._ipv6(pos, end)
        if etype in (ETH_MPLS_UC, ETH_MPLS_MC):
            return self._mpls(pos, end)
        return "non_ip"

    def _mpls(self, pos: int, end: int) -> str | None:
        b = self._buf
        # Label stack entries (RFC 3032): label (20) | TC (3) | S (1) | TTL (8); S marks the bottom.
        while True:
            if end - pos < 4:
                return "short_mpls"
            bottom = b[pos + 2] & 0x01
            pos += 4
            if bottom:
                break
        # MPLS does not say what follows; like tcpdump and Zeek, guess from the IP version nibble.
        if end - pos < 1:
            return "short_mpls"
        version = b[pos] >> 4
        if version == 4:
            return self._ipv4(pos, end)
        if version == 6:
            return self._ipv6(pos, end)
        return "non_ip"

    # -- IP ------------------------------------------------------------------------------------------------

    def _ipv4(self, pos: int, end: int) -> str | None:
        b = self._buf
        avail = end - pos
        if avail < 20:
            return "bad_ipv4_header"
        vihl = b[pos]
        hlen = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or hlen < 20 or hlen > avail:
            return "bad_ipv4_header"
        total = int.from_bytes(b[pos + 2:pos + 4], "big")
        if total == 0:
            # Captured on a host doing TCP segmentation offload: the length is filled in by the NIC later.
            total = avail
        elif total < hlen:
            return "bad_ip_length"
        missing = 0
        if total > avail:
            missing = total - avail
            total = avail
            self._trunc = True
        # Flags/fragment offset: MF (0x2000) or a non-zero offset (0x1FFF) means a fragment.
        if int.from_bytes(b[pos + 6:pos + 8], "big") & 0x3FFF:
            return "ip_fragment"
        self._ipver = 4
        self._src = b[pos + 12:pos + 16]
        self._dst = b[pos + 16:pos + 20]
        return self._transport(b[pos + 9], pos + hlen, pos + total, missing)

    def _ipv6(self, pos: int, end: int) -> str | None:
        b = self._buf
        avail = end - pos
        if avail < 40 or b[pos] >> 4 != 6:
            return "bad_ipv6_header"
        plen = int.from_bytes(b[pos + 4:pos + 6], "big")
        body = avail - 40
        if plen == 0:
            # Jumbogram (RFC 2675) or TSO on the capturing host: take what was captured.
            plen = body
        missing = 0
        if plen > body:
            missing = plen - body
            plen = body
            self._trunc = True
        nh = b[pos + 6]
        src, dst = b[pos + 8:pos + 24], b[pos + 24:pos + 40]
        end = pos + 40 + plen
        pos += 40
        while True:
            if nh in (IP6_HOPOPTS, IP6_ROUTING, IP6_DSTOPTS):
                # next header (1), length in 8-octet units not counting the first 8 (1)
                if end - pos < 2:
                    return "bad_ipv6_ext_header"
                hlen = (b[pos + 1] + 1) * 8
            elif nh == IP6_AH:
                # AH length is in 4-octet units minus 2 (RFC 4302 section 2.2)
                if end - pos < 2:
                    return "bad_ipv6_ext_header"
                hlen = (b[pos + 1] + 2) * 4
            elif nh == IP6_FRAGMENT:
                # next (1), reserved (1), offset (13) | res (2) | M (1), identification (4)
                if end - pos < 8:
                    return "bad_ipv6_ext_header"
                # Offset 0 with M clear is an atomic fragment, a whole packet (RFC 6946): keep going.
                if int.from_bytes(b[pos + 2:pos + 4], "big") & 0xFFF9:
                    return "ip_fragment"
                hlen = 8
            else:
                break
            if end - pos < hlen:
                return "bad_ipv6_ext_header"
            nh = b[pos]
            pos += hlen
        self._ipver = 6
        self._src, self._dst = src, dst
        return self._transport(nh, pos, end, missing)

    def _transport(self, proto: int, pos: int, end: int, missing: int) -> str | None:
        if proto == IPPROTO_TCP:
            if self._need_tunnel and not self._tunneled:
                return "not_encapsulated"
            return self._tcp(pos, end, missing)
        if proto == IPPROTO_UDP:
            return self._udp(pos, end)
        if proto == IPPROTO_GRE:
            return self._gre(pos, end)
        return "non_tcp"

    # -- tunnels -------------------------------------------------------------------------------------------

    def _enter_tunnel(self, vni: int) -> str | None:
        """Account for one decapsulation; ``vni`` >= 0 for VXLAN/Geneve, -1 for GRE."""
        if self._depth >= self.max_depth:
            return "encap_depth_exceeded"
        self._depth += 1
        if vni >= 0 and not self._tunneled:
            # The outermost VNI identifies the mirror session; inner ones belong to the mirrored traffic.
            self._tunneled = True
            self._vni = vni
            self._tunnel_src = self._src
            st = self._vni_stats.get(vni)
            if st is None:
                st = self._vni_stats[vni] = [0, 0]
            st[0] += 1
            st[1] += self._caplen
            if self._filter_vnis and not self.vnis.allows(vni):
                return "vni_filtered"
        return None

    def _udp(self, pos: int, end: int) -> str | None:
        b = self._buf
        if end - pos < 8:
            return "short_udp"
        # A tunnel is recognised by its destination port, or failing that its source port: RFC 7348 makes
        # the source port flow entropy, but some encapsulators send from 4789 to another port (the Arkime
        # ERSPAN trace goes 4789 -> 4790), and tshark and gopacket match either port too.
        sport = int.from_bytes(b[pos:pos + 2], "big")
        dport = int.from_bytes(b[pos + 2:pos + 4], "big")
        vx, gn = self.vxlan_port, self.geneve_port
        if vx and (dport == vx or (sport == vx and dport != gn)):
            if not self._follow_tunnels:
                return "encap_ignored"
            pos += 8
            #  0                   1                   2                   3
            # +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
            # |R|R|R|R|I|R|R|R|            Reserved                           |
            # |                VXLAN Network Identifier (VNI) |   Reserved    |
            # +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
            # RFC 7348 section 5: I must be 1 for a valid VNI; reserved bits are ignored on receipt.
            if end - pos < 8:
                return "short_vxlan"
            if not b[pos] & 0x08:
                return "vxlan_no_i_flag"
            reason = self._enter_tunnel(int.from_bytes(b[pos + 4:pos + 7], "big"))
            if reason is not None:
                return reason
            return self._ether(pos + 8, end)
        if gn and (dport == gn or sport == gn):
            if not self._follow_tunnels:
                return "encap_ignored"
            pos += 8
            # +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
            # |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
            # |        Virtual Network Identifier (VNI)       |    Reserved   |
            # |                    Variable-Length Options                    |
            # RFC 8926 section 3.4: version 0; Opt Len in 4-byte words; protocol is an EtherType.
            if end - pos < 8:
                return "short_geneve"
            if b[pos] >> 6 != 0:
                return "bad_geneve_header"
            hlen = 8 + (b[pos] & 0x3F) * 4
            if end - pos < hlen:
                return "short_geneve"
            proto = int.from_bytes(b[pos + 2:pos + 4], "big")
            reason = self._enter_tunnel(int.from_bytes(b[pos + 4:pos + 7], "big"))
            if reason is not None:
                return reason
            if proto == ETH_TEB:
                return self._ether(pos + hlen, end)
            return self._ethertype(pos + hlen, end, proto)
        return "non_tcp"

    def _gre(self, pos: int, end: int) -> str | None:
        b = self._buf
        if not self._follow_tunnels:
            return "encap_ignored"
        # +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        # |C|R|K|S| Reserved0       | Ver |         Protocol Type         |
        # |      Checksum (optional)      |       Reserved1 (Optional)    |
        # |                         Key (optional)                        |
        # |                 Sequence Number (Optional)                    |
        # RFC 2784 / RFC 2890; R (source routing, RFC 1701) and version 1 (PPTP, RFC 2637) unsupported.
        if end - pos < 4:
            return "short_gre"
        flags = int.from_bytes(b[pos:pos + 2], "big")
        proto = int.from_bytes(b[pos + 2:pos + 4], "big")
        if flags & (GRE_R | GRE_VER):
            return "gre_unsupported"
        hlen = 4 + (4 if flags & GRE_C else 0) + (4 if flags & GRE_K else 0) + (4 if flags & GRE_S else 0)
        if end - pos < hlen:
            return "short_gre"
        pos += hlen
        reason = self._enter_tunnel(-1)
        if reason is not None:
            return reason
        if proto == ETH_ERSPAN_2:
            # Type I has no ERSPAN header and no GRE sequence number; type II has both (8-byte header:
            # Ver | VLAN | COS | En | T | Session ID, then Reserved | Index).
            if flags & GRE_S:
                if end - pos < 8:
                    return "short_erspan"
                pos += 8
            return self._ether(pos, end)
        if proto == ETH_ERSPAN_3:
            # |  Ver  |          VLAN         | COS |BSO|T|     Session ID    |
            # |                          Timestamp                            |
            # |             SGT               |P|    FT   |   Hw ID   |D|Gra|O|
            # O set: an 8-byte platform-specific subheader follows. FT 0 is Ethernet.
            if end - pos < 12:
                return "short_erspan"
            hlen = 20 if b[pos + 11] & 0x01 else 12
            if end - pos < hlen:
                return "short_erspan"
            if (b[pos + 10] >> 2) & 0x1F:
                return "erspan_unsupported"
            return self._ether(pos + hlen, end)
        if proto == ETH_TEB:
            return self._ether(pos, end)
        return self._ethertype(pos, end, proto)

    # -- TCP -----------------------------------------------------------------------------------------------

    def _tcp(self, pos: int, end: int, missing: int) -> str | None:
        b = self._buf
        avail = end - pos
        # |          Source Port          |       Destination Port        |
        # |                        Sequence Number                        |
        # |                    Acknowledgment Number                      |
        # |  Data |       |C|E|U|A|P|R|S|F|                               |
        # | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
        if avail + missing < 20:
            return "bad_tcp_header"
        if avail < 20:
            return "short_tcp"
        doff = (b[pos + 12] >> 4) * 4
        if doff < 20 or doff > avail + missing:
            return "bad_tcp_header"
        if doff > avail:
            return "short_tcp"
        sport = b[pos:pos + 2]
        dport = b[pos + 2:pos + 4]
        if self.ports and int.from_bytes(sport, "big") not in self.ports \
                and int.from_bytes(dport, "big") not in self.ports:
            return "port_filtered"
        flags = b[pos + 13]
        if avail == doff and not missing and not flags & (TCP_SYN | TCP_FIN | TCP_RST):
            return "pure_ack"
        a = self._src + sport
        z = self._dst + dport
        head = self._vni.to_bytes(4, "big") + bytes((self._ipver,))
        if a <= z:
            key, direction = head + a + z, 0
        else:
            key, direction = head + z + a, 1
        self._out.append((
            key,
            direction,
            int.from_bytes(b[pos + 4:pos + 8], "big"),
            int.from_bytes(b[pos + 8:pos + 12], "big"),
            flags,
            self._ts,
            bytes(b[pos + doff:end]),
            missing,
            bytes(self._tunnel_src),
        ))
        return None
