"""A crash-safe disk spool of request bodies the collector could not take yet.

The sink writes a batch here when its retry budget runs out (and at shutdown), and sends the files back,
oldest first, once the collector answers again, including from a later process: the spool is the only part
of vxcap's buffering that survives a restart.

One file per batch, named ``<sequence:020d>.vxs`` so that a directory listing sorted by name is the send
order. Layout (big-endian, 32-byte header)::

     0                   8        12       16                24       28       32
    +-------------------+--------+--------+-----------------+--------+--------+------------------+
    | magic "VXSPOOL1"  | flags  | count  | body length     | body   | header |  body ...        |
    |                   |        |        |                 | CRC32  | CRC32  |                  |
    +-------------------+--------+--------+-----------------+--------+--------+------------------+

``flags`` bit 0: the body is a zlib stream (RFC 1950) to send with ``Content-Encoding: deflated``; otherwise
raw NDJSON. ``count``: NDJSON lines in the body, so that counters stay in messages without parsing it.
The header CRC covers bytes 0..27, so a torn or garbled header is told apart from a bad body before the
body is read; the magic carries the format version.

A file is written as ``.<sequence>.tmp``, fsync'ed, renamed, and the directory fsync'ed (rename is atomic
on POSIX; the directory fsync makes the rename itself durable), so a crash leaves either a complete file or
a temporary one that the next start deletes. A file that fails validation is renamed to ``*.corrupt``
(kept for inspection, at most ``KEEP_CORRUPT`` of them), counted, and never stops the spool.

Every method blocks (file I/O, fsync): the sink calls them from one dedicated worker thread. A lock makes
the gauges and ``peek`` safe to read from the event loop's thread meanwhile.
"""
from __future__ import annotations

import collections
import fcntl
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vxcap.sink")

MAGIC = b"VXSPOOL1"
HEADER = struct.Struct(">8sIIQII")
FLAG_ZLIB = 1
SUFFIX = ".vxs"
CORRUPT_SUFFIX = ".corrupt"
LOCK_NAME = ".lock"
KEEP_CORRUPT = 8


class SpoolError(Exception):
    """The spool directory cannot be used (permissions, not a directory, another process holds it)."""


class SpoolCorrupt(SpoolError):
    """A spool file failed validation; the message names the file and the check that failed."""


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    seq: int
    size: int  # on disk, header included: what spool_max_bytes bounds
    count: int
    compressed: bool


def encode_header(body: bytes, count: int, compressed: bool) -> bytes:
    flags = FLAG_ZLIB if compressed else 0
    head = HEADER.pack(MAGIC, flags, count, len(body), zlib.crc32(body), 0)[:-4]
    return head + struct.pack(">I", zlib.crc32(head))


def decode_header(head: bytes, name: str) -> tuple[int, int, int, int]:
    """Return (flags, count, length, body_crc) or raise SpoolCorrupt saying which check failed."""
    if len(head) < HEADER.size:
        raise SpoolCorrupt(f"{name}: truncated header ({len(head)} of {HEADER.size} bytes)")
    magic, flags, count, length, body_crc, head_crc = HEADER.unpack(head[: HEADER.size])
    if magic != MAGIC:
        raise SpoolCorrupt(f"{name}: bad magic {magic!r} (expected {MAGIC!r})")
    if zlib.crc32(head[: HEADER.size - 4]) != head_crc:
        raise SpoolCorrupt(f"{name}: header CRC mismatch")
    if flags & ~FLAG_ZLIB:
        raise SpoolCorrupt(f"{name}: unknown flags {flags:#x}")
    return flags, count, length, body_crc


class Spool:
    """Files of batches in ``directory``, at most ``max_bytes`` on disk, oldest evicted first."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._entries: collections.deque[SpoolEntry] = collections.deque()
        self._bytes = 0
        self._messages = 0
        self._next_seq = 1
        self._pinned: SpoolEntry | None = None
        self._lock_fd: int | None = None
        self.written_messages = 0
        self.written_files = 0
        self.evicted_messages = 0
        self.evicted_files = 0
        self.corrupt_files = 0

    # -- gauges (read from any thread) --------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def files(self) -> int:
        return len(self._entries)

    @property
    def messages(self) -> int:
        return self._messages

    # -- lifecycle ----------------------------------------------------------------------------------
    def open(self) -> None:
        """Create the directory, take the lock, index the files left by earlier runs."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool_dir {str(self.directory)!r}: {exc.strerror or exc}") from exc
        try:
            # Two processes draining one directory would send every file twice.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(
                f"spool_dir {str(self.directory)!r} is in use by another process: expected a directory "
                "of its own per vxcap instance"
            ) from exc
        self._lock_fd = fd
        with self._lock:
            self._scan()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _scan(self) -> None:
        found: list[tuple[int, Path]] = []
        for path in self.directory.iterdir():
            name = path.name
            if name.endswith(".tmp"):
                # A write interrupted by a crash: never renamed, so never acknowledged as spooled.
                log.warning("spool: removing incomplete file %s left by an interrupted write", name)
                self.corrupt_files += 1
                path.unlink(missing_ok=True)
            elif name.endswith(SUFFIX):
                stem = name[: -len(SUFFIX)]
                if stem.isdigit():
                    found.append((int(stem), path))
        found.sort()
        for seq, path in found:
            try:
                with open(path, "rb") as fh:
                    head = fh.read(HEADER.size)
                    size = os.fstat(fh.fileno()).st_size
                flags, count, length, _ = decode_header(head, path.name)
                if size != HEADER.size + length:
                    raise SpoolCorrupt(f"{path.name}: size {size} != header {HEADER.size} + body {length}")
            except SpoolCorrupt as exc:
                self._quarantine_path(path, str(exc))
                continue
            except OSError as exc:
                self._quarantine_path(path, f"{path.name}: {exc}")
                continue
            entry = SpoolEntry(path, seq, size, count, bool(flags & FLAG_ZLIB))
            self._entries.append(entry)
            self._bytes += size
            self._messages += count
        if found:
            self._next_seq = found[-1][0] + 1
        if self._entries:
            log.info("spool: %d file(s), %d message(s) from an earlier run in %s", len(self._entries),
                     self._messages, self.directory)

    # -- operations ---------------------------------------------------------------------------------
    def put(self, body: bytes, count: int, compressed: bool) -> bool:
        """Store one batch; evict the oldest files to stay within max_bytes. False: it alone is too big.

        Raises OSError when the disk refuses the write (the caller counts the batch as lost).
        """
        size = HEADER.size + len(body)
        with self._lock:
            if size > self.max_bytes:
                self.evicted_messages += count
                self.evicted_files += 1
                log.warning("spool: a %d-byte batch exceeds spool_max_bytes %d; dropped", size, self.max_bytes)
                return False
            while self._entries and self._bytes + size > self.max_bytes:
                if not self._evict_oldest():
                    break
            seq = self._next_seq
            self._next_seq += 1
        path = self.directory / f"{seq:020d}{SUFFIX}"
        tmp = self.directory / f".{seq:020d}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(encode_header(body, count, compressed))
                fh.write(body)
                fh.flush()
                if self._fsync:
                    os.fsync(fh.fileno())
            os.rename(tmp, path)
            if self._fsync:
                self._fsync_dir()
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            self._entries.append(SpoolEntry(path, seq, size, count, compressed))
            self._bytes += size
            self._messages += count
            self.written_messages += count
            self.written_files += 1
        return True

    def _evict_oldest(self) -> bool:
        for entry in self._entries:
            if entry is self._pinned:
                continue  # being sent right now: evicting it could count its messages twice
            self._forget(entry)
            entry.path.unlink(missing_ok=True)
            self.evicted_messages += entry.count
            self.evicted_files += 1
            log.warning("spool: spool_max_bytes %d reached; evicted %s (%d messages)", self.max_bytes,
                        entry.path.name, entry.count)
            return True
        return False

    def _forget(self, entry: SpoolEntry) -> None:
        self._entries.remove(entry)
        self._bytes -= entry.size
        self._messages -= entry.count

    def peek(self) -> SpoolEntry | None:
        with self._lock:
            return self._entries[0] if self._entries else None

    def pin(self, entry: SpoolEntry | None) -> None:
        with self._lock:
            self._pinned = entry

    def read(self, entry: SpoolEntry) -> bytes:
        """Return the body after checking both CRCs; SpoolCorrupt when any check fails."""
        try:
            with open(entry.path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise SpoolCorrupt(f"{entry.path.name}: {exc.strerror or exc}") from exc
        _, _, length, body_crc = decode_header(data[: HEADER.size], entry.path.name)
        body = data[HEADER.size:]
        if len(body) != length:
            raise SpoolCorrupt(f"{entry.path.name}: body is {len(body)} bytes, header says {length}")
        if zlib.crc32(body) != body_crc:
            raise SpoolCorrupt(f"{entry.path.name}: body CRC mismatch")
        return body

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a file that was delivered (or rejected for good)."""
        with self._lock:
            if entry in self._entries:
                self._forget(entry)
            if self._pinned is entry:
                self._pinned = None
        entry.path.unlink(missing_ok=True)

    def quarantine(self, entry: SpoolEntry, reason: str) -> None:
        with self._lock:
            if entry in self._entries:
                self._forget(entry)
            if self._pinned is entry:
                self._pinned = None
        self._quarantine_path(entry.path, reason)

    def _quarantine_path(self, path: Path, reason: str) -> None:
        self.corrupt_files += 1
        log.error("spool: skipping corrupt file: %s (renamed to %s%s)", reason, path.name, CORRUPT_SUFFIX)
        try:
            path.rename(path.with_name(path.name + CORRUPT_SUFFIX))
        except OSError:
            path.unlink(missing_ok=True)
        # Keep a few for inspection, but corrupt files are outside spool_max_bytes: do not let them pile up.
        aside = sorted(p for p in self.directory.iterdir() if p.name.endswith(CORRUPT_SUFFIX))
        for old in aside[:-KEEP_CORRUPT]:
            old.unlink(missing_ok=True)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
