"""Build decoder-style segment tuples for table-driven reassembly and HTTP tests (no packets needed).

A segment is ``(key, dir, seq, ack, flags, ts_ns, payload, missing, tunnel_src)`` as vxcap.decode emits it.
"""
from __future__ import annotations

import ipaddress
import struct

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def conn_key(client=("10.0.0.1", 40000), server=("10.0.0.2", 80), vni=7):
    """Return (key, dir of the client's packets) exactly as the decoder builds them."""
    ca, sa = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
    ver = 4 if ca.version == 4 else 6
    ce = ca.packed + struct.pack(">H", client[1])
    se = sa.packed + struct.pack(">H", server[1])
    a, b = (ce, se) if ce <= se else (se, ce)
    key = struct.pack(">I", 0xFFFFFFFF if vni is None else vni) + bytes([ver]) + a + b
    return key, (0 if ce <= se else 1)


class Flow:
    """One TCP connection's segments, in the order they were written (shuffle them as you like)."""

    def __init__(self, client=("10.0.0.1", 40000), server=("10.0.0.2", 80), vni=7, isn=(1000, 5000),
                 t0_ns=1_700_000_000_000_000_000, mss=1400):
        self.key, self.cdir = conn_key(client, server, vni)
        self.seq = [isn[0], isn[1]]  # client, server
        self.t = t0_ns
        self.mss = mss
        self.segments: list[tuple] = []

    def _seg(self, side: int, flags: int, payload: bytes = b"", missing: int = 0, seq=None):
        d = self.cdir if side == 0 else 1 - self.cdir
        s = self.seq[side] if seq is None else seq
        self.segments.append((self.key, d, s & 0xFFFFFFFF, self.seq[1 - side] & 0xFFFFFFFF, flags, self.t,
                              payload, missing, b""))
        self.t += 1_000_000  # 1 ms per segment

    def handshake(self):
        self._seg(0, SYN)
        self.seq[0] += 1
        self._seg(1, SYN | ACK)
        self.seq[1] += 1
        return self

    def send(self, side: int, data: bytes, mss: int | None = None):
        mss = mss or self.mss
        for i in range(0, len(data), mss):
            part = data[i:i + mss]
            self._seg(side, ACK | PSH, part)
            self.seq[side] += len(part)
        return self

    def request(self, data: bytes, mss=None):
        return self.send(0, data, mss)

    def response(self, data: bytes, mss=None):
        return self.send(1, data, mss)

    def fin(self, side: int = 0):
        self._seg(side, FIN | ACK)
        self.seq[side] += 1
        return self

    def close(self):
        return self.fin(0).fin(1)

    def rst(self, side: int = 0):
        self._seg(side, RST)
        return self
