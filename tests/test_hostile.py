"""Hostile input and overload: floods, slow connections, header and body bombs, lying length fields.

Every case is a pcap written by ``support.hostile`` and replayed in a child process (so a hang is a
timeout, not a stuck suite, and the peak RSS is that of the replay alone) through the replay pipeline with
its default limits. Every case checks that vxcap

- does not crash or hang (the child exits within its time);
- stays within its limits: the peaks of ``Reassembler.buffered``, of the open connections and of the
  bytes the HTTP layer holds, recorded after every batch, and the child's peak RSS;
- counts what it dropped under a named reason;
- leaves a normal call mixed into the capture exactly as it comes out of a clean capture (``NORMAL_CALL``).
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from support.hostile import (ACK, FIN, PSH, SYN, T0_NS, Conversation, eth, ipv4, merge, mirror,
                             normal_conversation, pcap_header, pcap_record, slow_loris_pcap, syn_flood_pcap,
                             tcp, tcp_frame, udp, write_pcap, zeros_bomb)

HOSTILE = pathlib.Path(__file__).resolve().parent / "support" / "hostile.py"
MiB = 1 << 20
SMALL_RSS_KB = 160 * 1024  # a small capture: interpreter, vxcap and one call's worth of buffers
FLOOD_RSS_KB = 300 * 1024
# 100k connections with HTTP state: ~3 KiB each (Conn, two halves, HttpConnection, two parsers); no limit
# bounds that state in bytes, only max_connections does (see the report of the hostile-input issue).
SLOW_RSS_KB = 400 * 1024
HANG_S = 6  # a small capture replays in well under a second: past this, it hangs  # the ceiling for the million-connection flood

# The normal call's message, as a clean capture of it alone gives it (`include debug`, --host h).
NORMAL_CALL = [
    ["request_method", "POST"], ["request_url", "http://shop.example/orders"], ["response_code", "201"],
    ["request_param:id", "42"], ["request_header:user-agent", "t/1"],
    ["request_header:content-type", "application/json"], ["request_header:content-length", "13"],
    ["request_body", '{"qty": 3000}'], ["response_header:content-type", "application/json"],
    ["response_header:content-length", "11"], ["response_body", '{"id": 777}'], ["now", "1700000000007"],
    ["interval", "4"], ["host", "h"],
]


NORMAL_SEGMENTS = 11  # its 12 frames less the handshake's pure ACK


def replay(path, timeout: float = 60.0, batch_frames: int = 256, extra=()) -> dict:
    """Replay ``path`` in a child (see ``support.hostile.watch_replay``); fail on a crash or a hang."""
    cmd = [sys.executable, str(HOSTILE), str(path), str(batch_frames), "--host", "h", *extra]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"vxcap replay hung: no result within {timeout:g}s")
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    return json.loads(p.stdout)


def is_normal(call) -> bool:
    return ["request_url", "http://shop.example/orders"] in call


def check(out: dict, rss_kb: int = SMALL_RSS_KB, normal: int = 1) -> tuple[dict, dict, list]:
    """The invariants every case shares; returns (reassembly counters, decode counters, other calls)."""
    lim, peak = out["limits"], out["peak"]
    assert peak["buffered"] <= lim["max_buffered"]
    assert peak["connections"] <= lim["max_connections"]
    assert out["maxrss_kb"] < rss_kb, f"peak RSS {out['maxrss_kb'] // 1024} MiB"
    ras, dec = out["counters"]["reassembly"], out["counters"]["decode"]
    assert ras["buffered_bytes"] == 0 and ras["connections_active"] == 0
    # Each frame ends in exactly one outcome: a segment or one named drop reason (decode_py docstring).
    drops = sum(v for k, v in dec.items() if k not in ("frames", "bytes", "segments", "encapsulated",
                                                       "truncated_frames"))
    assert dec["segments"] + drops == dec["frames"]
    normals = [c for c in out["calls"] if is_normal(c)]
    assert normals == [NORMAL_CALL] * normal
    return ras, dec, [c for c in out["calls"] if not is_normal(c)]


def with_normal(tmp_path, frames, name="case.pcap") -> str:
    return write_pcap(tmp_path / name, merge(frames, normal_conversation().frames))


def conv(i: int = 0, **kw) -> Conversation:
    """A hostile connection interleaved with the normal one (0.9 ms steps against its 1 ms)."""
    return Conversation(client=(f"10.1.{i // 250}.{i % 250 + 1}", 30000 + i % 30000), server=("10.0.0.2", 80),
                        t0_ns=T0_NS + 500_000, step_ns=900_000, **kw)


def detail(call, key):
    return [v for k, v in call if k == key]


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_clean_capture_gives_the_normal_call(tmp_path):
    out = replay(write_pcap(tmp_path / "n.pcap", normal_conversation().frames))
    ras, _, others = check(out)
    assert others == [] and ras["connections_closed"] == 1


# ---- floods -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_syn_flood_of_a_million_connections(tmp_path):
    n = 1_000_000
    normal = normal_conversation(t0_ns=T0_NS + n // 2 * 1000, step_ns=1000).frames
    path = syn_flood_pcap(tmp_path / "flood.pcap", n, insert=normal, insert_at=n // 2)
    out = replay(path, timeout=120, batch_frames=4096)
    want = [dict(NORMAL_CALL)]
    want[0].update(now=str((T0_NS + n // 2 * 1000 + 10 * 1000) // 1_000_000), interval="1")
    normals = [c for c in out["calls"] if is_normal(c)]
    assert [dict(c) for c in normals] == want  # same call; its times are the flood's (1 us steps)
    out["calls"] = [NORMAL_CALL]
    ras, dec, _ = check(out, rss_kb=FLOOD_RSS_KB)
    assert dec["segments"] == n + NORMAL_SEGMENTS
    assert ras["connections_opened"] == n + 1
    limit = out["limits"]["max_connections"]
    assert out["peak"]["connections"] == limit
    assert ras["connections_evicted"] == n + 1 - 1 - limit  # all but the normal one and the last `limit`
    assert ras["connections_flushed"] == limit and ras["connections_closed"] == 1


@pytest.mark.slow
def test_hundred_thousand_connections_sending_a_byte_at_a_time(tmp_path):
    n = 100_000
    normal = normal_conversation(t0_ns=T0_NS + 2 * n * 1000, step_ns=1000).frames
    path = slow_loris_pcap(tmp_path / "slow.pcap", n, b"GET /", insert=normal)
    out = replay(path, timeout=120, batch_frames=4096)
    normals = [c for c in out["calls"] if is_normal(c)]
    assert len(normals) == 1 and normals[0][:-3] == NORMAL_CALL[:-3]
    out["calls"] = [NORMAL_CALL]
    ras, dec, _ = check(out, rss_kb=SLOW_RSS_KB)
    assert dec["segments"] == 7 * n + NORMAL_SEGMENTS
    assert out["peak"]["connections"] >= n  # all open at once (sampled after each batch)
    assert ras["bytes_delivered"] == 5 * n + 220
    # None ever finished its request line: each is flushed at the end, its partial header block counted.
    assert ras["connections_flushed"] == n
    assert ras["http_headers_lost"] == n


# ---- HTTP header and body attacks -------------------------------------------------------------------
def test_ten_thousand_headers_over_the_header_limit(tmp_path):
    block = b"GET /h HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(10000)) + b"\r\n"
    assert len(block) > 64 * 1024
    out = replay(with_normal(tmp_path, conv().handshake().request(block).response(OK).close().frames))
    ras, _, others = check(out)
    assert others == []
    assert ras["header_limit_hits"] == 1
    assert ras["responses_without_request"] == 1  # its answer, whose request was dropped
    assert out["peak"]["http_held"] <= 2 * out["limits"]["max_header_bytes"] + 2 * 8256


def test_ten_thousand_headers_within_the_header_limit(tmp_path):
    block = b"GET /h HTTP/1.1\r\nHost: x\r\n" + b"a:b\r\n" * 10000 + b"\r\n"
    out = replay(with_normal(tmp_path, conv().handshake().request(block).response(OK).close().frames))
    _, _, others = check(out)
    assert len(others) == 1
    assert detail(others[0], "request_header:a") == ["b"] * 10000
    assert detail(others[0], "response_body") == ["ok"]


def test_one_megabyte_header_line(tmp_path):
    block = b"GET /h HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MiB + b"\r\n\r\n"
    out = replay(with_normal(tmp_path, conv().handshake().request(block).response(OK).close().frames))
    ras, _, others = check(out)
    assert others == []
    assert ras["header_limit_hits"] == 1 and ras["resync_skipped_bytes"] > MiB - 128 * 1024
    assert out["peak"]["http_held"] <= 2 * out["limits"]["max_header_bytes"] + 2 * 8256


@pytest.mark.parametrize("size", [b"FFFFFFFFFFFFFFFFF", b"10000000000000000", b"FFFFFFFFFFFFFFFF",
                                  b"ffffffffffffffffffffffffffffffffffff"])
def test_chunk_size_overflowing_64_bits(tmp_path, size):
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabc\r\n0\r\n\r\n"
    req = b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    out = replay(with_normal(tmp_path, conv().handshake().request(req).response(resp).close().frames))
    ras, _, others = check(out)
    assert ras["http_parse_errors"] == 1
    assert len(others) == 1 and detail(others[0], "custom_field:vxcap_incomplete") == ["response_gap"]
    assert detail(others[0], "response_body") == []


def test_negative_chunk_size(tmp_path):
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nX\r\n-5\r\nZZZZ\r\n0\r\n\r\n"
    req = b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    out = replay(with_normal(tmp_path, conv().handshake().request(req).response(resp).close().frames),
                 timeout=HANG_S)
    ras, _, others = check(out)
    assert ras["http_parse_errors"] == 1
    assert len(others) == 1 and detail(others[0], "response_body") == ["X"]
    assert detail(others[0], "custom_field:vxcap_incomplete") == ["response_gap"]


@pytest.mark.parametrize("cl", [b"18446744073709551615", b"1000000000000000000"])
def test_absurd_content_length_waits_for_the_end_of_the_connection(tmp_path, cl):
    req = b"POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: " + cl + b"\r\n\r\nhello"
    out = replay(with_normal(tmp_path, conv().handshake().request(req).response(OK).close().frames))
    _, _, others = check(out)
    assert len(others) == 1
    assert detail(others[0], "request_body") == ["hello"]
    assert detail(others[0], "custom_field:vxcap_incomplete") == ["request_eof"]


def test_negative_or_malformed_content_length(tmp_path):
    frames = []
    for i, cl in enumerate([b"-5", b"99999999999999999999999999", b"1e9", b"5, 6"]):
        req = b"POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: " + cl + b"\r\n\r\nhello"
        frames += conv(i).handshake().request(req).response(OK).close().frames
    out = replay(with_normal(tmp_path, sorted(frames, key=lambda f: f[0])), timeout=HANG_S)
    ras, _, others = check(out)
    assert others == []
    assert ras["http_parse_errors"] >= 4 and ras["responses_without_request"] == 4


def bomb_response(coding: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Encoding: " + coding + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body)


def test_gzip_bomb(tmp_path):
    body = zeros_bomb("gzip", 256 * MiB)
    assert len(body) < 300_000
    req = b"GET /g HTTP/1.1\r\nHost: x\r\n\r\n"
    out = replay(with_normal(tmp_path, conv().handshake().request(req).response(bomb_response(b"gzip", body))
                             .close().frames))
    _, _, others = check(out)
    assert out["counters"]["messages"]["body_decode_limit_hits"] == 1
    assert len(others) == 1 and detail(others[0], "custom_field:vxcap_incomplete") == ["response_body_limit"]
    assert detail(others[0], "response_body") == ["\0" * out["limits"]["body_limit"]]


def test_brotli_bomb(tmp_path):
    body = zeros_bomb("br", 256 * MiB)
    assert len(body) < 1000
    req = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    out = replay(with_normal(tmp_path, conv().handshake().request(req).response(bomb_response(b"br", body))
                             .close().frames))
    _, _, others = check(out)
    assert out["counters"]["messages"]["body_decode_limit_hits"] == 1
    assert len(others) == 1 and detail(others[0], "custom_field:vxcap_incomplete") == ["response_body_limit"]
    assert detail(others[0], "response_body") == ["\0" * out["limits"]["body_limit"]]


def test_invalid_utf8_in_headers_and_bodies(tmp_path):
    req = (b"POST /p%FF?q=%C3%28 HTTP/1.1\r\nHost: x\r\nX-Bad: \xc3\x28\xa0\xa1\r\nContent-Length: 4\r\n\r\n"
           b"\xed\xa0\x80\xff")
    resp = b"HTTP/1.1 200 OK\r\nX-R: \xf0\x28\x8c\xbc\r\nContent-Length: 3\r\n\r\n\xc0\xaf\xfe"
    out = replay(with_normal(tmp_path, conv().handshake().request(req).response(resp).close().frames))
    _, _, others = check(out)
    assert len(others) == 1
    c = others[0]
    assert detail(c, "request_url") == ["http://x/p%FF"]
    assert detail(c, "request_param:q") == ["\ufffd("]
    assert detail(c, "request_header:x-bad") == ["\ufffd(\ufffd\ufffd"]
    assert detail(c, "request_body") == ["\ufffd\ufffd\ufffd\ufffd"]
    assert detail(c, "response_header:x-r") == ["\ufffd(\ufffd\ufffd"]
    assert detail(c, "response_body") == ["\ufffd\ufffd\ufffd"]


def test_invalid_bytes_in_a_header_name(tmp_path):
    req = b"GET /n HTTP/1.1\r\nHost: x\r\n\xff\xfe: v\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n"
    out = replay(with_normal(tmp_path, conv().handshake().request(req).response(OK + OK).close().frames),
                 timeout=HANG_S)
    ras, _, others = check(out)
    assert ras["http_parse_errors"] >= 1
    assert [detail(c, "request_url") for c in others] == [["http://x/after"]]


# ---- link, tunnel, IP and TCP headers that lie --------------------------------------------------------
def frames_at(frames: list[bytes], t0: int = T0_NS + 300_000) -> list[tuple[int, bytes]]:
    return [(t0 + i * 10_000, f) for i, f in enumerate(frames)]


SEG = ((("10.5.0.1", 5555), ("10.5.0.2", 80), 1, 1, SYN))


def test_vxlan_wrong_flags_and_short_headers(tmp_path):
    inner = eth(ipv4(tcp(5555, 80, 1, 0, SYN), "10.5.0.1", "10.5.0.2"))
    outer = lambda vx: eth(ipv4(udp(vx, 50000, 4789), "10.9.0.1", "10.9.0.2", proto=17))  # noqa: E731
    frames = [mirror(inner, flags=0x00), mirror(inner, flags=0xF7)]  # I flag clear
    frames += [outer(b""), outer(b"\x08"), outer(b"\x08\x00\x00\x00\x00\x00\x07")]  # shorter than 8 bytes
    frames += [eth(ipv4(b"\x00\x00\x12", "10.9.0.1", "10.9.0.2", proto=17))]  # UDP header cut
    out = replay(with_normal(tmp_path, frames_at(frames)))
    _, dec, others = check(out)
    assert others == []
    assert (dec["vxlan_no_i_flag"], dec["short_vxlan"], dec["short_udp"]) == (2, 3, 1)


def test_vxlan_nested_a_hundred_deep(tmp_path):
    frame = eth(ipv4(tcp(5555, 80, 1, 0, SYN), "10.5.0.1", "10.5.0.2"))
    for _ in range(100):
        frame = mirror(frame, vni=9)
    assert len(frame) > 100 * 50
    out = replay(with_normal(tmp_path, frames_at([frame] * 3)))
    _, dec, others = check(out)
    assert others == [] and dec["encap_depth_exceeded"] == 3


def test_ip_and_tcp_length_fields_that_lie(tmp_path):
    c, s = ("10.5.0.1", 5555), ("10.5.0.2", 80)
    t = tcp(c[1], s[1], 1, 0, SYN)
    frames = [
        mirror(eth(ipv4(t, *([c[0], s[0]]), total_len=19))),  # shorter than its own header
        mirror(eth(ipv4(t, c[0], s[0], ihl=4))),  # header length below 20
        mirror(eth(ipv4(b"", c[0], s[0], ihl=15)[:30])),  # header length beyond the frame
        mirror(eth(ipv4(tcp(c[1], s[1], 1, 0, SYN, doff=3), c[0], s[0]))),  # data offset below 5 words
        mirror(eth(ipv4(tcp(c[1], s[1], 1, 0, SYN, doff=15)[:20], c[0], s[0]))),  # beyond the IP payload
        mirror(eth(ipv4(t[:12], c[0], s[0]))),  # TCP header cut (the IP length agrees)
    ]
    # A request segment whose IP total length promises 1000 more bytes than it carries: the reassembler
    # takes them as bytes the capture lost and counts them.
    liar = conv(7).handshake()
    liar.segment(0, ACK | PSH, b"GET /liar HTTP/1.1\r\nHost: x\r\n\r\n", ip_total=20 + 20 + 31 + 1000)
    liar.seq[0] += 31 + 1000
    liar.response(OK).close()
    out = replay(with_normal(tmp_path, frames_at(frames) + liar.frames))
    ras, dec, others = check(out)
    assert (dec["bad_ip_length"], dec["bad_ipv4_header"], dec["bad_tcp_header"]) == (1, 2, 3)
    assert dec["truncated_frames"] == 1
    assert ras["truncated_bytes"] == 1000 and ras["gaps"] >= 1
    assert len(others) == 1 and detail(others[0], "request_url") == ["http://x/liar"]
    # The lost bytes follow a complete request: counted, but the call itself lost nothing.
    assert detail(others[0], "custom_field:vxcap_incomplete") == []
    assert detail(others[0], "response_body") == ["ok"]


def test_zero_length_and_one_byte_frames(tmp_path):
    out = replay(with_normal(tmp_path, frames_at([b"", b"\x00", b"", b"\xff"])))
    _, dec, others = check(out)
    assert others == [] and dec["short_ethernet"] == 4


# ---- capture files that lie ---------------------------------------------------------------------------
def normal_records() -> bytes:
    return b"".join(pcap_record(t, f) for t, f in normal_conversation().frames)


@pytest.mark.parametrize("lie, problem", [
    (pcap_record(T0_NS + 99_000_000, b"\x00" * 60, incl_len=300_000), "record length 300000 exceeds snap length"),
    (pcap_record(T0_NS + 99_000_000, b"\x00" * 60, incl_len=0xFFFFFFFF), "record length 4294967295 exceeds"),
    (pcap_record(T0_NS + 99_000_000, b"\x00" * 60, incl_len=5000), "truncated record (need 5000 bytes, have 60)"),
    (pcap_record(T0_NS + 99_000_000, b"\x00" * 60)[:9], "truncated record header (need 16 bytes, have 9)"),
])
def test_pcap_record_lengths_that_lie(tmp_path, lie, problem):
    path = tmp_path / "lying.pcap"
    path.write_bytes(pcap_header() + normal_records() + lie)
    out = replay(path)
    check(out)  # the calls before the damage are intact
    (error,) = out["errors"]
    offset = 24 + len(normal_records())
    assert f"offset {offset}: {problem}" in error


def test_pcap_original_length_that_lies(tmp_path):
    # orig_len far larger than incl_len: a truncated record, its frame decoded as far as captured.
    path = tmp_path / "orig.pcap"
    syn = tcp_frame(("10.5.0.1", 5555), ("10.5.0.2", 80), 1, 0, SYN)
    path.write_bytes(pcap_header() + normal_records() + pcap_record(T0_NS + 20_000_000, syn, orig_len=0xFFFFFFFF))
    out = replay(path)
    _, dec, _ = check(out)
    assert out["errors"] == [] and dec["truncated_frames"] == 1 and dec["segments"] == NORMAL_SEGMENTS + 1


def test_fin_and_data_bits_everywhere_do_not_confuse_the_normal_call(tmp_path):
    # A connection using the normal call's exact 4-tuple on another VNI must stay a separate connection.
    other = Conversation(("10.77.0.1", 41111), ("10.77.0.2", 8080), vni=8, t0_ns=T0_NS + 100_000)
    other.handshake().request(b"GARBAGE\r\n\r\n").segment(0, FIN | ACK).segment(1, FIN | ACK | PSH, b"x")
    out = replay(with_normal(tmp_path, other.frames))
    ras, _, others = check(out)
    assert others == [] and ras["connections_opened"] == 2


@pytest.mark.timeout(120)
def test_resync_scan_stays_linear_on_crafted_bytes():
    """Mid-stream bytes full of would-be methods and one long 'target' without a version token: the search
    for the next request line must not backtrack over the held bytes at every capital letter."""
    from support.segments import Flow
    from vxcap.message import MessageBuilder, MessageOptions
    from vxcap.reassembly import Reassembler

    f = Flow(mss=1400)  # no handshake: the stream is joined mid-way and scanned for a start line
    crafted = (b"A " + b"x" * 1398) + b"A B " * 350 + b"Q" * 5000
    for _ in range(300):
        f.request(crafted)
    f.request(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    f.response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    builder = MessageBuilder(MessageOptions(host="n"))
    calls = []
    r = Reassembler(lambda c, q, rr: calls.append(builder.details(c, q, rr)))
    r.process(f.close().segments)
    r.close_all()
    urls = [v for c in calls for k, v in c if k == "request_url"]
    assert urls == ["http://h/after"]
    assert r.counters()["resync_skipped_bytes"] >= 299 * len(crafted)
