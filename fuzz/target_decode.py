"""The packet decoder: the native ``vxcap._decode`` against its pure-Python twin on any frames.

The input is a list of frames (2-byte length prefixes) and a link type; both decoders must emit the same
segments and the same counters, and every frame must end in a segment or exactly one drop reason.
"""
from __future__ import annotations

import struct

from vxcap._pcapfile import FrameBatch
from vxcap.decode import NATIVE_AVAILABLE, Decoder

MAX_LEN = 1 << 14
LINKTYPES = (1, 0, 12, 101, 108, 113, 228, 229, 276, 147)
_NON_SEGMENT = ("frames", "bytes", "segments", "encapsulated", "truncated_frames")


def _eth_ip_udp_vxlan(inner: bytes) -> bytes:
    vx = struct.pack(">B3sI", 8, b"\0\0\0", 7 << 8) + inner
    udp = struct.pack(">HHHH", 5000, 4789, 8 + len(vx), 0) + vx
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, b"\x0a\0\0\1", b"\x0a\0\0\2")
    return b"\x02" * 12 + b"\x08\x00" + ip + udp


def _tcp_frame(payload=b"GET / HTTP/1.1\r\n\r\n", flags=0x18):
    tcp = struct.pack(">HHIIBBHHH", 40000, 80, 1, 2, 0x50, flags, 1000, 0, 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, b"\x0a\0\0\3", b"\x0a\0\0\4")
    return b"\x02" * 12 + b"\x08\x00" + ip + tcp


def _pack(lt_index: int, frames) -> bytes:
    return bytes([lt_index]) + b"".join(struct.pack(">H", len(f)) + f for f in frames)


SEEDS = [
    _pack(0, [_tcp_frame(), _eth_ip_udp_vxlan(_tcp_frame()), _eth_ip_udp_vxlan(_eth_ip_udp_vxlan(_tcp_frame()))]),
    _pack(0, [_tcp_frame(b"", 0x02), b"", b"\x00"]),
    _pack(3, [_tcp_frame()[14:]]),
]


def _frames(data: bytes):
    out = []
    i = 1
    while i + 2 <= len(data):
        n = int.from_bytes(data[i:i + 2], "big") % 4096
        f = data[i + 2:i + 2 + n]
        wirelen = len(f) + (data[i] & 0x3F if data[i] & 0x40 else 0)
        out.append((1_700_000_000_000_000_000 + len(out) * 1000, LINKTYPES[data[0] % len(LINKTYPES)], wirelen, f))
        i += 2 + n
    return out


def one_input(data: bytes) -> None:
    if not data:
        return
    frames = _frames(data)
    batch = FrameBatch.from_frames(frames)
    depth = 1 + data[0] // 16 % 4
    ports = frozenset({80}) if data[0] & 0x80 else frozenset()
    pure = Decoder(max_depth=depth, ports=ports, pure=True)
    seg_p = pure.decode(batch)
    cp = pure.counters()
    drops = sum(v for k, v in cp.items() if k not in _NON_SEGMENT)
    assert cp["frames"] == len(frames) and cp["segments"] + drops == cp["frames"], cp
    assert len(seg_p) == cp["segments"]
    if NATIVE_AVAILABLE:
        native = Decoder(max_depth=depth, ports=ports)
        seg_n = native.decode(batch)
        assert seg_n == seg_p, (seg_n, seg_p)
        assert native.counters() == cp, (native.counters(), cp)
        assert native.vni_stats() == pure.vni_stats()
