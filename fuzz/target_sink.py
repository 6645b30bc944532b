"""Collector-response handling in the sink: a collector on 127.0.0.1 that answers every request (POSTs and
/saturated polls) with the input's bytes, then closes. Rules: the sink never raises, no exception reaches
the event loop, close() returns within its budget, and every submitted message ends in exactly one counter
(delivered or a named dropped_* reason)."""
from __future__ import annotations

import asyncio
import logging

from vxcap.sink import ResurfaceSink, SinkConfig

MAX_LEN = 4096
HANG_SECONDS = 10.0
SEEDS = [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
         b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
         b"HTTP/1.1 204 OK\r\nContent-Length: 99999999\r\n\r\nx", b"HTTP/1.0 200 OK\r\n\r\ntrue",
         b"HTTP/1.1 999 ?\r\n\r\n", b"\x00\xff garbage", b""]
logging.getLogger("vxcap.sink").setLevel(logging.CRITICAL)


async def _run(answer: bytes) -> None:
    async def handle(reader, writer):
        try:
            await reader.read(65536)
            writer.write(answer)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = SinkConfig(f"http://127.0.0.1:{port}/message", allow_http_url=True, retry_budget=0.3,
                     request_timeout=0.3, backoff_initial=0.01, backoff_max=0.05, flush_interval=0.01,
                     saturation_interval=0.05, saturation_poll=bool(answer[:1] == b"H" and len(answer) % 2))
    sink = ResurfaceSink(cfg)
    await sink.start()
    accepted = sink.submit_many([b'[["request_method","GET"]]'] * 3)
    await asyncio.sleep(0.02)
    await sink.close(timeout=1.5)
    server.close()
    await server.wait_closed()
    k = sink.counters()
    ends = k["messages_delivered"] + sum(v for n, v in k.items() if n.startswith("dropped_")) + k["buffered_messages"]
    assert k["messages_in"] == 3 and accepted == 3 and ends == 3 and k["buffered_messages"] == 0, k


def one_input(data: bytes) -> None:
    loop = asyncio.new_event_loop()
    errors = []
    loop.set_exception_handler(lambda _l, ctx: errors.append(ctx))
    try:
        loop.run_until_complete(asyncio.wait_for(_run(data), 6.0))
    finally:
        loop.close()
    assert not errors, f"exceptions reached the event loop: {errors}"
