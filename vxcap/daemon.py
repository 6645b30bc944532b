"""``vxcap run``: the container entrypoint. Configuration, capture, sink, metrics, signals.

Start-up, in order; any refusal is one line on stderr and exit status 2 (the pod's logs then say exactly
what to fix, and Kubernetes' CrashLoopBackOff keeps it visible):

1. ``load_config(os.environ)`` overlaid with ``VXCAP_RELOAD_FILE`` (see below)      -> ConfigError
2. ``Rules.parse(cfg.rules_text)`` (``file://`` is read here)                       -> RulesError
3. the sink's options, checked against the rules' flags (``allow_http_url``)        -> SinkConfigError

Then logging (JSON lines on stderr; stdout carries the calls when there is no URL), each configuration
warning once, the metrics server, the sink and the capture (vxcap.capture.LiveCapture in this process, or
``cfg.workers`` worker processes under vxcap.workers.Supervisor). ``USAGE_LOGGERS_DISABLE=true``: nothing is
captured; the process stays up and ready (the chart sets it to switch the logger off, and a pod in
CrashLoopBackOff would page someone for a setting that was meant).

Signals:

* SIGTERM, SIGINT: stop reading (what the ring already holds is still decoded), emit the calls in progress
  (``pipeline.finish()``: complete ones, and requests without their response marked as such), give the sink
  ``VXCAP_SHUTDOWN_TIMEOUT`` seconds to deliver (or spool), exit 0.
* SIGHUP: reload the rules and the VNI and port filters without touching connection state. Kubernetes never
  changes a running container's environment, so the new values come from files: the rules from
  ``USAGE_LOGGERS_RULES=file://...`` (a mounted ConfigMap), the filters from ``VXCAP_RELOAD_FILE``, a file
  of ``NAME=value`` lines that may set ``SNIFFER_MIRROR_VNIS``, ``APP_PORTS`` (``APP_PORT``) and
  ``USAGE_LOGGERS_RULES``; its values override the environment, at start-up as well, so a restart keeps what a
  reload applied. A reload that fails validation changes nothing and is logged (``vxcap_reloads_total``).
  Settings that cannot change at run time (URL, ring, workers...) are re-read but ignored, with a warning.
  The decoder holding the filters is replaced (its counters carried over); the reassembler, with every
  connection and its buffered bytes, stays: calls in progress on a still-captured VNI are not cut.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable

from vxcap import __version__
from vxcap.config import Config, ConfigError, config_main, load_config
from vxcap.logs import fields, setup_logging

__all__ = ["main", "config_main", "Settings", "StartupError", "load_settings", "read_reload_file",
           "RELOADABLE", "CaptureUnit", "Daemon", "snapshot_from_flat"]

log = logging.getLogger("vxcap.daemon")

USAGE = """usage: vxcap run

Capture VPC-mirrored traffic and send the API calls to Resurface. Configured by the environment only
(`vxcap config` prints the effective settings; docs/deploy.md lists them). Signals: SIGTERM/SIGINT flush
and exit, SIGHUP reloads the rules and the VNI/port filters (docs/operations.md)."""

# Variables a reload file may set: the ones whose new value can be applied without a restart.
RELOADABLE = ("SNIFFER_MIRROR_VNIS", "APP_PORTS", "APP_PORT", "USAGE_LOGGERS_RULES")
# Config fields a reload applies; any other field that differs after a reload needs a restart.
RELOADED_FIELDS = frozenset({"vnis_include", "vnis_exclude", "app_ports", "rules_text"})
RELOAD_FILE_VAR = "VXCAP_RELOAD_FILE"
STATS_INTERVAL = 1.0  # seconds between kernel statistics reads and capture-clock ticks (vxcap.capture)


class StartupError(ValueError):
    """A refused setting: one line, printed as ``vxcap: <line>``, exit status 2."""


# ---------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    cfg: Config
    rules: Any  # vxcap.rules.Rules
    sink_cfg: Any  # vxcap.sink.SinkConfig
    overrides: dict[str, str]  # what the reload file set


def reload_file_path(cfg: Config, environ: dict[str, str] | os._Environ) -> str | None:
    return cfg.reload_file


def read_reload_file(path: str) -> dict[str, str]:
    """``NAME=value`` lines (``#`` comments, blank lines, optional matching quotes); StartupError on errors.

    A missing file is not an error (an optional ConfigMap that does not exist yet): no overrides.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise StartupError(f"{RELOAD_FILE_VAR} {path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if name.startswith("export "):
            name = name[len("export "):].strip()
        if not eq:
            raise StartupError(f"{RELOAD_FILE_VAR} {path}:{number}: expected NAME=value, got {line[:80]!r}")
        if name not in RELOADABLE:
            raise StartupError(f"{RELOAD_FILE_VAR} {path}:{number}: {name} cannot be reloaded "
                               f"(expected one of {', '.join(RELOADABLE)})")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


def load_settings(environ: dict[str, str] | os._Environ | None = None) -> Settings:
    """Everything ``vxcap run`` needs before it opens anything; StartupError (one line) when refused."""
    from vxcap.rules import Rules, RulesError
    from vxcap.sink import SinkConfigError

    env = dict(os.environ if environ is None else environ)
    try:
        cfg = load_config(env)
        overrides = {}
        path = reload_file_path(cfg, env)
        if path:
            overrides = read_reload_file(path)
            if overrides:
                # APP_PORTS wins over APP_PORT in the environment; in the file the name written wins.
                if "APP_PORT" in overrides and "APP_PORTS" not in overrides:
                    env.pop("APP_PORTS", None)
                env.update(overrides)
                cfg = load_config(env)
        rules = Rules.parse(cfg.rules_text)
        sink_cfg = sink_config(cfg, rules)
        sink_cfg.validate()
    except (ConfigError, RulesError, SinkConfigError) as e:
        raise StartupError(str(e)) from None
    return Settings(cfg, rules, sink_cfg, overrides)


def sink_config(cfg: Config, rules, *, worker: int | None = None):
    """The sink's options from the Config and the rules' flags (SPEC section 3: the rules carry them)."""
    from vxcap.sink import SinkConfig

    spool = cfg.spool_dir
    if spool is not None and worker is not None:
        # A spool directory is locked by one sink: each worker process gets its own under it.
        spool = os.path.join(spool, f"worker-{worker}")
    return SinkConfig(
        url=cfg.url, bundle_size=cfg.bundle_size, message_queue_size=cfg.message_queue_size,
        bundle_queue_size=cfg.bundle_queue_size, flush_interval=cfg.flush_interval,
        max_inflight=cfg.max_inflight, retry_budget=cfg.retry_budget,
        skip_compression=rules.skip_compression, skip_submission=rules.skip_submission,
        allow_http_url=rules.allow_http_url, spool_dir=spool, spool_max_bytes=cfg.spool_max_bytes,
        ca_file=cfg.ca_file, user_agent=f"vxcap/{__version__}",
    )


# ---------------------------------------------------------------------------------------------- one capture


def _source_args(cfg: Config) -> argparse.Namespace:
    """vxcap.capture.open_source's options, from the Config (its own CLI reads the same variables)."""
    return argparse.Namespace(
        engine=cfg.engine, vxlan_port=cfg.vxlan_port, device=cfg.device or "",
        ports=",".join(map(str, sorted(cfg.app_ports))), encap=cfg.encap,
        ring_block_size=cfg.ring_block_size, ring_blocks=cfg.ring_blocks, ring_frame_size=cfg.ring_frame_size,
        ring_timeout_ms=cfg.ring_timeout_ms, promisc=cfg.promisc,
    )


def _new_decoder(cfg: Config):
    from vxcap.decode import Decoder, VniFilter

    return Decoder(vxlan_port=cfg.vxlan_port, geneve_port=cfg.geneve_port, encap=cfg.encap,
                   vnis=VniFilter(include=frozenset(cfg.vnis_include), exclude=frozenset(cfg.vnis_exclude)),
                   ports=frozenset(cfg.app_ports), max_depth=cfg.decode_depth)


def _numbers(d: dict) -> dict[str, int]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class CaptureUnit:
    """One capture in this process: packet source + pipeline + LiveCapture, feeding ``sink``; reloadable."""

    def __init__(self, settings: Settings, sink, *, workers: int = 1, index: int = 0,
                 fanout_group: int | None = None,
                 on_stats: Callable[[dict[str, int]], None] | None = None) -> None:
        from vxcap.capture import LiveCapture, open_source
        from vxcap.pipeline import build_pipeline

        cfg = settings.cfg
        self.cfg = cfg
        self.pipeline = build_pipeline(cfg, settings.rules)
        group = fanout_group if fanout_group is not None else os.getpid() & 0xFFFF
        self.source = open_source(_source_args(cfg), workers, index, group)
        self.sink = sink
        # Counters of decoders and rules replaced by reloads: added to the live ones so sums never go back.
        self._retired: collections.Counter = collections.Counter()
        self._retired_vnis: dict[int, tuple[int, int]] = {}
        self._on_stats = on_stats
        self.capture = LiveCapture(self.source, self.pipeline, sink, stats_interval=STATS_INTERVAL,
                                   on_stats=self._stats if on_stats else None)

    def _stats(self, _flat: dict[str, int]) -> None:
        self._on_stats(self.counters())

    def start(self) -> None:
        self.capture.start()

    @property
    def failed(self) -> asyncio.Future:
        return self.capture.failed

    def stop(self) -> None:
        """Stop reading, flush every connection into the sink (the sink is closed by the caller)."""
        self.capture.stop()

    def close(self) -> None:
        self.source.close()

    def apply(self, settings: Settings) -> None:
        """Swap in the new rules and filters; connections, buffers and HTTP state stay as they are."""
        cfg = settings.cfg
        builder = self.pipeline.builder
        old_rules = builder.rules
        if old_rules is not None:
            self._retired.update({f"rules.{k}": v for k, v in _numbers(old_rules.counters()).items()})
        builder.rules = settings.rules
        old = self.pipeline.decoder
        new = _new_decoder(cfg)
        self._retired.update({f"decode.{k}": v for k, v in _numbers(old.counters()).items()})
        for vni, (fr, by) in old.vni_stats().items():
            f0, b0 = self._retired_vnis.get(vni, (0, 0))
            self._retired_vnis[vni] = (f0 + fr, b0 + by)
        # LiveCapture reads pipeline.decoder on every wake-up: the next batch goes through the new filters.
        self.pipeline.decoder = new
        # Only decides which side is the client of connections opened from now on.
        self.pipeline.reassembler.ports = frozenset(cfg.app_ports)
        self.cfg = cfg

    def counters(self) -> dict[str, int]:
        """Flat ``group.name`` counters (vxcap.capture's format) plus rules and reload carry-overs."""
        out = collections.Counter(self.capture.counters())
        rules = self.pipeline.builder.rules
        if rules is not None:
            out.update({f"rules.{k}": v for k, v in _numbers(rules.counters()).items()})
        out.update(self._retired)
        for vni, (fr, by) in self._retired_vnis.items():
            out[f"vni.{vni}.frames"] += fr
            out[f"vni.{vni}.bytes"] += by
        out["daemon.sink_healthy"] = int(bool(self.sink.healthy))
        out["daemon.capturing"] = int(self.capture._running)  # noqa: SLF001 - no public accessor yet
        return dict(out)


def sink_latency(sink: dict[str, int]):
    """The POST latency histogram (bounds, cumulative counts + total, sum of seconds) from the sink's
    counters, or None before the first POST."""
    from vxcap.sink import POST_LATENCY_BOUNDS

    total = sink.get("post_seconds_count", 0)
    if not total:
        return None
    counts = [sink.get(f"post_seconds_le_{b:g}", 0) for b in POST_LATENCY_BOUNDS] + [total]
    return POST_LATENCY_BOUNDS, counts, sink.get("post_seconds_sum_us", 0) / 1e6


def snapshot_from_flat(flat: dict[str, int]) -> dict[str, Any]:
    """vxcap.metrics' snapshot from flat counters (one worker's, or the Supervisor's sums)."""
    snap: dict[str, Any] = {k: {} for k in ("decode", "capture", "reassembly", "messages", "rules", "sink",
                                            "daemon")}
    vnis: dict[int, list[int]] = {}
    for key, value in flat.items():
        group, _, name = key.partition(".")
        if group == "vni":
            vni, _, what = name.partition(".")
            if vni.isdigit():
                slot = vnis.setdefault(int(vni), [0, 0])
                slot[0 if what == "frames" else 1] += value
        elif group in ("ring", "udp", "capture"):
            # The ring's or UDP engine's counters and LiveCapture's own share the capture part.
            snap["capture"][name if group != "capture" else f"reader_{name}"] = value
        elif group == "workers":
            snap["daemon"][f"workers_{name}"] = value
        elif group in snap:
            snap[group][name] = value
    snap["vnis"] = {v: tuple(c) for v, c in vnis.items()}
    return snap


# ---------------------------------------------------------------------------------------------- the daemon


class Daemon:
    """The parent process: metrics, signals, reloads; the capture in-process or in worker processes."""

    def __init__(self, settings: Settings, limiter=None) -> None:
        self.settings = settings
        self.cfg = settings.cfg
        self.limiter = limiter
        self.state = "starting"  # starting, capturing, disabled, stopping, failed
        self.failure = ""
        self.unit: CaptureUnit | None = None
        self.sink = None
        self.supervisor = None
        self.metrics = None
        self.started_at = time.time()
        self._n = {"reloads_ok": 0, "reloads_failed": 0, "internal_errors": 0}
        self._stop: asyncio.Event | None = None

    # -- what /metrics and /readyz read -----------------------------------------------------------------
    def flat_counters(self) -> dict[str, int]:
        if self.unit is not None:
            return self.unit.counters()
        if self.supervisor is not None:
            return self.supervisor.counters()
        return {}

    def snapshot(self) -> dict[str, Any]:
        flat = self.flat_counters()
        snap = snapshot_from_flat(flat)
        d = snap["daemon"]
        workers = self._workers_running(flat)
        d.update(start_time=self.started_at, workers=workers, log_suppressed=self._suppressed(),
                 reloads_ok=self._n["reloads_ok"], reloads_failed=self._n["reloads_failed"],
                 capturing=1 if self.state == "capturing" and workers else 0,
                 worker_restarts=flat.get("workers.restarts", 0))
        d["sink_healthy"] = 1 if self._sink_healthy(flat) else 0
        d["ready"] = 1 if self.readiness()[0] else 0
        snap["sink"]["internal_errors"] = snap["sink"].get("internal_errors", 0) + self._n["internal_errors"]
        snap["sink_latency"] = sink_latency(snap["sink"])
        return snap

    def _workers_running(self, flat: dict[str, int]) -> int:
        if self.unit is not None:
            return 1 if self.unit.capture._running else 0  # noqa: SLF001
        if self.supervisor is not None:
            return int(flat.get("workers.running", 0))
        return 0

    def _suppressed(self) -> int:
        return self.limiter.suppressed() if self.limiter is not None else 0

    def _sink_healthy(self, flat: dict[str, int]) -> bool:
        if self.sink is not None:
            return bool(self.sink.healthy)
        if self.supervisor is not None:
            running = int(flat.get("workers.running", 0))
            # Each worker reports 1 while its own sink is healthy; all of them must be.
            return running > 0 and flat.get("daemon.sink_healthy", 0) >= running
        return self.state == "disabled"

    def readiness(self) -> tuple[bool, str]:
        if self.state == "disabled":
            return True, "capture disabled by USAGE_LOGGERS_DISABLE; nothing to send"
        if self.state == "starting":
            return False, "starting"
        if self.state == "stopping":
            return False, "shutting down"
        if self.state == "failed":
            return False, f"capture failed: {self.failure}"
        flat = self.flat_counters()
        if not self._workers_running(flat):
            return False, "not capturing: no capture worker is running"
        if not self._sink_healthy(flat):
            return False, "sink unhealthy: the capture URL is failing and no spool takes the batches"
        return True, "capturing"

    # -- lifecycle --------------------------------------------------------------------------------------
    async def run(self) -> int:
        from vxcap.metrics import MetricsServer

        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._on_loop_error)
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        cfg = self.cfg
        log.info("vxcap %s starting", __version__, extra=fields(
            url=self.settings.sink_cfg.url and _masked(cfg.url) or "stdout", device=cfg.device or "(all)",
            vnis=_vnis_text(cfg), ports=",".join(map(str, sorted(cfg.app_ports))) or "(all)",
            workers=cfg.workers, engine=cfg.engine, rules=self.settings.rules.size))
        if self.settings.overrides:
            log.info("reload file overrides the environment", extra=fields(names=sorted(self.settings.overrides)))
        if cfg.metrics_addr is not None:
            self.metrics = MetricsServer(cfg.metrics_addr, self.snapshot, self.readiness)
            try:
                await self.metrics.start()
            except OSError as e:
                log.error("cannot serve metrics on %s:%d: %s", *cfg.metrics_addr, e.strerror or e)
                return 1
            log.info("metrics on http://%s:%d/metrics", cfg.metrics_addr[0] or "0.0.0.0", self.metrics.port)
        code = 0
        try:
            if cfg.disabled:
                self.state = "disabled"
                log.info("capture disabled by USAGE_LOGGERS_DISABLE: nothing is captured or sent; "
                         "the process stays up for its probes")
                await self._stop.wait()
            elif cfg.workers > 1 and self._can_supervise():
                code = await self._run_workers()
            else:
                code = await self._run_in_process()
        finally:
            if self.metrics is not None:
                await self.metrics.stop()
        log.info("vxcap stopped", extra=fields(exit=code))
        return code

    def _request_stop(self, sig: int) -> None:
        if self._stop is not None and not self._stop.is_set():
            log.info("%s: stopping capture, flushing calls in progress", signal.Signals(sig).name)
            self._stop.set()

    async def _run_in_process(self) -> int:
        from vxcap.sink import SinkConfigError, make_sink

        cfg = self.cfg
        if cfg.workers > 1:
            log.warning("VXCAP_WORKERS=%d: this vxcap.workers cannot run daemon workers yet; capturing "
                        "in one process", cfg.workers)
        self.sink = make_sink(self.settings.sink_cfg)
        try:
            await self.sink.start()
        except SinkConfigError as e:
            log.error("sink cannot start: %s", e)
            self.state = "failed"
            self.failure = str(e)
            return 2
        try:
            self.unit = CaptureUnit(self.settings, self.sink)
        except (OSError, ValueError) as e:
            self.state, self.failure = "failed", _open_error(cfg, e)
            log.error("cannot open the capture: %s", self.failure)
            await self.sink.close(cfg.shutdown_timeout)
            return 1
        self.unit.start()
        self.state = "capturing"
        log.info("capturing", extra=fields(source=self.unit.source.kind, device=cfg.device or "(all)"))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([stop, self.unit.failed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        error = self.unit.failed.result() if self.unit.failed.done() else None
        self.state = "stopping"
        t0 = time.monotonic()
        try:
            self.unit.stop()
        except Exception as e:  # noqa: BLE001 - still drain the sink with what was emitted
            log.error("error while flushing the capture: %s", e, exc_info=True)
            error = error or e
        await self.sink.close(cfg.shutdown_timeout)
        self.unit.close()
        c = self.sink.counters()
        calls = self.unit.counters().get("messages.calls_built", 0)
        log.info("flushed", extra=fields(seconds=round(time.monotonic() - t0, 3), calls=calls,
                                         delivered=c["messages_delivered"],
                                         spooled=c.get("spool_written", 0), dropped_shutdown=c["dropped_shutdown"]))
        if error is not None:
            self.state, self.failure = "failed", str(error)
            log.error("capture failed: %s", error, exc_info=error)
            return 1
        return 0

    # -- worker processes -------------------------------------------------------------------------------
    @staticmethod
    def _can_supervise() -> bool:
        """Whether vxcap.workers.Supervisor can start daemon workers (``module=``, ``handle_signals=``)."""
        import inspect

        from vxcap.workers import Supervisor

        params = inspect.signature(Supervisor).parameters
        return "module" in params and "handle_signals" in params and hasattr(Supervisor, "send_signal")

    async def _run_workers(self) -> int:
        from vxcap.workers import Supervisor

        cfg = self.cfg
        self.supervisor = sup = Supervisor([], cfg.workers, module="vxcap.daemon", handle_signals=False,
                                           grace=max(1.0, cfg.shutdown_timeout + 5.0))
        ready = asyncio.Event()
        task = asyncio.ensure_future(sup.run(on_ready=ready.set))
        waiter = asyncio.ensure_future(ready.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([waiter, stop, task], return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            self.state = "capturing"
            log.info("capturing", extra=fields(workers=cfg.workers, device=cfg.device or "(all)"))
            await asyncio.wait([stop, task], return_when=asyncio.FIRST_COMPLETED)
        self.state = "stopping"
        t0 = time.monotonic()
        sup.stop()  # SIGTERM to every worker: each flushes its calls and drains its sink
        code = await task
        c = sup.counters()  # every worker's final report, summed
        log.info("flushed", extra=fields(seconds=round(time.monotonic() - t0, 3), workers=cfg.workers,
                                         calls=c.get("messages.calls_built", 0),
                                         delivered=c.get("sink.messages_delivered", 0),
                                         spooled=c.get("sink.spool_written", 0),
                                         dropped_shutdown=c.get("sink.dropped_shutdown", 0)))
        waiter.cancel()
        stop.cancel()
        return code

    # -- reload -----------------------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read env + reload file + rules file; apply the reloadable part or change nothing."""
        try:
            new = load_settings()
        except StartupError as e:
            self._n["reloads_failed"] += 1
            log.error("reload refused, the running settings stay: %s", e)
            return
        old = self.cfg
        ignored = [f.name for f in dataclasses.fields(Config)
                   if f.name not in RELOADED_FIELDS | {"warnings", "host"}
                   and getattr(new.cfg, f.name) != getattr(old, f.name)]
        sink_flags = ("skip_compression", "skip_submission")
        ignored += [f"rules {n}" for n in sink_flags
                    if getattr(new.rules, n) != getattr(self.settings.rules, n)]
        if ignored:
            log.warning("reload: %s changed but only apply at restart; ignored", ", ".join(ignored),
                        extra={"key": "reload-ignored"})
        # Keep the running values of everything not reloadable, so a later reload compares against them.
        cfg = dataclasses.replace(old, **{n: getattr(new.cfg, n) for n in RELOADED_FIELDS})
        self.settings = Settings(cfg, new.rules, self.settings.sink_cfg, new.overrides)
        self.cfg = cfg
        if self.unit is not None:
            self.unit.apply(self.settings)
        if self.supervisor is not None:
            self.supervisor.send_signal(signal.SIGHUP)  # each worker re-reads the same sources
        self._n["reloads_ok"] += 1
        log.info("reloaded rules and filters", extra=fields(
            vnis=_vnis_text(cfg), ports=",".join(map(str, sorted(cfg.app_ports))) or "(all)",
            rules=new.rules.size))

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        self._n["internal_errors"] += 1
        exc = context.get("exception")
        log.error("internal error: %s", context.get("message", "unhandled exception"),
                  exc_info=exc if isinstance(exc, BaseException) else None)


def _vnis_text(cfg: Config) -> str:
    parts = [*map(str, sorted(cfg.vnis_include)), *(f"-{v}" for v in sorted(cfg.vnis_exclude))]
    return ",".join(parts) or "(all)"


def _masked(url: str | None) -> str:
    from vxcap.config import mask_url

    return mask_url(url) if url else "stdout"


def _open_error(cfg: Config, e: Exception) -> str:
    text = f"{e.strerror} ({cfg.device or 'all interfaces'})" if isinstance(e, OSError) and e.strerror else str(e)
    if isinstance(e, PermissionError):
        text += ": the afpacket engine needs CAP_NET_RAW (docs/deploy.md), or set VXCAP_ENGINE=udp"
    return text


# ---------------------------------------------------------------------------------------------- workers


async def _worker(settings: Settings, n: int, index: int, group: int, status_fd: int | None) -> int:
    """One worker process under the Supervisor: its own sink (spool subdirectory), status lines on FD."""
    from vxcap.sink import make_sink

    cfg = settings.cfg

    def report(msg: dict) -> None:
        if status_fd is not None:
            try:
                os.write(status_fd, json.dumps(msg).encode() + b"\n")
            except OSError:
                pass  # the parent is gone: its SIGTERM or our stdin closing ends us

    sink = make_sink(sink_config(cfg, settings.rules, worker=index))
    await sink.start()
    unit = CaptureUnit(settings, sink, workers=n, index=index, fanout_group=group,
                       on_stats=lambda c: report({"worker": index, "counters": c}))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_hup() -> None:
        try:
            new = load_settings()
        except StartupError as e:  # the parent logged it already
            log.debug("worker %d: reload refused: %s", index, e)
            return
        unit.apply(Settings(dataclasses.replace(unit.cfg, **{f: getattr(new.cfg, f) for f in RELOADED_FIELDS}),
                            new.rules, settings.sink_cfg, new.overrides))

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    unit.start()
    report({"worker": index, "ready": True})
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiter, unit.failed], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    error = unit.failed.result() if unit.failed.done() else None
    unit.stop()
    await sink.close(cfg.shutdown_timeout)
    unit.close()
    report({"worker": index, "counters": unit.counters(), "final": True})
    if error is not None:
        log.error("worker %d failed: %s", index, error, exc_info=error)
        return 1
    return 0


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m vxcap.daemon")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--worker-index", type=int, required=True)
    p.add_argument("--fanout-group", type=int, required=True)
    p.add_argument("--status-fd", type=int, default=None)
    a = p.parse_args(argv)
    try:
        settings = load_settings()
    except StartupError as e:
        print(f"vxcap: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.cfg.log_level, settings.cfg.log_format)
    return _run_loop(_worker(settings, a.workers, a.worker_index, a.fanout_group, a.status_fd))


# ---------------------------------------------------------------------------------------------- entry


def _run_loop(coro) -> int:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: list[str]) -> int:
    """``vxcap run``: 0 after a clean stop, 2 for a refused configuration, 1 when the capture failed."""
    argv = list(argv)
    if argv in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if argv and argv[0].startswith("--worker"):
        return _worker_main(argv)
    if argv:
        print(f"vxcap run: unexpected argument {argv[0]!r} (vxcap run is configured by the environment)",
              file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except StartupError as e:
        print(f"vxcap: {e}", file=sys.stderr)
        return 2
    cfg = settings.cfg
    limiter = setup_logging(cfg.log_level, cfg.log_format)
    for warning in cfg.warnings:
        # One key per text: distinct warnings must not rate-limit each other away.
        log.warning("configuration: %s", warning, extra={"key": warning})
    return _run_loop(Daemon(settings, limiter).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
