"""The capture pipeline without I/O: frame batches in, NDJSON lines out.

decode (native, one call per batch) -> reassemble (per connection, capture clock) -> HTTP (httptools) ->
message (rules, JSON). The same object serves ``vxcap replay`` and the live ring: whoever owns the I/O hands
it batches and takes the lines, so nothing here knows about files, sockets or the event loop.
"""
from __future__ import annotations

import collections

from vxcap.message import MessageBuilder, MessageOptions
from vxcap.reassembly import Reassembler, ReassemblyLimits


class Pipeline:
    def __init__(self, decoder, builder: MessageBuilder, limits: ReassemblyLimits | None = None,
                 ports: frozenset[int] = frozenset()):
        self.decoder = decoder
        self.builder = builder
        self._lines: list[bytes] = []
        self.reassembler = Reassembler(self._emit, limits, ports)
        self.stats = collections.Counter()

    def _emit(self, conn, req, resp) -> None:
        if req is None:
            self.builder.stats["responses_without_request"] += 1
            return
        line = self.builder.build(conn, req, resp)
        if line is not None:
            self._lines.append(line)

    def feed(self, batch) -> list[bytes]:
        """Process one frame batch; return the lines of the calls it completed (caller owns the list)."""
        segments = self.decoder.decode(batch)
        if segments:
            self.reassembler.process(segments)
        lines, self._lines = self._lines, []
        return lines

    def feed_segments(self, segments: list) -> list[bytes]:
        """The same for segments a ring reader already decoded (``Decoder.decode_frame`` per frame)."""
        if segments:
            self.reassembler.process(segments)
        lines, self._lines = self._lines, []
        return lines

    def tick(self, now_ns: int) -> list[bytes]:
        """Advance the capture clock without traffic (live capture: timers must fire on a quiet link)."""
        r = self.reassembler
        if now_ns > r.now:
            r.now = now_ns
        r.sweep()
        lines, self._lines = self._lines, []
        return lines

    def finish(self) -> list[bytes]:
        """End of input: flush every connection (held segments skipped past holes, partial calls marked)."""
        self.reassembler.close_all()
        lines, self._lines = self._lines, []
        return lines

    def counters(self) -> dict[str, dict[str, int]]:
        return {
            "decode": self.decoder.counters(),
            "reassembly": self.reassembler.counters(),
            "messages": self.builder.counters(),
        }


__all__ = ["Pipeline", "MessageBuilder", "MessageOptions", "ReassemblyLimits"]
