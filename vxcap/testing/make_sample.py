"""Make the committed sample: a real mirror-session capture and the calls the client knows it made.

    python -m vxcap.testing.make_sample OUTDIR     (root: builds a vxcap.testing.netns.MirrorLab)

writes ``OUTDIR/mirror-sample.pcap`` (tcpdump in the capture namespace, ``udp port 4789``: only the
mirrored VXLAN traffic, session VNI ``SAMPLE_VNI`` = 42) and ``OUTDIR/mirror-sample.calls.json``.

The client runs in this process on sockets opened in the client namespace and speaks raw HTTP/1.1 over
asyncio streams, so it holds the exact bytes of every request and response. Each entry of calls.json is
derived from those bytes alone (own small parser below, no vxcap code), in the order the calls were made:

    method, url ("http://" + Host + path, no query), params ([lower-cased name, decoded value] from the
    query), request_headers / response_headers ([[lower-cased name, value], ...] in wire order, without
    host and transfer-encoding), request_body / response_body (chunking removed, gzip/deflate/br decoded,
    UTF-8 with replacement, "" when none), status (string), vni, client / server ("ip:port", IPv6 as
    "[ip]:port"), request_raw_b64 / response_raw_b64 (the bytes on the wire; for Expect: 100-continue the
    request is head + body, and the interim "100 Continue" is not part of the response: it is no call).
"""
from __future__ import annotations

import asyncio
import base64
import gzip
import json
import pathlib
import sys
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import Sequence

SAMPLE_VNI = 42
PCAP_NAME = "mirror-sample.pcap"
CALLS_NAME = "mirror-sample.calls.json"

NGINX_HOST = "api.vxcap.test"
AIOHTTP_HOST = "app.vxcap.test:8080"
USER_AGENT = "vxcap-sample/1.0"


# -- HTTP/1.1 bytes -> call record (RFC 9112) --------------------------------------------------------------

def _split_head(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no end of header section")
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers, rest


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def dechunk(data: bytes) -> bytes:
    """Body of a chunked message (RFC 9112 section 7.1): chunk extensions and trailers dropped."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0].strip(), 16)
        pos = eol + 2
        if size == 0:
            return bytes(out)
        out += data[pos:pos + size]
        pos += size + 2


def decode_content(body: bytes, coding: str | None) -> bytes:
    for c in reversed([x.strip().lower() for x in (coding or "").split(",") if x.strip()]):
        if c in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
        elif c == "deflate":
            # RFC 9110 says zlib-wrapped; some servers send raw deflate.
            try:
                body = zlib.decompress(body)
            except zlib.error:
                body = zlib.decompress(body, -15)
        elif c == "br":
            import brotli

            body = brotli.decompress(body)
        elif c != "identity":
            raise ValueError(f"unknown content-coding {c}")
    return body


def _message_body(headers: list[tuple[str, str]], rest: bytes, has_body: bool) -> bytes:
    if not has_body:
        return b""
    te = (_get(headers, "transfer-encoding") or "").lower()
    body = dechunk(rest) if "chunked" in te else rest
    return decode_content(body, _get(headers, "content-encoding"))


def _visible(headers: list[tuple[str, str]]) -> list[list[str]]:
    return [[n.lower(), v] for n, v in headers if n.lower() not in ("host", "transfer-encoding")]


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def describe(request_raw: bytes, response_raw: bytes, *, vni: int, client: str, server: str) -> dict:
    """The calls.json record of one exchange, from its bytes only."""
    rline, rheaders, rrest = _split_head(request_raw)
    method, target, _version = rline.split(" ", 2)
    path, _, query = target.partition("?")
    sline, sheaders, srest = _split_head(response_raw)
    status = sline.split(" ", 2)[1]
    # RFC 9110 section 6.4.1: no body in a response to HEAD, in 1xx, 204 and 304.
    response_has_body = method != "HEAD" and status not in ("204", "304") and not status.startswith("1")
    return {
        "method": method,
        "url": f"http://{_get(rheaders, 'host')}{path}",
        "params": [[k.lower(), v] for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)],
        "request_headers": _visible(rheaders),
        "request_body": _message_body(rheaders, rrest, True).decode("utf-8", "replace"),
        "status": status,
        "response_headers": _visible(sheaders),
        "response_body": _message_body(sheaders, srest, response_has_body).decode("utf-8", "replace"),
        "vni": vni,
        "client": client,
        "server": server,
        "request_raw_b64": base64.b64encode(request_raw).decode(),
        "response_raw_b64": base64.b64encode(response_raw).decode(),
    }


# -- the client -------------------------------------------------------------------------------------------

async def read_response(reader: asyncio.StreamReader, method: str) -> tuple[bytes, list[bytes]]:
    """One final response's exact bytes, plus the interim (1xx) responses read before it."""
    interim: list[bytes] = []
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        sline, headers, _ = _split_head(head)
        status = int(sline.split(" ", 2)[1])
        if 100 <= status < 200 and status != 101:
            interim.append(head)
            continue
        break
    if method == "HEAD" or status in (204, 304):
        return head, interim
    if "chunked" in (_get(headers, "transfer-encoding") or "").lower():
        body = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            body += line
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailer section, ends with an empty line
                while True:
                    t = await reader.readuntil(b"\r\n")
                    body += t
                    if t == b"\r\n":
                        return head + bytes(body), interim
            body += await reader.readexactly(size + 2)
    length = _get(headers, "content-length")
    if length is not None:
        return head + await reader.readexactly(int(length)), interim
    return head + await reader.read(), interim


def request_bytes(method: str, target: str, host: str, headers: Sequence[tuple[str, str]] = (),
                  body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


@dataclass
class Connection:
    """A client connection in the lab's client namespace that records every exchange on it."""

    lab: object
    ip: str
    port: int
    calls: list = field(default_factory=list)
    vni: int = SAMPLE_VNI

    async def open(self) -> "Connection":
        sock = self.lab.connect("client", self.ip, self.port)
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        local = sock.getsockname()
        self.client = _addr(local[0], local[1])
        self.server = _addr(self.ip, self.port)
        return self

    def _record(self, req: bytes, resp: bytes) -> None:
        self.calls.append(describe(req, resp, vni=self.vni, client=self.client, server=self.server))

    async def exchange(self, req: bytes) -> bytes:
        self.writer.write(req)
        await self.writer.drain()
        resp, interim = await read_response(self.reader, req.split(b" ", 1)[0].decode())
        assert not interim, interim
        self._record(req, resp)
        return resp

    async def pipelined(self, reqs: list[bytes]) -> None:
        # All requests in one write: they leave in the same segment(s) before any response (RFC 9112 9.3.2).
        self.writer.write(b"".join(reqs))
        await self.writer.drain()
        for req in reqs:
            resp, _ = await read_response(self.reader, req.split(b" ", 1)[0].decode())
            self._record(req, resp)

    async def expect_continue(self, head: bytes, body: bytes) -> bytes:
        # Send the header section alone, wait for "100 Continue", then the body (RFC 9110 section 10.1.1).
        self.writer.write(head)
        await self.writer.drain()
        first = await self.reader.readuntil(b"\r\n\r\n")
        if not first.startswith(b"HTTP/1.1 100"):
            raise RuntimeError(f"expected 100 Continue, got {first!r}")
        self.writer.write(body)
        await self.writer.drain()
        resp, _ = await read_response(self.reader, "POST")
        self._record(head + body, resp)
        return resp

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _etag(resp: bytes) -> str:
    _, headers, _ = _split_head(resp)
    etag = _get(headers, "etag")
    if not etag:
        raise RuntimeError("nginx sent no ETag")
    return etag


async def run_client(lab) -> list[dict]:
    """Make the sample's calls (17) against nginx (80) and the aiohttp app (8080); return the records."""
    calls: list[dict] = []
    ua = [("User-Agent", USER_AGENT)]

    # nginx, one keep-alive connection over IPv4.
    c = await Connection(lab, lab.app_ip, 80, calls).open()
    await c.exchange(request_bytes(
        "GET", "/api/status?page=2&tag=a&tag=b%20c&Q=%E2%9C%93&q=x+y&empty=", NGINX_HOST,
        ua + [("Accept", "application/json"), ("X-Forwarded-For", "203.0.113.9")]))
    gz = await c.exchange(request_bytes("GET", "/data.json", NGINX_HOST, ua + [("Accept-Encoding", "gzip")]))
    await c.exchange(request_bytes("GET", "/data.json", NGINX_HOST,
                                   ua + [("Accept-Encoding", "gzip"), ("If-None-Match", _etag(gz))]))
    await c.exchange(request_bytes("HEAD", "/data.json", NGINX_HOST, ua))
    await c.exchange(request_bytes("GET", "/empty", NGINX_HOST, ua + [("Cookie", "session=abc123; theme=dark")]))
    await c.exchange(request_bytes("GET", "/large.txt", NGINX_HOST, ua))  # ~100 KB, many segments
    await c.exchange(request_bytes("POST", "/data.json", NGINX_HOST, ua + [("Content-Type", "text/plain"),
                                                                           ("Content-Length", "5")], b"hello"))
    await c.close()

    # aiohttp, one keep-alive connection over IPv4.
    a = await Connection(lab, lab.app_ip, 8080, calls).open()
    body = json.dumps({"name": "widget", "qty": 3, "email": "someone@example.com", "note": "caf\u00e9"}).encode()
    json_type = [("Content-Type", "application/json")]
    await a.exchange(request_bytes("POST", "/echo?source=sample", AIOHTTP_HOST,
                                   ua + json_type + [("Content-Length", str(len(body)))], body))
    await a.exchange(request_bytes("GET", "/stream", AIOHTTP_HOST, ua))
    await a.exchange(request_bytes("GET", "/gzip", AIOHTTP_HOST, ua + [("Accept-Encoding", "gzip, deflate")]))
    upload = json.dumps({"rows": [{"i": i, "v": "x" * 20} for i in range(60)]}).encode()
    await a.expect_continue(request_bytes(
        "POST", "/upload", AIOHTTP_HOST,
        ua + json_type + [("Content-Length", str(len(upload))), ("Expect", "100-continue")]),
        upload)
    await a.exchange(request_bytes("HEAD", "/items?id=7", AIOHTTP_HOST, ua))
    await a.exchange(request_bytes("GET", "/nocontent", AIOHTTP_HOST, ua))
    # A chunked request body, gzip-encoded: the decoder must undo both.
    raw = json.dumps({"compressed": "request", "n": list(range(30))}).encode()
    coded = [("Content-Encoding", "gzip"), ("Transfer-Encoding", "chunked")]
    await a.exchange(request_bytes("POST", "/echo", AIOHTTP_HOST, ua + json_type + coded,
                                   chunked(gzip.compress(raw, mtime=0), 40)))
    await a.close()

    # Two pipelined requests on one connection.
    p = await Connection(lab, lab.app_ip, 8080, calls).open()
    await p.pipelined([
        request_bytes("GET", "/items?x=1&x=2", AIOHTTP_HOST, ua),
        request_bytes("POST", "/echo", AIOHTTP_HOST, ua + [("Content-Type", "application/json"),
                                                           ("Content-Length", "13")], b'{"pipe":true}'),
    ])
    await p.close()

    # One call over IPv6.
    v6 = await Connection(lab, lab.app_ip6, 8080, calls).open()
    await v6.exchange(request_bytes("GET", "/items?lang=en&lang=fr", f"[{lab.app_ip6}]:8080",
                                    ua + [("Connection", "close")]))
    await v6.close()
    return calls


def make_sample(outdir: str | pathlib.Path, *, vni: int = SAMPLE_VNI) -> tuple[pathlib.Path, pathlib.Path]:
    from vxcap.testing.netns import MirrorLab

    out = pathlib.Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    pcap, calls_path = out / PCAP_NAME, out / CALLS_NAME
    with MirrorLab(vni=vni) as lab:
        lab.start_nginx(80)
        lab.start_aiohttp(8080)
        cap = lab.tcpdump("capture", lab.capture_iface, pcap)
        try:
            calls = asyncio.run(run_client(lab))
        finally:
            stats = cap.stop()
    if stats.dropped != 0 or stats.captured != stats.received:
        raise RuntimeError(f"capture lost packets, run again: {stats}")
    calls_path.write_text(json.dumps(calls, indent=1, ensure_ascii=False) + "\n")
    return pcap, calls_path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    t = time.monotonic()
    pcap, calls = make_sample(argv[0])
    n = len(json.loads(calls.read_text()))
    print(f"{pcap} ({pcap.stat().st_size} bytes), {calls} ({n} calls) in {time.monotonic() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
