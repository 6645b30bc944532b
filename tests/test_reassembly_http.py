"""Table-driven reassembly + HTTP tests: segment sequences in, calls out (gopacket tcpassembly_test style)."""
from __future__ import annotations

import gzip
import random
import zlib

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from support.segments import Flow
from vxcap.message import MessageBuilder, MessageOptions
from vxcap.reassembly import Reassembler, ReassemblyLimits


def run(segments, limits=None, ports=frozenset(), options=None):
    builder = MessageBuilder(options or MessageOptions(host="node"))
    calls = []
    r = Reassembler(lambda conn, req, resp: calls.append(builder.details(conn, req, resp)), limits, ports)
    r.process(segments)
    r.close_all()
    return calls, r.counters()


def summary(calls):
    """What a call is, without timestamps: method, url, status, bodies, incomplete marker."""
    out = []
    for details in calls:
        d = {}
        for k, v in details:
            if k in ("request_method", "request_url", "response_code", "request_body", "response_body",
                     "custom_field:vxcap_incomplete"):
                d[k.split(":")[-1]] = v
        out.append(d)
    return out


def call(method, url, status=None, req_body=None, resp_body=None, incomplete=None):
    d = {"request_method": method, "request_url": url}
    if status is not None:
        d["response_code"] = str(status)
    if req_body:
        d["request_body"] = req_body
    if resp_body:
        d["response_body"] = resp_body
    if incomplete:
        d["vxcap_incomplete"] = incomplete
    return d


GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def flow_keepalive():
    f = Flow().handshake()
    f.request(GET).response(OK)
    f.request(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n").response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    return f.close().segments


def flow_pipelined():
    f = Flow().handshake()
    f.request(GET + b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n" + b"HEAD /c HTTP/1.1\r\nHost: h\r\n\r\n")
    f.response(OK + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
               + b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    return f.close().segments


def flow_chunked_tiny_segments():
    f = Flow(mss=3).handshake()
    f.request(b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;e=1\r\npedia\r\n0\r\n\r\n")
    f.response(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")
    return f.close().segments


def flow_100_continue():
    f = Flow().handshake()
    f.request(b"PUT /p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    f.response(b"HTTP/1.1 100 Continue\r\n\r\n")
    f.request(b"abc")
    f.response(b"HTTP/1.1 204 No Content\r\n\r\n")
    return f.close().segments


def flow_close_delimited():
    f = Flow().handshake()
    f.request(b"GET /old HTTP/1.0\r\nHost: h\r\n\r\n")
    f.response(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
    return f.close().segments


def flow_304_and_no_host():
    f = Flow(server=("10.9.8.7", 8080)).handshake()
    f.request(b"GET /x?q=1 HTTP/1.1\r\nIf-None-Match: \"e\"\r\n\r\n")
    f.response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"e\"\r\n\r\n")
    return f.close().segments


def flow_midstream():
    # Capture started inside a response body: no SYN; the first call is recovered at the next request.
    f = Flow()
    f.response(b"tail of an earlier body")
    f.request(GET).response(OK)
    return f.close().segments


def flow_websocket():
    f = Flow().handshake()
    f.request(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    f.response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello")
    f.request(b"\x81\x85abcdGET / HTTP/1.1\r\n\r\n")
    return f.close().segments


def flow_rst():
    f = Flow().handshake()
    f.request(GET).response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    return f.rst(1).segments


def flow_tls():
    f = Flow(server=("10.0.0.2", 443)).handshake()
    f.request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100))
    return f.close().segments


def flow_request_only():
    f = Flow().handshake()
    f.request(GET)
    return f.fin(0).segments


def flow_bodies_encoded():
    f = Flow().handshake()
    for name, data in ((b"gzip", gzip.compress(b"gz body")), (b"deflate", zlib.compress(b"zlib body")),
                       (b"deflate", zlib.compress(b"raw body")[2:-4]), (b"br", brotli.compress(b"br body")),
                       (b"zstd", zstandard.ZstdCompressor().compress(b"zstd body"))):
        f.request(GET)
        f.response(b"HTTP/1.1 200 OK\r\nContent-Encoding: " + name + b"\r\nContent-Length: "
                   + str(len(data)).encode() + b"\r\n\r\n" + data)
    return f.close().segments


CASES = [
    ("keep-alive", flow_keepalive, [call("GET", "http://h/a", 200, resp_body="ok"), call("GET", "http://h/b", 404)]),
    ("pipelined, chunked, HEAD with Content-Length", flow_pipelined,
     [call("GET", "http://h/a", 200, resp_body="ok"), call("GET", "http://h/b", 200, resp_body="x"),
      call("HEAD", "http://h/c", 200)]),
    ("chunked request in 3-byte segments", flow_chunked_tiny_segments,
     [call("POST", "http://h/u", 201, req_body="wikipedia", resp_body="done")]),
    ("100-continue is not a call", flow_100_continue, [call("PUT", "http://h/p", 204, req_body="abc")]),
    ("close-delimited body", flow_close_delimited, [call("GET", "http://h/old", 200, resp_body="until the end")]),
    ("304 has no body; no Host uses the server address", flow_304_and_no_host,
     [call("GET", "http://10.9.8.7:8080/x", 304)]),
    ("SYN missed: start at a start line", flow_midstream, [call("GET", "http://h/a", 200, resp_body="ok")]),
    ("101 ends HTTP parsing", flow_websocket, [call("GET", "http://h/ws", 101)]),
    ("RST mid-body emits the partial response", flow_rst,
     [call("GET", "http://h/a", 200, resp_body="half", incomplete="response_eof")]),
    ("TLS is recognised, not parsed", flow_tls, []),
    ("request without response is emitted, marked", flow_request_only,
     [call("GET", "http://h/a", incomplete="no_response")]),
    ("gzip, zlib deflate, raw deflate, br, zstd", flow_bodies_encoded,
     [call("GET", "http://h/a", 200, resp_body=b) for b in ("gz body", "zlib body", "raw body", "br body",
                                                           "zstd body")]),
]


@pytest.mark.parametrize("name,make,expected", CASES, ids=[c[0] for c in CASES])
def test_cases(name, make, expected):
    calls, counters = run(make())
    assert summary(calls) == expected, counters


def test_tls_counted():
    _, counters = run(flow_tls())
    assert counters["connections_tls"] == 1


def test_websocket_frames_ignored_and_counted():
    calls, counters = run(flow_websocket())
    assert len(calls) == 1 and counters["connections_upgrade"] == 1 and counters["bytes_ignored"] > 0


def test_message_details_exact():
    f = Flow().handshake()
    f.request(b"GET /p;s=1/q?B=2&b=3&e=&pct=%41%20b HTTP/1.1\r\nHost: api.ex\r\nAccept: a\r\nAccept: b\r\n"
              b"Cookie: sid=1\r\n\r\n")
    f.response(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\n\xff!\r\n0\r\n\r\n")
    calls, _ = run(f.close().segments)
    assert calls == [[
        ["request_method", "GET"],
        ["request_url", "http://api.ex/p;s=1/q"],
        ["response_code", "200"],
        ["request_param:b", "2"],
        ["request_param:b", "3"],
        ["request_param:e", ""],
        ["request_param:pct", "A b"],
        ["request_header:accept", "a"],
        ["request_header:accept", "b"],
        ["request_header:cookie", "sid=1"],
        ["response_header:set-cookie", "a=1"],
        ["response_header:set-cookie", "b=2"],
        ["response_body", "\ufffd!"],
        ["now", str(1_700_000_000_000 + 3)],
        ["interval", "1"],
        ["host", "node"],
    ]]


def test_gap_marks_only_the_damaged_message_and_resumes():
    f = Flow(mss=10).handshake()
    f.request(GET).response(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n" + b"x" * 30)
    f.request(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n").response(OK)
    segs = f.close().segments
    # Drop one segment from the middle of the first response body.
    body_seg = next(i for i, s in enumerate(segs) if s[6] == b"x" * 10)
    del segs[body_seg + 1]
    calls, counters = run(segs)
    s = summary(calls)
    assert s[0]["response_code"] == "200" and s[0]["vxcap_incomplete"] == "response_gap"
    assert s[1] == call("GET", "http://h/b", 200, resp_body="ok")
    assert counters["gap_bytes"] == 10


def test_truncated_segments_are_gaps():
    f = Flow().handshake()
    f.request(GET)
    f.response(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n" + b"y" * 400)
    f.request(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n").response(OK)
    segs = []
    for s in f.close().segments:
        payload = s[6]
        if len(payload) > 100:  # a mirror session with a packet length keeps the first 100 bytes
            s = s[:6] + (payload[:100], len(payload) - 100) + s[8:]
        segs.append(s)
    calls, counters = run(segs)
    s = summary(calls)
    assert [c["request_url"] for c in s] == ["http://h/a", "http://h/next"]
    assert s[0]["vxcap_incomplete"] == "response_gap" and s[1].get("vxcap_incomplete") is None
    assert counters["truncated_bytes"] == len(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n") + 400 - 100


def test_body_limit_cuts_and_marks():
    f = Flow().handshake()
    f.request(GET).response(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n" + b"z" * 50)
    limits = ReassemblyLimits()
    limits.http.body_limit = 20
    calls, _ = run(f.close().segments, limits=limits)
    s = summary(calls)[0]
    assert s["response_body"] == "z" * 20 and s["vxcap_incomplete"] == "response_body_limit"


def test_gzip_bomb_bounded():
    bomb = gzip.compress(b"\0" * (50 << 20))
    f = Flow(mss=60000).handshake()
    f.request(GET).response(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
                            + str(len(bomb)).encode() + b"\r\n\r\n" + bomb)
    calls, _ = run(f.close().segments)
    s = summary(calls)[0]
    assert len(s["response_body"]) == 1 << 20 and s["vxcap_incomplete"] == "response_body_limit"


def test_connection_limit_evicts_oldest():
    segs = []
    for i in range(10):
        f = Flow(client=("10.0.0.1", 1000 + i)).handshake()
        segs += f.request(GET).segments
    limits = ReassemblyLimits(max_connections=4)
    calls, counters = run(segs, limits=limits)
    assert counters["connections_evicted"] == 6
    assert len(calls) == 10 and all(c[-4][0] == "custom_field:vxcap_incomplete" for c in calls)


def test_vni_separates_overlapping_address_spaces():
    segs = []
    for vni in (1, 2):
        segs += Flow(vni=vni).handshake().request(GET).response(OK).close().segments
    calls, counters = run(segs)
    assert len(calls) == 2 and counters["connections_opened"] == 2


EXCHANGE_REQ = (GET + b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                + b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n"
                + b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n")
EXCHANGE_RESP = (OK + b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nyes"
                 + b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
                 + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


def _exchange(req_cuts, resp_cuts):
    f = Flow().handshake()

    def pieces(data, cuts):
        cuts = sorted(set(c % len(data) for c in cuts if c % len(data)))
        bounds = [0] + cuts + [len(data)]
        return [data[a:b] for a, b in zip(bounds, bounds[1:])]

    for p in pieces(EXCHANGE_REQ, req_cuts):
        f.send(0, p)
    for p in pieces(EXCHANGE_RESP, resp_cuts):
        f.send(1, p)
    return f.close().segments


EXPECTED_EXCHANGE = [
    call("GET", "http://h/a", 200, resp_body="ok"),
    call("POST", "http://h/p", 201, req_body="hello", resp_body="yes"),
    call("HEAD", "http://h/h", 200),
    call("GET", "http://h/c", 200, resp_body="abc"),
]


@settings(max_examples=150, deadline=None)
@given(
    req_cuts=st.lists(st.integers(1, 10_000), max_size=12),
    resp_cuts=st.lists(st.integers(1, 10_000), max_size=12),
    seed=st.integers(0, 2**32 - 1),
    dups=st.integers(0, 5),
)
def test_any_segmentation_order_and_duplicates_give_the_same_calls(req_cuts, resp_cuts, seed, dups):
    segs = _exchange(req_cuts, resp_cuts)
    rnd = random.Random(seed)
    rnd.shuffle(segs)  # any interleaving: both directions crossed, SYNs late, FINs early
    segs += [segs[rnd.randrange(len(segs))] for _ in range(dups)]
    calls, counters = run(segs)
    assert summary(calls) == EXPECTED_EXCHANGE, counters


@settings(max_examples=80, deadline=None)
@given(resp_cuts=st.lists(st.integers(1, 10_000), min_size=4, max_size=12), victim=st.integers(0, 1000))
def test_losing_one_segment_affects_only_its_message(resp_cuts, victim):
    segs = _exchange([], resp_cuts)
    data_idx = [i for i, s in enumerate(segs) if s[6] and s[1] != segs[0][1]]  # response data segments
    lost = segs.pop(data_idx[victim % len(data_idx)])
    calls, _ = run(segs)
    got = summary(calls)
    # Which responses did the lost bytes touch? Offsets into EXCHANGE_RESP of each response.
    first = segs[0]
    isn = next(s[2] for s in segs if s[4] & 0x02 and s[4] & 0x10)  # SYN-ACK seq
    start = (lost[2] - isn - 1) & 0xFFFFFFFF
    end = start + len(lost[6])
    bounds = []
    pos = 0
    for part in (OK, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nyes",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"):
        bounds.append((pos, pos + len(part)))
        pos += len(part)
    touched = {i for i, (a, b) in enumerate(bounds) if start < b and end > a}
    assert first is not None and touched
    # Every call before the damaged response is exact; the damaged one is still emitted (possibly
    # marked incomplete or without its response), and nothing after it is lost.
    first_touched = min(touched)
    assert got[:first_touched] == EXPECTED_EXCHANGE[:first_touched]
    assert len(got) >= 4 - 1


def test_request_waiting_past_the_response_timeout_is_emitted_marked():
    # A long-lived keep-alive connection where only the client side is captured (one-sided mirror).
    f = Flow().handshake()
    f.request(GET)
    segs = list(f.segments)
    later = Flow(client=("10.0.0.9", 5555)).handshake()
    for _ in range(5):
        later.t += 30 * 1_000_000_000
        later.request(GET).response(OK)
    limits = ReassemblyLimits(response_timeout=60, idle_timeout=1000)
    calls = []
    builder = MessageBuilder(MessageOptions(host="node"))
    r = Reassembler(lambda conn, req, resp: calls.append(builder.details(conn, req, resp)), limits)
    r.process(segs)
    r.process(later.segments)
    before_end = summary(calls)  # close_all() not called: the timer alone emitted it
    assert before_end.count(call("GET", "http://h/a", incomplete="no_response")) == 1
    assert before_end.count(call("GET", "http://h/a", 200, resp_body="ok")) == 5
    assert r.counters()["requests_response_timeout"] == 1


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_decompression_bombs_cost_at_most_the_body_limit(coding):
    raw = b"\0" * (64 << 20)
    data = {"gzip": gzip.compress, "br": lambda b: brotli.compress(b, quality=5),
            "zstd": lambda b: zstandard.ZstdCompressor().compress(b)}[coding](raw)
    f = Flow(mss=65000).handshake()
    f.request(GET).response(b"HTTP/1.1 200 OK\r\nContent-Encoding: " + coding.encode() + b"\r\nContent-Length: "
                            + str(len(data)).encode() + b"\r\n\r\n" + data)
    calls, counters = run(f.close().segments)
    s = summary(calls)[0]
    assert len(s["response_body"]) == 1 << 20 and s["vxcap_incomplete"] == "response_body_limit"


def test_corrupt_encoded_body_is_kept_as_captured_and_counted():
    f = Flow().handshake()
    f.request(GET).response(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!")
    builder = MessageBuilder(MessageOptions(host="node"))
    calls = []
    r = Reassembler(lambda conn, req, resp: calls.append(builder.details(conn, req, resp)))
    r.process(f.close().segments)
    r.close_all()
    assert summary(calls)[0]["response_body"] == "not gzip!"
    assert builder.counters()["body_decode_failures"] == 1


SEQUENTIAL = [
    (GET, OK),
    (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
     b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nyes\r\n0\r\n\r\n"),
    (b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
    (b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnah"),
    (b"GET /d HTTP/1.1\r\nHost: h\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast"),
]
SEQUENTIAL_CALLS = [
    call("GET", "http://h/a", 200, resp_body="ok"),
    call("POST", "http://h/p", 201, req_body="hello", resp_body="yes"),
    call("HEAD", "http://h/h", 200),
    call("GET", "http://h/c", 404, resp_body="nah"),
    call("GET", "http://h/d", 200, resp_body="last"),
]


@settings(max_examples=120, deadline=None)
@given(mss=st.integers(4, 80), victim=st.integers(0, 10_000), seed=st.integers(0, 2**32 - 1))
def test_losing_one_segment_affects_only_its_call_on_keep_alive(mss, victim, seed):
    f = Flow(mss=mss).handshake()
    owner = []  # which call each data segment belongs to
    for i, (req, resp) in enumerate(SEQUENTIAL):
        n = len(f.segments)
        f.request(req).response(resp)
        owner += [None] * (n - len(owner)) + [i] * (len(f.segments) - n)
    segs = f.close().segments
    owner += [None] * (len(segs) - len(owner))
    data = [i for i, s in enumerate(segs) if s[6]]
    lost = data[victim % len(data)]
    damaged = owner[lost]
    del segs[lost]
    rnd = random.Random(seed)
    for i in range(len(segs) - 1):  # mild reordering, as a mirror does
        if rnd.random() < 0.2:
            segs[i], segs[i + 1] = segs[i + 1], segs[i]
    calls, counters = run(segs)
    got = summary(calls)
    for i, want in enumerate(SEQUENTIAL_CALLS):
        if i != damaged:
            assert got.count(want) == 1, (i, damaged, got, counters)
    assert len(got) <= len(SEQUENTIAL_CALLS)
