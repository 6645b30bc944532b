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


def build_pipeline(cfg, rules, pure: bool = False) -> Pipeline:
    """The pipeline the daemon runs, from a validated ``vxcap.config.Config`` and parsed ``Rules``."""
    from vxcap.decode import Decoder, VniFilter
    from vxcap.http import Limits

    decoder = Decoder(
        vxlan_port=cfg.vxlan_port, geneve_port=cfg.geneve_port, encap=cfg.encap,
        vnis=VniFilter(include=frozenset(cfg.vnis_include or ()), exclude=frozenset(cfg.vnis_exclude or ())),
        ports=frozenset(cfg.app_ports or ()), max_depth=cfg.decode_depth, pure=pure,
    )
    limits = ReassemblyLimits(
        max_connections=cfg.max_connections, max_buffered=cfg.max_buffered_bytes,
        max_conn_buffered=cfg.max_conn_buffered_bytes, gap_timeout=cfg.gap_timeout,
        idle_timeout=cfg.idle_timeout, response_timeout=cfg.response_timeout,
        http=Limits(max_header_bytes=cfg.max_header_bytes, body_limit=cfg.body_limit),
    )
    options = MessageOptions(host=cfg.host, body_limit=cfg.body_limit, realip_header=cfg.realip_header,
                             custom_fields=frozenset(cfg.custom_fields or ()))
    return Pipeline(decoder, MessageBuilder(options, rules), limits, frozenset(cfg.app_ports or ()))
