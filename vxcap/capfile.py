"""Open capture files (pcap, pcapng, either gzip-compressed) and iterate over ``FrameBatch`` objects.

The parsing is native (``src_c/pcapfile.pyx``); this module owns the file handle and turns the reader's stored
damage report into ``CaptureError`` (exception classes live in Python, errors cross the C boundary as data).

    reader = open_capture("trace.pcap.gz")
    for batch in reader:            # stops at the end of the file or at the first damaged record
        ...
    if reader.error: ...            # CaptureError for damage found mid-file; earlier frames were yielded
"""
from __future__ import annotations

from typing import Iterator

from vxcap._pcapfile import FrameBatch, SUPPORTED_LINKTYPES, open_stream

__all__ = ["CaptureError", "CaptureReader", "FrameBatch", "SUPPORTED_LINKTYPES", "open_capture"]

MAX_BATCH_FRAMES = 1 << 20


class CaptureError(Exception):
    """A capture file cannot be read at ``offset`` (bytes into the decompressed stream)."""

    def __init__(self, path: str, offset: int, problem: str) -> None:
        super().__init__(path, offset, problem)
        self.path = path
        self.offset = offset
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: offset {self.offset}: {self.problem}"


class CaptureReader:
    """Iterable over the batches of one capture file; closes the file when iteration ends."""

    def __init__(self, path: str, native, raw) -> None:
        self.path = path
        self._native = native
        self._raw = raw
        self.error: CaptureError | None = None

    @property
    def format(self) -> str:
        """``"pcap"`` or ``"pcapng"``."""
        return self._native.format

    def __iter__(self) -> Iterator[FrameBatch]:
        try:
            while True:
                batch = self._native.next_batch()
                if batch is None:
                    break
                yield batch
        finally:
            if self._native.problem is not None and self.error is None:
                self.error = CaptureError(self.path, self._native.problem_offset, self._native.problem)
            self.close()

    def counters(self) -> dict[str, int]:
        """frames, bytes (captured), truncated_records (caplen < wirelen), batches, sections, interfaces,
        blocks_skipped (pcapng blocks without packets: NRB, ISB, DSB, custom)."""
        return self._native.counters()

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "CaptureReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_capture(path: str, batch_frames: int = 4096) -> CaptureReader:
    """Open ``path`` and read its file header; raises ``CaptureError`` if it cannot be started."""
    if isinstance(batch_frames, bool) or not isinstance(batch_frames, int) or not 1 <= batch_frames <= MAX_BATCH_FRAMES:
        raise ValueError(f"batch_frames must be an integer 1..{MAX_BATCH_FRAMES}, got {batch_frames!r}")
    path = str(path)
    try:
        native, raw = open_stream(path, batch_frames)
    except OSError as e:
        raise CaptureError(path, 0, f"cannot open: {e.strerror or e}") from e
    if not native.start():
        raw.close()
        raise CaptureError(path, native.problem_offset, native.problem)
    return CaptureReader(path, native, raw)
