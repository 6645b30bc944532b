"""The sink against a real collector on 127.0.0.1: delivery, faults, backpressure, spool, shutdown.

Times are scaled down (backoff in tens of milliseconds, budgets of a second) so that an outage runs in a
few seconds, except the outage test: a real 30-second outage on uvloop (VXCAP_SINK_OUTAGE sets it), and a
2-second one on asyncio.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import subprocess
import time

import orjson
import pytest

from vxcap import __version__
from vxcap.sink import FileSink, ResurfaceSink, SinkConfig, SinkConfigError, make_sink
from vxcap.spool import Spool
from vxcap.testing.collector import Collector

# The figure: a 30-second outage, waited for once (on uvloop); asyncio gets a 2-second one.
OUTAGE = float(os.environ.get("VXCAP_SINK_OUTAGE", "30"))


def line(i: int, pad: int = 0) -> bytes:
    """A message whose id is in request_url; every line has the same length for the same pad."""
    return orjson.dumps([["request_method", "GET"], ["request_url", f"http://shop.example.com/i/{i:07d}"],
                         ["response_code", "200"], ["response_body", "x" * pad], ["host", "ip-10-0-1-7"]])


LINE = len(line(0)) + 1  # with its newline


def ids(c: Collector) -> collections.Counter:
    return collections.Counter(int(m[1][1].rsplit("/", 1)[1]) for m in c.messages)


def conf(url, **kw) -> SinkConfig:
    base = dict(allow_http_url=True, backoff_initial=0.01, backoff_max=0.1, flush_interval=0.05,
                saturation_interval=0.05)
    base.update(kw)
    return SinkConfig(url, **base)


async def produce(sink, start: int, stop: int, chunk: int = 25, pause: float = 0.0) -> int:
    accepted = 0
    for i in range(start, stop, chunk):
        accepted += sink.submit_many([line(j) for j in range(i, min(stop, i + chunk))])
        await asyncio.sleep(pause)
    return accepted


def accounted(k: dict) -> int:
    """Every message ends in exactly one of these (docs/sink.md; for a spool empty at start)."""
    return (k["messages_delivered"] + sum(v for name, v in k.items() if name.startswith("dropped_"))
            + k.get("spool_messages", 0) + k.get("spool_evicted", 0) + k["buffered_messages"])


# -- configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(url="http://localhost:7701/message"),
     "USAGE_LOGGERS_URL http://localhost:7701/message is plain http: add the rule 'allow_http_url' to "
     "USAGE_LOGGERS_RULES to permit it"),
    (dict(url="ftp://h/x"), "USAGE_LOGGERS_URL 'ftp://h/x': expected an http:// or https:// URL with a host"),
    (dict(url="https://h/x", bundle_size=0),
     "USAGE_LOGGERS_BUNDLE_SIZE 0: expected an integer from 1 to 1073741824 (bytes)"),
    (dict(url="https://h/x", message_queue_size=True),
     "USAGE_LOGGERS_MESSAGE_QUEUE_SIZE True: expected an integer from 1 to 10000000 (lines)"),
    (dict(url="https://h/x", flush_interval=0),
     "sink option flush_interval 0: expected a number of seconds from 0.001 to 3600"),
    (dict(url="https://h/x", retry_budget=float("nan")),
     "sink option retry_budget nan: expected a number of seconds from 0 to 604800"),
    (dict(url="https://h/x", max_inflight=0), "sink option max_inflight 0: expected an integer from 1 to 64 (requests)"),
    (dict(url="https://h/x", out="-"),
     "sink option out '-': expected None when USAGE_LOGGERS_URL is set (messages go to the URL)"),
    (dict(url="https://h/x", ca_file="/nonexistent.pem"),
     "sink option ca_file '/nonexistent.pem': expected a readable PEM file"),
    (dict(url="https://h/x", user_agent="a\r\nb"),
     "sink option user_agent 'a\\r\\nb': expected a non-empty header value on one line"),
    (dict(url="https://h/x", backoff_initial=2.0, backoff_max=1.0),
     "sink option backoff_max 1.0: expected >= backoff_initial (2)"),
    (dict(url="https://h/x", skip_compression="yes"), "sink option skip_compression 'yes': expected true or false"),
])
def test_config_errors_are_one_precise_line(kw, message):
    with pytest.raises(SinkConfigError) as info:
        make_sink(SinkConfig(**kw))
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_config_defaults_and_kinds(tmp_path):
    cfg = SinkConfig("https://worker.resurface:7701/message")
    cfg.validate()
    assert (cfg.bundle_size, cfg.message_queue_size, cfg.bundle_queue_size) == (5 * 1024 * 1024, 1000, 128)
    assert cfg.user_agent == f"vxcap/{__version__}"
    assert isinstance(make_sink(cfg), ResurfaceSink)
    assert isinstance(make_sink(SinkConfig(None)), FileSink)
    assert isinstance(make_sink(SinkConfig(None, out=str(tmp_path / "o.ndjson"))), FileSink)
    (tmp_path / "f").write_text("")
    with pytest.raises(SinkConfigError, match="spool_dir .*expected a directory"):
        make_sink(SinkConfig("https://h/m", spool_dir=str(tmp_path / "f")))


# -- healthy collector --------------------------------------------------------------------------------
def test_every_message_once_in_batches_of_the_configured_size(arun):
    async def main():
        async with Collector() as c:
            sink = make_sink(conf(c.url, bundle_size=20 * LINE, flush_interval=30.0))
            await sink.start()
            assert await produce(sink, 0, 500, chunk=37) == 500
            await sink.close(5)
            assert ids(c) == collections.Counter(range(500))
            assert [r.lines for r in c.requests] == [20] * 25
            for r in c.requests:
                assert r.headers["Content-Type"] == "application/ndjson; charset=UTF-8"
                assert r.headers["Content-Encoding"] == "deflated"
                assert r.headers["User-Agent"] == f"vxcap/{__version__}"
                assert r.raw_bytes == 20 * LINE and r.wire_bytes < r.raw_bytes
            # one session, connections reused: no more connections than concurrent POSTs
            assert len({r.peer for r in c.requests}) <= sink.cfg.max_inflight
            k = sink.counters()
            assert (k["messages_in"], k["messages_delivered"], k["batches_sent"]) == (500, 500, 25)
            assert k["bytes_raw"] == 500 * LINE
            assert k["bytes_sent"] == sum(r.wire_bytes for r in c.requests)
            assert k["retries"] == 0 and accounted(k) == 500 and k["buffered_messages"] == 0

    arun(main())


def test_flush_interval_and_large_batches_off_the_loop(arun):
    async def main():
        async with Collector() as c:
            sink = make_sink(conf(c.url, flush_interval=0.1, bundle_size=256 * 1024, compress_inline_max=4096))
            await sink.start()
            sink.submit_many([line(0), line(1)])
            await c.wait_for_messages(2, timeout=2)  # no close: the interval closed the batch
            big = [line(i, pad=1000) for i in range(2, 1002)]  # ~1 MiB: several batches, compressed in threads
            huge = line(5000, pad=400 * 1024)  # larger than bundle_size: travels alone
            assert sink.submit_many(big + [huge]) == 1001
            await sink.close(5)
            assert ids(c) == collections.Counter([0, 1, *range(2, 1002), 5000])
            # Two POSTs may be in flight, so the order they complete in is not fixed: find the big one.
            alone = [r for r in c.requests if r.raw_bytes > 256 * 1024]
            assert len(alone) == 1 and alone[0].lines == 1
            assert all(r.raw_bytes <= 256 * 1024 for r in c.requests if r is not alone[0])

    arun(main())


# -- faults -------------------------------------------------------------------------------------------
def test_503_bursts_and_resets_lose_nothing(arun):
    async def main():
        async with Collector() as c:
            sink = make_sink(conf(c.url, bundle_size=10 * LINE))
            await sink.start()
            c.fail_next(4, status=503)
            c.reset_next(3)  # before the body is read: nothing recorded, the sender sees a dead connection
            await produce(sink, 0, 300, pause=0.005)
            c.fail_next(2, status=429)
            await produce(sink, 300, 400)
            await sink.close(10)
            assert ids(c) == collections.Counter(range(400))  # exactly once
            k = sink.counters()
            assert k["failures_http_503"] == 4 and k["failures_http_429"] == 2
            assert k["failures_connection"] >= 3
            assert k["retries"] >= 9 and k["messages_delivered"] == 400 and accounted(k) == 400
            assert sink.healthy is False  # closed

    arun(main())


def test_outcome_unknown_gives_duplicates_never_losses(arun):
    async def main():
        async with Collector() as c:
            sink = make_sink(conf(c.url, bundle_size=10 * LINE))
            await sink.start()
            c.reset_next(2, record=True)  # stored, then the connection dies before the 204
            await produce(sink, 0, 200)
            await sink.close(10)
            got = ids(c)
            assert set(got) == set(range(200))
            dups = sum(got.values()) - 200
            assert 0 < dups <= 2 * 10  # at most the two batches whose outcome was unknown
            assert sink.counters()["messages_delivered"] == 200

    arun(main())


def test_outage_every_message_arrives(arun):
    outage = OUTAGE if arun.kind == "uvloop" else min(OUTAGE, 2.0)

    async def main():
        async with Collector() as c:
            sink = make_sink(conf(c.url, bundle_size=20 * LINE, retry_budget=outage * 3 + 2,
                                  backoff_max=min(1.0, outage / 4)))
            await sink.start()
            await produce(sink, 0, 100)
            await c.wait_for_messages(100)
            await c.go_down()
            loop = asyncio.get_running_loop()
            t_end = loop.time() + outage
            n = 100
            while loop.time() < t_end:  # traffic keeps coming during the outage
                await produce(sink, n, n + 20)
                n += 20
                await asyncio.sleep(max(0.05, outage / 40))
            assert sink.healthy is False
            await c.come_up()
            await produce(sink, n, n + 100)
            n += 100
            await c.wait_for_messages(n, timeout=outage + 10)
            await sink.close(5)
            got = ids(c)
            assert set(got) == set(range(n))
            # go_down aborted connections: a batch recorded just before its 204 was lost may come twice
            assert sum(got.values()) - n <= 2 * 20
            k = sink.counters()
            assert k["messages_delivered"] == n and k["failures_connection"] > 0
            assert sum(v for name, v in k.items() if name.startswith("dropped_")) == 0

    arun(main(), timeout=outage * 3 + 60)


def test_outage_longer_than_buffers_counts_every_drop_and_stays_bounded(arun):
    async def main():
        async with Collector() as c:
            bundle = 10 * LINE
            cfg = conf(c.url, bundle_size=bundle, message_queue_size=50, bundle_queue_size=4, max_inflight=2,
                       retry_budget=0.4)
            sink = make_sink(cfg)
            await sink.start()
            await c.go_down()
            lim = sink.queue_limits()
            bound_msgs = lim["message_queue_size"] + lim["batches_max"] * 10
            produced = 0
            for _ in range(60):
                produced += 25
                sink.submit_many([line(j) for j in range(produced - 25, produced)])
                assert sink.counters()["buffered_messages"] <= bound_msgs
                await asyncio.sleep(0.01)
            await c.come_up()
            await produce(sink, produced, produced + 100)
            produced += 100
            await sink.close(5)
            k = sink.counters()
            assert k["dropped_queue_full"] > 0 and k["dropped_retry_budget"] > 0
            assert accounted(k) == produced == k["messages_in"]
            assert k["peak_buffered_messages"] <= bound_msgs
            assert k["peak_buffered_bytes"] <= lim["batches_max"] * bundle
            assert sum(ids(c).values()) == k["messages_delivered"]  # refused connections: no duplicates

    arun(main())


def test_400_is_not_retried_and_logged_once(arun, caplog):
    async def main():
        async with Collector() as c:
            sink = make_sink(conf(c.url, bundle_size=10 * LINE))
            await sink.start()
            c.fail_next(3, status=400, text="Invalid message: reason")
            with caplog.at_level(logging.INFO, logger="vxcap.sink"):
                await produce(sink, 0, 100)
                await sink.close(5)
            k = sink.counters()
            assert k["dropped_rejected"] == 30 and k["retries"] == 0 and k["failures_http_400"] == 3
            assert len(c.requests) == 10 and k["messages_delivered"] == 70 and accounted(k) == 100
            logged = [r.getMessage() for r in caplog.records if "400" in r.getMessage()]
            assert len(logged) == 1 and "Invalid message: reason" in logged[0]
            assert not any("shop.example.com" in r.getMessage() for r in caplog.records)  # no bodies

    arun(main())


def test_saturated_collector_pauses_sending(arun):
    async def main():
        async with Collector() as c:
            c.saturated = True
            sink = make_sink(conf(c.url, bundle_size=10 * LINE, retry_budget=10))
            await sink.start()
            await produce(sink, 0, 100)
            await asyncio.sleep(0.3)
            k = sink.counters()
            assert k["saturated_pauses"] == 1 and k["saturated"] == 1
            posts = len(c.requests)
            await asyncio.sleep(0.3)
            assert len(c.requests) == posts  # paused: no POSTs while /saturated says true
            await produce(sink, 100, 150)  # still buffering
            c.saturated = False
            await c.wait_for_messages(150, timeout=5)
            await sink.close(5)
            assert ids(c) == collections.Counter(range(150))
            assert sink.counters()["saturated"] == 0

    arun(main())


def test_https_verified_with_a_private_ca(arun, tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate")
    import ssl

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:TRUE"], check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def main():
        async with Collector(ssl_context=server_ctx) as c:
            ok = make_sink(conf(c.url, ca_file=str(cert), allow_http_url=False))
            await ok.start()
            ok.submit_many([line(1)])
            await ok.close(5)
            assert ids(c) == collections.Counter([1])
            untrusted = make_sink(conf(c.url, retry_budget=0.2, allow_http_url=False))  # system CAs only
            await untrusted.start()
            untrusted.submit_many([line(2)])
            await untrusted.close(5)
            k = untrusted.counters()
            assert k["failures_tls"] > 0 and k["dropped_retry_budget"] == 1
            assert ids(c) == collections.Counter([1])

    arun(main())


# -- spool --------------------------------------------------------------------------------------------
def test_spool_delivers_after_restart(arun, tmp_path):
    async def main():
        async with Collector() as c:
            await c.go_down()
            first = make_sink(conf(c.url, bundle_size=10 * LINE, retry_budget=0.2, spool_dir=str(tmp_path)))
            await first.start()
            await produce(first, 0, 300, pause=0.01)
            await asyncio.sleep(0.3)
            assert first.healthy  # POSTs fail but the spool takes the batches
            await first.close(2)
            k1 = first.counters()
            assert k1["spool_written"] == 300 and k1["spool_messages"] == 300 and accounted(k1) == 300
            assert c.message_count == 0
            await c.come_up()
            second = make_sink(conf(c.url, bundle_size=10 * LINE, spool_dir=str(tmp_path)))
            await second.start()
            await c.wait_for_messages(300, timeout=5)
            await second.close(5)
            k2 = second.counters()
            assert ids(c) == collections.Counter(range(300))
            assert k2["spool_sent"] == 300 and k2["spool_files"] == 0 and k2["spool_bytes"] == 0
            assert not list(tmp_path.glob("*.vxs"))

    arun(main())


def test_spool_eviction_is_counted(arun, tmp_path):
    async def main():
        async with Collector() as c:
            await c.go_down()
            sink = make_sink(conf(c.url, bundle_size=10 * LINE, retry_budget=0.1, spool_dir=str(tmp_path),
                                  spool_max_bytes=4 * (10 * LINE + 32), skip_compression=True))
            await sink.start()
            await produce(sink, 0, 200, chunk=10, pause=0.01)
            await sink.close(2)
            k = sink.counters()
            assert k["spool_evicted"] > 0 and k["spool_bytes"] <= 4 * (10 * LINE + 32)
            assert accounted(k) == 200
            kept = k["spool_messages"]
            await c.come_up()
            again = make_sink(conf(c.url, spool_dir=str(tmp_path)))
            await again.start()
            await c.wait_for_messages(kept, timeout=5)
            await again.close(5)
            assert sorted(ids(c)) == list(range(200 - kept, 200))  # the newest survive

    arun(main())


def test_spool_drains_when_the_collector_returns(arun, tmp_path):
    async def main():
        async with Collector() as c:
            await c.go_down()
            sink = make_sink(conf(c.url, bundle_size=10 * LINE, retry_budget=0.2, spool_dir=str(tmp_path)))
            await sink.start()
            await produce(sink, 0, 200, pause=0.01)
            await asyncio.sleep(0.4)
            k = sink.counters()
            assert k["spool_written"] > 0 and sink.healthy
            await c.come_up()
            await produce(sink, 200, 300)
            await c.wait_for_messages(300, timeout=5)
            await sink.close(5)
            k = sink.counters()
            assert ids(c) == collections.Counter(range(300))
            assert k["spool_sent"] == k["spool_written"] > 0 and k["spool_files"] == 0
            assert k["messages_delivered"] == 300 and accounted(k) == 300

    arun(main())


def test_corrupt_spool_file_is_skipped_and_counted(arun, tmp_path):
    sp = Spool(tmp_path, 1 << 20, fsync=False)
    sp.open()
    for b in range(3):
        sp.put(b"".join(line(b * 10 + i) + b"\n" for i in range(10)), 10, False)
    sp.close()
    victim = sorted(tmp_path.glob("*.vxs"))[1]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0x20
    victim.write_bytes(bytes(data))

    async def main():
        async with Collector() as c:
            sink = make_sink(conf(c.url, spool_dir=str(tmp_path)))
            await sink.start()
            await c.wait_for_messages(20, timeout=5)
            await asyncio.sleep(0.05)
            await sink.close(5)
            k = sink.counters()
            assert ids(c) == collections.Counter([*range(10), *range(20, 30)])
            assert k["spool_corrupt"] == 1 and k["spool_sent"] == 20 and k["spool_files"] == 0
            assert (tmp_path / (victim.name + ".corrupt")).exists()

    arun(main())


def test_spool_dir_used_by_another_sink(arun, tmp_path):
    async def main():
        a = make_sink(conf("http://127.0.0.1:9/m", spool_dir=str(tmp_path)))
        await a.start()
        b = make_sink(conf("http://127.0.0.1:9/m", spool_dir=str(tmp_path)))
        with pytest.raises(SinkConfigError, match="in use by another process"):
            await b.start()
        await a.close(1)

    arun(main())


# -- modes --------------------------------------------------------------------------------------------
def test_skip_compression_sends_raw_without_the_header(arun):
    async def main():
        async with Collector() as c:
            sink = make_sink(conf(c.url, skip_compression=True, bundle_size=10 * LINE))
            await sink.start()
            await produce(sink, 0, 50)
            await sink.close(5)
            assert ids(c) == collections.Counter(range(50))
            for r in c.requests:
                assert "Content-Encoding" not in r.headers and r.wire_bytes == r.raw_bytes == 10 * LINE
                assert r.headers["Content-Type"] == "application/ndjson; charset=UTF-8"

    arun(main())


def test_skip_submission_and_disabled_never_send(arun):
    async def main():
        async with Collector() as c:
            skip = make_sink(conf(c.url, skip_submission=True, bundle_size=10 * LINE))
            off = make_sink(conf(c.url, disabled=True))
            for s in (skip, off):
                await s.start()
                assert s.submit_many([line(i) for i in range(30)]) == 30
                await asyncio.sleep(0.1)
                await s.close(2)
            assert c.request_count == 0
            k = skip.counters()
            assert k["dropped_skip_submission"] == 30 and k["batches_built"] == 3 and accounted(k) == 30
            k = off.counters()
            assert k["dropped_disabled"] == 30 and accounted(k) == 30

    arun(main())


# -- backpressure and shutdown ------------------------------------------------------------------------
def test_submit_many_never_blocks_and_drops_the_rest(arun):
    async def main():
        async with Collector() as c:
            await c.go_down()
            sink = make_sink(conf(c.url, bundle_size=10 * LINE, message_queue_size=100, bundle_queue_size=2))
            await sink.start()
            lines = [line(i) for i in range(10_000)]
            t0 = time.perf_counter()
            accepted = sink.submit_many(lines)
            took = time.perf_counter() - t0
            assert took < 0.25, took  # 10k lines; generous for a loaded CI box
            assert accepted == 100 + 3 * 10  # 2 queued batches + the open one + the message queue
            assert sink.submit_many(lines[:5]) == 0
            k = sink.counters()
            assert k["dropped_queue_full"] == 10_000 - accepted + 5
            assert k["buffered_messages"] == accepted
            await sink.close(0.2)
            k = sink.counters()
            assert k["dropped_shutdown"] == accepted and accounted(k) == 10_005
            assert sink.submit_many(lines[:3]) == 0 and sink.counters()["dropped_shutdown"] == accepted + 3

    arun(main())


def test_shutdown_flushes_within_the_deadline(arun):
    async def main():
        async with Collector() as c:
            c.set_delay(0.2)  # a slow collector
            sink = make_sink(conf(c.url, bundle_size=10 * LINE, flush_interval=30.0))
            await sink.start()
            await produce(sink, 0, 95)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await sink.close(3)
            assert loop.time() - t0 < 3
            assert ids(c) == collections.Counter(range(95))
            await c.go_down()  # now a dead one: close gives up at the deadline and counts
            dead = make_sink(conf(c.url, bundle_size=10 * LINE, retry_budget=30))
            await dead.start()
            await produce(dead, 0, 95)
            t0 = loop.time()
            await dead.close(0.5)
            assert loop.time() - t0 < 1.0
            k = dead.counters()
            assert k["dropped_shutdown"] == 95 and accounted(k) == 95

    arun(main())


def test_file_sink(arun, tmp_path):
    out = tmp_path / "calls.ndjson"

    async def main():
        sink = make_sink(SinkConfig(None, out=str(out), bundle_size=10 * LINE, flush_interval=0.05))
        await sink.start()
        await produce(sink, 0, 95)
        await sink.close(5)
        assert out.read_bytes() == b"".join(line(i) + b"\n" for i in range(95))
        k = sink.counters()
        assert k["messages_delivered"] == 95 and k["batches_sent"] == 10 and accounted(k) == 95

    arun(main())


def test_file_sink_stdout(arun, capfdbinary):
    async def main():
        sink = make_sink(SinkConfig(None))
        await sink.start()
        sink.submit_many([line(1), line(2)])
        await sink.close(5)

    arun(main())
    assert capfdbinary.readouterr().out.endswith(line(1) + b"\n" + line(2) + b"\n")
