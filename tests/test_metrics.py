"""vxcap.metrics: the exposition of real counters parses, matches docs/operations.md, and is served.

The counters come from the real pipeline run over the committed mirror sample and from a real sink that
delivered the calls to the test collector, so every family is checked against values something counted.
"""
from __future__ import annotations

import collections
import pathlib
import re

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from vxcap.capfile import open_capture
from vxcap.config import Config
from vxcap.daemon import sink_latency, snapshot_from_flat
from vxcap.capture import flatten
from vxcap.metrics import CALL_DROP_REASONS, DECODE_ERROR_REASONS, MetricsServer, make_registry, render
from vxcap.pipeline import build_pipeline
from vxcap.rules import Rules
from vxcap.sink import SinkConfig, make_sink
from vxcap.testing.collector import Collector

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "mirror-sample.pcap"
DOC = REPO / "docs" / "operations.md"


def documented_families() -> set[str]:
    """Metric names in the first column of docs/operations.md's tables (``vxcap_process_*`` is a prefix)."""
    names = set()
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `(vxcap_[a-z0-9_*]+)` \|", line)
        if m:
            names.add(m.group(1))
    return names


def parse(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families, name: str, **labels) -> float:
    fam = families[name]
    sample_name = name + "_total" if fam.type == "counter" else name
    found = [s.value for s in fam.samples if s.name == sample_name and all(s.labels.get(k) == v
                                                                           for k, v in labels.items())]
    assert len(found) == 1, (name, labels, fam.samples)
    return found[0]


async def sample_snapshot() -> tuple[dict, int]:
    """Replay the sample through build_pipeline and deliver its calls with a real sink; (snapshot, calls)."""
    cfg = Config(vnis_include=frozenset({42}), app_ports=frozenset({80, 8080}))
    rules = Rules.parse("include debug")
    pipeline = build_pipeline(cfg, rules)
    async with Collector() as col:
        sink = make_sink(SinkConfig(col.url, allow_http_url=True, flush_interval=0.05))
        await sink.start()
        with open_capture(str(SAMPLE)) as cap:
            for batch in cap:
                sink.submit_many(pipeline.feed(batch))
        sink.submit_many(pipeline.finish())
        await sink.close(10)
        groups = dict(pipeline.counters())
        groups["sink"] = sink.counters()
        groups["rules"] = rules.counters()
        flat = flatten(groups)
        for vni, (fr, by) in pipeline.decoder.vni_stats().items():
            flat[f"vni.{vni}.frames"] = fr
            flat[f"vni.{vni}.bytes"] = by
        snap = snapshot_from_flat(flat)
        snap["sink_latency"] = sink_latency(snap["sink"])
        return snap, col.message_count


def test_exposition_parses_and_counts_what_happened(arun):
    snap, received = arun(sample_snapshot())
    body, content_type = render(make_registry(lambda: snap))
    assert content_type.startswith("text/plain; version=0.0.4")
    fams = parse(body.decode())
    assert received == 17
    assert value(fams, "vxcap_calls_emitted") == 17 == value(fams, "vxcap_sink_delivered")
    assert value(fams, "vxcap_sink_messages") == 17
    assert value(fams, "vxcap_vni_frames", vni="42") == value(fams, "vxcap_frames") > 0
    assert value(fams, "vxcap_vni_bytes", vni="42") == value(fams, "vxcap_frame_bytes") > 0
    assert value(fams, "vxcap_connections_opened") == 4  # two keep-alive, one pipelined, one IPv6
    assert value(fams, "vxcap_connections_active") == 0  # finish() flushed them
    assert value(fams, "vxcap_sink_batches_sent") >= 1
    hist = fams["vxcap_sink_post_seconds"]
    count = [x.value for x in hist.samples if x.name.endswith("_count")]
    assert count == [value(fams, "vxcap_sink_batches_sent")]  # every POST observed once
    assert value(fams, "vxcap_sink_bytes_raw") > value(fams, "vxcap_sink_bytes_sent") > 0
    # One label value per reason, present at zero too (alerts can rely on the series existing).
    assert {s.labels["reason"] for s in fams["vxcap_decode_errors"].samples} == set(DECODE_ERROR_REASONS)
    assert {s.labels["reason"] for s in fams["vxcap_calls_dropped"].samples} == set(CALL_DROP_REASONS)
    assert sum(s.value for s in fams["vxcap_calls_dropped"].samples) == 0
    # Every family is vxcap_-prefixed; nothing of a stage is lost: leftovers are pipeline events.
    assert all(name.startswith("vxcap_") for name in fams)
    events = {(s.labels["stage"], s.labels["event"]) for s in fams["vxcap_pipeline_events"].samples}
    assert ("decode", "encapsulated") in events


def test_every_documented_family_is_exported_and_every_exported_one_documented(arun):
    snap, _ = arun(sample_snapshot())
    body, _ = render(make_registry(lambda: snap))
    exported = set(parse(body.decode()))
    documented = documented_families()
    prefixes = {d[:-1] for d in documented if d.endswith("*")}
    exact = {d for d in documented if not d.endswith("*")}
    # prometheus_client names a counter family without its _total suffix
    exported_doc_names = {n + "_total" if n + "_total" in exact else n for n in exported}
    assert exact - exported_doc_names == set(), "documented but not exported"
    undocumented = {n for n in exported_doc_names - exact if not any(n.startswith(p) for p in prefixes)}
    assert undocumented == set(), "exported but not documented in docs/operations.md"
    assert any(n.startswith("vxcap_process_") for n in exported)


def test_empty_snapshot_still_exports_every_family():
    body, _ = render(make_registry(lambda: {}))
    fams = parse(body.decode())
    assert value(fams, "vxcap_frames") == 0
    assert value(fams, "vxcap_kernel_drops") == 0
    hist = fams["vxcap_sink_post_seconds"]
    assert hist.type == "histogram"
    assert [s.value for s in hist.samples if s.name.endswith("_count")] == [0]


def test_openmetrics_when_asked():
    body, content_type = render(make_registry(lambda: {}), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_counters_are_read_at_scrape_time_not_accumulated():
    live = collections.Counter()
    registry = make_registry(lambda: {"decode": dict(live)}, process=False)
    live["frames"] = 5
    assert value(parse(render(registry)[0].decode()), "vxcap_frames") == 5
    live["frames"] = 7  # a second scrape sees the stage's value, not 5 + 7
    assert value(parse(render(registry)[0].decode()), "vxcap_frames") == 7


def test_server_metrics_healthz_readyz(arun):
    async def go():
        state = {"ready": (False, "starting")}
        server = MetricsServer(("127.0.0.1", 0), lambda: {"decode": {"frames": 3}}, lambda: state["ready"])
        await server.start()
        base = f"http://127.0.0.1:{server.port}"
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/healthz") as r:
                    assert r.status == 200
                async with s.get(base + "/readyz") as r:
                    assert (r.status, await r.text()) == (503, "starting\n")
                state["ready"] = (True, "capturing")
                async with s.get(base + "/readyz") as r:
                    assert (r.status, await r.text()) == (200, "capturing\n")
                state["ready"] = (False, "sink unhealthy: x\nsecond line never shown")
                async with s.get(base + "/readyz") as r:
                    assert (r.status, await r.text()) == (503, "sink unhealthy: x\n")
                async with s.get(base + "/metrics") as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    assert value(parse(await r.text()), "vxcap_frames") == 3
                async with s.get(base + "/nope") as r:
                    assert r.status == 404
        finally:
            await server.stop()
        assert server.scrapes == 1
        # the port is released: a new server can bind it at once
        again = MetricsServer(("127.0.0.1", server.port), dict, lambda: (True, "x"))
        await again.start()
        await again.stop()

    arun(go())


def test_server_refuses_a_taken_port(arun):
    async def go():
        first = MetricsServer(("127.0.0.1", 0), dict, lambda: (True, "x"))
        await first.start()
        try:
            second = MetricsServer(("127.0.0.1", first.port), dict, lambda: (True, "x"))
            # reuse_address does not allow two listeners on one port (that is SO_REUSEPORT)
            try:
                await second.start()
            except OSError:
                pass
            else:
                await second.stop()
                raise AssertionError("a second server bound a taken port")
        finally:
            await first.stop()

    arun(go())
