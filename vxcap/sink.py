"""Streaming NDJSON messages to Resurface: batches, compression, backpressure, retries, a disk spool.

The capture side hands over already-serialised lines with ``submit_many`` on the event loop's thread; that
call never awaits and never blocks. Everything else happens in tasks on the same loop, with the CPU-heavy
parts (joining and compressing a large batch, spool I/O) in worker threads.

Backpressure chain (STYLE item 7), from the collector back to the capture side::

    collector slow/down -> POST pending (aiohttp drain waits on the socket) or retrying
      -> the max_inflight sender tasks are busy -> bundle queue (closed batches) fills to bundle_queue_size
      -> the open batch cannot close -> message queue (lines awaiting batching) fills to message_queue_size
      -> submit_many drops the rest of its batch, counted as dropped_queue_full

Every message handed to ``submit_many`` ends in exactly one counter: messages_delivered, spooled (spool
gauges / spool_evicted), or one of the ``dropped_*`` reasons. docs/sink.md lists them and the delivery
semantics (at-least-once; when duplicates happen).
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import concurrent.futures
import itertools
import logging
import math
import os
import random
import ssl
import time
import sys
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import aiohttp
from yarl import URL

from vxcap import __version__
from vxcap.spool import HEADER, Spool, SpoolCorrupt, SpoolError

log = logging.getLogger("vxcap.sink")

CONTENT_TYPE = "application/ndjson; charset=UTF-8"
# Non-standard, but it is what Resurface's loggers send and what its ingestion expects (SPEC section 1).
CONTENT_ENCODING = "deflated"
# Retried like 5xx: request timeout and "slow down" say nothing about the batch itself.
RETRYABLE_4XX = frozenset({408, 429})

try:  # a declared dependency; zlib serves (slower) if a platform has no wheel of it
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover
    _isal_zlib = None
MAX_BUNDLE_SIZE = 1 << 30
HEADER_BYTES = HEADER.size  # a spool smaller than one header could hold nothing


class SinkConfigError(ValueError):
    """One line naming the option, the value and what is expected."""


# Names the operator knows the option by (SPEC section 4); the others are vxcap's own.
_LABELS = {
    "url": "USAGE_LOGGERS_URL",
    "bundle_size": "USAGE_LOGGERS_BUNDLE_SIZE",
    "message_queue_size": "USAGE_LOGGERS_MESSAGE_QUEUE_SIZE",
    "bundle_queue_size": "USAGE_LOGGERS_BUNDLE_QUEUE_SIZE",
    "disabled": "USAGE_LOGGERS_DISABLE",
}


@dataclass
class SinkConfig:
    """Every option of the sink, typed and defaulted; ``validate()`` checks them all."""

    url: str | None
    bundle_size: int = 5 * 1024 * 1024  # bytes of NDJSON (newlines included) before a batch closes
    message_queue_size: int = 1000  # lines awaiting batching while the bundle queue is full
    bundle_queue_size: int = 128  # closed batches awaiting a sender
    flush_interval: float = 1.0  # seconds: a batch closes this long after its first line at the latest
    max_inflight: int = 2  # concurrent POSTs (also the number of sender tasks)
    retry_budget: float = 30.0  # seconds a batch may keep retrying before it is spooled or dropped
    request_timeout: float = 30.0  # seconds for one POST, connect to response
    skip_compression: bool = False
    skip_submission: bool = False
    allow_http_url: bool = False
    disabled: bool = False
    spool_dir: str | os.PathLike[str] | None = None
    spool_max_bytes: int = 1 << 30
    ca_file: str | None = None  # PEM bundle of a private CA; replaces the system CAs for this URL
    out: str | None = None  # "-" (stdout) or a path, when url is None; None means stdout
    user_agent: str = f"vxcap/{__version__}"
    # Tuning, rarely changed; tests shrink the times to run an outage in seconds.
    compression_level: int = 1  # zlib levels; 1-3 use ISA-L (see _zlib_for): ~4x zlib's level 1
    compress_inline_max: int = 64 * 1024  # bytes; larger batches are joined and compressed in a thread
    backoff_initial: float = 0.25  # seconds: ceiling of the first retry's full-jitter delay
    backoff_max: float = 5.0  # seconds: the ceiling stops doubling here
    saturation_poll: bool = False  # poll /saturated all the time, not only while POSTs fail
    saturation_interval: float = 1.0  # seconds between /saturated polls

    def _fail(self, name: str, value: Any, expected: str) -> SinkConfigError:
        return SinkConfigError(f"{_LABELS.get(name, 'sink option ' + name)} {value!r}: expected {expected}")

    def validate(self) -> None:
        """Raise SinkConfigError for the first option that is wrong."""
        ints = {
            "bundle_size": (1, MAX_BUNDLE_SIZE, "bytes"),
            "message_queue_size": (1, 10_000_000, "lines"),
            "bundle_queue_size": (1, 100_000, "batches"),
            "max_inflight": (1, 64, "requests"),
            "spool_max_bytes": (HEADER_BYTES + 1, 1 << 50, "bytes"),
            "compression_level": (0, 9, "zlib level"),
            "compress_inline_max": (0, MAX_BUNDLE_SIZE, "bytes"),
        }
        for name, (lo, hi, unit) in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise self._fail(name, v, f"an integer from {lo} to {hi} ({unit})")
        floats = {
            "flush_interval": (0.001, 3600.0),
            "retry_budget": (0.0, 7 * 86400.0),
            "request_timeout": (0.001, 3600.0),
            "backoff_initial": (0.001, 3600.0),
            "backoff_max": (0.001, 3600.0),
            "saturation_interval": (0.001, 3600.0),
        }
        for name, (lo, hi) in floats.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise self._fail(name, v, f"a number of seconds from {lo:g} to {hi:g}")
        if self.backoff_max < self.backoff_initial:
            raise self._fail("backoff_max", self.backoff_max, f">= backoff_initial ({self.backoff_initial:g})")
        for name in ("skip_compression", "skip_submission", "allow_http_url", "disabled", "saturation_poll"):
            if not isinstance(getattr(self, name), bool):
                raise self._fail(name, getattr(self, name), "true or false")
        if not isinstance(self.user_agent, str) or not self.user_agent.strip() or any(
                ch in self.user_agent for ch in "\r\n\0"):
            raise self._fail("user_agent", self.user_agent, "a non-empty header value on one line")
        if self.url is None:
            if self.out is not None and (not isinstance(self.out, str) or not self.out):
                raise self._fail("out", self.out, '"-" for stdout or a file path')
            return
        if not isinstance(self.url, str):
            raise self._fail("url", self.url, "an http(s) URL string")
        if self.out is not None:
            raise self._fail("out", self.out, "None when USAGE_LOGGERS_URL is set (messages go to the URL)")
        try:
            url = URL(self.url)
        except (ValueError, TypeError):
            raise self._fail("url", self.url, "an http(s) URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise self._fail("url", self.url, "an http:// or https:// URL with a host")
        if url.scheme == "http" and not self.allow_http_url:
            raise SinkConfigError(
                f"USAGE_LOGGERS_URL {self.url} is plain http: add the rule 'allow_http_url' to "
                "USAGE_LOGGERS_RULES to permit it")
        if self.ca_file is not None:
            if url.scheme != "https":
                raise self._fail("ca_file", self.ca_file, "no ca_file with an http: URL (nothing to verify)")
            if not isinstance(self.ca_file, str) or not os.path.isfile(self.ca_file) or not os.access(
                    self.ca_file, os.R_OK):
                raise self._fail("ca_file", self.ca_file, "a readable PEM file")
        if self.spool_dir is not None:
            if not isinstance(self.spool_dir, (str, os.PathLike)) or not os.fspath(self.spool_dir):
                raise self._fail("spool_dir", self.spool_dir, "a directory path")
            if os.path.exists(self.spool_dir) and not os.path.isdir(self.spool_dir):
                raise self._fail("spool_dir", os.fspath(self.spool_dir), "a directory, not a file")


def make_sink(cfg: SinkConfig) -> ResurfaceSink | FileSink:
    """Validate ``cfg`` and return the sink it describes: ResurfaceSink with a URL, FileSink without."""
    cfg.validate()
    return ResurfaceSink(cfg) if cfg.url is not None else FileSink(cfg)


class _Batch:
    """Lines closed into one request body. ``parts`` is dropped once ``body`` exists (one copy in memory)."""

    __slots__ = ("parts", "count", "raw_bytes", "body", "compressed", "spooling")

    def __init__(self, parts: list[bytes], count: int, raw_bytes: int) -> None:
        self.parts: list[bytes] | None = parts
        self.count = count
        self.raw_bytes = raw_bytes
        self.body: bytes | None = None
        self.compressed = False
        self.spooling = False


def _join(parts: list[bytes]) -> bytes:
    # Each line is terminated by "\n", the last one too (NDJSON); one copy, no trailing concatenation.
    return b"\n".join(itertools.chain(parts, (b"",)))


# Lines joined per zlib call in the compression thread: the join holds the GIL (a memcpy of ~300 KB of
# 600-byte lines, well under a millisecond), the compression releases it, so the event loop's thread is never
# kept waiting for the GIL for long. One join of a whole 5 MiB batch of scattered lines held it ~5 ms.
_COMPRESS_STEP = 512


def _zlib_for(level: int):
    """The deflate implementation for a zlib level: ISA-L (python-isal) for levels 1 to 3, which writes the
    same RFC 1950 stream about four times faster than zlib at level 1 (~1.2 GB/s against ~0.33 GB/s per
    core on NDJSON, ratio ~9.5 against ~9.2: benchmarks/results), else zlib itself (level 0 is stored, 4-9
    are zlib's trade-offs)."""
    return _isal_zlib if (_isal_zlib is not None and 1 <= level <= 3) else zlib


def _compress(data: bytes, level: int) -> bytes:
    return _zlib_for(level).compress(data, level)


def _join_compress(parts: list[bytes], level: int) -> bytes:
    z = _zlib_for(level).compressobj(level)
    out = []
    nl = (b"",)
    for i in range(0, len(parts), _COMPRESS_STEP):
        out.append(z.compress(b"\n".join(itertools.chain(parts[i:i + _COMPRESS_STEP], nl))))
    out.append(z.flush())
    return b"".join(out)


_COUNTERS = (
    "messages_in", "messages_delivered", "batches_built", "batches_sent", "bytes_sent", "bytes_raw",
    "retries", "failures_connection", "failures_timeout", "failures_tls",
    "dropped_queue_full", "dropped_retry_budget", "dropped_rejected", "dropped_shutdown",
    "dropped_disabled", "dropped_skip_submission", "dropped_spool_error", "dropped_internal_error",
    "dropped_io_error",
    "spool_written", "spool_sent", "saturated_pauses", "internal_errors",
)
# Upper bounds (seconds) of the POST latency histogram; exported by vxcap.metrics as vxcap_sink_post_seconds.
POST_LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_COUNTERS += tuple(f"post_seconds_le_{b:g}" for b in POST_LATENCY_BOUNDS) + ("post_seconds_count",
                                                                               "post_seconds_sum_us")


class _BatchingSink:
    """The queues, the batching and the sender tasks; subclasses say how one batch is delivered."""

    _senders = 1

    def __init__(self, cfg: SinkConfig) -> None:
        self.cfg = cfg
        self._n: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = self._closing = self._closed = False
        # Message queue: chunks [lines, offset] handed to submit_many and not yet in a batch.
        self._backlog: collections.deque[list] = collections.deque()
        self._backlog_count = 0
        self._backlog_bytes = 0
        self._open: list[bytes] = []
        self._open_bytes = 0
        self._open_full = False  # the next line did not fit: close as soon as the bundle queue has room
        self._open_due = False  # flush_interval elapsed since the first line
        self._timer: asyncio.TimerHandle | None = None
        self._bundles: collections.deque[_Batch] = collections.deque()
        self._bundle_bytes = 0
        self._bundle_msgs = 0
        self._inhand: set[_Batch] = set()
        self._work = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: list[asyncio.Task] = []
        self._workers: list[asyncio.Task] = []
        self._close_fut: asyncio.Future | None = None
        self._peak_buffered_bytes = 0
        self._peak_buffered_messages = 0
        self._logged: set[str] = set()

    # -- the capture side's interface ----------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            raise RuntimeError("sink already started")
        self._loop = asyncio.get_running_loop()
        self._started = True
        if self.cfg.disabled:
            return
        await self._start_io()
        for i in range(self._senders):
            self._workers.append(self._loop.create_task(self._worker(), name=f"vxcap-sink-sender-{i}"))

    def submit_many(self, lines: list[bytes]) -> int:
        """Queue ``lines`` (NDJSON, no trailing newline); return how many were accepted. Never blocks.

        When the queues are full the rest of ``lines`` is dropped and counted as dropped_queue_full.
        """
        n = len(lines)
        counters = self._n
        counters["messages_in"] += n
        if self.cfg.disabled:
            counters["dropped_disabled"] += n
            return n
        if self._closing or not self._started:
            if not self._started and not self._closing:
                counters["messages_in"] -= n
                raise RuntimeError("submit_many before start()")
            counters["dropped_shutdown"] += n
            return 0
        if not n:
            return 0
        self._backlog.append([lines, 0])
        self._backlog_count += n
        self._pump()
        excess = self._backlog_count - self.cfg.message_queue_size
        if excess > 0:
            # Only lines of this call can be over the limit (the backlog was within it before): drop our
            # tail, so whatever was accepted stays in order.
            chunk = self._backlog[-1]
            kept = n - excess
            if kept > chunk[1]:
                chunk[0] = lines[:kept]
            else:
                self._backlog.pop()
            self._backlog_count -= excess
            counters["dropped_queue_full"] += excess
            self._log_once("queue_full", logging.WARNING,
                           "sink queues full (collector slow or unreachable): dropping messages; "
                           "see dropped_queue_full")
            n = kept
        self._note_peak()
        return n

    async def wait_for_room(self) -> None:
        """For producers that can wait (replay from files, benchmarks): until nothing awaits batching."""
        await self._room.wait()

    async def close(self, timeout: float = 10.0) -> None:
        """Send what is buffered within ``timeout`` seconds; spool or count (dropped_shutdown) the rest."""
        if self._closed:
            return
        if self._close_fut is not None:  # a second caller waits for the first one's close
            await asyncio.shield(self._close_fut)
            return
        self._closing = True
        if not self._started or self.cfg.disabled:
            self._closed = True
            return
        self._close_fut = self._loop.create_future()
        try:
            await self._close(timeout)
        finally:
            self._closed = True
            self._room.set()  # release wait_for_room() callers: submit_many now counts dropped_shutdown
            self._close_fut.set_result(None)

    async def _close(self, timeout: float) -> None:
        loop = self._loop
        deadline = loop.time() + max(0.0, timeout)
        self._pump(force=True)
        self._work.set()
        send_until = deadline - self._shutdown_reserve(timeout)
        if self._workers:
            await asyncio.wait(self._workers, timeout=max(0.0, send_until - loop.time()))
        for task in self._workers + self._tasks:
            task.cancel()
        await asyncio.gather(*self._workers, *self._tasks, return_exceptions=True)
        leftovers = [b for b in itertools.chain(self._inhand, self._bundles) if not b.spooling]
        self._inhand.clear()
        self._bundles.clear()
        self._bundle_bytes = self._bundle_msgs = 0
        await self._shutdown_leftovers(leftovers)
        await self._stop_io()

    def counters(self) -> dict[str, int]:
        out = dict(self._n)
        out["buffered_messages"] = self._buffered_messages()
        out["buffered_bytes"] = self._buffered_bytes()
        out["peak_buffered_bytes"] = self._peak_buffered_bytes
        out["peak_buffered_messages"] = self._peak_buffered_messages
        out["queued_bundles"] = len(self._bundles)
        return out

    def queue_limits(self) -> dict[str, int]:
        """The bounds the buffers stay within (tests assert peaks against them)."""
        cfg = self.cfg
        return {
            "message_queue_size": cfg.message_queue_size,
            "bundle_queue_size": cfg.bundle_queue_size,
            # open batch + queued batches + one in the hands of each sender
            "batches_max": 1 + cfg.bundle_queue_size + self._senders,
        }

    @property
    def healthy(self) -> bool:
        raise NotImplementedError

    # -- batching -------------------------------------------------------------------------------------
    def _pump(self, force: bool = False) -> None:
        """Move lines from the message queue into batches and close batches while the bundle queue has room.

        ``force`` (shutdown) ignores bundle_queue_size: the memory is held either way, and a closed batch
        can be sent or spooled.
        """
        limit = self.cfg.bundle_size
        cap = self.cfg.bundle_queue_size
        backlog = self._backlog
        while True:
            if self._open and (self._open_full or self._open_due or self._open_bytes >= limit
                               or (force and not backlog)):
                if len(self._bundles) >= cap and not force:
                    break
                self._close_open()
                continue
            if not backlog:
                break
            chunk = backlog[0]
            lines, off = chunk
            rest = lines if off == 0 else lines[off:]
            room = limit - self._open_bytes
            size = sum(map(len, rest)) + len(rest)
            if size <= room:
                take = len(rest)
                backlog.popleft()
            else:
                sizes = list(itertools.accumulate(map(len, rest)))
                take = bisect.bisect_right(range(len(rest)), room, key=lambda i: sizes[i] + i + 1)
                if take == 0 and not self._open:
                    take = 1  # one line larger than bundle_size travels alone
                size = (sizes[take - 1] + take) if take else 0
                chunk[1] = off + take
                self._open_full = True
                if take == len(rest):
                    backlog.popleft()
            if take:
                if not self._open:
                    self._timer = self._loop.call_later(self.cfg.flush_interval, self._on_flush_timer)
                self._open.extend(rest if take == len(rest) else rest[:take])
                self._open_bytes += size
                self._backlog_count -= take
        if not backlog and len(self._bundles) < cap:
            self._room.set()
        else:
            self._room.clear()

    def _close_open(self) -> None:
        batch = _Batch(self._open, len(self._open), self._open_bytes)
        self._open = []
        self._open_bytes = 0
        self._open_full = self._open_due = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._bundles.append(batch)
        self._bundle_bytes += batch.raw_bytes
        self._bundle_msgs += batch.count
        self._n["batches_built"] += 1
        self._work.set()

    def _on_flush_timer(self) -> None:
        self._timer = None
        if self._open:
            self._open_due = True
            self._pump()

    def _buffered_messages(self) -> int:
        return (self._backlog_count + len(self._open) + self._bundle_msgs
                + sum(b.count for b in self._inhand))

    def _buffered_bytes(self) -> int:
        backlog = sum(sum(map(len, c[0][c[1]:])) for c in self._backlog) + self._backlog_count
        return backlog + self._open_bytes + self._bundle_bytes + sum(b.raw_bytes for b in self._inhand)

    def _note_peak(self) -> None:
        # Cheap enough per submit_many: bounded by the queue sizes, never by traffic.
        b = self._open_bytes + self._bundle_bytes + sum(b.raw_bytes for b in self._inhand)
        if b > self._peak_buffered_bytes:
            self._peak_buffered_bytes = b
        m = self._buffered_messages()
        if m > self._peak_buffered_messages:
            self._peak_buffered_messages = m

    # -- senders --------------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            while not self._bundles:
                if self._closing:
                    return
                self._work.clear()
                await self._work.wait()
            batch = self._bundles.popleft()
            self._bundle_bytes -= batch.raw_bytes
            self._bundle_msgs -= batch.count
            self._inhand.add(batch)
            self._pump()  # a slot in the bundle queue is free: the open batch may close
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                raise  # close() takes the batch from _inhand
            except Exception:
                # A bug must not stop the sender (nothing would be sent again) nor lose the count.
                log.exception("sink: unexpected error delivering a batch of %d messages", batch.count)
                self._n["internal_errors"] += 1
                self._n["dropped_internal_error"] += batch.count
            self._inhand.discard(batch)

    async def _encode(self, batch: _Batch, compress: bool) -> None:
        if batch.body is not None:
            return
        parts = batch.parts
        if batch.raw_bytes <= self.cfg.compress_inline_max:
            body = _compress(_join(parts), self.cfg.compression_level) if compress else _join(parts)
        elif compress:
            body = await self._loop.run_in_executor(self._cpu, _join_compress, parts, self.cfg.compression_level)
        else:
            body = await self._loop.run_in_executor(self._cpu, _join, parts)
        batch.body, batch.compressed, batch.parts = body, compress, None

    def _log_once(self, key: str, level: int, msg: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, msg, *args)

    # -- subclass hooks -------------------------------------------------------------------------------
    async def _start_io(self) -> None:
        self._cpu = concurrent.futures.ThreadPoolExecutor(max_workers=self._senders,
                                                          thread_name_prefix="vxcap-sink")

    async def _stop_io(self) -> None:
        self._cpu.shutdown(wait=False, cancel_futures=True)

    async def _deliver(self, batch: _Batch) -> None:
        raise NotImplementedError

    def _shutdown_reserve(self, timeout: float) -> float:
        return 0.0

    async def _shutdown_leftovers(self, batches: list[_Batch]) -> None:
        for b in batches:
            self._n["dropped_shutdown"] += b.count


_OK, _RETRY, _REJECT = "ok", "retry", "reject"


class ResurfaceSink(_BatchingSink):
    """POSTs batches to a Resurface capture URL (SPEC section 1)."""

    def __init__(self, cfg: SinkConfig) -> None:
        super().__init__(cfg)
        self._senders = cfg.max_inflight
        url = URL(cfg.url)
        self._url = url
        base = url.path.rsplit("/", 1)[0]
        self._saturated_url = url.with_path(base + "/saturated").with_query(None).with_fragment(None)
        common = {"Content-Type": CONTENT_TYPE, "User-Agent": cfg.user_agent}
        self._headers_raw = common
        self._headers_z = {**common, "Content-Encoding": CONTENT_ENCODING}
        self._session: aiohttp.ClientSession | None = None
        self._sem = asyncio.Semaphore(cfg.max_inflight)
        self._timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
        self._spool: Spool | None = None
        self._spool_io: concurrent.futures.ThreadPoolExecutor | None = None
        self._spool_futs: set[asyncio.Future] = set()
        self._spool_wake = asyncio.Event()  # a file was spooled (the drainer may be idle)
        self._recovered = asyncio.Event()  # a POST got 204 (the drainer may be backing off)
        self._spool_ok = True
        self._up = True  # False once a batch ran out of retry budget, until a POST succeeds again
        self._last_post_ok = True
        self._failing = False
        self._unsaturated = asyncio.Event()
        self._unsaturated.set()
        self._poll_wake = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """For /readyz: the last POST succeeded, or failed batches are being spooled successfully."""
        if self._closed:
            return False
        if self.cfg.disabled or self.cfg.skip_submission:
            return True
        return self._last_post_ok or (self._spool is not None and self._spool_ok)

    def counters(self) -> dict[str, int]:
        out = super().counters()
        sp = self._spool
        out["spool_evicted"] = sp.evicted_messages if sp else 0
        out["spool_corrupt"] = sp.corrupt_files if sp else 0
        out["spool_bytes"] = sp.bytes if sp else 0
        out["spool_files"] = sp.files if sp else 0
        out["spool_messages"] = sp.messages if sp else 0
        out["saturated"] = 0 if self._unsaturated.is_set() else 1
        return out

    # -- lifecycle ------------------------------------------------------------------------------------
    async def _start_io(self) -> None:
        await super()._start_io()
        cfg = self.cfg
        if cfg.spool_dir is not None:
            spool = Spool(cfg.spool_dir, cfg.spool_max_bytes)
            try:
                spool.open()  # once, at start: a directory scan; later I/O goes to the spool thread
            except SpoolError as exc:
                raise SinkConfigError(str(exc)) from exc
            self._spool = spool
            self._spool_io = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                   thread_name_prefix="vxcap-spool")
        if cfg.skip_submission:
            return
        sslctx: ssl.SSLContext | bool = False
        if self._url.scheme == "https":
            # Verified always: against the system CAs, or only the private CA of ca_file.
            sslctx = ssl.create_default_context(cafile=cfg.ca_file)
        # +2: the spool drainer and the /saturated poll must not wait behind max_inflight POSTs.
        connector = aiohttp.TCPConnector(limit=cfg.max_inflight + 2, ssl=sslctx)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        loop = self._loop
        self._tasks.append(loop.create_task(self._saturation_poller(), name="vxcap-sink-saturation"))
        if self._spool is not None:
            self._tasks.append(loop.create_task(self._drainer(), name="vxcap-sink-spool"))
            if self._spool.files:
                self._spool_wake.set()

    async def _stop_io(self) -> None:
        if self._spool_futs:
            await asyncio.gather(*self._spool_futs, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await super()._stop_io()
        if self._spool_io is not None:
            self._spool_io.shutdown(wait=True)  # empty by now: every spool write was awaited above
        if self._spool is not None:
            self._spool.close()

    def _shutdown_reserve(self, timeout: float) -> float:
        # Leave part of the deadline to write what could not be sent to the spool.
        return min(1.0, timeout * 0.2) if self._spool is not None else 0.0

    async def _shutdown_leftovers(self, batches: list[_Batch]) -> None:
        if self._spool is None:
            for b in batches:
                self._n["dropped_shutdown"] += b.count
            return
        await asyncio.gather(*(self._spool_batch(b) for b in batches))

    # -- one batch ------------------------------------------------------------------------------------
    async def _deliver(self, batch: _Batch) -> None:
        cfg = self.cfg
        await self._encode(batch, not cfg.skip_compression)
        if cfg.skip_submission:
            self._n["dropped_skip_submission"] += batch.count
            return
        loop = self._loop
        deadline = loop.time() + cfg.retry_budget
        attempt = 0
        while True:
            if self._spool is not None and not self._up:
                # Another batch already ran out of budget: the collector is down; go straight to disk
                # rather than hold the queues for another whole budget.
                await self._spool_batch(batch)
                return
            if not self._unsaturated.is_set():
                try:
                    await asyncio.wait_for(self._unsaturated.wait(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            outcome = await self._post(batch.body, batch.compressed)
            if outcome is _OK:
                self._n["messages_delivered"] += batch.count
                self._n["batches_sent"] += 1
                self._n["bytes_sent"] += len(batch.body)
                self._n["bytes_raw"] += batch.raw_bytes
                return
            if outcome is _REJECT:
                self._n["dropped_rejected"] += batch.count
                return
            attempt += 1
            # Exponential backoff with full jitter: senders that failed together do not retry together.
            delay = random.uniform(0.0, min(cfg.backoff_max, cfg.backoff_initial * 2 ** (attempt - 1)))
            if loop.time() + delay > deadline:
                break
            self._n["retries"] += 1
            await asyncio.sleep(delay)
        self._up = False
        if self._spool is not None:
            await self._spool_batch(batch)
        else:
            self._n["dropped_retry_budget"] += batch.count
            self._log_once("retry_budget", logging.ERROR,
                           "sink: batches exhausted retry_budget %gs and were dropped (no spool_dir); "
                           "see dropped_retry_budget", cfg.retry_budget)

    async def _post(self, body: bytes, compressed: bool) -> str:
        """One POST; returns _OK, _RETRY or _REJECT and counts the failure."""
        headers = self._headers_z if compressed else self._headers_raw
        async with self._sem:
            started = time.monotonic()
            try:
                async with self._session.post(self._url, data=body, headers=headers,
                                              timeout=self._timeout) as resp:
                    status = resp.status
                    # Reading at most a little of an error page: it is logged, the rest is not needed.
                    text = b"" if status == 204 else await resp.content.read(300)
                    if status == 204:
                        await resp.read()
                self._observe(time.monotonic() - started)
            except asyncio.TimeoutError:
                return self._failed("failures_timeout", "timeout",
                                    f"no answer within request_timeout {self.cfg.request_timeout:g}s")
            except aiohttp.ClientSSLError as exc:
                return self._failed("failures_tls", "tls", f"TLS: {exc}")
            except (aiohttp.ClientError, OSError) as exc:
                return self._failed("failures_connection", "connection", f"{type(exc).__name__}: {exc}")
        if status == 204:
            if not self._last_post_ok:
                log.info("sink: collector accepts batches again")
            self._last_post_ok = True
            self._failing = False
            self._up = True
            self._recovered.set()
            return _OK
        key = f"failures_http_{status}"
        self._n[key] = self._n.get(key, 0) + 1
        snippet = text.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        if status in RETRYABLE_4XX or 500 <= status <= 599:
            self._mark_failing()
            self._log_once(key, logging.WARNING, "sink: collector answered %d (%s); retrying", status, snippet)
            return _RETRY
        self._last_post_ok = False
        self._log_once(key, logging.ERROR, "sink: collector rejected a batch with %d (%s); not retried, "
                       "counted as dropped_rejected", status, snippet)
        return _REJECT

    def _observe(self, seconds: float) -> None:
        """POST latency (connect to response), in the buckets of vxcap.metrics.LATENCY_BUCKETS; kept as
        counters (post_seconds_le_<bound>, post_seconds_sum_us, post_seconds_count) so worker processes'
        histograms add up in the parent like every other counter."""
        n = self._n
        for b in POST_LATENCY_BOUNDS:
            if seconds <= b:
                n[f"post_seconds_le_{b:g}"] += 1
        n["post_seconds_count"] += 1
        n["post_seconds_sum_us"] += int(seconds * 1e6)

    def _failed(self, counter: str, kind: str, detail: str) -> str:
        self._n[counter] += 1
        was_ok = self._last_post_ok
        self._mark_failing()
        if kind == "tls":
            self._log_once(counter, logging.ERROR, "sink: %s (check ca_file)", detail)
        elif was_ok or kind not in self._logged:
            log.warning("sink: POST to %s failed: %s; retrying", self._url, detail)
            self._logged.add(kind)
        self._last_post_ok = False
        return _RETRY

    def _mark_failing(self) -> None:
        self._last_post_ok = False
        if not self._failing:
            self._failing = True
            self._poll_wake.set()

    # -- saturation -----------------------------------------------------------------------------------
    async def _saturation_poller(self) -> None:
        """While POSTs fail (or always, with saturation_poll), ask /saturated; pause sending while true."""
        cfg = self.cfg
        while True:
            if not (cfg.saturation_poll or self._failing or not self._unsaturated.is_set()):
                self._poll_wake.clear()
                await self._poll_wake.wait()
                continue
            saturated = await self._get_saturated()
            if saturated is True and self._unsaturated.is_set():
                self._unsaturated.clear()
                self._n["saturated_pauses"] += 1
                log.warning("sink: collector reports saturated; sending paused, buffering within limits")
            elif saturated is False and not self._unsaturated.is_set():
                self._unsaturated.set()
                log.info("sink: collector no longer saturated; sending resumed")
            await asyncio.sleep(cfg.saturation_interval)

    async def _get_saturated(self) -> bool | None:
        try:
            async with self._session.get(self._saturated_url, headers={"User-Agent": self.cfg.user_agent},
                                         timeout=self._timeout) as resp:
                if resp.status != 200:
                    return None
                text = (await resp.content.read(64)).decode("ascii", "replace").strip().lower()
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
            return None
        if text in ("true", "false"):
            return text == "true"
        self._log_once("saturated_answer", logging.WARNING, "sink: %s answered %r, expected true/false",
                       self._saturated_url, text[:40])
        return None

    # -- spool ----------------------------------------------------------------------------------------
    async def _spool_batch(self, batch: _Batch) -> None:
        """Write the batch to the spool; the outcome is counted even if the awaiting task is cancelled."""
        batch.spooling = True
        loop = self._loop
        count = batch.count
        if batch.body is None:
            # Not encoded yet (shutdown): stored raw, which is valid to send as is (skip_compression),
            # and joined in the spool thread, not on the loop.
            parts, spool = batch.parts, self._spool
            fut = loop.run_in_executor(self._spool_io, lambda: spool.put(_join(parts), count, False))
        else:
            fut = loop.run_in_executor(self._spool_io, self._spool.put, batch.body, count, batch.compressed)
        self._spool_futs.add(fut)

        def done(f: asyncio.Future) -> None:
            self._spool_futs.discard(f)
            exc = f.exception()
            if exc is None:
                if f.result():
                    self._n["spool_written"] += count
                self._spool_ok = True
                self._spool_wake.set()
            else:
                self._spool_ok = False
                self._n["dropped_spool_error"] += count
                self._log_once("spool_error", logging.ERROR, "sink: cannot write to spool_dir: %s; "
                               "batches counted as dropped_spool_error", exc)

        fut.add_done_callback(done)
        await asyncio.shield(fut)

    async def _drainer(self) -> None:
        """Send spooled files, oldest first, one at a time, with backoff while the collector fails."""
        cfg = self.cfg
        spool = self._spool
        loop = self._loop
        backoff = cfg.backoff_initial
        while True:
            entry = spool.peek()
            if entry is None:
                self._up = True  # nothing left that proves an outage
                self._spool_wake.clear()
                await self._spool_wake.wait()
                continue
            await self._unsaturated.wait()
            spool.pin(entry)
            try:
                body = await loop.run_in_executor(self._spool_io, spool.read, entry)
            except SpoolCorrupt as exc:
                await asyncio.shield(loop.run_in_executor(self._spool_io, spool.quarantine, entry, str(exc)))
                continue
            outcome = await self._post(body, entry.compressed)
            if outcome is _RETRY:
                spool.pin(None)
                self._recovered.clear()
                delay = random.uniform(0.0, backoff)
                backoff = min(cfg.backoff_max, backoff * 2)
                try:
                    # A live batch getting through means the collector is back: try again now. New files
                    # being spooled do not wake it, or an outage would be probed once per batch.
                    await asyncio.wait_for(self._recovered.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                continue
            backoff = cfg.backoff_initial
            if outcome is _OK:
                self._n["spool_sent"] += entry.count
                self._n["messages_delivered"] += entry.count
                self._n["batches_sent"] += 1
                self._n["bytes_sent"] += len(body)
            else:
                self._n["dropped_rejected"] += entry.count
            await asyncio.shield(loop.run_in_executor(self._spool_io, spool.remove, entry))


class FileSink(_BatchingSink):
    """Writes each line plus "\\n" to stdout ("-" or None) or a file, in one writer thread, in order."""

    _senders = 1

    def __init__(self, cfg: SinkConfig) -> None:
        super().__init__(cfg)
        self._fh: BinaryIO | None = None
        self._own_fh = False
        self._ok = True

    @property
    def healthy(self) -> bool:
        return not self._closed and self._ok

    async def _start_io(self) -> None:
        await super()._start_io()
        out = self.cfg.out
        if out in (None, "-"):
            self._fh = sys.stdout.buffer
        else:
            try:
                self._fh = open(out, "ab")
            except OSError as exc:
                raise SinkConfigError(f"sink option out {out!r}: expected a writable file ({exc.strerror})") from exc
            self._own_fh = True

    async def _stop_io(self) -> None:
        fh = self._fh
        if fh is not None:
            try:
                await self._loop.run_in_executor(self._cpu, fh.flush)
            except OSError:
                pass
            if self._own_fh:
                fh.close()
        await super()._stop_io()

    async def _deliver(self, batch: _Batch) -> None:
        await self._encode(batch, False)
        try:
            await self._loop.run_in_executor(self._cpu, self._write, batch.body)
        except OSError as exc:
            self._ok = False
            self._n["dropped_io_error"] += batch.count
            self._log_once("io_error", logging.ERROR, "sink: cannot write to %s: %s", self.cfg.out or "-", exc)
            return
        self._ok = True
        self._n["messages_delivered"] += batch.count
        self._n["batches_sent"] += 1
        self._n["bytes_sent"] += len(batch.body)
        self._n["bytes_raw"] += batch.raw_bytes

    def _write(self, body: bytes) -> None:
        self._fh.write(body)
        self._fh.flush()  # a reader of the pipe (jq, tail -f) sees each batch when it closes


__all__ = ["SinkConfig", "SinkConfigError", "make_sink", "ResurfaceSink", "FileSink", "CONTENT_TYPE",
           "CONTENT_ENCODING"]
