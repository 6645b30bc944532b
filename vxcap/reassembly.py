"""TCP reassembly of mirrored connections, modelled on gopacket's ``reassembly`` package.

Each connection (key: VNI + both endpoints, as the decoder builds it) has two half-streams. Sequence numbers
are compared in 32-bit serial arithmetic (RFC 1982, RFC 9293 3.4). In-order payload goes straight to the HTTP
layer; early segments wait in a small per-direction list until the hole before them fills; bytes already
delivered are trimmed off retransmissions and overlaps (the first data delivered wins). A hole that is not
filled within ``gap_timeout`` of capture time, or that would make the buffered bytes exceed their limits, is
skipped: the HTTP layer is told how many bytes were lost and resynchronises. Time is always the capture's,
so a replayed file behaves exactly like the live traffic it recorded.

Memory is bounded: at most ``max_connections`` connections (the least recently active is evicted first), at
most ``max_conn_buffered`` early bytes per direction and ``max_buffered`` in total; every limit hit is counted.
"""
from __future__ import annotations

import collections
import ipaddress

from vxcap.http import HttpConnection, Limits

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_NS = 1_000_000_000


def _serial_diff(a: int, b: int) -> int:
    """a - b in 32-bit serial number arithmetic (RFC 1982): negative when a is before b."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d & 0x80000000 else d


class ReassemblyLimits:
    """Limits and timeouts of the reassembler; all finite by default, validated by the config module."""

    __slots__ = (
        "max_connections", "max_buffered", "max_conn_buffered", "gap_timeout_ns", "idle_timeout_ns",
        "response_timeout_ns", "acked_grace_ns", "http",
    )

    def __init__(
        self,
        max_connections: int = 262144,
        max_buffered: int = 256 << 20,
        max_conn_buffered: int = 4 << 20,
        gap_timeout: float = 2.0,
        idle_timeout: float = 90.0,
        response_timeout: float = 120.0,
        acked_grace: float = 0.1,
        http: Limits | None = None,
    ):
        for name, value in (
            ("max_connections", max_connections), ("max_buffered", max_buffered),
            ("max_conn_buffered", max_conn_buffered),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive integer")
        for name, value in (
            ("gap_timeout", gap_timeout), ("idle_timeout", idle_timeout), ("response_timeout", response_timeout),
            ("acked_grace", acked_grace),
        ):
            if not value > 0:
                raise ValueError(f"{name}={value!r}: expected a positive number of seconds")
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self.max_conn_buffered = max_conn_buffered
        self.gap_timeout_ns = int(gap_timeout * _NS)
        self.idle_timeout_ns = int(idle_timeout * _NS)
        self.response_timeout_ns = int(response_timeout * _NS)
        self.acked_grace_ns = int(acked_grace * _NS)
        self.http = http or Limits()


class Half:
    """One direction's sequence state and its early (out-of-order) segments."""

    __slots__ = ("next_seq", "early", "early_bytes", "fin_seq", "closed", "syn", "isn", "acked")

    def __init__(self):
        self.next_seq: int | None = None
        self.early: list[tuple[int, bytes, int, int]] | None = None  # (seq, payload, missing, ts_ns)
        self.early_bytes = 0
        self.fin_seq: int | None = None
        self.closed = False
        self.syn = False
        self.isn: int | None = None
        self.acked: tuple[int, int] | None = None  # (peer's ack beyond a hole we hold, when first seen)


class Conn:
    """A tracked TCP connection. Also the ``info`` handed to the message builder with each call."""

    __slots__ = ("key", "halves", "http", "last_ns", "client_dir", "tunnel_src", "_ends")

    def __init__(self, key: bytes, tunnel_src: bytes):
        self.key = key
        self.halves = (Half(), Half())
        self.http: HttpConnection | None = None
        self.last_ns = 0
        self.client_dir: int | None = None
        self.tunnel_src = tunnel_src
        self._ends = None

    # Addresses are decoded from the key only when a message needs them (once per connection).
    def endpoints(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """((address, port) of direction 0's source, same for direction 1)."""
        if self._ends is None:
            key = self.key
            alen = 4 if key[4] == 4 else 16
            a = key[5:5 + alen]
            pa = int.from_bytes(key[5 + alen:7 + alen], "big")
            b = key[7 + alen:7 + 2 * alen]
            pb = int.from_bytes(key[7 + 2 * alen:9 + 2 * alen], "big")
            self._ends = ((str(ipaddress.ip_address(a)), pa), (str(ipaddress.ip_address(b)), pb))
        return self._ends

    @property
    def vni(self) -> int | None:
        v = int.from_bytes(self.key[:4], "big")
        return None if v == 0xFFFFFFFF else v

    def client(self) -> tuple[str, int]:
        return self.endpoints()[self.client_dir or 0]

    def server(self) -> tuple[str, int]:
        return self.endpoints()[1 - (self.client_dir or 0)]


class Reassembler:
    """Segments in (the decoder's tuples), calls out through ``emit(conn, request, response)``."""

    def __init__(self, emit, limits: ReassemblyLimits | None = None, ports: frozenset[int] = frozenset()):
        self.emit = emit
        self.limits = limits or ReassemblyLimits()
        self.ports = ports
        self.conns: collections.OrderedDict[bytes, Conn] = collections.OrderedDict()
        self.stats = collections.Counter()  # shared with the HTTP layer: one namespace of counters
        self.buffered = 0  # early bytes held across all connections
        self.pending: set[Conn] = set()  # connections holding early segments (for the gap timer)
        # Keys of connections that ended by FIN/RST -> when; late segments for them are not a new
        # connection. Bounded, and aged out by the idle timeout in sweep().
        self.recently_closed: collections.OrderedDict[bytes, tuple] = collections.OrderedDict()
        self.now = 0  # capture clock: the latest timestamp seen
        self._next_sweep = 0
        self._next_response_sweep = 0

    # ---- input ------------------------------------------------------------------------------------
    def process(self, segments) -> None:
        conns = self.conns
        stats = self.stats
        for key, d, seq, ack, flags, ts, payload, missing, tunnel_src in segments:
            if ts > self.now:
                self.now = ts
            conn = conns.get(key)
            if conn is None:
                if flags & RST or (not payload and not flags & SYN):
                    stats["segments_without_connection"] += 1
                    continue
                ended = self.recently_closed.get(key)
                if ended is not None and (not flags & SYN or seq in ended[1]):
                    # A late retransmission (even of the SYN) of a connection that already ended
                    # (TIME-WAIT, RFC 9293 3.6.1): opening a new connection would emit its calls twice.
                    # A SYN with a new initial sequence number is a new connection on the same ports.
                    stats["segments_after_close"] += 1
                    continue
                conn = self._open(key, tunnel_src)
            else:
                conns.move_to_end(key)
            conn.last_ns = ts
            half = conn.halves[d]
            if flags & SYN:
                self._syn(conn, d, half, seq, flags, ack)
            if payload or missing:
                if half.next_seq is None:
                    # Where this direction starts is not known yet (SYN not captured, or not yet: mirrors
                    # reorder). Hold the data until the SYN or the peer's SYN-ACK tells, or the gap timer
                    # says it never will; then the lowest sequence number held is the start.
                    self._hold(conn, d, half, seq, payload, missing, ts, ack)
                else:
                    self._data(conn, d, half, seq + (1 if flags & SYN else 0), payload, missing, ts, ack)
            if flags & ACK:
                peer = conn.halves[1 - d]
                if peer.early and peer.next_seq is not None and _serial_diff(ack, peer.next_seq) > 0:
                    # The peer acknowledged bytes we hold no copy of: the endpoint had them, so they
                    # will not be retransmitted and the mirror lost them (Wireshark's "ACKed unseen
                    # segment"). A mirror may still deliver them a little late (it reorders the two
                    # directions), so the hole is skipped after a short grace, not at once.
                    if peer.acked is None:
                        peer.acked = (ack, ts)
                    elif _serial_diff(ack, peer.acked[0]) > 0:
                        peer.acked = (ack, peer.acked[1])
            for hd in (0, 1):
                h = conn.halves[hd]
                if h.acked is not None and ts - h.acked[1] >= self.limits.acked_grace_ns:
                    acked, h.acked = h.acked[0], None
                    if h.early and h.next_seq is not None and _serial_diff(acked, h.next_seq) > 0:
                        self.stats["gaps_acked"] += 1
                        self._skip_to(conn, hd, h, acked)
            if flags & FIN:
                half.fin_seq = (seq + (1 if flags & SYN else 0) + len(payload) + missing) & 0xFFFFFFFF
                self._maybe_close_half(conn, d, half)
            if flags & RST:
                stats["connections_reset"] += 1
                self._close(conn)
        if self.now >= self._next_sweep:
            self.sweep()

    def _open(self, key: bytes, tunnel_src: bytes) -> Conn:
        conns = self.conns
        if len(conns) >= self.limits.max_connections:
            _, old = conns.popitem(last=False)
            self.stats["connections_evicted"] += 1
            self._finish(old)
        conn = Conn(key, tunnel_src)
        conns[key] = conn
        self.stats["connections_opened"] += 1
        return conn

    def _syn(self, conn: Conn, d: int, half: Half, seq: int, flags: int, ack: int) -> None:
        if half.syn:
            return  # SYN retransmission
        half.syn = True
        half.isn = seq
        # RFC 9293 3.5: the side sending SYN without ACK opened the connection.
        conn.client_dir = d if not flags & ACK else 1 - d
        peer = conn.halves[1 - d]
        if flags & ACK and peer.next_seq is None:
            # A SYN-ACK acknowledges the opener's SYN: it tells where the opener's data starts.
            peer.syn = True
            peer.next_seq = ack
            peer.isn = (ack - 1) & 0xFFFFFFFF
        if half.next_seq is None:
            half.next_seq = (seq + 1) & 0xFFFFFFFF
        # Both starts are settled before any data moves, so the HTTP layer knows both roles.
        for dd in (d, 1 - d):
            h = conn.halves[dd]
            if h.early and h.next_seq is not None:
                self._drain(conn, dd, h, force=False)

    def _http(self, conn: Conn) -> HttpConnection:
        h = conn.http
        if h is None:
            if conn.client_dir is None and self.ports:
                a, b = conn.endpoints()
                if b[1] in self.ports and a[1] not in self.ports:
                    conn.client_dir = 0
                elif a[1] in self.ports and b[1] not in self.ports:
                    conn.client_dir = 1
            syn = (conn.halves[0].syn, conn.halves[1].syn)
            h = conn.http = HttpConnection(conn, self.emit, self.stats, self.limits.http, conn.client_dir, syn)
        return h

    def _data(self, conn: Conn, d: int, half: Half, seq: int, payload: bytes, missing: int, ts: int,
              ack: int) -> None:
        if half.closed:
            self.stats["segments_after_close"] += 1
            return
        diff = _serial_diff(seq, half.next_seq)
        if diff > 0:
            self._hold(conn, d, half, seq, payload, missing, ts, ack)
            return
        if diff < 0:
            total = len(payload) + missing
            if -diff >= total:
                self.stats["retransmitted_segments"] += 1
                return
            self.stats["overlapping_segments"] += 1
            cut = -diff
            if cut <= len(payload):
                payload = payload[cut:]
            else:
                missing -= cut - len(payload)
                payload = b""
        if half.early:
            # This segment fills a hole that later bytes waited behind: it was sent before them, so it
            # takes the earliest of their capture times (a mirror delayed it; message start times and
            # intervals must not inherit that delay).
            for e in half.early:
                if e[3] < ts:
                    ts = e[3]
            self._deliver(conn, d, half, payload, missing, ts, ack)
            self._drain(conn, d, half, force=False)
        else:
            self._deliver(conn, d, half, payload, missing, ts, ack)

    def _deliver(self, conn: Conn, d: int, half: Half, payload: bytes, missing: int, ts: int, ack: int) -> None:
        h = conn.http or self._http(conn)
        if payload:
            seq = half.next_seq
            half.next_seq = (seq + len(payload)) & 0xFFFFFFFF
            h.feed(d, payload, ts, seq, ack)
            self.stats["bytes_delivered"] += len(payload)
        if missing:
            # Truncated by the capture (snap length, mirror packet length): a gap we know of at once.
            half.next_seq = (half.next_seq + missing) & 0xFFFFFFFF
            self.stats["truncated_bytes"] += missing
            self.stats["gaps"] += 1
            h.gap(d, missing)
        self._maybe_close_half(conn, d, half)

    def _hold(self, conn: Conn, d: int, half: Half, seq: int, payload: bytes, missing: int, ts: int,
              ack: int) -> None:
        size = len(payload)
        limits = self.limits
        if half.early is None:
            half.early = []
        elif any(e[0] == seq for e in half.early):
            self.stats["duplicate_early_segments"] += 1
            return
        half.early.append((seq, payload, missing, ts, ack))
        half.early_bytes += size
        self.buffered += size
        self.pending.add(conn)
        self.stats["early_segments"] += 1
        if half.early_bytes > limits.max_conn_buffered:
            self.stats["conn_buffer_limit_hits"] += 1
            self._drain(conn, d, half, force=True, keep_bytes=limits.max_conn_buffered // 2)
        if self.buffered > limits.max_buffered:
            self.stats["total_buffer_limit_hits"] += 1
            # Skip gaps in the connection holding the most until we are back under the limit.
            while self.buffered > limits.max_buffered // 2 and self.pending:
                victim = max(self.pending, key=lambda c: c.halves[0].early_bytes + c.halves[1].early_bytes)
                for vd, vh in enumerate(victim.halves):
                    if vh.early:
                        self._drain(victim, vd, vh, force=True)

    def _drain(self, conn: Conn, d: int, half: Half, force: bool, keep_bytes: int = 0) -> None:
        """Deliver early segments that now fit; with ``force``, skip holes until ``keep_bytes`` remain."""
        early = half.early
        if half.next_seq is None:
            if not force:
                return
            # The start was never seen: begin at the lowest sequence number held.
            ref = early[0][0]
            half.next_seq = min((e[0] for e in early), key=lambda q: _serial_diff(q, ref))
            self.stats["streams_started_midway"] += 1
        while early:
            # The next segment in sequence order (the list is short: a window's worth at most).
            nxt = half.next_seq
            best = min(range(len(early)), key=lambda i: _serial_diff(early[i][0], nxt))
            seq, payload, missing, ts, ack = early.pop(best)
            half.early_bytes -= len(payload)
            self.buffered -= len(payload)
            diff = _serial_diff(seq, nxt)
            if diff > 0:
                if not force or half.early_bytes + len(payload) <= keep_bytes:
                    early.append((seq, payload, missing, ts, ack))
                    half.early_bytes += len(payload)
                    self.buffered += len(payload)
                    break
                self._skip(conn, d, half, diff)
            elif diff < 0:
                cut = -diff
                if cut >= len(payload) + missing:
                    self.stats["retransmitted_segments"] += 1
                    continue
                self.stats["overlapping_segments"] += 1
                if cut <= len(payload):
                    payload = payload[cut:]
                else:
                    missing -= cut - len(payload)
                    payload = b""
            self._deliver(conn, d, half, payload, missing, ts, ack)
            if half.closed:
                break
        if not early:
            half.early = None
            if not (conn.halves[1 - d].early):
                self.pending.discard(conn)

    def _skip_to(self, conn: Conn, d: int, half: Half, ack: int) -> None:
        """Skip holes before ``ack`` (acknowledged by the peer), delivering what we hold up to there."""
        while half.early and half.next_seq is not None and _serial_diff(ack, half.next_seq) > 0:
            nxt = half.next_seq
            first = min((e[0] for e in half.early), key=lambda q: _serial_diff(q, nxt))
            hole_end = first if _serial_diff(first, ack) <= 0 else ack
            if _serial_diff(hole_end, nxt) > 0:
                self._skip(conn, d, half, _serial_diff(hole_end, nxt))
            self._drain(conn, d, half, force=False)
            if half.closed or conn.key not in self.conns:
                return
            if _serial_diff(first, ack) > 0:
                return  # what we hold starts beyond what was acknowledged: wait for the rest

    def _skip(self, conn: Conn, d: int, half: Half, nbytes: int) -> None:
        self.stats["gaps"] += 1
        self.stats["gap_bytes"] += nbytes
        half.next_seq = (half.next_seq + nbytes) & 0xFFFFFFFF
        (conn.http or self._http(conn)).gap(d, nbytes)

    def _maybe_close_half(self, conn: Conn, d: int, half: Half) -> None:
        if half.fin_seq is not None and not half.closed and half.next_seq == half.fin_seq:
            half.closed = True
            if conn.http is not None:
                conn.http.halves[d].eof()
            if conn.halves[1 - d].closed:
                self._close(conn)

    # ---- ending -----------------------------------------------------------------------------------
    def _finish(self, conn: Conn) -> None:
        """Deliver what is held (skipping holes), end both directions, emit what remains."""
        for d, half in enumerate(conn.halves):
            if half.early:
                self._drain(conn, d, half, force=True)
            if half.early:
                # Held beyond the end of the stream (after its FIN): never deliverable. Release them, or
                # ``buffered`` keeps counting bytes nobody holds and the total limit fires for ever after.
                self.stats["segments_after_close"] += len(half.early)
                self.buffered -= half.early_bytes
                half.early = None
                half.early_bytes = 0
        self.pending.discard(conn)
        if conn.http is not None:
            conn.http.close()

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.key, None) is not None:
            self.stats["connections_closed"] += 1
            recent = self.recently_closed
            recent[conn.key] = (self.now, tuple(h.isn for h in conn.halves if h.isn is not None))
            if len(recent) > self.limits.max_connections // 4 + 1:
                recent.popitem(last=False)
            self._finish(conn)

    def sweep(self) -> None:
        """Timers on the capture clock: skip stale holes, expire idle connections."""
        now = self.now
        limits = self.limits
        self._next_sweep = now + min(limits.gap_timeout_ns, _NS) // 2
        if self.pending:
            stale = now - limits.gap_timeout_ns
            for conn in list(self.pending):
                for d, half in enumerate(conn.halves):
                    if half.early and min(e[3] for e in half.early) <= stale:
                        self.stats["gap_timeouts"] += 1
                        self._drain(conn, d, half, force=True)
        if now >= self._next_response_sweep:
            # Every quarter of the response timeout: a full pass, cheap at that rate even at the
            # connection limit, and no per-request bookkeeping on the per-call path.
            self._next_response_sweep = now + limits.response_timeout_ns // 4
            deadline = now - limits.response_timeout_ns
            for conn in list(self.conns.values()):
                if conn.http is not None and conn.http.requests:
                    conn.http.expire_requests(deadline)
        idle = now - limits.idle_timeout_ns
        recent = self.recently_closed
        while recent and next(iter(recent.values()))[0] <= idle:
            recent.popitem(last=False)
        conns = self.conns
        while conns:
            key, conn = next(iter(conns.items()))
            if conn.last_ns > idle:
                break
            del conns[key]
            self.stats["connections_idle_expired"] += 1
            self._finish(conn)

    def close_all(self) -> None:
        """End of capture (or shutdown): every connection is finished and its calls emitted."""
        while self.conns:
            _, conn = self.conns.popitem(last=False)
            self.stats["connections_flushed"] += 1
            self._finish(conn)

    def counters(self) -> dict[str, int]:
        out = dict(self.stats)
        out["connections_active"] = len(self.conns)
        out["buffered_bytes"] = self.buffered
        return out
