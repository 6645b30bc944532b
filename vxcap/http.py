"""HTTP/1.x on top of reassembled TCP: one parser per direction, requests paired with responses in order.

The reassembler hands each direction's bytes, in order, to a :class:`HalfParser`, and reports the bytes it
could not deliver as gaps. httptools (llhttp) parses headers and de-chunks bodies; this module decides where
each message *starts* and *ends* in the byte stream itself, because llhttp cannot be told that a response
answers a HEAD request (RFC 9112 section 6.3 rule 1: such a response has no body whatever its
Content-Length says), nor where it stopped after an error. Knowing the boundaries exactly lets us:

- start in the middle of a connection (SYN missed) at the first request line or status line;
- restart after a gap at the next message boundary, emitting the damaged message with what was captured;
- bound the header block of each message (a header flood costs at most ``max_header_bytes``);
- end the parse for good on 101 Switching Protocols, a successful CONNECT, TLS or HTTP/2 (RFC 9113 3.4).

Framing follows RFC 9112 section 6: Transfer-Encoding chunked (last coding) wins over Content-Length; a
request without either has no body; a response without either is delimited by the connection's close;
responses to HEAD, 1xx, 204 and 304 have no body. Interim 1xx responses are skipped (not calls).
"""
from __future__ import annotations

import re


def _serial_diff(a: int, b: int) -> int:
    """a - b in 32-bit serial number arithmetic (RFC 1982): negative when a is before b."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d & 0x80000000 else d

import httptools

# Reasons a message can be incomplete; they end up in the ``custom_field:vxcap_incomplete`` detail.
GAP = "gap"  # bytes of this message were never captured (loss, truncation, buffer overflow)
CUT = "body_limit"  # body longer than the body limit: kept up to the limit
NO_RESPONSE = "no_response"  # the request never got an answer in time
EOF = "eof"  # the connection ended inside the message

# A request line (RFC 9112 3: method SP request-target SP HTTP-version CRLF) or status line (RFC 9112 4).
# Used only to find a message boundary after a gap or in a stream captured mid-way, so it is strict
# about the version token and lenient about the method (any token of capitals, as servers accept).
# Not anchored to a line start: after a gap the next message usually follows the end of a body directly.
# A request line is found from its version token backwards (find_request_line), never with a regex that
# could backtrack over a long target at every capital letter: scanning stays linear in the bytes held.
_VERSION_END = re.compile(rb" HTTP/1\.[01]\r?\n")
_METHOD_TAIL = re.compile(rb"[A-Z][A-Z0-9_-]{0,19}\Z")
_TARGET = re.compile(rb"[!-~]+")  # visible ASCII (RFC 9112 3.2)
_MAX_TARGET = 8192
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9](?:[ \r\n])")
_TLS_RECORD = re.compile(rb"\x16\x03[\x00-\x04]")  # RFC 8446 5.1: handshake record, legacy version 3.x
# The first bytes of an HTTP/1.x message: a method token and a space, or a status line's version.
_HTTP_START = re.compile(rb"[A-Z][A-Z0-9_-]{0,19} |HTTP/1\.")
_HTTP_PREFIX = re.compile(rb"[A-Z][A-Z0-9_-]{0,20}|HTTP/1?")
# Every proper prefix of "HTTP/1.x NNN " (a status line's start).
_STATUS_PREFIX = re.compile(rb"H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01](?: (?:[1-5](?:[0-9](?:[0-9])?)?)?)?)?)?)?)?)?)?)?")

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_HUGE_LENGTH = 1 << 62  # bodies this long never end before the connection does
_MAX_LINE_SCAN = 8192 + 64  # bytes kept while looking for a start line split across segments

_NO_BODY_STATUS = (204, 304)


class Message:
    """One request or response as captured. Owned by the connection until it is emitted."""

    __slots__ = (
        "is_request", "method", "target", "status", "headers", "body", "body_size", "ts_ns",
        "incomplete", "done", "seq", "ack",
    )

    def __init__(self, is_request: bool, ts_ns: int):
        self.is_request = is_request
        self.method = ""
        self.target = b""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0  # bytes kept in ``body`` (de-chunked, still content-encoded)
        self.ts_ns = ts_ns
        self.incomplete: list[str] = []
        self.done = False
        self.seq = 0  # TCP sequence number of the first byte (pairing, see HttpConnection._pair)
        self.ack: int | None = None  # acknowledgement number carried with the first byte

    def mark(self, reason: str) -> None:
        if reason not in self.incomplete:
            self.incomplete.append(reason)


class Limits:
    """Per-message limits of the HTTP layer (validated by the configuration module)."""

    __slots__ = ("max_header_bytes", "body_limit", "max_pending")

    def __init__(self, max_header_bytes: int = 65536, body_limit: int = 1 << 20, max_pending: int = 256):
        self.max_header_bytes = max_header_bytes
        self.body_limit = body_limit
        # Requests waiting for their response on one connection (pipelining depth); past it the oldest
        # is emitted without a response so a one-sided capture cannot grow without bound.
        self.max_pending = max_pending


# Direction states.
_SCAN = 0  # looking for a start line (mid-stream start, after a gap, after garbage)
_HEADERS = 1  # at a message boundary: buffering the header block
_BODY_LENGTH = 2  # Content-Length body: ``remaining`` bytes to go
_BODY_CHUNKED = 3  # chunked body: ChunkScanner de-chunks it and finds its end
_BODY_CLOSE = 4  # response body delimited by the end of the connection
_DEAD = 5  # not HTTP/1.x any more (upgrade, tunnel, TLS, h2, non-HTTP): bytes ignored

# Chunked framing sub-states (RFC 9112 7.1).
_CH_SIZE, _CH_DATA, _CH_DATA_END, _CH_TRAILER = range(4)


class ChunkScanner:
    """De-chunks a chunked body (RFC 9112 7.1) and finds where it ends.

    llhttp parses only header blocks; bodies are ours, so that a gap inside a body costs only the lost
    bytes (the framing is known, parsing goes on) instead of the rest of the connection.
    """

    __slots__ = ("state", "remaining", "line", "trailers")

    def __init__(self):
        self.state = _CH_SIZE
        self.remaining = 0
        self.line = b""
        self.trailers: list[tuple[bytes, bytes]] = []

    def scan(self, data: bytes, i: int, out) -> tuple[int, bool]:
        """Consume ``data[i:]``, passing chunk data to ``out``; return (index after the body's bytes, ended).

        Raises ValueError on framing that is not chunked encoding (the caller resynchronises).
        """
        n = len(data)
        while i < n:
            st = self.state
            if st == _CH_DATA:
                take = min(self.remaining, n - i)
                out(data[i:i + take] if (i or take != n) else data)
                i += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _CH_DATA_END
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                if len(self.line) > 4096:
                    raise ValueError("chunk framing line longer than 4096 bytes")
                return n, False
            line = self.line + data[i:j]
            self.line = b""
            i = j + 1
            if st == _CH_SIZE:
                size_text = line.split(b";", 1)[0].strip()
                # HEXDIG only (RFC 9112 7.1), at most 15 (< 2**63): int(x, 16) alone also takes "-5" (a
                # negative size walks the scan backwards forever), "+5", "0x5" and "5_0".
                if not _CHUNK_SIZE.fullmatch(size_text):
                    raise ValueError("invalid chunk size")
                size = int(size_text, 16)
                if size == 0:
                    self.state = _CH_TRAILER
                else:
                    self.remaining = size
                    self.state = _CH_DATA
            elif st == _CH_DATA_END:
                if line not in (b"", b"\r"):
                    raise ValueError("chunk data longer than its size")
                self.state = _CH_SIZE
            else:  # trailer section (RFC 9112 7.1.2): field lines, then an empty line
                if line in (b"", b"\r"):
                    return i, True
                name, sep, value = line.partition(b":")
                if sep and len(self.trailers) < 64:
                    self.trailers.append((name.strip(), value.strip()))
        return i, False

    def skip(self, nbytes: int) -> bool:
        """``nbytes`` lost; True when they fell inside one chunk's data (the framing is still known)."""
        if self.state == _CH_DATA and nbytes < self.remaining:
            self.remaining -= nbytes
            return True
        return False


# Methods llhttp knows whose requests are framed like any other (not CONNECT): an unknown extension
# method is parsed as POST (same framing rules, RFC 9112 6.3) and reported as sent.
_LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK BIND "
    b"REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE "
    b"MKCALENDAR LINK UNLINK SOURCE QUERY CONNECT".split()
)
_LOOSE_VERSION = re.compile(rb"HTTP/1\.?[0-9]?")


def find_request_line(buf: bytes) -> int:
    """Offset of the first request line (method SP target SP HTTP/1.x CRLF, RFC 9112 3) in ``buf``, or -1.

    Linear: each " HTTP/1.x" line end found is checked backwards (a target of printable non-space bytes,
    at most 8 KiB, after a method token) and the search goes on after it.
    """
    pos = 0
    while True:
        m = _VERSION_END.search(buf, pos)
        if m is None:
            return -1
        end = m.start()
        space = buf.rfind(b" ", max(0, end - _MAX_TARGET - 1), end)
        if space > 0 and _TARGET.fullmatch(buf, space + 1, end):
            head = _METHOD_TAIL.search(buf, max(0, space - 20), space)
            if head is not None:
                return head.start()
        pos = m.end()


def _lenient_request_line(block: bytes) -> tuple[bytes, str] | None:
    """The block with its request line made acceptable to llhttp, and the method as sent; or None."""
    line_end = block.find(b"\r\n")
    parts = block[:line_end].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    method, target, version = parts
    if not method.isupper() and not method.replace(b"_", b"").replace(b"-", b"").isalnum():
        return None
    fixed_method = method if method in _LLHTTP_METHODS else b"POST"
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        if not _LOOSE_VERSION.fullmatch(version):
            return None
        version = b"HTTP/1.1" if version.endswith(b"1") else b"HTTP/1.0"
    if fixed_method == method and version == parts[2]:
        return None
    return fixed_method + b" " + target + b" " + version + block[line_end:], method.decode("ascii", "replace")


class HalfParser:
    """One direction of a connection: bytes in, :class:`Message` objects out (to the connection)."""

    __slots__ = (
        "conn", "is_request", "state", "buf", "buf_ts", "parser", "msg", "remaining", "chunks",
        "stats", "limits", "_complete", "held", "held_bytes", "eof_pending", "_salvaging", "buf_seq", "buf_ack", "rest_seq",
        "end_seq", "seen", "_unsure_body", "_probe",
    )

    def __init__(self, conn: "HttpConnection", is_request: bool | None, at_start: bool):
        self.conn = conn
        self.is_request = is_request  # None until the first start line tells (no SYN, no port hint)
        self.state = _HEADERS if at_start and is_request is not None else _SCAN
        self.buf = b""
        self.buf_ts = 0
        self.buf_seq = 0  # TCP sequence number of buf[0]
        self.buf_ack: int | None = None  # acknowledgement number of the segment that carried buf[0]
        self.rest_seq = 0  # sequence number of the bytes _take_headers/_scan hand back
        self.end_seq = 0  # sequence number after the last byte seen (gaps included)
        self.seen = False  # end_seq means something only once bytes were fed
        self.parser = None
        self.msg: Message | None = None
        self.remaining = 0
        self.chunks: ChunkScanner | None = None
        self.stats = conn.stats
        self.limits = conn.limits
        self._complete = False
        self._salvaging = False  # parsing a header block a gap cut short (see _salvage)
        self._unsure_body = False  # a response whose request is unknown: might answer a HEAD
        self._probe = b""  # first bytes of such a response's body, until they tell
        self.held: list[tuple[bytes, int]] | None = None  # chunks held while deferred
        self.held_bytes = 0
        self.eof_pending = False  # eof() arrived while held: run it after the held bytes

    # ---- llhttp callbacks -------------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self.msg.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.msg.headers.append((name, value))

    def _body(self, body: bytes) -> None:
        """Keep body bytes up to the body limit; past it the message is marked cut."""
        msg = self.msg
        room = self.limits.body_limit - msg.body_size
        if room <= 0:
            msg.mark(CUT)
            return
        if len(body) > room:
            body = body[:room]
            msg.mark(CUT)
        msg.body.append(body)
        msg.body_size += len(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # ---- stream input -----------------------------------------------------------------------------
    def feed(self, data: bytes, ts_ns: int, seq: int = 0, ack: int | None = None) -> None:
        """In-order bytes of this direction; ``seq`` is the TCP sequence number of ``data[0]`` and
        ``ack`` the acknowledgement number of the segment that carried it (used for pairing)."""
        end = (seq + len(data)) & 0xFFFFFFFF
        if self.held is not None:
            # Waiting for the request side (see _take_headers): keep chunks with their capture times.
            self.end_seq = end
            self.seen = True
            self.held.append((data, ts_ns, seq, ack))
            self.held_bytes += len(data)
            if self.conn.response_may_proceed(self.buf_seq, self.buf_ack, self.held_bytes):
                self.resume()
            return
        self._feed(data, ts_ns, seq, ack)
        # Only now is this direction parsed up to ``end``: a response held for its request may be an
        # orphan (its request was lost) once the request side is parsed past the response's ack.
        self.end_seq = end
        self.seen = True
        if self.is_request and self.conn.deferred is not None:
            self.conn.deferred.resume()

    def _feed(self, data: bytes, ts_ns: int, seq: int, ack) -> None:
        while data:
            st = self.state
            if st == _HEADERS or st == _SCAN:
                if not self.buf:
                    self.buf_ts = ts_ns
                    self.buf_seq = seq
                    self.buf_ack = ack
                    self.buf = data
                else:
                    self.buf += data
                    if ts_ns < self.buf_ts:
                        # A mirror reorders: the message started when its first byte was captured,
                        # whichever segment that came in.
                        self.buf_ts = ts_ns
                data = self._take_headers() if st == _HEADERS else self._scan()
                seq = self.rest_seq
            elif self._unsure_body and (st == _BODY_LENGTH or st == _BODY_CHUNKED):
                probe = self._probe + data
                if len(probe) < 13 and _STATUS_PREFIX.fullmatch(probe):
                    self._probe = probe  # too few bytes to tell a status line from a body: wait
                    return
                self._unsure_body = False
                self._probe = b""
                data = probe
                if _STATUS_LINE.match(probe):
                    # The message ended at its headers (it answered a HEAD we did not see); these bytes
                    # start the next response.
                    self.stats["responses_bodyless_by_guess"] += 1
                    self.chunks = None
                    self._finish()
            elif st == _BODY_LENGTH:
                n = self.remaining
                if len(data) <= n:
                    self._body(data)
                    self.remaining = n - len(data)
                    if self.remaining == 0:
                        self._finish()
                    return
                self._body(data[:n])
                data = data[n:]
                seq = (seq + n) & 0xFFFFFFFF
                self.remaining = 0
                self._finish()
                self.buf_ts = ts_ns
            elif st == _BODY_CHUNKED:
                try:
                    end, done = self.chunks.scan(data, 0, self._body)
                except ValueError:
                    self.stats["http_parse_errors"] += 1
                    self._abort(GAP)
                    continue  # resynchronise on these same bytes
                if not done:
                    return
                self.msg.headers.extend(self.chunks.trailers)
                data = data[end:]
                seq = (seq + end) & 0xFFFFFFFF
                self._finish()
                self.buf_ts = ts_ns
            elif st == _BODY_CLOSE:
                self._body(data)
                return
            else:  # _DEAD
                self.stats["bytes_ignored"] += len(data)
                return

    def gap(self, nbytes: int) -> None:
        """``nbytes`` of this direction were lost: end the message in progress, resynchronise."""
        self.end_seq = (self.end_seq + nbytes) & 0xFFFFFFFF
        if self.held is not None:
            # Held for the request side: the gap takes its place in line with the held bytes.
            self.held.append((None, nbytes, 0, None))
            return
        self._gap(nbytes)

    def _gap(self, nbytes: int) -> None:
        if self.state == _DEAD:
            return
        msg = self.msg
        st = self.state
        if msg is not None:
            # Inside a body whose framing we know, a gap costs only the lost bytes: the message keeps
            # its boundary (marked), and nothing after it is lost.
            if (st == _BODY_LENGTH and nbytes < self.remaining) or st == _BODY_CLOSE or (
                    st == _BODY_CHUNKED and self.chunks.skip(nbytes)):
                if st == _BODY_LENGTH:
                    self.remaining -= nbytes
                msg.mark(GAP)
                self.stats["body_gaps_bridged"] += 1
                return
            if st == _BODY_LENGTH and nbytes == self.remaining:
                msg.mark(GAP)
                self.remaining = 0
                self.stats["body_gaps_bridged"] += 1
                self._finish()
                return
        if self.is_request:
            self.conn.request_lost()
        if msg is not None:
            msg.mark(GAP)
            self._emit_partial()
        elif self.buf and st == _HEADERS and not self._salvage():
            self.stats["http_headers_lost"] += 1
        self.buf = b""
        self.parser = None
        self.state = _SCAN

    def eof(self) -> None:
        """The direction ended (FIN, RST, idle timeout, end of capture)."""
        if self.held is not None:
            if not self.conn.force_responses:
                # The response side ended while waiting for its requests (they arrive later on a
                # mirror that crossed the directions): finish once they are known.
                self.eof_pending = True
                return
            self.resume()
        if self.is_request:
            # No request will come any more: responses must not wait for one.
            self.conn.force_responses = True
            self.conn.request_lost()
        if self.state == _BODY_CLOSE and self.msg is not None:
            self._finish()
        elif self.msg is not None:
            self.msg.mark(EOF)
            self._emit_partial()
        elif self.buf and self.state == _HEADERS and self.buf.strip(b"\r\n") and not self._salvage():
            self.stats["http_headers_lost"] += 1
        self.buf = b""
        self.state = _DEAD

    # ---- internals --------------------------------------------------------------------------------
    def _new_parser(self):
        self.parser = (httptools.HttpRequestParser if self.is_request else httptools.HttpResponseParser)(self)
        # Be as lenient as the servers we watch: a bare LF ends a line (RFC 9112 2.2 allows recipients to
        # accept it), spaces after a chunk size occur in the wild, and an observer must keep parsing what
        # follows a message that said "Connection: close" (or was HTTP/1.0): the peers evidently did.
        self.parser.set_dangerous_leniencies(
            lenient_optional_cr_before_lf=True, lenient_spaces_after_chunk_size=True,
            lenient_data_after_close=True, lenient_keep_alive=True,
        )

    def _scan(self) -> bytes:
        """Look for a start line in ``buf``; keep only what could still begin one."""
        buf = self.buf
        if not self.conn.sized_up and self.conn.sniff(self, buf):
            return b""
        at = -1
        found_request = False
        if self.is_request is not False:
            at = find_request_line(buf)
            found_request = at >= 0
        if not self.is_request:
            m = _STATUS_LINE.search(buf)
            if m is not None and (at < 0 or m.start() < at):
                at = m.start()
                found_request = False
        if at < 0:
            if len(buf) > _MAX_LINE_SCAN:
                cut = len(buf) - _MAX_LINE_SCAN
                self.stats["resync_skipped_bytes"] += cut
                self.buf = buf[cut:]
                self.buf_seq = (self.buf_seq + cut) & 0xFFFFFFFF
            return b""
        if at:
            self.stats["resync_skipped_bytes"] += at
        if self.is_request is None:
            self.conn.assign_roles(self, found_request)
        self.state = _HEADERS
        self.buf = b""
        self.rest_seq = (self.buf_seq + at) & 0xFFFFFFFF
        return buf[at:]

    def _take_headers(self) -> bytes:
        """At a boundary: once the whole header block is buffered, parse it and set up body framing."""
        buf = self.buf
        if not self.conn.sized_up and self.conn.sniff(self, buf):
            return b""
        if buf[:1] in (b"\r", b"\n"):
            # Stray CRLFs between messages (RFC 9112 2.2: a server SHOULD ignore at least one).
            stripped = buf.lstrip(b"\r\n")
            self.buf_seq = (self.buf_seq + len(buf) - len(stripped)) & 0xFFFFFFFF
            buf = self.buf = stripped
            if not buf:
                return b""
        a = buf.find(b"\n\r\n")
        b = buf.find(b"\n\n")
        if a < 0 and b < 0:
            if len(buf) > self.limits.max_header_bytes:
                self.stats["header_limit_hits"] += 1
                self.buf = b""
                self.state = _SCAN
            return b""
        end = a + 3 if b < 0 or (0 <= a < b) else b + 2
        self.rest_seq = (self.buf_seq + end) & 0xFFFFFFFF
        if end > self.limits.max_header_bytes:
            self.stats["header_limit_hits"] += 1
            self.buf = b""
            self.state = _SCAN
            return buf[end:]
        if not self.is_request and not self.conn.response_may_proceed(self.buf_seq, self.buf_ack, len(buf)):
            # Directions arrive crossed on a mirror: wait until the request this response answers has
            # been parsed, so that a response to HEAD is known to have no body (RFC 9112 6.3).
            self.conn.deferred = self
            self.held = []
            self.held_bytes = len(buf)
            return b""
        self.buf = b""
        rest = buf[end:]
        block = buf[:end]
        target = None
        if block.count(b"\n") != block.count(b"\r\n"):
            # Bare LF line ends (RFC 9112 2.2 lets a recipient accept them; llhttp rejects one after the
            # request line even when lenient): normalise for the parser only.
            block = block.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self.is_request:
            line_end = block.find(b"\r\n")
            if block.count(b" ", 0, line_end) > 2:
                # Spaces inside the request-target ("GET /a b HTTP/1.0"): servers and peers (Zeek, Arkime)
                # accept them; llhttp does not. Parse with them escaped, report the target as sent.
                method, _, rest_of_line = block[:line_end].partition(b" ")
                target, _, version = rest_of_line.rpartition(b" ")
                block = method + b" " + target.replace(b" ", b"%20") + b" " + version + block[line_end:]
        msg = self.msg = Message(self.is_request, self.buf_ts)
        if self._salvaging:
            msg.mark(GAP)
        msg.seq = self.buf_seq
        msg.ack = self.buf_ack
        if self.parser is None:
            self._new_parser()
        self._complete = False
        method_as_sent = None
        ok, upgrade = self._parse_block(block)
        if not ok and self.is_request:
            # Servers accept more than llhttp does: extension methods ("CCM_POST"), a version cut short
            # ("HTTP/1."). Retry once with those parts made standard for the parser; report them as sent.
            fixed = _lenient_request_line(block)
            if fixed is not None:
                block, method_as_sent = fixed
                msg.headers.clear()
                msg.target = b""
                self._new_parser()
                ok, upgrade = self._parse_block(block)
                if ok:
                    self.stats["lenient_request_lines"] += 1
        if not ok:
            self.stats["http_parse_errors"] += 1
            self.msg = None
            self.parser = None
            self.state = _SCAN
            # Resume the search one byte on in the captured bytes, not in ``block``: the lenient retry may
            # have rewritten it ("ET" made "POST"), and "OST ..." would then be found again forever.
            self.buf = buf[1:end]
            self.buf_ts = msg.ts_ns
            self.buf_seq = (msg.seq + 1) & 0xFFFFFFFF
            return rest
        if self.is_request:
            msg.method = method_as_sent or self.parser.get_method().decode("ascii", "replace")
            if target is not None:
                msg.target = target
            self.conn.request_started(msg)
        else:
            msg.status = self.parser.get_status_code()
        return self._framing(msg, upgrade, rest)

    def _parse_block(self, block: bytes) -> tuple[bool, bool]:
        """Feed a whole header block to llhttp: (parsed, the message asks for an upgrade)."""
        try:
            self.parser.feed_data(block)
        except httptools.HttpParserUpgrade:
            return True, True
        except httptools.HttpParserError:
            return False, False
        return True, False

    def resume(self) -> None:
        """Parse what was held back while waiting for the request side (see _take_headers)."""
        held, self.held = self.held, None
        if self.conn.deferred is self:
            self.conn.deferred = None
        if held is None:
            return
        self.held_bytes = 0
        data, self.buf = self.buf, b""
        self.feed(data, self.buf_ts, self.buf_seq, self.buf_ack)
        for i, (chunk, ts, seq, ack) in enumerate(held):
            if self.held is not None:  # deferred again (the next response): keep the rest in order
                self.held.extend(held[i:])
                self.held_bytes += sum(len(h[0]) for h in held[i:] if h[0] is not None)
                return
            if chunk is None:
                self._gap(ts)  # a gap marker: (None, nbytes, ...)
            else:
                self.feed(chunk, ts, seq, ack)
        if self.eof_pending and self.held is None:
            self.eof_pending = False
            self.eof()

    def _framing(self, msg: Message, upgrade: bool, rest: bytes) -> bytes:
        """Decide, from the headers just parsed, how this message's body is delimited (RFC 9112 6.3)."""
        conn = self.conn
        if not self.is_request:
            status = msg.status
            if 100 <= status < 200 and status != 101:
                # Interim response (e.g. 100 Continue): not a call; the real response follows.
                self.stats["interim_responses"] += 1
                self.msg = None
                return rest
            q = conn.answered_request(msg.seq, msg.ack)
            method = q.method if q is not None else ""
            if status == 101 or upgrade or (method == "CONNECT" and 200 <= status < 300):
                # The connection stops speaking HTTP/1.x after this response (RFC 9110 15.2.2, 9.3.6).
                self._complete = True  # nothing more will be fed to this parser
                self._finish()
                conn.end_http("upgrade" if status == 101 else "connect")
                return b""
            if method == "HEAD" or status in _NO_BODY_STATUS:
                self._finish()
                return rest
            # Its request was never seen (lost to a gap): it may answer a HEAD. If the next bytes are a
            # status line rather than a body, it had none (checked when the body's first bytes come).
            self._unsure_body = q is None
        elif upgrade:
            # Upgrade or CONNECT request: complete without body; the response decides what follows.
            self._complete = False  # llhttp sits in its upgrade state: use a fresh parser next
            self._finish()
            return rest
        if self._complete:
            self._finish()
            return rest
        te = cl = None
        for name, value in msg.headers:
            lname = name.lower()
            if lname == b"transfer-encoding":
                te = value
            elif lname == b"content-length":
                cl = value
        # The body is ours from here: llhttp sits mid-message, so the next message gets a fresh parser.
        self.parser = None
        if te is not None and te.lower().rstrip().endswith(b"chunked"):
            self.chunks = ChunkScanner()
            self.state = _BODY_CHUNKED
        elif cl is not None:
            # llhttp already rejected a malformed Content-Length; it completed the message if it is 0.
            try:
                length = int(cl.strip())
            except ValueError:
                length = -1
            # An absurd length (up to 2**64 - 1 passes llhttp) just means "until the connection ends".
            self.remaining = length if length < _HUGE_LENGTH else _HUGE_LENGTH
            if length < 0:
                self.stats["http_parse_errors"] += 1
                self._abort(GAP)
                return rest
            self.state = _BODY_LENGTH
        elif self.is_request:
            self._finish()
            return rest
        else:
            self.state = _BODY_CLOSE
        return rest

    def _salvage(self) -> bool:
        """A gap or the end cut a header block short: keep the start line and the whole header lines.

        A mirror session with a packet length (say 256 bytes) cuts every packet, so most header blocks
        never complete; their method, URL, status and first headers are still worth a (marked) call.
        """
        if self.is_request is None or self.held is not None:
            return False
        buf = self.buf.lstrip(b"\r\n")
        cut = buf.rfind(b"\n")
        if cut < 0 or not _HTTP_START.match(buf):
            return False
        block = buf[:cut + 1]
        self.buf = block + (b"\r\n" if block.endswith(b"\r\n") else b"\n")
        self._salvaging = True
        try:
            self._take_headers()
        finally:
            self._salvaging = False
        if self.msg is not None:  # a body was announced, and none of it is known
            self._emit_partial()
        self.stats["headers_salvaged"] += 1
        return True

    def _abort(self, reason: str) -> None:
        if self.msg is not None:
            self.msg.mark(reason)
            self._emit_partial()
        self.parser = None
        self.buf = b""
        self.state = _SCAN

    def _emit_partial(self) -> None:
        msg = self.msg
        self.msg = None
        self.parser = None
        self.chunks = None
        msg.done = True
        self.conn.message_done(self, msg)

    def _finish(self) -> None:
        """The message ended at a known boundary; the next byte starts a new message."""
        msg = self.msg
        self.msg = None
        self.chunks = None
        self.state = _HEADERS
        if not self._complete:
            # llhttp is still inside this message (a HEAD response with a Content-Length, an upgrade):
            # the next message gets a fresh parser.
            self.parser = None
        self._complete = False
        if msg is not None:
            msg.done = True
            self.conn.message_done(self, msg)


class HttpConnection:
    """Both directions of one TCP connection, and the pairing of its requests with its responses.

    Pairing is by order (RFC 9112 9.3.2: responses come in the order of the requests), which survives
    pipelining and crossed directions; the i-th final response answers the i-th request.
    """

    __slots__ = (
        "info", "halves", "requests", "responses", "emit", "stats", "limits", "sized_up", "ended",
        "_client_dir", "deferred", "force_responses",
    )

    def __init__(self, info, emit, stats, limits: Limits, client_dir: int | None, syn_seen: tuple[bool, bool]):
        self.info = info  # opaque to this module: handed back with each call
        self.emit = emit  # emit(info, request | None, response | None)
        self.stats = stats
        self.limits = limits
        # Plain lists, not deques: they hold a handful of messages, and an empty deque costs ~600 bytes,
        # which 262144 tracked connections would pay twice over.
        self.requests: list[Message] = []  # requests not yet paired (in progress or done)
        self.responses: list[Message] = []  # final responses done, waiting for their request
        self.sized_up = False  # the first bytes were checked for TLS / HTTP/2 / non-HTTP
        self.ended = False
        self._client_dir = client_dir
        self.deferred: HalfParser | None = None  # response side waiting for its request
        self.force_responses = False  # the request side ended: no request can come, do not wait
        self.halves = [
            HalfParser(self, None if client_dir is None else (d == client_dir), syn_seen[d]) for d in (0, 1)
        ]

    def feed(self, direction: int, data: bytes, ts_ns: int, seq: int = 0, ack: int | None = None) -> None:
        self.halves[direction].feed(data, ts_ns, seq, ack)

    def gap(self, direction: int, nbytes: int) -> None:
        self.halves[direction].gap(nbytes)

    def close(self) -> None:
        """End of both directions: emit what is complete, then unanswered requests (marked)."""
        for half in self.halves:
            half.eof()
        self._pair(final=True)
        while self.requests:
            req = self.requests.pop(0)
            if not req.done:
                continue
            req.mark(NO_RESPONSE)
            self.stats["requests_without_response"] += 1
            self.emit(self.info, req, None)
        if self.responses:
            self.stats["responses_without_request"] += len(self.responses)
            self.responses.clear()

    # ---- called by the halves ------------------------------------------------------------------------
    def sniff(self, half: HalfParser, data: bytes) -> bool:
        """Classify the first bytes of the connection; True when it is not HTTP/1.x (parsing stops)."""
        if len(data) < 5:
            return False  # too little to tell; wait for more
        if _TLS_RECORD.match(data):
            self.end_http("tls")
            return True
        if data.startswith(b"PRI * HTTP/2"):
            self.end_http("http2")
            return True
        if half.state == _HEADERS and not _HTTP_START.match(data):
            if _HTTP_PREFIX.fullmatch(data[:21]):
                return False  # still a possible start ("HTTP/", "DELET"): wait for more bytes
            # The stream was seen from its first byte and does not open with a start line: some other
            # protocol on this port (or on any port when no application ports are configured).
            self.end_http("not_http")
            return True
        self.sized_up = True
        return False

    def assign_roles(self, half: HalfParser, is_request: bool) -> None:
        d = self.halves.index(half)
        self._client_dir = d if is_request else 1 - d
        for i, h in enumerate(self.halves):
            h.is_request = i == self._client_dir

    def answered_request(self, seq: int, ack) -> Message | None:
        """The request a response starting at ``seq`` (carrying ``ack``) answers, by the rules of _pair;
        None when it is not known yet, or when the response answers a request that was never seen."""
        reqs = self.requests
        j = len(self.responses)  # completed responses wait for requests[0 .. j-1]
        n = len(reqs)
        while j < n:
            q = reqs[j]
            if ack is not None and q.ack is not None:
                if _serial_diff(seq, q.ack) < 0:
                    return None  # sent before q existed: its own request was lost (an orphan)
                if j + 1 < n:
                    q1 = reqs[j + 1]
                    if (q1.ack is not None and _serial_diff(q1.ack, q.ack) > 0
                            and _serial_diff(seq, q1.ack) >= 0):
                        j += 1  # q's response was lost: this one answers a later request
                        continue
            return q
        return None

    def request_started(self, msg: Message) -> None:
        self.requests.append(msg)  # in order of their start; paired once done
        if len(self.requests) > self.limits.max_pending and not self.responses:
            old = self.requests.pop(0)
            if old.done:
                old.mark(NO_RESPONSE)
                self.stats["requests_without_response"] += 1
                self.stats["pending_limit_hits"] += 1
                self.emit(self.info, old, None)
            else:
                self.requests.insert(0, old)
        if self.deferred is not None:
            self.deferred.resume()

    def request_lost(self) -> None:
        """A gap on the request side: re-check whether a held response can now go on."""
        if self.deferred is not None:
            self.deferred.resume()

    def response_may_proceed(self, seq: int, ack, held: int) -> bool:
        """May the response starting at ``seq`` be parsed now? Only once the request it answers is known
        (a response to HEAD has no body, RFC 9112 6.3), or when no such request can still come."""
        if self.force_responses or self.answered_request(seq, ack) is not None:
            return True
        req_half = self.halves[self._client_dir if self._client_dir is not None else 0]
        if req_half.state == _DEAD:
            return True
        if ack is not None and req_half.seen and _serial_diff(req_half.end_seq, ack) >= 0:
            return True  # the request side is parsed past everything the server had received: an orphan
        if held > self.limits.max_header_bytes * 4:
            self.stats["response_order_forced"] += 1
            return True
        return False

    def message_done(self, half: HalfParser, msg: Message) -> None:
        if not msg.is_request:
            self.responses.append(msg)
        self._pair()

    def end_http(self, why: str) -> None:
        """Stop parsing this connection for good (upgrade, CONNECT tunnel, TLS, HTTP/2)."""
        if not self.ended:
            self.ended = True
            self.stats[f"connections_{why}"] += 1
        for h in self.halves:
            h.state = _DEAD
            h.buf = b""
        self._pair()

    def _pair(self, final: bool = False) -> None:
        """Pair by order, corrected with TCP sequence numbers where messages were lost.

        Mirrored traffic loses whole messages. The acknowledgement number a request carries is where the
        server's stream stood when the client sent it, so: a response that starts before the head
        request's acknowledgement was sent before that request existed, and answers a request we never
        saw; and when the next request was sent after the client had received more of the server's
        stream (not pipelined) and this response starts at or after that point, the head request's
        response was lost. Resurface's sniffer pairs by seq == ack alone, which breaks on pipelining.
        """
        reqs, resps = self.requests, self.responses
        stats = self.stats
        while reqs and resps:
            q0, r = reqs[0], resps[0]
            if not q0.done:
                break
            if q0.ack is not None and r.ack is not None and _serial_diff(r.seq, q0.ack) < 0:
                resps.pop(0)
                stats["responses_without_request"] += 1
                continue
            if len(reqs) > 1:
                q1 = reqs[1]
                if (q0.ack is not None and q1.ack is not None and r.ack is not None
                        and _serial_diff(q1.ack, q0.ack) > 0 and _serial_diff(r.seq, q1.ack) >= 0):
                    reqs.pop(0)
                    q0.mark(NO_RESPONSE)
                    stats["requests_without_response"] += 1
                    self.emit(self.info, q0, None)
                    continue
            elif not final and r.ack is not None and not self._requests_seen_until(r.ack):
                break  # a request sent before r may still be on its way: it would tell us more
            self.emit(self.info, reqs.pop(0), resps.pop(0))

    def expire_requests(self, deadline_ns: int) -> int:
        """Emit, marked no_response, requests that started before ``deadline_ns`` and are still unanswered.

        Resurface's sniffer silently drops halves unpaired after 2 minutes; an API-security team wants to
        see a request that got no answer, so it is sent (marked) instead.
        """
        n = 0
        reqs = self.requests
        while reqs and not self.responses and reqs[0].done and reqs[0].ts_ns < deadline_ns:
            req = reqs.pop(0)
            req.mark(NO_RESPONSE)
            self.stats["requests_response_timeout"] += 1
            self.emit(self.info, req, None)
            n += 1
        return n

    def _requests_seen_until(self, ack: int) -> bool:
        """Has the request side been parsed up to ``ack`` (everything the server had when it replied)?"""
        if self.force_responses:
            return True
        half = self.halves[self._client_dir if self._client_dir is not None else 0]
        return half.state == _DEAD or (half.seen and _serial_diff(half.end_seq, ack) >= 0)
