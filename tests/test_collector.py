"""The test collector must be as strict as Resurface's ingestion, or the sink tests prove nothing."""
from __future__ import annotations

import asyncio
import zlib

import aiohttp
import pytest

from vxcap.testing.collector import Collector, parse_batch, BatchRejected

GOOD = b'[["request_method","GET"],["request_url","http://a/b"]]'
NDJSON = "application/ndjson; charset=UTF-8"


async def post(url, body, *, ctype=NDJSON, encoding="deflated"):
    headers = {"Content-Type": ctype}
    if encoding:
        headers["Content-Encoding"] = encoding
        if encoding == "deflated":
            body = zlib.compress(body)
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=body, headers=headers) as r:
            return r.status, await r.text()


def test_accepts_compressed_and_raw(arun):
    async def main():
        async with Collector() as c:
            assert await post(c.url, GOOD + b"\n" + GOOD + b"\n") == (204, "")
            assert await post(c.url, GOOD, encoding=None, ctype="application/ndjson") == (204, "")
            assert c.message_count == 3 and c.messages[0][1] == ["request_url", "http://a/b"]
            assert [r.lines for r in c.requests] == [2, 1]
            assert c.requests[0].headers["Content-Encoding"] == "deflated"

    arun(main())


@pytest.mark.parametrize("body, reason", [
    (b"not json", "invalid JSON"),
    (b'{"a":"b"}', "JSON array"),
    (b'[["a","b","c"]]', "[string, string]"),
    (b'[["a",1]]', "[string, string]"),
    (b'[["a"]]', "[string, string]"),
    (b'["a","b"]', "[string, string]"),
])
def test_parse_batch_rejects(body, reason):
    with pytest.raises(BatchRejected, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_batch(GOOD + b"\n" + body + b"\n")


def test_rejects_malformed_batches_whole(arun):
    async def main():
        async with Collector() as c:
            status, text = await post(c.url, GOOD + b"\n" + b'[["a",1]]\n')
            assert status == 400 and "line 2" in text
            status, text = await post(c.url, b"\x00garbage", encoding="identity-ish")
            assert status == 400 and "Content-Encoding" in text
            async with aiohttp.ClientSession() as s:
                async with s.post(c.url, data=b"x\x9c broken", headers={
                        "Content-Type": NDJSON, "Content-Encoding": "deflated"}) as r:
                    assert r.status == 400 and "zlib" in await r.text()
            assert (await post(c.url, GOOD, ctype="application/json"))[0] == 415
            assert c.message_count == 0 and c.messages == []

    arun(main())


def test_faults(arun):
    async def main():
        async with Collector(path="/fluke/message") as c:
            async with aiohttp.ClientSession() as s:
                async with s.get(c.url.rsplit("/", 1)[0] + "/saturated") as r:
                    assert await r.text() == "false"
                c.saturated = True
                async with s.get(c.url.rsplit("/", 1)[0] + "/saturated") as r:
                    assert await r.text() == "true"
            assert (await post(c.url, GOOD))[0] == 503
            c.saturated = False
            c.fail_next(2, status=500)
            assert [(await post(c.url, GOOD))[0] for _ in range(3)] == [500, 500, 204]
            c.reset_next(1)
            with pytest.raises(aiohttp.ClientError):
                await post(c.url, GOOD)
            c.reset_next(1, record=True)
            with pytest.raises(aiohttp.ClientError):
                await post(c.url, GOOD)
            assert c.message_count == 2  # the recorded-then-reset batch counts
            port = c.port
            await c.go_down()
            with pytest.raises(aiohttp.ClientConnectionError):
                await post(c.url, GOOD)
            await c.come_up()
            assert c.port == port
            c.set_delay(0.2)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            assert (await post(c.url, GOOD))[0] == 204
            assert loop.time() - t0 >= 0.19
            await c.wait_for_messages(3, timeout=1)

    arun(main())
