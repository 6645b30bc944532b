"""Structured logs for ``vxcap run``: JSON lines (or text) on stderr, warnings rate-limited per key.

stderr, never stdout: without ``USAGE_LOGGERS_URL`` the calls themselves are NDJSON on stdout, and a log line
mixed into that stream would be read as a call.

Privacy: vxcap sees every body and header of the mirrored traffic (tokens, cookies, personal data). Log calls
in vxcap pass counts, addresses of vxcap's own peers and error texts, never message content; as a second line
of defence the formatters render any ``bytes``-like argument as ``<N bytes>`` (payloads travel as bytes, so
an accidental ``log.warning("bad %s", payload)`` cannot leak one).

Rate limiting: a flood of one warning (a collector that is down, a malformed frame type repeated a million
times a second) would cost CPU and drown the rest. ``RateLimitFilter`` lets one record per key through each
``interval`` seconds and adds ``suppressed=N`` (how many were swallowed since) to the next one that passes.
The key is ``extra={"key": ...}`` when given, else the logger name plus the unformatted message template, so
"collector answered %d" is one key whatever the status.
"""
from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
import time
from typing import Any, Callable, TextIO

__all__ = ["setup_logging", "JsonFormatter", "TextFormatter", "RateLimitFilter", "LEVELS", "fields"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
RATE_LIMIT_INTERVAL = 10.0  # seconds between two records of one key (the "one per 10 s")

# LogRecord attributes that are not user fields (``extra=`` adds attributes to the record itself).
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "key",
                                                                               "suppressed", "fields"}


def fields(**kw: Any) -> dict[str, Any]:
    """``log.info("...", extra=fields(vni=42))``: structured fields shown as JSON members or ``k=v``."""
    return {"fields": kw}


def _safe_arg(a: Any) -> Any:
    if isinstance(a, (bytes, bytearray, memoryview)):
        return f"<{len(a)} bytes>"
    return a


def _message(record: logging.LogRecord) -> str:
    args = record.args
    if args:
        if isinstance(args, dict):
            record.args = {k: _safe_arg(v) for k, v in args.items()}
        else:
            record.args = tuple(_safe_arg(a) for a in args)
    elif isinstance(record.msg, (bytes, bytearray, memoryview)):
        record.msg = _safe_arg(record.msg)
    return record.getMessage()


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    given = getattr(record, "fields", None)
    if isinstance(given, dict):
        out.update(given)
    for k, v in vars(record).items():
        if k not in _RESERVED and not k.startswith("_"):
            out[k] = v
    suppressed = getattr(record, "suppressed", 0)
    if suppressed:
        out["suppressed"] = suppressed
    return {k: _safe_arg(v) for k, v in out.items()}


def _timestamp(created: float) -> str:
    # RFC 3339 in UTC with milliseconds: sorts as text, and log collectors parse it without a format hint.
    dt = datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's fields (exc: the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        out.update(_extra(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2024-01-01T00:00:00.000Z warning vxcap.sink: message k=v`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname.lower()} {record.name}: {_message(record)}"
        extra = _extra(record)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RateLimitFilter(logging.Filter):
    """At most one WARNING or ERROR record per key per ``interval`` seconds; counts what it suppressed.

    INFO and DEBUG pass untouched (they are rare, or asked for); CRITICAL always passes. ``suppressed()``
    totals every swallowed record, for the metrics (``vxcap_log_suppressed_total``).
    """

    def __init__(self, interval: float = RATE_LIMIT_INTERVAL, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], int] = {}
        self._total = 0
        # Records can come from worker threads (the sink's compression pool, executor callbacks).
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.WARNING <= record.levelno < logging.CRITICAL:
            return True
        key = (record.name, str(getattr(record, "key", None) or record.msg))
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._pending[key] = self._pending.get(key, 0) + 1
                self._total += 1
                return False
            self._last[key] = now
            record.suppressed = self._pending.pop(key, 0)
            if len(self._last) > 4096:  # keys are message templates: a handful, unless a caller misuses
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        return True

    def suppressed(self) -> int:
        return self._total


_installed: tuple[logging.Handler, RateLimitFilter] | None = None


def setup_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None,
                  interval: float = RATE_LIMIT_INTERVAL) -> RateLimitFilter:
    """Send every ``vxcap.*`` record (and asyncio's / aiohttp's warnings) to ``stream`` (stderr).

    Replaces a previous setup (tests call it more than once). Returns the rate limiter (its count is a metric).
    """
    global _installed
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    limiter = RateLimitFilter(interval)
    handler.addFilter(limiter)
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed[0])
    root.addHandler(handler)
    # The root logger's level gates the libraries (asyncio, aiohttp): theirs stay at WARNING unless debug.
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("vxcap").setLevel(LEVELS[level])
    # aiohttp's access log would log every scrape of /metrics at INFO: noise, and not ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    _installed = (handler, limiter)
    return limiter
