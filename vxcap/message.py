"""A paired request and response become a Resurface message (SPEC section 2), rules applied, NDJSON out.

A message is a JSON array of ``[key, value]`` string pairs. Header names are lower-cased, one pair per value,
without ``host`` and ``transfer-encoding`` (the URL carries the host; chunking is removed). Bodies are
de-chunked by the HTTP layer and decoded here from their Content-Encoding (gzip, x-gzip, deflate with or
without the zlib wrapper, br), never growing past the body limit, so a decompression bomb costs nothing.
Text that is not valid UTF-8 is decoded with replacement characters, as Resurface's own agent does.
"""
from __future__ import annotations

import collections
import ipaddress
import socket
import zlib
from urllib.parse import parse_qsl

import orjson

try:  # brotli and zstandard are declared dependencies; the guard only keeps a broken install working
    import brotli
except ImportError:  # pragma: no cover
    brotli = None
try:
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None

from vxcap.http import CUT, NO_RESPONSE, Message

INCOMPLETE_KEY = "custom_field:vxcap_incomplete"

_SKIP_HEADERS = frozenset((b"host", b"transfer-encoding"))
_HOST = "host"  # sentinels of the header-name cache (compared by identity)
_SKIP = "skip"


class MessageOptions:
    """What goes into each message beyond the request and response themselves."""

    __slots__ = ("host", "body_limit", "realip_header", "custom_vni", "custom_mirror_source")

    def __init__(
        self,
        host: str | None = None,
        body_limit: int = 1 << 20,
        realip_header: str | None = None,
        custom_fields: frozenset[str] = frozenset(),
    ):
        unknown = set(custom_fields) - {"vni", "mirror_source"}
        if unknown:
            raise ValueError(f"custom fields {sorted(unknown)}: expected any of vni, mirror_source")
        self.host = host or socket.gethostname()
        self.body_limit = body_limit
        self.realip_header = realip_header.lower() if realip_header else None
        self.custom_vni = "vni" in custom_fields
        self.custom_mirror_source = "mirror_source" in custom_fields


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def decode_body(msg: Message, limit: int, stats: collections.Counter) -> str:
    """The body as text: content-decoded (bounded by ``limit``), or as captured when decoding fails."""
    if not msg.body:
        return ""
    raw = msg.body[0] if len(msg.body) == 1 else b"".join(msg.body)
    coding = None
    for name, value in msg.headers:
        if name.lower() == b"content-encoding":
            coding = value.strip().lower()
    if coding and coding != b"identity":
        try:
            out = _decompress(coding, raw, limit)
        except Exception:  # zlib.error, brotli.error, unknown coding: keep what was captured
            stats["body_decode_failures"] += 1
            out = None
        if out is not None:
            if isinstance(out, tuple):  # (partial output, hit the limit)
                out, _ = out
                stats["body_decode_limit_hits"] += 1
                msg.mark(CUT)
            raw = out
    return _text(raw)


def _decompress(coding: bytes, raw: bytes, limit: int):
    if coding in (b"gzip", b"x-gzip"):
        return _zlib(raw, 16 + zlib.MAX_WBITS, limit)
    if coding == b"deflate":
        # RFC 9110 8.4.1.2 says zlib-wrapped; many servers send raw deflate (RFC 1951). Try both.
        try:
            return _zlib(raw, zlib.MAX_WBITS, limit)
        except zlib.error:
            return _zlib(raw, -zlib.MAX_WBITS, limit)
    if coding == b"br" and brotli is not None:
        d = brotli.Decompressor()
        out = bytearray()
        # A few bytes of brotli expand to gigabytes in one process() call, however small the slice fed:
        # bound the output of each call (brotli >= 1.2), then drain with empty input while it has more.
        data = raw
        while True:
            out += d.process(data, output_buffer_limit=limit + 1 - len(out))
            data = b""
            if len(out) > limit:
                return bytes(out[:limit]), True
            if d.is_finished() or d.can_accept_more_data():
                return bytes(out)
    if coding == b"zstd" and zstandard is not None:
        # RFC 8878 section 7.2: zstd content coding. A streaming reader bounded by the limit, so a frame
        # that declares (or expands to) gigabytes costs at most limit + 1 bytes.
        with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as reader:
            out = reader.read(limit + 1)
        if len(out) > limit:
            return out[:limit], True
        return out
    raise ValueError(f"unsupported content-encoding {coding!r}")


def _zlib(raw: bytes, wbits: int, limit: int):
    d = zlib.decompressobj(wbits)
    out = d.decompress(raw, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        return out[:limit], True
    if not d.eof:
        # A body cut short by a gap: keep what decompressed so far (still useful), flag it upstream.
        out += d.flush()
    return out


def _target_parts(target: bytes) -> tuple[str, str, str | None]:
    """(path, query, host from an absolute-form target) of a request-target (RFC 9112 3.2)."""
    if target[:1] == b"/":  # origin-form, nearly always
        path, _, query = target.partition(b"?")
        if b"#" in query:
            query = query.split(b"#", 1)[0]
        return path.decode("utf-8", "replace"), query.decode("utf-8", "replace"), None
    t = _text(target)
    host = None
    lower = t[:8].lower()
    if lower.startswith("http://") or lower.startswith("https://"):
        rest = t.split("://", 1)[1]
        slash = rest.find("/")
        if slash < 0:
            host, t = rest, "/"
        else:
            host, t = rest[:slash], rest[slash:]
    t = t.split("#", 1)[0]
    path, _, query = t.partition("?")
    return path, query, host


def _url(host: str, path: str) -> str:
    if path.startswith("/"):
        return f"http://{host}{path}"
    if not path or path == "*":  # asterisk-form (RFC 9112 3.2.4): the origin itself
        return f"http://{host}"
    return f"http://{host}/{path}"


def _url_host(addr: str, port: int) -> str:
    a = f"[{addr}]" if ":" in addr else addr
    return a if port == 80 else f"{a}:{port}"


class MessageBuilder:
    """Builds, filters (rules) and serialises messages; counts what it drops."""

    def __init__(self, options: MessageOptions, rules=None):
        self.options = options
        self.rules = rules
        self.stats = collections.Counter()
        self._req_keys: dict[bytes, str] = {}
        self._resp_keys: dict[bytes, str] = {}

    def details(self, conn, req: Message | None, resp: Message | None) -> list[list[str]]:
        opts = self.options
        stats = self.stats
        out: list[list[str]] = []
        incomplete: list[str] = []
        host = None
        cookies: list[str] = []
        if req is not None:
            path, query, host = _target_parts(req.target)
            req_headers = []
            keys = self._req_keys
            for name, value in req.headers:
                key = keys.get(name)
                if key is None:
                    key = self._key(keys, "request_header:", name)
                if key is _HOST:
                    if host is None:
                        host = value.decode("utf-8", "replace").strip()
                    continue
                if key is _SKIP:
                    continue
                v = value.decode("utf-8", "replace")
                if key == "request_header:cookie":
                    cookies.append(v)
                req_headers.append([key, v])
            if not host:
                addr, port = conn.server()
                host = _url_host(addr, port)
            out.append(["request_method", req.method])
            out.append(["request_url", _url(host, path)])
            if resp is not None:
                out.append(["response_code", str(resp.status)])
            if query:
                for k, v in parse_qsl(query, keep_blank_values=True, errors="replace"):
                    out.append([f"request_param:{k.lower()}", v])
            if opts.realip_header:
                out.append([f"request_header:{opts.realip_header}", conn.client()[0]])
            out.extend(req_headers)
            if req.body:
                body = decode_body(req, opts.body_limit, stats)
                if body:
                    out.append(["request_body", body])
            for reason in req.incomplete:
                incomplete.append(reason if reason == NO_RESPONSE else f"request_{reason}")
        if resp is not None:
            keys = self._resp_keys
            for name, value in resp.headers:
                key = keys.get(name)
                if key is None:
                    key = self._key(keys, "response_header:", name)
                if key is _SKIP or key is _HOST:
                    continue
                out.append([key, value.decode("utf-8", "replace")])
            if resp.body:
                body = decode_body(resp, opts.body_limit, stats)
                if body:
                    out.append(["response_body", body])
            for reason in resp.incomplete:
                incomplete.append(f"response_{reason}")
        if cookies and self.rules is not None:
            out.extend(self.rules.session_fields(cookies))
        if opts.custom_vni and conn.vni is not None:
            out.append(["custom_field:vni", str(conn.vni)])
        if opts.custom_mirror_source and conn.tunnel_src:
            out.append(["custom_field:mirror_source", str(ipaddress.ip_address(conn.tunnel_src))])
        if incomplete:
            out.append([INCOMPLETE_KEY, ",".join(dict.fromkeys(incomplete))])
        start = req.ts_ns if req is not None else resp.ts_ns
        now = resp.ts_ns if resp is not None else start
        interval = (now - start) // 1_000_000
        out.append(["now", str(now // 1_000_000)])
        out.append(["interval", str(interval if interval > 0 else 1)])
        out.append(["host", opts.host])
        return out

    @staticmethod
    def _key(cache: dict, prefix: str, name: bytes) -> str:
        """The detail key for a raw header name (lower-cased, RFC 9110 5.1), remembered: names repeat."""
        lname = name.lower()
        if lname == b"host":
            key = _HOST
        elif lname in _SKIP_HEADERS:
            key = _SKIP
        else:
            key = prefix + lname.decode("latin-1")
        if len(cache) >= 4096:  # bounded: a header-name flood cannot grow it
            cache.clear()
        cache[name] = key
        return key

    def build(self, conn, req: Message | None, resp: Message | None) -> bytes | None:
        """The NDJSON line (no newline) for one call, or None when the rules dropped it."""
        details = self.details(conn, req, resp)
        if self.rules is not None:
            details = self.rules.apply(details)
            if details is None:
                self.stats["calls_dropped_by_rules"] += 1
                return None
        self.stats["calls_built"] += 1
        return orjson.dumps(details)

    def counters(self) -> dict[str, int]:
        return dict(self.stats)
