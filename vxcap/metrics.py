"""Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` for ``vxcap run``.

Nothing here counts. The stages keep their own counters (plain ints in dicts or C arrays, the cheapest thing
on the hot path); ``VxcapCollector`` reads one *snapshot* of all of them at scrape time and turns it into
metric families. So a value cannot be counted twice or drift from what the stage knows, and a stage added
later only has to show up in the snapshot. With several capture workers the parent process builds the
snapshot from the workers' summed counters (vxcap.workers) and serves it alone.

Snapshot (a dict; every part optional, missing parts export zeros so the series always exist)::

    decode      Decoder.counters()            frames, bytes, drop reasons (vxcap.decode_py.COUNTER_NAMES)
    vnis        Decoder.vni_stats()           {vni: (frames, bytes)}, counted before the VNI filter
    capture     the ring's / UDP engine's     kernel_packets, kernel_drops, kernel_freeze_q, ...
    reassembly  Reassembler.counters()        connections, gaps, HTTP framing (one namespace)
    messages    MessageBuilder.counters()     calls_built, calls_dropped_by_rules, body decoding
    rules       Rules.counters()              dropped_stop / dropped_sample / dropped_empty
    sink        sink.counters()               vxcap/sink.py's documented counters and gauges
    sink_latency (bounds, cumulative counts, sum seconds) of the POSTs, when the sink measures them
    daemon      capturing, ready, workers, reloads_ok, reloads_failed, log_suppressed, start_time

Every counter of every part is exported: the ones named below get a family of their own (docs/
operations.md says what each means and what to do when it moves); any other key lands in
``vxcap_pipeline_events_total{stage, event}``, so a counter added to a stage is visible without a change here.

Why aiohttp on the capture loop rather than prometheus_client's threaded server: the counters are mutated on
the loop's thread without locks; reading them from another thread could see a dict mid-resize (RuntimeError
in the middle of a scrape) or a half-updated set of related values. On the loop a scrape is one consistent
snapshot. It also makes ``/healthz`` honest: a loop stuck in a hot path stops answering, and the liveness
probe restarts the pod, which a thread answering "alive" beside a dead loop would never do.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from vxcap import __version__
from vxcap.decode_py import COUNTER_NAMES as DECODE_COUNTERS

log = logging.getLogger("vxcap.metrics")

__all__ = ["VxcapCollector", "MetricsServer", "make_registry", "render", "DECODE_ERROR_REASONS",
           "FRAME_IGNORE_REASONS", "CALL_DROP_REASONS", "LATENCY_BUCKETS"]

Snapshot = Mapping[str, Any]

# Decoder drop reasons that are policy or ordinary non-HTTP traffic, not damage: they go to
# vxcap_frames_ignored_total. Everything else after "truncated_frames" in COUNTER_NAMES is a decode error.
FRAME_IGNORE_REASONS = {
    "vni_filtered": "vni_filtered",
    "port_filtered": "port_filtered",
    "pure_ack": "pure_ack",
    "non_ip": "non_ip",
    "non_tcp": "non_tcp",
    "not_encapsulated": "not_encapsulated",
    "encap_ignored": "encap_ignored",
}
_FIRST_REASON = DECODE_COUNTERS.index("truncated_frames") + 1
DECODE_ERROR_REASONS = tuple(n for n in DECODE_COUNTERS[_FIRST_REASON:] if n not in FRAME_IGNORE_REASONS)

# Sink counters that end a message without delivery (docs/sink.md), as reasons of vxcap_calls_dropped_total.
_SINK_DROPS = {
    "queue": "dropped_queue_full",
    "retry_budget": "dropped_retry_budget",
    "rejected": "dropped_rejected",
    "shutdown": "dropped_shutdown",
    "disabled": "dropped_disabled",
    "skip_submission": "dropped_skip_submission",
    "spool_error": "dropped_spool_error",
    "io_error": "dropped_io_error",
    "internal_error": "dropped_internal_error",
}
CALL_DROP_REASONS = ("rules", "sample", "limits", *_SINK_DROPS)

# Default POST latency buckets (seconds) when the sink reports none of its own: a healthy in-cluster POST of
# a batch takes milliseconds, a saturated database seconds, request_timeout is 30 s.
from vxcap.sink import POST_LATENCY_BOUNDS as LATENCY_BUCKETS  # noqa: E402 - one definition, in the sink


class _Families:
    """Builds families from one snapshot and remembers which keys of each part it used."""

    def __init__(self, snap: Snapshot):
        self.snap = snap
        self.used: dict[str, set[str]] = {}
        self.out: list[Metric] = []

    def part(self, name: str) -> Mapping[str, Any]:
        value = self.snap.get(name)
        return value if isinstance(value, Mapping) else {}

    def get(self, part: str, key: str) -> float:
        self.used.setdefault(part, set()).add(key)
        v = self.part(part).get(key, 0)
        return v if isinstance(v, (int, float)) else 0

    def counter(self, name: str, doc: str, part: str, key: str) -> None:
        m = CounterMetricFamily(name, doc)
        m.add_metric([], self.get(part, key))
        self.out.append(m)

    def gauge(self, name: str, doc: str, value: float) -> None:
        m = GaugeMetricFamily(name, doc)
        m.add_metric([], value)
        self.out.append(m)

    def labelled(self, name: str, doc: str, label: str, values: Iterable[tuple[str, float]],
                 kind: type = CounterMetricFamily) -> None:
        m = kind(name, doc, labels=[label])
        for lv, v in values:
            m.add_metric([lv], v)
        self.out.append(m)


class VxcapCollector:
    """A prometheus_client collector over ``snapshot()``; called once per scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]):
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # names are only known from a snapshot; registering must not take one

    def collect(self) -> Iterable[Metric]:
        f = _Families(self.snapshot())
        self._daemon(f)
        self._capture(f)
        self._reassembly(f)
        self._calls(f)
        self._sink(f)
        self._leftovers(f)
        return f.out

    # -- process ----------------------------------------------------------------------------------------
    @staticmethod
    def _daemon(f: _Families) -> None:
        d = f.part("daemon")
        info = GaugeMetricFamily("vxcap_build_info", "vxcap version (value 1)", labels=["version"])
        info.add_metric([__version__], 1)
        f.out.append(info)
        f.gauge("vxcap_start_time_seconds", "Unix time the daemon started", d.get("start_time", 0))
        f.gauge("vxcap_capture_up", "1 while packets are being captured", d.get("capturing", 0))
        f.gauge("vxcap_ready", "1 when /readyz answers 200", d.get("ready", 0))
        f.gauge("vxcap_workers", "capture worker processes running", d.get("workers", 0))
        f.labelled("vxcap_reloads_total", "SIGHUP reloads of rules and filters, by result", "result",
                   [("ok", d.get("reloads_ok", 0)), ("failed", d.get("reloads_failed", 0))])
        f.counter("vxcap_log_suppressed_total", "log records dropped by the per-key rate limit",
                  "daemon", "log_suppressed")
        f.counter("vxcap_worker_restarts_total", "capture workers restarted after dying", "daemon",
                  "worker_restarts")

    # -- capture and decoding ---------------------------------------------------------------------------
    @staticmethod
    def _capture(f: _Families) -> None:
        f.counter("vxcap_kernel_packets_total", "packets the kernel passed to the capture socket",
                  "capture", "kernel_packets")
        f.counter("vxcap_kernel_drops_total", "packets the kernel dropped: the capture ring was full",
                  "capture", "kernel_drops")
        f.counter("vxcap_kernel_freezes_total", "times every ring block was held by vxcap (ring full)",
                  "capture", "kernel_freeze_q")
        f.counter("vxcap_frames_total", "frames decoded", "decode", "frames")
        f.counter("vxcap_frame_bytes_total", "captured bytes of the frames decoded", "decode", "bytes")
        f.counter("vxcap_segments_total", "TCP segments extracted from mirrored frames", "decode", "segments")
        f.counter("vxcap_truncated_frames_total", "frames shorter than on the wire (mirror packet length)",
                  "decode", "truncated_frames")
        frames = CounterMetricFamily("vxcap_vni_frames", "frames per VNI (mirror session), before the VNI "
                                     "filter", labels=["vni"])
        nbytes = CounterMetricFamily("vxcap_vni_bytes", "captured bytes per VNI, before the VNI filter",
                                     labels=["vni"])
        vnis = f.snap.get("vnis") or {}
        for vni in sorted(vnis):
            fr, by = vnis[vni]
            frames.add_metric([str(vni)], fr)
            nbytes.add_metric([str(vni)], by)
        f.out += [frames, nbytes]
        f.labelled("vxcap_decode_errors_total", "frames dropped as malformed or unsupported, by reason",
                   "reason", [(r, f.get("decode", r)) for r in DECODE_ERROR_REASONS])
        f.labelled("vxcap_frames_ignored_total", "frames skipped on purpose (filters, non-TCP, pure ACKs)",
                   "reason", [(label, f.get("decode", key)) for key, label in FRAME_IGNORE_REASONS.items()])
        f.counter("vxcap_capture_cut_frames_total", "frames the capture ring cut (must stay 0)", "capture",
                  "cut_frames")

    # -- reassembly and HTTP ----------------------------------------------------------------------------
    @staticmethod
    def _reassembly(f: _Families) -> None:
        f.gauge("vxcap_connections_active", "TCP connections tracked now", f.get("reassembly",
                                                                                "connections_active"))
        f.counter("vxcap_connections_opened_total", "TCP connections started tracking", "reassembly",
                  "connections_opened")
        f.counter("vxcap_connections_evicted_total", "connections dropped at VXCAP_MAX_CONNECTIONS",
                  "reassembly", "connections_evicted")
        f.labelled("vxcap_connections_closed_total", "connections no longer tracked, by how they ended",
                   "reason", [("fin_rst", f.get("reassembly", "connections_closed")),
                              ("idle", f.get("reassembly", "connections_idle_expired")),
                              ("shutdown", f.get("reassembly", "connections_flushed"))])
        f.gauge("vxcap_reassembly_buffered_bytes", "out-of-order bytes held now",
                f.get("reassembly", "buffered_bytes"))
        f.counter("vxcap_stream_bytes_total", "in-order TCP payload bytes handed to the HTTP parser",
                  "reassembly", "bytes_delivered")
        f.counter("vxcap_gaps_total", "holes in a TCP stream (skipped or cut)", "reassembly", "gaps")
        f.counter("vxcap_gap_bytes_total", "bytes of holes skipped after VXCAP_GAP_TIMEOUT or limits",
                  "reassembly", "gap_bytes")
        f.counter("vxcap_lost_bytes_total", "bytes cut off by the mirror or capture (packet length)",
                  "reassembly", "truncated_bytes")
        f.labelled("vxcap_buffer_limit_hits_total", "out-of-order buffer limits reached, by scope", "scope",
                   [("connection", f.get("reassembly", "conn_buffer_limit_hits")),
                    ("total", f.get("reassembly", "total_buffer_limit_hits"))])
        f.counter("vxcap_http_parse_errors_total", "HTTP framing errors (the parser resynchronises)",
                  "reassembly", "http_parse_errors")
        f.counter("vxcap_requests_without_response_total", "requests emitted without a response",
                  "reassembly", "requests_without_response")

    # -- calls ------------------------------------------------------------------------------------------
    @staticmethod
    def _calls(f: _Families) -> None:
        f.counter("vxcap_calls_emitted_total", "calls built and handed to the sink", "messages", "calls_built")
        by_rules = f.get("messages", "calls_dropped_by_rules")
        sample = f.get("rules", "dropped_sample")
        f.used.setdefault("rules", set()).update({"dropped_stop", "dropped_empty", "messages_in", "messages_out"})
        reasons = [("rules", max(0, by_rules - sample)), ("sample", sample),
                   ("limits", f.get("reassembly", "header_limit_hits"))]
        reasons += [(label, f.get("sink", key)) for label, key in _SINK_DROPS.items()]
        f.labelled("vxcap_calls_dropped_total", "calls lost before delivery, by reason", "reason", reasons)

    # -- sink -------------------------------------------------------------------------------------------
    @staticmethod
    def _sink(f: _Families) -> None:
        f.counter("vxcap_sink_messages_total", "messages handed to the sink", "sink", "messages_in")
        f.counter("vxcap_sink_delivered_total", "messages in batches the collector answered 204", "sink",
                  "messages_delivered")
        f.counter("vxcap_sink_batches_built_total", "batches closed", "sink", "batches_built")
        f.counter("vxcap_sink_batches_sent_total", "batches answered 204", "sink", "batches_sent")
        f.counter("vxcap_sink_bytes_sent_total", "request body bytes answered 204 (compressed)", "sink",
                  "bytes_sent")
        f.counter("vxcap_sink_bytes_raw_total", "NDJSON bytes of the batches answered 204", "sink",
                  "bytes_raw")
        f.counter("vxcap_sink_retries_total", "POSTs repeated after a retryable failure", "sink", "retries")
        sink = f.part("sink")
        failures = [(k[len("failures_"):], v) for k, v in sorted(sink.items()) if k.startswith("failures_")]
        f.used.setdefault("sink", set()).update(k for k in sink if k.startswith("failures_"))
        f.labelled("vxcap_sink_failures_total", "POST attempts that failed, by reason (http_<status>, "
                   "connection, timeout, tls)", "reason", failures)
        f.counter("vxcap_sink_saturated_pauses_total", "pauses because /saturated said true", "sink",
                  "saturated_pauses")
        f.gauge("vxcap_sink_saturated", "1 while sending is paused for a saturated database",
                f.get("sink", "saturated"))
        f.gauge("vxcap_sink_healthy", "1 while the last POST succeeded or failures are spooled",
                f.part("daemon").get("sink_healthy", 0))
        f.gauge("vxcap_sink_buffered_messages", "messages held in memory by the sink",
                f.get("sink", "buffered_messages"))
        f.gauge("vxcap_sink_buffered_bytes", "NDJSON bytes held in memory by the sink",
                f.get("sink", "buffered_bytes"))
        f.gauge("vxcap_sink_queued_batches", "closed batches waiting for a sender", f.get("sink",
                                                                                        "queued_bundles"))
        f.gauge("vxcap_sink_peak_buffered_bytes", "highest vxcap_sink_buffered_bytes seen",
                f.get("sink", "peak_buffered_bytes"))
        f.gauge("vxcap_sink_peak_buffered_messages", "highest vxcap_sink_buffered_messages seen",
                f.get("sink", "peak_buffered_messages"))
        f.counter("vxcap_internal_errors_total", "bugs caught in vxcap (logged with a traceback)", "sink",
                  "internal_errors")
        f.gauge("vxcap_spool_bytes", "bytes in the disk spool", f.get("sink", "spool_bytes"))
        f.gauge("vxcap_spool_files", "batches in the disk spool", f.get("sink", "spool_files"))
        f.gauge("vxcap_spool_messages", "messages in the disk spool", f.get("sink", "spool_messages"))
        f.counter("vxcap_spool_written_total", "messages written to the spool", "sink", "spool_written")
        f.counter("vxcap_spool_sent_total", "messages delivered from the spool", "sink", "spool_sent")
        f.counter("vxcap_spool_evicted_total", "messages evicted to respect VXCAP_SPOOL_MAX_BYTES", "sink",
                  "spool_evicted")
        f.counter("vxcap_spool_corrupt_total", "spool files set aside as corrupt", "sink", "spool_corrupt")
        f.out.append(_latency(f.snap.get("sink_latency")))

    # -- everything else --------------------------------------------------------------------------------
    @staticmethod
    def _leftovers(f: _Families) -> None:
        m = CounterMetricFamily("vxcap_pipeline_events", "every other counter of a stage, by stage and name",
                                labels=["stage", "event"])
        for stage in ("capture", "decode", "reassembly", "messages", "rules", "sink"):
            used = f.used.get(stage, set())
            for key, value in sorted(f.part(stage).items()):
                if key not in used and isinstance(value, (int, float)) and not key.startswith(("peak_", "post_seconds_")):
                    m.add_metric([stage, key], value)
        f.out.append(m)


def _latency(data: Any) -> Metric:
    """The sink's POST latency histogram; an empty one (no observation) when the sink does not measure."""
    m = HistogramMetricFamily("vxcap_sink_post_seconds", "duration of one POST to the capture URL, "
                              "connect to response")
    if data:
        # (bucket upper bounds, cumulative counts: one per bound then the total, sum of seconds)
        bounds, counts, total = data
        buckets = [(f"{b:g}", c) for b, c in zip(bounds, counts)] + [("+Inf", counts[len(bounds)])]
        m.add_metric([], buckets, total)
    else:
        m.add_metric([], [(f"{b:g}", 0) for b in LATENCY_BUCKETS] + [("+Inf", 0)], 0.0)
    return m


def make_registry(snapshot: Callable[[], Snapshot], process: bool = True) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one: tests build several in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VxcapCollector(snapshot))
    if process:
        # CPU, RSS, open fds of this process, as vxcap_process_*; with workers, the parent's only.
        ProcessCollector(namespace="vxcap", registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition in the format the scraper asked for (text 0.0.4, or OpenMetrics when accepted)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


Readiness = Callable[[], tuple[bool, str]]


class MetricsServer:
    """``GET /metrics``, ``/healthz`` and ``/readyz`` on ``addr`` (host, port), on the running loop.

    ``/healthz`` is 200 whenever the loop answers (liveness). ``/readyz`` asks ``readiness()`` for
    ``(ready, reason)``: 200 with the reason as body when ready, 503 with it otherwise.
    """

    def __init__(self, addr: tuple[str, int], snapshot: Callable[[], Snapshot], readiness: Readiness):
        self.addr = addr
        self.registry = make_registry(snapshot)
        self.readiness = readiness
        self.scrapes = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve; raises OSError (address in use, no such address) before anything is served."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        # access_log=None: a scrape every 15 s per Prometheus would otherwise be an INFO line each.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.addr
        # Empty host (":9108") means every address, as in Go's net.Listen.
        self._site = web.TCPSite(self._runner, host or None, port, reuse_address=True)
        try:
            await self._site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = self._site._server  # noqa: SLF001 - aiohttp exposes no bound-port accessor
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        body, content_type = render(self.registry, request.headers.get("Accept"))
        ctype, _, params = content_type.partition(";")
        charset = "utf-8"
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type if params else f"{ctype}; charset={charset}"
        return resp

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reason = self.readiness()
        return web.Response(status=200 if ready else 503, text=reason.splitlines()[0] + "\n")
