"""A Resurface-like capture endpoint for tests, benchmarks and manual runs, with faults on demand.

It checks what Resurface's ingestion checks (SPEC section 1): ``POST <path>`` with ``Content-Type:
application/ndjson`` (parameters such as ``charset`` allowed), a zlib stream (RFC 1950) when
``Content-Encoding: deflated``, raw NDJSON without it, every line a JSON array of ``[string, string]``
pairs; any bad line rejects the whole batch with 400 and nothing of it is recorded. 204 on success.
``GET <path minus last segment>/saturated`` answers ``true``/``false``. ``GET /stats`` (vxcap's addition,
not Resurface's) answers counts as JSON, for a collector in another process.

Faults, switchable at run time: ``fail_next`` (N answers with a status, 503 by default), ``reset_next``
(close the connection mid-request, optionally after recording the batch: the "outcome unknown" case),
``set_delay`` (answer late, after recording), ``go_down``/``come_up`` (stop listening and abort open
connections: refused connections), ``saturated``.

    async with Collector() as c:
        ... c.url, c.messages, c.requests, await c.wait_for_messages(n)

Manual use: ``python -m vxcap.testing.collector --port 7701``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import zlib

try:  # ISA-L inflates the same RFC 1950 streams ~2-3x faster: the collector should not be the bottleneck
    from isal.isal_zlib import decompress as _inflate
    from isal.isal_zlib import error as _isal_error

    _INFLATE_ERRORS: tuple = (zlib.error, _isal_error)
except ImportError:  # pragma: no cover
    _inflate = zlib.decompress
    _INFLATE_ERRORS = (zlib.error,)
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]
    peer: tuple | None
    wire_bytes: int = 0  # body as received (compressed when deflated)
    raw_bytes: int = 0  # body after decompression
    lines: int = 0
    status: int = 0
    note: str = ""
    at: float = field(default_factory=time.monotonic)


class BatchRejected(ValueError):
    pass


def parse_batch(raw: bytes) -> list[list[list[str]]]:
    """Parse NDJSON the way Resurface's ingestion accepts it; BatchRejected names the first bad line."""
    out: list[list[list[str]]] = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BatchRejected(f"line {number}: invalid JSON: {exc}") from None
        if not isinstance(msg, list):
            raise BatchRejected(f"line {number}: expected a JSON array of [key, value] pairs")
        for pair in msg:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                    and isinstance(pair[1], str)):
                raise BatchRejected(f"line {number}: expected [string, string] pairs, got {pair!r:.80}")
        out.append(msg)
    return out


def count_lines(raw: bytes) -> int:
    return raw.count(b"\n") + (1 if raw and not raw.endswith(b"\n") else 0)


class Collector:
    """An aiohttp server on ``host:port`` (0 = ephemeral; the port is kept across go_down/come_up)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, path: str = "/message", *,
                 validate: bool = True, record: bool = True, ssl_context=None,
                 saturated_status: int = 503) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.validate = validate  # False: count lines only (benchmarks), no JSON parsing
        self.record = record  # False: keep counts, not the messages and requests
        self.saturated = False
        self.saturated_status = saturated_status  # what a POST gets while saturated
        self._ssl = ssl_context
        self.messages: list[list[list[str]]] = []
        self.requests: list[RequestRecord] = []
        self.message_count = 0
        self.request_count = 0
        self.accepted_batches = 0
        self.wire_bytes = 0
        self._fail: list[tuple[int, str]] = []
        self._resets: list[bool] = []
        self._delay = 0.0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set = set()
        self._arrived = asyncio.Event()
        base = path.rsplit("/", 1)[0]
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post(path, self._on_message)
        app.router.add_get(base + "/saturated", self._on_saturated)
        app.router.add_get("/stats", self._on_stats)
        self._app = app

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path}"

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self.come_up()

    async def stop(self) -> None:
        await self.go_down()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Collector:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def come_up(self) -> None:
        """Listen again on the same port (refused connections end)."""
        if self._server is not None:
            return
        factory = self._runner.server

        def protocol():
            handler = factory()
            self._handlers.add(handler)
            return handler

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, self.host, self.port, ssl=self._ssl,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def go_down(self) -> None:
        """Stop listening and abort every open connection: clients see resets, then refusals."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for handler in list(self._handlers):
            transport = handler.transport
            if transport is not None:
                transport.abort()
        self._handlers.clear()
        await asyncio.sleep(0)

    # -- faults -------------------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 503, text: str = "Service Unavailable") -> None:
        self._fail.extend([(status, text)] * n)

    def reset_next(self, n: int, *, record: bool = False) -> None:
        """Abort the next n POSTs. record=True stores the batch first: its sender cannot know it arrived."""
        self._resets.extend([record] * n)

    def set_delay(self, seconds: float) -> None:
        self._delay = seconds

    def clear(self) -> None:
        self.messages.clear()
        self.requests.clear()
        self.message_count = self.request_count = self.accepted_batches = self.wire_bytes = 0

    async def wait_for_messages(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.message_count < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"collector has {self.message_count} of {n} messages after {timeout} s")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    # -- handlers -----------------------------------------------------------------------------------
    async def _on_saturated(self, request: web.Request) -> web.Response:
        return web.Response(text="true" if self.saturated else "false", content_type="text/plain")

    async def _on_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": self.message_count, "requests": self.request_count,
                                  "batches": self.accepted_batches, "wire_bytes": self.wire_bytes})

    async def _on_message(self, request: web.Request) -> web.StreamResponse:
        rec = RequestRecord(request.method, request.path, dict(request.headers),
                            request.transport.get_extra_info("peername") if request.transport else None)
        self.request_count += 1
        if self.record:
            self.requests.append(rec)
        if self._resets and not self._resets[0]:
            self._resets.pop(0)
            rec.note = "reset"
            return self._abort(request)
        body = await request.read()
        rec.wire_bytes = len(body)
        self.wire_bytes += len(body)
        if self._fail:
            status, text = self._fail.pop(0)
            rec.status, rec.note = status, "fail_next"
            return web.Response(status=status, text=text)
        if self.saturated:
            rec.status, rec.note = self.saturated_status, "saturated"
            return web.Response(status=self.saturated_status, text="database is saturated")
        if request.content_type != "application/ndjson":
            rec.status = 415
            return web.Response(status=415, text=f"expected application/ndjson, got {request.content_type}")
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "deflated":
            try:
                raw = _inflate(body)
            except _INFLATE_ERRORS as exc:
                rec.status = 400
                return web.Response(status=400, text=f"invalid zlib stream: {exc}")
        elif encoding == "":
            raw = body
        else:
            rec.status = 400
            return web.Response(status=400, text=f"unsupported Content-Encoding {encoding!r}")
        rec.raw_bytes = len(raw)
        if self.validate:
            try:
                parsed = parse_batch(raw)
            except BatchRejected as exc:
                rec.status = 400
                return web.Response(status=400, text=str(exc))
            count = len(parsed)
            if self.record:
                self.messages.extend(parsed)
        else:
            count = count_lines(raw)
        rec.lines = count
        self.message_count += count
        self.accepted_batches += 1
        self._arrived.set()
        if self._resets:  # record=True: stored, but the sender only sees the connection die
            self._resets.pop(0)
            rec.note = "reset after recording"
            return self._abort(request)
        if self._delay:
            await asyncio.sleep(self._delay)
        rec.status = 204
        return web.Response(status=204)

    @staticmethod
    def _abort(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        # Nothing can be written any more; aiohttp drops a response for a closed connection.
        raise asyncio.CancelledError()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vxcap.testing.collector",
                                 description="A Resurface-like capture endpoint for tests and benchmarks.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7701, help="0 = ephemeral (printed)")
    ap.add_argument("--path", default="/message")
    ap.add_argument("--no-validate", action="store_true", help="count lines only, no JSON checks")
    ap.add_argument("--print", dest="show", action="store_true", help="print each accepted message")
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args(argv)

    async def serve() -> None:
        c = Collector(args.host, args.port, args.path, validate=not args.no_validate, record=args.show)
        await c.start()
        print(f"listening on {c.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        shown = 0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            if args.show:
                for msg in c.messages[shown:]:
                    print(orjson.dumps(msg).decode(), flush=True)
                shown = len(c.messages)
        await c.stop()
        print(json.dumps({"messages": c.message_count, "requests": c.request_count,
                          "batches": c.accepted_batches}), file=sys.stderr, flush=True)

    if args.uvloop:
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
