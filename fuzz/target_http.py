"""Reassembler + HTTP layer + message builder, driven by segment operations decoded from the input.

Input: one byte of limits, then operations ``[op, n, n bytes]`` on up to three connections: in-order data,
data ahead of or behind the expected sequence number, FIN, RST, a new SYN, bytes the capture lost, a jump
of the capture clock. Rules: nothing raises or hangs; after every call the reassembler is within its
limits; after ``close_all`` it holds nothing; every call it emits builds into valid JSON.
"""
from __future__ import annotations

import orjson

from vxcap.http import Limits
from vxcap.message import MessageBuilder, MessageOptions
from vxcap.reassembly import Reassembler, ReassemblyLimits

MAX_LEN = 1 << 15
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
T0 = 1_700_000_000_000_000_000


def _key(i: int) -> tuple[bytes, int]:
    a = bytes([10, 0, 0, 1]) + (40000 + i).to_bytes(2, "big")
    b = bytes([10, 0, 0, 2]) + (80).to_bytes(2, "big")
    return (7).to_bytes(4, "big") + b"\x04" + a + b, 0


def _ops(*ops) -> bytes:
    return b"".join(bytes([op, len(p)]) + p for op, p in ops)


def _data(conn, side, text):
    return [((0 << 3) | (side << 2) | conn, text[i:i + 200]) for i in range(0, len(text), 200)]


_REQ = b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Encoding: gzip\r\n\r\nhello"
_RESP = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
_HEAD = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n"
_HEADR = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n"
SEEDS = [
    b"\x00" + _ops((5 << 3, b""), *_data(0, 0, _REQ), *_data(0, 1, _RESP), (3 << 3, b""), (3 << 3 | 4, b"")),
    b"\x01" + _ops(*_data(1, 0, _HEAD), (1 << 3 | 4 | 1, b"\x10" + _HEADR[:40]), *_data(1, 1, _HEADR),
                   (6 << 3 | 1, b"\x05"), (7 << 3, b"\x09")),
    b"\x02" + _ops((5 << 3 | 2, b""), *_data(2, 0, b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"),
                   *_data(2, 1, b"HTTP/1.1 101 Switching\r\n\r\nPRI"), (4 << 3 | 2, b"")),
    b"\x03" + _ops(*_data(0, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.0 500 x\r\n\r\n"),
                   (2 << 3, b"\x03GET"), *_data(0, 0, b"PUT /p HTTP/1.0\r\n\r\n")),
]


def one_input(data: bytes) -> None:
    if not data:
        return
    knob = data[0]
    limits = ReassemblyLimits(max_connections=2 if knob & 1 else 64, max_buffered=4096 if knob & 2 else 1 << 20,
                              max_conn_buffered=1024 if knob & 2 else 1 << 19, gap_timeout=0.5,
                              idle_timeout=5.0, response_timeout=3.0,
                              http=Limits(max_header_bytes=1024 if knob & 4 else 65536,
                                          body_limit=64 if knob & 8 else 1 << 20, max_pending=4))
    builder = MessageBuilder(MessageOptions(host="h", body_limit=limits.http.body_limit))
    lines = []

    def emit(conn, req, resp):
        if req is not None:
            line = builder.build(conn, req, resp)
            if line is not None:
                lines.append(line)

    r = Reassembler(emit, limits, frozenset({80}) if knob & 16 else frozenset())
    seq = {}  # (conn, side) -> next sequence number
    t = T0
    i = 1
    batch = []
    while i + 2 <= len(data):
        op, n = data[i], data[i + 1]
        payload = data[i + 2:i + 2 + n]
        i += 2 + n
        c, side, kind = op & 3, (op >> 2) & 1, op >> 5 if op >= 0x80 else (op >> 3) & 7
        key, cdir = _key(c % 3)
        d = cdir if side == 0 else 1 - cdir
        s = seq.setdefault((c, side), 1000 + 7919 * c + 50000 * side)
        peer = seq.setdefault((c, 1 - side), 1000 + 7919 * c + 50000 * (1 - side))
        t += 1_000_000
        if kind == 0:
            batch.append((key, d, s, peer, ACK | PSH, t, payload, 0, b""))
            seq[(c, side)] = (s + len(payload)) & 0xFFFFFFFF
        elif kind == 1:
            ahead = payload[:1][0] if payload else 1
            batch.append((key, d, (s + ahead) & 0xFFFFFFFF, peer, ACK, t, payload[1:], 0, b""))
        elif kind == 2:
            back = payload[:1][0] if payload else 1
            batch.append((key, d, (s - back) & 0xFFFFFFFF, peer, ACK, t, payload[1:], 0, b""))
        elif kind == 3:
            batch.append((key, d, s, peer, FIN | ACK, t, b"", 0, b""))
        elif kind == 4:
            batch.append((key, d, s, peer, RST, t, b"", 0, b""))
        elif kind == 5:
            batch.append((key, d, (s - 1) & 0xFFFFFFFF, 0 if side == 0 else peer, SYN | (ACK if side else 0), t,
                          b"", 0, b""))
        elif kind == 6:
            missing = (payload[0] if payload else 1) * (1 + (payload[1] if len(payload) > 1 else 0))
            batch.append((key, d, s, peer, ACK, t, payload[2:], missing, b""))
            seq[(c, side)] = (s + len(payload[2:]) + missing) & 0xFFFFFFFF
        else:
            t += (payload[0] if payload else 1) * 250_000_000
        if len(batch) >= 1 + (knob >> 5):
            r.process(batch)
            batch = []
            assert r.buffered <= limits.max_buffered, (r.buffered, limits.max_buffered)
            assert len(r.conns) <= limits.max_connections
    r.process(batch)
    r.close_all()
    assert r.buffered == 0 and not r.conns and not r.pending, (r.buffered, len(r.conns), len(r.pending))
    for line in lines:
        orjson.loads(line)
