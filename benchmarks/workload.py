"""Synthetic AWS VPC Traffic Mirroring captures with a ground-truth file, for benchmarks and tests.

    python benchmarks/workload.py --mix small-api --frames 1000000 --seed 1 --out /tmp/small.pcap

writes ``/tmp/small.pcap`` (classic pcap, Ethernet, microseconds; ``--ns`` for nanoseconds) and beside it
``/tmp/small.truth.jsonl``: one JSON object per HTTP call, in the order in which the responses started, holding
what a Resurface message built from that call must say (SPEC section 2). The same arguments always give the
same bytes: all traffic decisions come from ``random.Random(seed)`` and the impairments from a second,
independent generator, so ``--loss`` damages exactly the traffic that the unimpaired run carries.

Every frame is what a mirror target receives (RFC 7348 framing, AWS field usage)::

    outer Ethernet | outer IPv4 (mirror source -> target) | UDP (sport = hash of inner flow AND direction,
    dport 4789, checksum 0 as RFC 7348 5 recommends) | VXLAN | inner Ethernet [| 802.1Q] | IPv4 or IPv6 |
    TCP (timestamps option on every segment, as Linux peers send) | HTTP/1.1 bytes

    VXLAN header (RFC 7348 section 5):
     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |R|R|R|R|I|R|R|R|            Reserved                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                VXLAN Network Identifier (VNI) |   Reserved    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The mirror source is the API server's interface (one per VNI), so the capture point is the server: its
segments are seen as it sends them and the client's acknowledgements one round trip later. All checksums are
correct (the mirrored copy of a correct packet; the offload case is not simulated).

Speed: a frame is one ``Struct.pack`` of the whole header stack with per-direction constant runs passed as
``bytes``, checksums are updated arithmetically from per-direction partial sums (ones'-complement sums are
sums modulo 0xFFFF, RFC 1071), payload sums of large bodies are computed once per cached body, and output is
written in multi-megabyte blocks.
"""
from __future__ import annotations

import argparse
import email.utils
import gzip
import heapq
import json
import os
import random
import struct
import sys
import time
import zlib
from collections import deque
from urllib.parse import quote, quote_plus

try:  # vxcap depends on orjson; the fallback writes the same bytes for the types used here (str, int, list).
    import orjson

    def _js(obj) -> str:
        return orjson.dumps(obj).decode()
except ImportError:  # pragma: no cover - orjson is a vxcap dependency
    def _js(obj) -> str:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

MIXES = ("small-api", "large-body", "many-conns")
M32 = 0xFFFFFFFF
# 2025-11-30T10:53:20Z: capture time starts here so that now_ms values look like real epoch milliseconds.
EPOCH_US = 1_764_500_000_000_000
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
VXLAN_PORT = 4789
SERVER_PORT = 80
MTU = 1500  # the inner interfaces; the timestamps option leaves 1448 (IPv4) or 1428 (IPv6) bytes per segment
TCP_HDR = 32  # 20 + NOP NOP TS(10): Linux sends the timestamps option on every segment
TCP_SYN_HDR = 40  # 20 + MSS(4) SACK_PERM(2) TS(10) NOP(1) WS(3), Linux's SYN layout
VLAN_ID = 100
CLIENT6_PREFIX = bytes.fromhex("20010db8000000020000000000000000")[:14]  # 2001:db8:0:2::/112, the clients
MAX_CONCURRENCY = 1_000_000
WRITE_BLOCK = 8 << 20
REORDER_WINDOW = 8  # a reordered frame swaps with one of the next 8: what a load balancer in front of the
# mirror target reorders, not a path-level reordering

PCAP_REC = struct.Struct("<IIII")
PCAP_USEC_MAGIC = 0xA1B2C3D4
PCAP_NSEC_MAGIC = 0xA1B23C4D


def _fmt(ipv6: bool, vlan: bool, syn: bool) -> struct.Struct:
    """The whole header stack of one frame as a single struct; ``Ns`` items are per-direction constants.

    outer: 16s = Ethernet + IPv4 version/IHL/TOS | H total length | H id | 4s = flags/fragment, TTL, proto 17
    | H checksum | 12s = addresses + UDP ports | H UDP length
    then 4: Ns = UDP checksum 0, VXLAN, inner Ethernet (+802.1Q), inner version/IHL/TOS | H len | H id |
    4s | H checksum | 12s = addresses + TCP ports
    or 6:   Ns = ..., inner version/traffic class/flow label | H payload length | 38s = next header, hop
    limit, addresses, TCP ports
    TCP: I seq | I ack | H offset+flags | H window | H checksum | options (timestamps hold tsval, tsecr).
    """
    l2 = 18 if vlan else 14
    if ipv6:
        inner = f"{2 + 8 + l2 + 4}sH38s"
    else:
        inner = f"{2 + 8 + l2 + 2}sHH4sH12s"
    tcp = "IIHHH10sII4s" if syn else "IIHHH6sII"
    return struct.Struct(">16sHH4sH12sH" + inner + tcp)


def _fold(total: int) -> int:
    """Ones'-complement checksum of a sum of 16- and 32-bit words (RFC 1071: sum modulo 0xFFFF)."""
    r = total % 0xFFFF
    return 0xFFFF - r if r else 0


def _psum(b: bytes) -> int:
    """Ones'-complement partial sum of a payload, padded to even length as RFC 793 says."""
    n = int.from_bytes(b, "big")
    return (n << 8 if len(b) & 1 else n) % 0xFFFF


def _words(b: bytes) -> int:
    return sum(struct.unpack(f">{len(b) // 2}H", b))


class _Side:
    """One direction of one inner TCP connection: the constant header runs and partial checksums."""

    __slots__ = ("c0", "c2", "c3", "c5", "win", "syn_win", "obase", "ibase", "tbase", "tbase_syn", "ipid",
                 "clock", "tsval", "peer", "syn_opts")


class _Session:
    """One mirror session (VNI): its outer addresses and the mirrored interface's MACs."""

    def __init__(self, vni: int, index: int, ipv6: bool, vlan: bool):
        self.vni = vni
        # The mirrored interfaces differ per session; the inner server address is the same in all of them
        # (overlapping VPC ranges), so only the VNI tells their flows apart.
        self.outer_src = bytes((10, 0, 1, 10 + index % 240))
        self.outer_dst = bytes((10, 0, 200, 10))  # the mirror target
        self.outer_eth = bytes.fromhex("0a5800c80a0a") + bytes.fromhex("0a58000000fe") + b"\x08\x00"
        self.vxlan = struct.pack(">II", 0x08000000, vni << 8)
        self.eni_mac = bytes((0x0A, 0x58, 0x00, 0x01, 0x00, index % 256))
        self.gw_mac = bytes.fromhex("0a58000100fe")
        if ipv6:
            self.server_ip = bytes.fromhex("20010db8000000010000000000000010")
        else:
            self.server_ip = bytes((10, 0, 1, 10))
        ethertype = b"\x86\xdd" if ipv6 else b"\x08\x00"
        tag = (b"\x81\x00" + struct.pack(">H", VLAN_ID + index % 100)) if vlan else b""
        # Inbound packets arrive from the VPC router, outbound ones leave the server's interface.
        self.l2_in = self.eni_mac + self.gw_mac + tag + ethertype
        self.l2_out = self.gw_mac + self.eni_mac + tag + ethertype
        self.obase = 0x4500 + 0x4000 + (64 << 8 | 17) + _words(self.outer_src + self.outer_dst)
        self.c0 = self.outer_eth + b"\x45\x00"
        self.outer_addrs = self.outer_src + self.outer_dst


class _Call:
    """One HTTP exchange in flight: its segments, the truth line's static part, and what happened to it."""

    __slots__ = ("req_segs", "head", "body_segs", "latency", "line", "rid", "date", "vni", "req_t", "resp_t",
                 "complete", "order")


def _segments(data: bytes, mss: int) -> list[tuple[bytes, int]]:
    return [(data[i:i + mss], _psum(data[i:i + mss])) for i in range(0, len(data), mss)]


# Per-call fields of a call template: X-Request-Id (16 hex digits, unique per call, so a consumer can match
# its output to the truth line) and Date (IMF-fixdate, always 29 characters, RFC 9110 5.6.7).
RID, DATE = 0, 1
FIELD_WIDTH = (16, 29)
MARKERS = ("@@RID@@", "@@DATE@@")


def _split(text: str) -> tuple[list[str], list[int]]:
    """Cut ``text`` at the field markers: static pieces (one more than fields) and the field keys."""
    parts, keys = [], []
    while True:
        hits = [(text.find(m), k) for k, m in enumerate(MARKERS) if m in text]
        if not hits:
            parts.append(text)
            return parts, keys
        pos, k = min(hits)
        parts.append(text[:pos])
        keys.append(k)
        text = text[pos + len(MARKERS[k]):]


class _MsgTpl:
    """An HTTP message cut into segments, whose first segment holds per-call fields.

    The first segment's checksum sum is kept with the fields zeroed; a field adds its own sum shifted by
    the parity of what follows it (256**k is 1 or 256 modulo 0xFFFF), so filling a field never re-sums the
    segment. The other segments never change.
    """

    __slots__ = ("parts", "keys", "factors", "base", "rest")

    def __init__(self, head: str, body: bytes, mss: int):
        parts, keys = _split(head)
        bparts = [x.encode() for x in parts]
        flat = bytearray(bparts[0])
        spans = []
        for k, piece in zip(keys, bparts[1:]):
            spans.append((len(flat), len(flat) + FIELD_WIDTH[k]))
            flat += b"0" * FIELD_WIDTH[k]
            flat += piece
        flat = bytes(flat) + body
        seg0 = flat[:mss]
        if spans and spans[-1][1] > len(seg0):
            raise AssertionError("a per-call field falls beyond the first segment")
        zeroed = bytearray(seg0)
        for a, b in spans:
            zeroed[a:b] = bytes(b - a)
        self.base = _psum(bytes(zeroed))
        odd = len(seg0) & 1
        self.keys = tuple(keys)
        self.factors = tuple(256 if (len(seg0) - b + odd) & 1 else 1 for _, b in spans)
        cuts = [0] + [x for span in spans for x in span] + [len(seg0)]
        self.parts = tuple(seg0[cuts[i]:cuts[i + 1]] for i in range(0, len(cuts), 2))
        self.rest = _segments(flat[mss:], mss) if len(flat) > mss else []

    def fill(self, vb, vs) -> list[tuple[bytes, int]]:
        """Segments with the fields set; ``vb``: field bytes, ``vs``: their sums modulo 0xFFFF."""
        p, keys = self.parts, self.keys
        if len(keys) == 1:
            k = keys[0]
            seg = p[0] + vb[k] + p[1]
            total = self.base + vs[k] * self.factors[0]
        elif keys:
            k0, k1 = keys[0], keys[1]
            seg = b"".join((p[0], vb[k0], p[1], vb[k1], p[2]))
            f = self.factors
            total = self.base + vs[k0] * f[0] + vs[k1] * f[1]
        else:
            seg, total = p[0], self.base
        first = [(seg, total % 0xFFFF)]
        return first + self.rest if self.rest else first


class _CallTpl:
    """Everything about a call but its request id, date and timing."""

    __slots__ = ("req", "resp", "body_segs", "line", "latency_min", "latency_mean")


# ---------------------------------------------------------------------------------------------- content
FIRST = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "José", "Zoë", "Ren",
         "Amara", "Søren", "Chidi", "Yuki", "Priya"]
LAST = ["Lovelace", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie", "Allen", "Núñez",
        "Øberg", "Nakamura", "Okafor", "Patel", "Müller"]
CITIES = ["Lisbon", "Zürich", "Kraków", "São Paulo", "Osaka", "Montréal", "Nairobi", "Reykjavík", "Austin"]
TAGS = ["new", "vip", "beta", "trial", "eu", "us", "apac", "mobile", "web", "partner", "internal"]
WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
         "et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip "
         "ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum eu fugiat "
         "nulla pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt "
         "mollit anim id est laborum").split()
RESOURCES = ["users", "orders", "items", "carts", "payments", "invoices", "sessions", "products"]
HOSTS = ["api.shop.example.com", "orders.example.com", "users.internal.example.com", "pay.example.net"]
AGENTS = ["curl/8.5.0", "okhttp/4.12.0", "python-requests/2.31.0", "Go-http-client/1.1",
          "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
          "axios/1.6.2"]
REASONS = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found", 500: "Internal Server Error"}
API_TEMPLATES = 4096  # distinct calls per mix; request ids and dates still differ on every call
LARGE_BODIES = 24
LARGE_TEMPLATES = 96


def _json_doc(rng: random.Random, target: int) -> str:
    """A JSON document of at least ``target`` UTF-8 bytes, with names, e-mail addresses and non-ASCII text
    (what the standard rules redact and what body decoding must keep intact)."""
    items = []
    while True:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        items.append({"id": rng.randrange(1, 10**7), "name": f"{first} {last}",
                      "email": f"{first.lower()}.{last.lower()}@example.com", "city": rng.choice(CITIES),
                      "score": round(rng.random() * 100, 2), "tags": rng.sample(TAGS, 2),
                      "phone": f"+1-555-{rng.randrange(1000, 9999)}-{rng.randrange(1000, 9999)}"})
        doc = json.dumps({"data": items, "page": rng.randrange(1, 50)}, ensure_ascii=False)
        if len(doc.encode()) >= target:
            return doc


def _large_doc(rng: random.Random, target: int) -> str:
    """An ASCII JSON array of records of about ``target`` bytes (exports, reports)."""
    n = max(1, target // 150)
    words = iter(rng.choices(WORDS, k=11 * n))
    nums = iter(rng.choices(range(100, 100_000), k=3 * n))
    recs = []
    for i in range(n):
        w = [next(words) for _ in range(11)]
        recs.append(f'{{"id":{i},"sku":"SKU-{next(nums):06d}","title":"{w[0]} {w[1]} {w[2]}",'
                    f'"qty":{next(nums) % 500},"price":{next(nums) / 100},"note":"{" ".join(w[3:])}"}}')
    return "[" + ",".join(recs) + "]"


class _LargeEntry:
    """A large response body: decoded text, wire form (gzip and/or chunked), truth JSON, and segments."""

    def __init__(self, rng: random.Random, mss: int):
        target = int(10_000 * 100 ** rng.random())  # log-uniform 10 KB .. 1 MB
        self.text = _large_doc(rng, target)
        raw = self.text.encode()
        self.gzip = rng.random() < 0.35
        self.chunked = rng.random() < 0.8
        body = gzip.compress(raw, compresslevel=6, mtime=0) if self.gzip else raw
        if self.chunked:
            size = rng.choice((4096, 8192, 16000, 32768))
            self.wire = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                                 for i in range(0, len(body), size)) + b"0\r\n\r\n"
        else:
            self.wire = body
        self.body_json = _js(self.text)
        self.etag = '"%08x"' % zlib.crc32(raw)
        # Streaming servers flush the header block before the body, so the body's segments (and their sums)
        # are the same for every call that sends this entry.
        self.segs = _segments(self.wire, mss)


def _truth_prefix(method, host, path, params, req_h, req_body_json, status, resp_h, resp_body_json) -> str:
    return (f'{{"method":"{method}","url":{_js("http://" + host + path)},"params":{_js(params)},'
            f'"request_headers":{_js(req_h)},"request_body":{req_body_json},"status":{status},'
            f'"response_headers":{_js(resp_h)},"response_body":{resp_body_json}')


def _finish_tpl(tpl: _CallTpl, prefix: str) -> _CallTpl:
    """Keep the truth line's static text cut around its per-call fields, which always come in the order
    request id (request headers), date, request id (response headers)."""
    parts, keys = _split(prefix)
    if keys != [RID, DATE, RID]:
        raise AssertionError(f"unexpected per-call fields in a truth line: {keys}")
    tpl.line = tuple(parts)
    return tpl


def _api_tpl(rng: random.Random, docs: list[str], tokens: list[str], upload: bool, mss: int) -> _CallTpl:
    r = rng.random()
    method = "GET" if r < 0.55 else "POST" if r < 0.75 else "PUT" if r < 0.9 else "DELETE"
    host = rng.choice(HOSTS)
    res = rng.choice(RESOURCES)
    params: list = []
    path = f"/api/v1/{res}" if method == "POST" else f"/api/v1/{res}/{rng.randrange(1, 100000)}"
    query = ""
    if method == "GET" and rng.random() < 0.4:
        # Mixed-case names, a repeated name, '+' for space and percent-encoded UTF-8: the decoding a capture
        # agent must do (Go's url.ParseQuery, which Resurface's sniffer uses, turns '+' into a space).
        path = f"/api/v1/{res}"
        city = rng.choice(CITIES)
        page = str(rng.randrange(1, 40))
        params = [["page", page], ["pagesize", "20"], ["q", city + " area"]]
        query = f"?page={page}&pageSize=20&q={quote_plus(city + ' area')}"
        if rng.random() < 0.3:
            query += "&tag=new&tag=vip"
            params += [["tag", "new"], ["tag", "vip"]]
    wire_h = [("Host", host), ("User-Agent", rng.choice(AGENTS)), ("Accept", "application/json")]
    if rng.random() < 0.5:
        wire_h.append(("Authorization", rng.choice(tokens)))
    body, body_j = b"", '""'
    if method in ("POST", "PUT"):
        k = rng.randrange(len(docs))
        text = docs[k]
        if upload:  # large-body's uploads: up to ~64 KB, many segments
            text = "[" + ",".join(docs[(k + i) % len(docs)] for i in range(rng.randrange(1, 64))) + "]"
        body, body_j = text.encode(), _js(text)
        wire_h += [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))]
    wire_h.append(("X-Request-Id", MARKERS[RID]))
    if rng.random() < 0.2:
        wire_h.append(("Cookie", f"session={rng.getrandbits(48):012x}; theme=dark"))
    if rng.random() < 0.3:  # set by a load balancer in front of the server: the caller's public address
        wire_h.append(("X-Forwarded-For", f"203.0.113.{rng.randrange(1, 255)}"))
    head = f"{method} {path}{query} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in wire_h) + "\r\n"

    r = rng.random()
    if method == "DELETE":
        status = 204 if r < 0.9 else 404
    elif method == "POST":
        status = 201 if r < 0.95 else 500
    else:
        status = 200 if r < 0.93 else 404
    resp_h = [("Date", MARKERS[DATE]), ("X-Request-Id", MARKERS[RID])]
    rbody, rbody_j = b"", '""'
    if status != 204:
        if status in (404, 500):
            text = json.dumps({"error": REASONS[status].lower(), "path": path})
        else:
            text = docs[rng.randrange(len(docs))]
        rbody, rbody_j = text.encode(), _js(text)
        resp_h += [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(rbody))),
                   ("Cache-Control", "no-store")]
        if status == 201:
            resp_h.append(("Location", f"{path}/{rng.randrange(1, 100000)}"))
    if rng.random() < 0.1:  # two values of one header: two pairs, in wire order
        sid = f"{rng.getrandbits(48):012x}"
        resp_h += [("Set-Cookie", f"session={sid}; Path=/; HttpOnly"), ("Set-Cookie", "theme=dark")]
    rhead = f"HTTP/1.1 {status} {REASONS[status]}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in resp_h) + "\r\n"
    tpl = _CallTpl()
    tpl.req = _MsgTpl(head, body, mss)
    tpl.resp = _MsgTpl(rhead, rbody, mss)  # small responses leave in one write: headers and body together
    tpl.body_segs = ()
    tpl.latency_min, tpl.latency_mean = 1000, 3000  # a few ms of server time
    return _finish_tpl(tpl, _truth_prefix(method, host, path, params, [[k.lower(), v] for k, v in wire_h[1:]],
                                          body_j, status, [[k.lower(), v] for k, v in resp_h], rbody_j))


def _large_tpl(rng: random.Random, entry: _LargeEntry, slot: int, mss: int) -> _CallTpl:
    host = "exports.example.com"
    path = f"/v2/exports/report-{slot}.json"
    fmt = rng.choice(("json", "ndjson"))
    query = f"?format={fmt}&from=2025-11-{rng.randrange(1, 29):02d}&note={quote('état été')}"
    params = [["format", fmt], ["from", query[query.index("from=") + 5:][:10]], ["note", "état été"]]
    wire_h = [("Host", host), ("User-Agent", rng.choice(AGENTS)), ("Accept", "application/json"),
              ("Accept-Encoding", "gzip, deflate"), ("X-Request-Id", MARKERS[RID])]
    head = f"GET {path}{query} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in wire_h) + "\r\n"
    resp_h = [("Date", MARKERS[DATE]), ("Content-Type", "application/json"), ("ETag", entry.etag)]
    if entry.gzip:
        resp_h.append(("Content-Encoding", "gzip"))
    resp_h.append(("Transfer-Encoding", "chunked") if entry.chunked else ("Content-Length", str(len(entry.wire))))
    resp_h.append(("X-Request-Id", MARKERS[RID]))
    rhead = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in resp_h) + "\r\n"
    tpl = _CallTpl()
    tpl.req = _MsgTpl(head, b"", mss)
    tpl.resp = _MsgTpl(rhead, b"", mss)
    tpl.body_segs = entry.segs
    tpl.latency_min, tpl.latency_mean = 2000, 10_000
    return _finish_tpl(tpl, _truth_prefix("GET", host, path, params, [[k.lower(), v] for k, v in wire_h[1:]],
                                          '""', 200, [[k.lower(), v] for k, v in resp_h
                                                      if k != "Transfer-Encoding"], entry.body_json))


class _Mix:
    """Per-mix traffic shape (concurrency, calls per connection, think times) and the calls themselves.

    Calls come from lazily built templates, each made by its own seeded generator: building a body per
    call would cost more than the frames that carry it, and the content must not depend on the order in
    which templates are first used.
    """

    def __init__(self, name: str, rng: random.Random, seed: int, frames: int, concurrency: int | None,
                 mss: int):
        self.name, self.rng, self.seed, self.mss = name, rng, seed, mss
        prng = random.Random(seed * 104729 + 1)
        self.docs = [_json_doc(prng, prng.randrange(100, 1900)) for _ in range(256)]
        self.tokens = ["Bearer " + "%032x" % prng.getrandbits(128) for _ in range(64)]
        self.api: list[_CallTpl | None] = [None] * API_TEMPLATES
        self.large: list[_CallTpl | None] = [None] * LARGE_TEMPLATES
        self.entries: list[_LargeEntry | None] = [None] * LARGE_BODIES
        self.count = 0
        self.rid_salt = prng.getrandbits(64)
        self._date_sec = -1
        self._date = (b"", 0, "")
        if name == "small-api":
            self.concurrency, self.calls = 32, (2, 12)
            self.first_think, self.think, self.idle, self.spread = (50, 400), 20_000, 30_000, 50_000
        elif name == "large-body":
            self.concurrency, self.calls = 12, (1, 4)
            self.first_think, self.think, self.idle, self.spread = (50, 400), 20_000, 20_000, 20_000
        else:  # many-conns: long-lived, mostly idle connections, so ~frames/40 of them are open at once
            self.concurrency, self.calls = min(100_000, max(8, frames // 40)), (1, 2)
            self.first_think, self.think, self.idle, self.spread = (100, 200_000), 60_000, 40_000, 150_000
        if concurrency is not None:
            self.concurrency = concurrency

    def call(self, t: int, vni: int) -> _Call:
        r = self.rng.random()
        if self.name == "large-body" and r < 0.9:
            slot = int(r / 0.9 * LARGE_TEMPLATES)
            tpl = self.large[slot]
            if tpl is None:
                e = slot % LARGE_BODIES
                entry = self.entries[e]
                if entry is None:
                    entry = self.entries[e] = _LargeEntry(random.Random(f"{self.seed}/body/{e}"), self.mss)
                tpl = self.large[slot] = _large_tpl(random.Random(f"{self.seed}/large/{slot}"), entry, e,
                                                    self.mss)
        else:
            slot = int(self.rng.random() * API_TEMPLATES)
            tpl = self.api[slot]
            if tpl is None:
                tpl = self.api[slot] = _api_tpl(random.Random(f"{self.seed}/api/{slot}"), self.docs, self.tokens,
                                                self.name == "large-body", self.mss)
        self.count += 1
        # Unique and random-looking: an odd multiplier is a bijection modulo 2**64.
        rid_s = "%016x" % ((self.count * 0x9E3779B97F4A7C15 + self.rid_salt) & 0xFFFFFFFFFFFFFFFF)
        rid_b = rid_s.encode()
        sec = t // 1_000_000
        if sec != self._date_sec:
            d = email.utils.formatdate(sec, usegmt=True)
            self._date_sec, self._date = sec, (d.encode(), int.from_bytes(d.encode(), "big") % 0xFFFF, d)
        date_b, date_sum, date_s = self._date
        vb = (rid_b, date_b)
        vs = (int.from_bytes(rid_b, "big") % 0xFFFF, date_sum)
        call = _Call()
        call.req_segs = tpl.req.fill(vb, vs)
        call.head = tpl.resp.fill(vb, vs)
        call.body_segs = tpl.body_segs
        call.latency = tpl.latency_min + int(self.rng.expovariate(1 / tpl.latency_mean))
        call.line = tpl.line
        call.rid, call.date, call.vni = rid_s, date_s, vni
        call.complete = True
        return call


# ---------------------------------------------------------------------------------------------- options
def truth_path(out_path: str) -> str:
    """``x.pcap`` -> ``x.truth.jsonl``; any other name gets ``.truth.jsonl`` appended."""
    base = out_path[:-5] if out_path.endswith(".pcap") else out_path
    return base + ".truth.jsonl"


def _validate(out_path, mix, frames, seed, ipv6, vlan, reorder, duplicate, loss, truncate, vni, ns,
              concurrency) -> tuple[int, ...]:
    """Check every option; raise ValueError with one precise message. Returns the VNIs."""
    if mix not in MIXES:
        raise ValueError(f"--mix must be one of {', '.join(MIXES)}, got {mix!r}")
    if not isinstance(frames, int) or isinstance(frames, bool) or not 1 <= frames <= 10**10:
        raise ValueError(f"--frames must be an integer between 1 and 10000000000, got {frames!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"--seed must be an integer between 0 and 2**63-1, got {seed!r}")
    for name, p in (("reorder", reorder), ("duplicate", duplicate), ("loss", loss)):
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
            raise ValueError(f"--{name} must be a probability per frame, 0 <= p < 1, got {p!r}")
    if truncate is not None and (not isinstance(truncate, int) or isinstance(truncate, bool)
                                 or not 64 <= truncate <= 65535):
        raise ValueError(f"--truncate must be a frame length between 64 and 65535 bytes, got {truncate!r}")
    if concurrency is not None and (not isinstance(concurrency, int) or isinstance(concurrency, bool)
                                    or not 1 <= concurrency <= MAX_CONCURRENCY):
        raise ValueError(f"--concurrency must be an integer between 1 and {MAX_CONCURRENCY}, "
                         f"got {concurrency!r}")
    vnis = vni if isinstance(vni, (list, tuple)) else [vni]
    if not vnis:
        raise ValueError("--vni needs at least one VNI")
    for v in vnis:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFFFF:
            raise ValueError(f"--vni values must be integers between 0 and 16777215 (24 bits), got {v!r}")
    if len(set(vnis)) != len(vnis):
        raise ValueError(f"--vni values must be distinct, got {','.join(map(str, vnis))}")
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise ValueError(f"--out directory does not exist: {directory}")
    return tuple(vnis)


# ---------------------------------------------------------------------------------------------- generator
class _Generator:
    def __init__(self, out, truth, mix: _Mix, frames: int, seed: int, ipv6: bool, vlan: bool,
                 reorder: float, duplicate: float, loss: float, truncate: int | None, vnis, ns: bool):
        self.out_f, self.truth_f = out, truth
        self.mix, self.rng, self.frames = mix, mix.rng, frames
        self.ipv6, self.vlan, self.ns = ipv6, vlan, ns
        self.sessions = [_Session(v, i, ipv6, vlan) for i, v in enumerate(vnis)]
        self.S = _fmt(ipv6, vlan, False)
        self.S_syn = _fmt(ipv6, vlan, True)
        self.l3 = 40 if ipv6 else 20
        # outer IP total length = outer IP + UDP + VXLAN + inner Ethernet (+ tag) + inner IP datagram
        self.ol_extra = 36 + (18 if vlan else 14) + (40 if ipv6 else 0)
        self.mss = mix.mss
        self.emit = self._emit6 if ipv6 else self._emit4
        mss_opt = MTU - self.l3 - 20  # advertised MSS: the timestamps option then takes 12 of it
        self.syn_opts = b"\x00\x00\x02\x04" + struct.pack(">H", mss_opt) + b"\x04\x02\x08\x0a"
        self.syn_opts_sum = 0x0204 + mss_opt + 0x0402 + 0x080A + 0x0103 + 0x0307
        self.buf = bytearray()
        self.generated = self.written = self.file_bytes = 0
        self.lost = self.duplicated = self.swaps = self.truncated = 0
        self.oid = 0
        self.end_t = 0  # time of a finished connection's last frame
        self.lim = 0  # the earliest frame time of every other connection (see run)
        self.calls = self.complete_calls = self.connections = 0
        self.next_order = self.flush_order = 0
        self.done: dict[int, str] = {}
        self.truth_buf: list[str] = []
        # Impairments draw from their own generator: the traffic is the same with and without them.
        self.irng = random.Random(seed ^ 0x5DEECE66D)
        self.p_loss, self.p_dup, self.p_reorder, self.trunc = loss, duplicate, reorder, truncate
        self.impaired = bool(loss or duplicate or reorder or truncate)
        self.held: list | None = None  # reorder: [slot time, frame, wirelen, frames to wait, buffered...]
        self.port_next: dict[bytes, int] = {}
        self.client_pool = max(64, min(4096, mix.concurrency // 16))

    # ---- frames
    def _side(self, sess: _Session, inbound: bool, src: bytes, dst: bytes, sport: int, dport: int,
              addr_sum: int, osport: int) -> _Side:
        """``addr_sum``: the sum of the inner address words (either order); ``osport``: outer UDP port."""
        s = _Side()
        s.c0 = sess.c0
        s.c2 = sess.outer_addrs + struct.pack(">HH", osport, VXLAN_PORT)
        l2 = sess.l2_in if inbound else sess.l2_out
        ports = struct.pack(">HH", sport, dport)
        rng = self.rng
        if self.ipv6:
            s.c3 = b"\x00\x00" + sess.vxlan + l2 + struct.pack(">I", 6 << 28 | rng.getrandbits(20))
            s.c5 = b"\x06\x40" + src + dst + ports
            s.ibase = 0
        else:
            s.c3 = b"\x00\x00" + sess.vxlan + l2 + b"\x45\x00"
            s.c5 = src + dst + ports
            s.ibase = 0x4500 + 0x4000 + (64 << 8 | 6) + addr_sum
        if inbound:
            s.win, s.syn_win = 501, 64240  # scaled by 2**7 (the SYN's WS option); Linux's initial windows
        else:
            s.win, s.syn_win = 509, 65160
        s.obase = sess.obase
        s.syn_opts = self.syn_opts
        base = addr_sum + 6 + sport + dport  # pseudo-header (RFC 793 / RFC 8200 8.1) and ports
        s.tbase = base + s.win + 0x0101 + 0x080A
        s.tbase_syn = base + s.syn_win + self.syn_opts_sum
        bits = rng.getrandbits(48)
        s.ipid = bits & 0xFFFF
        s.clock = bits >> 16  # TS clock: 1 kHz, random origin per host (RFC 7323 5.4)
        s.tsval = 0
        return s

    # The two emitters are the hot path: checksum folds are written out (x % 0xFFFF, RFC 1071) rather than
    # called, and the unimpaired case appends straight to the output block.
    def _emit4(self, t, side, flags, seq, ack, payload, psum):
        """Write one inner IPv4 frame; True when an impairment damaged it (lost or cut)."""
        self.generated += 1
        tsval = (side.clock + t // 1000) & M32
        side.tsval = tsval
        tsecr = side.peer.tsval
        side.ipid = iid = (side.ipid + 1) & 0xFFFF
        self.oid = oid = (self.oid + 1) & 0xFFFF
        if flags & SYN:
            il = 20 + TCP_SYN_HDR
            ol = self.ol_extra + il
            hdr = self.S_syn.pack(
                side.c0, ol, oid, b"\x40\x00\x40\x11", _fold(side.obase + ol + oid), side.c2, ol - 20, side.c3,
                il, iid, b"\x40\x00\x40\x06", _fold(side.ibase + il + iid), side.c5, seq, ack, 0xA000 | flags,
                side.syn_win, _fold(side.tbase_syn + TCP_SYN_HDR + seq + ack + (0xA000 | flags) + tsval + tsecr),
                side.syn_opts, tsval, tsecr, b"\x01\x03\x03\x07")
        else:
            tl = TCP_HDR + len(payload)
            il = 20 + tl
            ol = self.ol_extra + il
            oc = (side.obase + ol + oid) % 0xFFFF
            ic = (side.ibase + il + iid) % 0xFFFF
            tc = (side.tbase + tl + seq + ack + (0x8000 | flags) + tsval + tsecr + psum) % 0xFFFF
            hdr = self.S.pack(side.c0, ol, oid, b"\x40\x00\x40\x11", 0xFFFF - oc if oc else 0, side.c2, ol - 20,
                              side.c3, il, iid, b"\x40\x00\x40\x06", 0xFFFF - ic if ic else 0, side.c5, seq, ack,
                              0x8000 | flags, side.win, 0xFFFF - tc if tc else 0, b"\x00\x00\x01\x01\x08\x0a",
                              tsval, tsecr)
        if self.impaired:
            return self._put(t, hdr, payload, ol + 14)
        buf = self.buf
        sec, frac = divmod(t, 1_000_000)
        buf += PCAP_REC.pack(sec, frac * 1000 if self.ns else frac, ol + 14, ol + 14)
        buf += hdr
        buf += payload
        if len(buf) >= WRITE_BLOCK:
            self._flush()
        return False

    def _emit6(self, t, side, flags, seq, ack, payload, psum):
        """Write one inner IPv6 frame (no IP checksum); True when an impairment damaged it."""
        self.generated += 1
        tsval = (side.clock + t // 1000) & M32
        side.tsval = tsval
        tsecr = side.peer.tsval
        self.oid = oid = (self.oid + 1) & 0xFFFF
        if flags & SYN:
            tl = TCP_SYN_HDR
            ol = self.ol_extra + tl
            hdr = self.S_syn.pack(
                side.c0, ol, oid, b"\x40\x00\x40\x11", _fold(side.obase + ol + oid), side.c2, ol - 20, side.c3,
                tl, side.c5, seq, ack, 0xA000 | flags, side.syn_win,
                _fold(side.tbase_syn + tl + seq + ack + (0xA000 | flags) + tsval + tsecr), side.syn_opts, tsval,
                tsecr, b"\x01\x03\x03\x07")
        else:
            tl = TCP_HDR + len(payload)
            ol = self.ol_extra + tl
            oc = (side.obase + ol + oid) % 0xFFFF
            tc = (side.tbase + tl + seq + ack + (0x8000 | flags) + tsval + tsecr + psum) % 0xFFFF
            hdr = self.S.pack(side.c0, ol, oid, b"\x40\x00\x40\x11", 0xFFFF - oc if oc else 0, side.c2, ol - 20,
                              side.c3, tl, side.c5, seq, ack, 0x8000 | flags, side.win, 0xFFFF - tc if tc else 0,
                              b"\x00\x00\x01\x01\x08\x0a", tsval, tsecr)
        if self.impaired:
            return self._put(t, hdr, payload, ol + 14)
        buf = self.buf
        sec, frac = divmod(t, 1_000_000)
        buf += PCAP_REC.pack(sec, frac * 1000 if self.ns else frac, ol + 14, ol + 14)
        buf += hdr
        buf += payload
        if len(buf) >= WRITE_BLOCK:
            self._flush()
        return False

    def _put(self, t, hdr, payload, wirelen) -> bool:
        """Impairments in the order a mirror path applies them: loss, then (at write) truncation; duplicates
        and reordering happen after, so a duplicate may be reordered too."""
        irng = self.irng
        if self.p_loss and irng.random() < self.p_loss:
            self.lost += 1
            return True
        frame = hdr + payload
        self._slot(t, frame, wirelen)
        if self.p_dup and irng.random() < self.p_dup:
            self.duplicated += 1
            self._slot(t, frame, wirelen)
        return self.trunc is not None and wirelen > self.trunc

    def _slot(self, t, frame, wirelen) -> None:
        """Reorder stage: a chosen frame trades places with one of the next REORDER_WINDOW frames; the
        timestamps stay in place, since the capture stamps arrival and arrival is what got reordered.
        Swaps do not overlap: no frame is chosen while one is held."""
        held = self.held
        if held is not None:
            held[3] -= 1
            if held[3]:
                held.append((t, frame, wirelen))
                return
            self.held = None
            self._record(held[0], frame, wirelen)
            for bt, bf, bw in held[4:]:
                self._record(bt, bf, bw)
            self._record(t, held[1], held[2])
            self.swaps += 1
            return
        if self.p_reorder and self.irng.random() < self.p_reorder:
            self.held = [t, frame, wirelen, self.irng.randint(1, REORDER_WINDOW)]
            return
        self._record(t, frame, wirelen)

    def _drain_held(self) -> None:
        """End of capture with a frame still waiting: it swaps with the last frame buffered behind it (or
        stays in place when nothing came after it)."""
        held, self.held = self.held, None
        if held is None:
            return
        rest = held[4:]
        if not rest:
            self._record(held[0], held[1], held[2])
            return
        lt, lf, lw = rest[-1]
        self._record(held[0], lf, lw)
        for bt, bf, bw in rest[:-1]:
            self._record(bt, bf, bw)
        self._record(lt, held[1], held[2])
        self.swaps += 1

    def _record(self, t, frame, wirelen) -> None:
        if self.trunc is not None and wirelen > self.trunc:
            frame = frame[:self.trunc]  # caplen < wirelen, as a mirror session's packet length records it
            self.truncated += 1
        sec, frac = divmod(t, 1_000_000)
        buf = self.buf
        buf += PCAP_REC.pack(sec, frac * 1000 if self.ns else frac, len(frame), wirelen)
        buf += frame
        if len(buf) >= WRITE_BLOCK:
            self._flush()

    def _flush(self) -> None:
        self.out_f.write(self.buf)
        self.file_bytes += len(self.buf)
        self.buf = bytearray()
        if self.truth_buf:
            self.truth_f.write("".join(self.truth_buf))
            self.truth_buf = []

    # ---- truth
    def _call_done(self, call: _Call) -> None:
        """Truth lines go out in the order the responses started, each once its call is over (a later
        frame may still be lost)."""
        self.calls += 1
        if call.complete:
            self.complete_calls += 1
        p, rid = call.line, call.rid
        line = (f'{p[0]}{rid}{p[1]}{call.date}{p[2]}{rid}{p[3]},"vni":{call.vni},"now_ms":{call.resp_t // 1000},'
                f'"interval_ms":{max(1, (call.resp_t - call.req_t) // 1000)},'
                f'"complete":{"true" if call.complete else "false"}}}\n')
        k = call.order
        if k != self.flush_order:
            self.done[k] = line
            return
        self.truth_buf.append(line)
        k += 1
        done = self.done
        while done and k in done:
            self.truth_buf.append(done.pop(k))
            k += 1
        self.flush_order = k

    # ---- connections
    def _open(self, t: int):
        rng = self.rng
        self.connections += 1
        sess = self.sessions[int(rng.random() * len(self.sessions))]
        # Clients share one address pool in every session: inner addresses overlap between VNIs.
        host = int(rng.random() * self.client_pool)
        if self.ipv6:
            cip = CLIENT6_PREFIX + struct.pack(">H", host + 1)
        else:
            cip = bytes((10, 1, 1 + host // 250, 1 + host % 250))
        # Ephemeral ports advance by one per client and session: no 4-tuple is reused while an earlier
        # connection with it may still be open. Every session starts a client at the same port, so with
        # several VNIs identical inner 4-tuples are open at once in different sessions.
        key = cip + sess.vni.to_bytes(3, "big")
        port = self.port_next.get(key)
        if port is None:
            port = 32768 + zlib.crc32(cip) % 28232
        self.port_next[key] = 32768 + (port - 32768 + 1) % 28232
        # AWS derives the outer source port from a hash of the inner flow, so it differs per flow and per
        # direction; any stable hash does.
        h = zlib.crc32(key + port.to_bytes(2, "big"))
        addr_sum = _words(cip + sess.server_ip)
        c = self._side(sess, True, cip, sess.server_ip, port, SERVER_PORT, addr_sum, 49152 + (h & 0x3FFF))
        s = self._side(sess, False, sess.server_ip, cip, SERVER_PORT, port, addr_sum, 49152 + (h >> 18))
        c.peer, s.peer = s, c
        return self._connection(t, sess.vni, c, s)

    def _connection(self, t, vni, c, s):
        """Frames of one connection in time order, written as they come. Before a frame later than every
        other connection's next frame (self.lim) it yields that time, so run() can interleave; frames
        that come first anyway are written without the round trip through the heap."""
        rng, mix, emit = self.rng, self.mix, self.emit
        random_ = rng.random
        rtt = 80 + int(random_() * 520)
        # Some ISNs sit just below 2**32 so that sequence numbers wrap inside a message.
        cseq = rng.getrandbits(32) if random_() > 0.06 else M32 - int(random_() * 4000)
        sseq = rng.getrandbits(32) if random_() > 0.06 else M32 - int(random_() * 4000)
        handshake_damaged = emit(t, c, SYN, cseq, 0, b"", 0)
        cseq = (cseq + 1) & M32
        t += 10 + int(random_() * 30)
        if t > self.lim:
            yield t
        handshake_damaged |= emit(t, s, SYN | ACK, sseq, cseq, b"", 0)
        sseq = (sseq + 1) & M32
        t += rtt
        if t > self.lim:
            yield t
        emit(t, c, ACK, cseq, sseq, b"", 0)
        lo, hi = mix.first_think
        t += lo + int(random_() * (hi - lo))
        ncalls = mix.calls[0] + int(random_() * (mix.calls[1] - mix.calls[0] + 1))
        pending = deque()
        for i in range(ncalls):
            if i:
                t += 50 + int(rng.expovariate(1 / mix.think))
            if self.generated >= self.frames:
                self.end_t = t
                return  # the capture ends here: no new calls, no FIN
            call = mix.call(t, vni)
            if i == 0 and handshake_damaged:
                call.complete = False
            if t > self.lim:
                yield t
            call.req_t = t
            segs = call.req_segs
            last = len(segs) - 1
            for k, (seg, ps) in enumerate(segs):
                if emit(t, c, ACK | PSH if k == last else ACK, cseq, sseq, seg, ps):
                    call.complete = False
                cseq = (cseq + len(seg)) & M32
                if k & 1 and k != last:  # the server acknowledges every second full segment at once
                    t += 1
                    if t > self.lim:
                        yield t
                    emit(t, s, ACK, sseq, cseq, b"", 0)
                if k != last:
                    t += 2 + int(random_() * 10)
                    if t > self.lim:
                        yield t
            # Response start: a few ms later, nudged (< 1 ms) so that the floor of the interval equals the
            # difference of the floors of the two epoch-ms values: now_ms and interval_ms cannot disagree.
            t += call.latency
            if t % 1000 < call.req_t % 1000:
                t += call.req_t % 1000 - t % 1000
            call.resp_t = t
            gap = 2 + int(random_() * 6)  # the server's pacing on a 10 Gb/s interface, in microseconds
            n = 0
            for part in (call.head, call.body_segs):
                for seg, ps in part:
                    while pending and pending[0][0] <= t:
                        at, ackno = pending.popleft()
                        if at > self.lim:
                            yield at
                        emit(at, c, ACK, cseq, ackno, b"", 0)
                    if t > self.lim:
                        yield t
                    if not n:  # truth order: as the response starts appear in the capture
                        call.order = self.next_order
                        self.next_order += 1
                    if emit(t, s, ACK | PSH, sseq, cseq, seg, ps):
                        call.complete = False
                    sseq = (sseq + len(seg)) & M32
                    n += 1
                    if not n & 1:  # the client acknowledges every second segment; seen one RTT later
                        pending.append((t + rtt, sseq))
                    t += gap
            if n & 1:
                pending.append((t - gap + rtt, sseq))
            while pending:
                t, ackno = pending.popleft()
                if t > self.lim:
                    yield t
                emit(t, c, ACK, cseq, ackno, b"", 0)
            self._call_done(call)
        if self.generated >= self.frames:
            self.end_t = t
            return
        t += 100 + int(rng.expovariate(1 / mix.idle))
        if t > self.lim:
            yield t
        # The client closes (keep-alive over); the server's FIN rides on its acknowledgement.
        emit(t, c, FIN | ACK, cseq, sseq, b"", 0)
        cseq = (cseq + 1) & M32
        t += 15 + int(random_() * 30)
        if t > self.lim:
            yield t
        emit(t, s, FIN | ACK, sseq, cseq, b"", 0)
        sseq = (sseq + 1) & M32
        t += rtt
        if t > self.lim:
            yield t
        emit(t, c, ACK, cseq, sseq, b"", 0)
        self.end_t = t

    def run(self) -> None:
        mix, rng = self.mix, self.rng
        magic = PCAP_NSEC_MAGIC if self.ns else PCAP_USEC_MAGIC
        snaplen = self.trunc if self.trunc is not None else 262144
        self.buf += struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, 1)  # linktype 1: Ethernet
        heap = []
        seq = 0
        for _ in range(mix.concurrency):
            t0 = EPOCH_US + int(rng.random() * mix.spread)
            heap.append((t0, seq, self._open(t0)))
            seq += 1
        heapq.heapify(heap)
        frames = self.frames
        heappop, heapreplace, heappush = heapq.heappop, heapq.heapreplace, heapq.heappush
        never = 1 << 62
        while heap:
            gen = heap[0][2]
            # The root's children hold the smallest time among the other connections.
            n = len(heap)
            self.lim = (heap[1][0] if n == 2 or heap[1][0] <= heap[2][0] else heap[2][0]) if n > 1 else never
            nt = next(gen, None)
            if nt is None:
                heappop(heap)
                if self.generated < frames:
                    # A new client replaces the one that left, after its last frame (time stays monotonic).
                    t = self.end_t + int(rng.random() * 200)
                    heappush(heap, (t, seq, self._open(t)))
                    seq += 1
            else:
                heapreplace(heap, (nt, seq, gen))
                seq += 1
        self._drain_held()
        if self.done:  # every call that started a response runs to its end
            raise AssertionError(f"{len(self.done)} truth lines were never written")
        self._flush()
        self.written = self.generated - self.lost + self.duplicated


def generate(out_path: str, mix: str = "small-api", frames: int = 10_000, seed: int = 1, *, ipv6: bool = False,
             vlan: bool = False, reorder: float = 0.0, duplicate: float = 0.0, loss: float = 0.0,
             truncate: int | None = None, vni: int | list[int] = 7, ns: bool = False,
             concurrency: int | None = None) -> dict:
    """Write ``out_path`` (pcap) and its truth file; return the statistics (deterministic for the arguments).

    ``frames``: generation stops opening calls once that many frames were generated; calls in flight
    finish, so a few more frames follow. Impairments are per-frame probabilities (``truncate``: a length).
    Raises ValueError with one precise message for a bad option.
    """
    vnis = _validate(out_path, mix, frames, seed, ipv6, vlan, reorder, duplicate, loss, truncate, vni, ns,
                     concurrency)
    rng = random.Random(seed)
    mss = MTU - (40 if ipv6 else 20) - TCP_HDR  # payload of a full segment
    shape = _Mix(mix, rng, seed, frames, concurrency, mss)
    tpath = truth_path(out_path)
    with open(out_path, "wb") as out, open(tpath, "w", encoding="utf-8", newline="\n") as truth:
        g = _Generator(out, truth, shape, frames, seed, bool(ipv6), bool(vlan), reorder, duplicate, loss,
                       truncate, vnis, bool(ns))
        g.run()
    return {"pcap": out_path, "truth": tpath, "mix": mix, "seed": seed, "frames": g.written,
            "bytes": g.file_bytes, "calls": g.calls,
            "complete_calls": g.complete_calls, "connections": g.connections, "concurrency": shape.concurrency,
            "generated_frames": g.generated, "lost": g.lost, "duplicated": g.duplicated, "reordered": g.swaps,
            "truncated": g.truncated}


def _vni_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workload.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", required=True, choices=MIXES)
    ap.add_argument("--frames", required=True, type=int, help="stop opening calls after about N frames")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ipv6", action="store_true", help="inner IPv6 (outer stays IPv4, as AWS sends it)")
    ap.add_argument("--vlan", action="store_true", help="inner 802.1Q tag")
    ap.add_argument("--reorder", type=float, default=0.0, help="per-frame probability of a swap (window 8)")
    ap.add_argument("--duplicate", type=float, default=0.0, help="per-frame probability of a repeat")
    ap.add_argument("--loss", type=float, default=0.0, help="per-frame probability of a drop")
    ap.add_argument("--truncate", type=int, default=None, help="cut every frame to N bytes (caplen N)")
    ap.add_argument("--vni", type=_vni_list, default=[7], help="VNI, or comma-separated VNIs (sessions)")
    ap.add_argument("--concurrency", type=int, default=None, help="open connections (default: per mix)")
    ap.add_argument("--ns", action="store_true", help="nanosecond pcap (magic a1b23c4d)")
    ap.add_argument("--out", required=True, help="PATH.pcap; the truth goes to PATH.truth.jsonl")
    a = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        stats = generate(a.out, a.mix, a.frames, a.seed, ipv6=a.ipv6, vlan=a.vlan, reorder=a.reorder,
                         duplicate=a.duplicate, loss=a.loss, truncate=a.truncate, vni=a.vni, ns=a.ns,
                         concurrency=a.concurrency)
    except ValueError as e:
        ap.error(str(e))  # exits 2 with "workload.py: error: <message>"
    elapsed = time.perf_counter() - start
    stats["seconds"] = round(elapsed, 3)
    stats["frames_per_second"] = round(stats["generated_frames"] / elapsed) if elapsed else None
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
