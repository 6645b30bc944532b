"""Live capture: the asyncio layer over the native ring (or UDP) reader, the pipeline and the sink.

    ring/udp fd readable --loop.add_reader--> source.poll(decoder)     (native: every ready block, segments)
                                            -> pipeline.feed_segments  (reassembly, HTTP, messages)
                                            -> sink.submit_many(lines) (never blocks; counts what it drops)
    every stats_interval: pipeline.tick(now) (timers on a quiet link), source.read_stats() (kernel drops)

Nothing here touches packets: the reader is one native call per wake-up (STYLE.md 1). Backpressure: the sink
never blocks the reader; when the collector is slow its queues fill and it drops whole messages (counted),
and when this process is too slow to poll, the kernel ring fills and the kernel drops frames (counted in
PACKET_STATISTICS tp_drops, read here every second into ``ring.kernel_drops``).

Entry point (one worker, or several through vxcap.workers)::

    python -m vxcap.capture --device eth0 --vnis 42 --out FILE|- [--url URL] [--workers N] [--engine udp]
                            [--counters FILE] [--rules TEXT] [--ring-blocks N] ...

Prints ``ready`` on standard output once every worker's socket is bound (tests wait for it), runs until
SIGTERM or SIGINT, then flushes: held calls are finished (``pipeline.finish()``) and the sink is closed.
``--counters FILE`` receives the final counters as JSON (flat ``{"group.name": int}``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from vxcap import __version__

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE_SIZE = mmap.PAGESIZE
TPACKET_ALIGNMENT = 16  # linux/if_packet.h: frames start on 16-byte boundaries
IFNAMSIZ = 16  # linux/if.h, including the terminating NUL
# packet(7) PACKET_FANOUT modes and flags (linux/if_packet.h)
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
# A GRO'd packet reaches 64 KiB of IP; the frame also holds tpacket3_hdr (48), sockaddr_ll (20), padding and
# the Ethernet header (14, +4 per VLAN tag). 256 bytes of headroom covers them (the same as vxcap.config).
FRAME_HEADROOM = 256
MIN_FRAME_SIZE = 64 * KiB + FRAME_HEADROOM
MAX_RING_BYTES = 64 * GiB


class RingConfigError(ValueError):
    """One line: the ring option, its value and what is expected."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class RingOptions:
    """Every option of the TPACKET_V3 ring, typed and defaulted (gopacket afpacket/options.go).

    Sizing (Documentation/networking/packet_mmap.rst): the ring is ``blocks`` x ``block_size`` bytes of
    kernel memory per worker. The kernel packs frames into a block at their real length and retires the
    block to user space when it is full or ``timeout_ms`` after its first frame. A frame never spans blocks,
    so the block must hold the largest frame whole: ``block_size >= frame_size >= 64 KiB + headers`` keeps a
    64 KiB GRO packet or a 9001-byte jumbo mirror frame uncut. With TPACKET_V3 ``frame_size`` only sets that
    floor and the kernel's frame count (``block_size // frame_size`` per block); the block size need not be a
    multiple of it.
    """

    device: str = ""  # interface name; "" = all interfaces (ifindex 0)
    block_size: int = 4 * MiB  # multiple of the page size
    blocks: int = 64
    frame_size: int = MIN_FRAME_SIZE  # multiple of TPACKET_ALIGNMENT (16)
    timeout_ms: int = 100  # retire_blk_tov: a partly filled block reaches user space after this; 0 = kernel's
    promisc: bool = False  # PACKET_MR_PROMISC membership (dropped with the socket)
    ignore_outgoing: bool = True  # PACKET_IGNORE_OUTGOING: a mirror target only receives
    filter: bytes | None = None  # packed classic BPF (vxcap.bpf.pack), SO_ATTACH_FILTER
    fanout_group: int | None = None  # PACKET_FANOUT group id (16 bits, per network namespace)
    fanout_mode: int = PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_DEFRAG
    fanout_program: bytes | None = None  # packed classic BPF returning the socket index (PACKET_FANOUT_DATA)

    def _fail(self, name: str, value: Any, expected: str) -> RingConfigError:
        return RingConfigError(f"ring {name} {value!r}: expected {expected}")

    def validate(self) -> None:
        """Raise RingConfigError naming the first wrong option."""
        if not isinstance(self.device, str) or len(self.device.encode()) >= IFNAMSIZ or \
                any(c in self.device for c in "/ \t\n:"):
            raise self._fail("device", self.device,
                             f"an interface name of at most {IFNAMSIZ - 1} bytes ('' for all interfaces)")
        for name in ("block_size", "blocks", "frame_size", "timeout_ms"):
            if not _is_int(getattr(self, name)):
                raise self._fail(name, getattr(self, name), "an integer")
        if self.frame_size < MIN_FRAME_SIZE:
            raise self._fail("frame_size", self.frame_size,
                             f"at least {MIN_FRAME_SIZE} bytes (a 64 KiB GRO packet plus headers, never cut)")
        if self.frame_size % TPACKET_ALIGNMENT:
            raise self._fail("frame_size", self.frame_size, f"a multiple of TPACKET_ALIGNMENT ({TPACKET_ALIGNMENT})")
        if self.block_size <= 0 or self.block_size % PAGE_SIZE:
            raise self._fail("block_size", self.block_size, f"a positive multiple of the page size ({PAGE_SIZE})")
        if self.block_size < self.frame_size:
            raise self._fail("block_size", self.block_size,
                             f"at least frame_size ({self.frame_size}): a block holds whole frames")
        if self.block_size > 1 * GiB:
            raise self._fail("block_size", self.block_size, "at most 1 GiB")
        if not 1 <= self.blocks <= 65536:
            raise self._fail("blocks", self.blocks, "1 to 65536")
        if self.blocks * self.block_size > MAX_RING_BYTES:
            raise self._fail("blocks", self.blocks,
                             f"a ring of at most {MAX_RING_BYTES >> 30} GiB (blocks x block_size)")
        if not 0 <= self.timeout_ms <= 60_000:
            raise self._fail("timeout_ms", self.timeout_ms, "0 to 60000 milliseconds (0: the kernel's choice)")
        for name in ("promisc", "ignore_outgoing"):
            if not isinstance(getattr(self, name), bool):
                raise self._fail(name, getattr(self, name), "a bool")
        if self.fanout_group is not None and (not _is_int(self.fanout_group) or not 0 <= self.fanout_group <= 0xFFFF):
            raise self._fail("fanout_group", self.fanout_group, "None or a group id from 0 to 65535")
        if not _is_int(self.fanout_mode) or not 0 <= self.fanout_mode <= 0xFFFF:
            raise self._fail("fanout_mode", self.fanout_mode, "a PACKET_FANOUT mode with flags (16 bits)")
        for name in ("filter", "fanout_program"):
            prog = getattr(self, name)
            if prog is not None and (not isinstance(prog, bytes) or len(prog) % 8 or not 8 <= len(prog) <= 4096 * 8):
                raise self._fail(name, prog if not isinstance(prog, bytes) else f"<{len(prog)} bytes>",
                                 "None or a packed BPF program (vxcap.bpf.pack: 1 to 4096 instructions)")
        if self.fanout_program is not None and self.fanout_group is None:
            raise self._fail("fanout_program", f"<{len(self.fanout_program)} bytes>", "a fanout_group to serve")


def open_ring(options: RingOptions):
    """The native ring (vxcap._ring.Ring) with ``options`` validated."""
    from vxcap import _ring

    options.validate()
    return _ring.Ring(options)


def flatten(groups: dict[str, Any], prefix: str = "") -> dict[str, int]:
    """``{"decode": {"frames": 3}}`` -> ``{"decode.frames": 3}``; non-numeric leaves are skipped."""
    out: dict[str, int] = {}
    for k, v in groups.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = int(v)
    return out


class LiveCapture:
    """Drives ``source`` (a Ring or a vxcap.udp_engine.UdpEngine) into ``pipeline`` and ``sink``.

    ``source`` has ``fileno()``, ``poll(decoder) -> segments``, ``read_stats()``, ``counters()`` and
    ``close()``. ``on_stats(counters)`` is called after every periodic statistics read (workers report
    to their parent with it).
    """

    def __init__(self, source, pipeline, sink, *, stats_interval: float = 1.0,
                 on_stats: Callable[[dict[str, int]], None] | None = None) -> None:
        if not isinstance(stats_interval, (int, float)) or isinstance(stats_interval, bool) or \
                not 0.01 <= stats_interval <= 60:
            raise ValueError(f"stats_interval {stats_interval!r}: expected 0.01 to 60 seconds")
        self.source = source
        self.pipeline = pipeline
        self.sink = sink
        self.stats_interval = float(stats_interval)
        self.on_stats = on_stats
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self._failed: asyncio.Future | None = None
        self._n = {"wakeups": 0, "segments": 0, "lines": 0, "lines_accepted": 0, "ticks": 0}

    def start(self) -> None:
        """Register the reader and the timer on the running loop."""
        if self._running:
            raise RuntimeError("LiveCapture already started")
        self._loop = asyncio.get_running_loop()
        self._failed = self._loop.create_future()
        self._loop.add_reader(self.source.fileno(), self._on_readable)
        self._timer = self._loop.call_later(self.stats_interval, self._on_timer)
        self._running = True

    @property
    def failed(self) -> asyncio.Future:
        """Resolves with the exception that stopped the reader (a decoder or socket error)."""
        assert self._failed is not None, "start() first"
        return self._failed

    def _submit(self, lines: list[bytes]) -> None:
        if lines:
            self._n["lines"] += len(lines)
            self._n["lines_accepted"] += self.sink.submit_many(lines)

    def _drain(self) -> None:
        segments = self.source.poll(self.pipeline.decoder)
        if segments:
            self._n["segments"] += len(segments)
            self._submit(self.pipeline.feed_segments(segments))

    def _on_readable(self) -> None:
        self._n["wakeups"] += 1
        try:
            self._drain()
        except Exception as exc:  # noqa: BLE001 - handed to whoever awaits `failed`, never to the loop
            self._fail(exc)

    def _on_timer(self) -> None:
        self._n["ticks"] += 1
        try:
            self._submit(self.pipeline.tick(time.time_ns()))  # kernel timestamps are CLOCK_REALTIME too
            self.source.read_stats()
            if self.on_stats is not None:
                self.on_stats(self.counters())
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        self._timer = self._loop.call_later(self.stats_interval, self._on_timer)

    def _fail(self, exc: BaseException) -> None:
        self._unregister()
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(exc)

    def _unregister(self) -> None:
        if self._running:
            self._running = False
            self._loop.remove_reader(self.source.fileno())
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def stop(self) -> None:
        """Stop reading, decode what the ring still holds, flush every connection into the sink."""
        was_running = self._running
        self._unregister()
        if was_running:
            self._drain()
        self._submit(self.pipeline.finish())
        self.source.read_stats()

    def counters(self) -> dict[str, int]:
        groups: dict[str, Any] = {"capture": dict(self._n), self.source.kind: self.source.counters()}
        groups.update(self.pipeline.counters())
        groups["sink"] = self.sink.counters()
        out = flatten(groups)
        for vni, (frames, nbytes) in self.pipeline.decoder.vni_stats().items():
            out[f"vni.{vni}.frames"] = frames
            out[f"vni.{vni}.bytes"] = nbytes
        return out


class RingSource:
    """A Ring with the interface LiveCapture expects (``kind`` names its counter group)."""

    kind = "ring"

    def __init__(self, ring) -> None:
        self.ring = ring

    def fileno(self) -> int:
        return self.ring.fileno()

    def poll(self, decoder) -> list:
        return self.ring.poll(decoder)

    def read_stats(self) -> None:
        self.ring.read_stats()

    def counters(self) -> dict[str, int]:
        return self.ring.counters()

    def close(self) -> None:
        self.ring.close()


# -- the entry point ------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else default


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = _Parser(prog="python -m vxcap.capture",
                description="Capture VPC-mirror traffic live and emit Resurface messages.")
    p.add_argument("--device", default=env.get("NET_DEVICE", env.get("VPC_MIRROR_DEVICE", "")),
                   help="interface; empty = all (default: $NET_DEVICE)")
    p.add_argument("--engine", choices=("afpacket", "udp"), default=env.get("VXCAP_ENGINE", "afpacket") or "afpacket")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: $VXCAP_WORKERS, else the CPUs this process may use)")
    p.add_argument("--vnis", default=env.get("SNIFFER_MIRROR_VNIS", ""))
    p.add_argument("--ports", default=env.get("APP_PORTS", env.get("APP_PORT", "")))
    p.add_argument("--vxlan-port", default=env.get("SNIFFER_MIRROR_VXLANPORT", "4789"))
    p.add_argument("--encap", choices=("auto", "vxlan", "none"), default="vxlan")
    p.add_argument("--rules", default=env.get("USAGE_LOGGERS_RULES"))
    p.add_argument("--host", default=env.get("DYNO") or None)
    p.add_argument("--body-limit", type=int, default=_env_int("USAGE_LOGGERS_BODY_LIMIT", 1 << 20))
    p.add_argument("--realip-header", default=env.get("SNIFFER_REALIP_HEADER") or None)
    p.add_argument("--custom-fields", default=env.get("VXCAP_CUSTOM_FIELDS", ""))
    p.add_argument("--out", default="-", help="NDJSON file (appended) or - (default)")
    p.add_argument("--url", default=env.get("USAGE_LOGGERS_URL") or None)
    p.add_argument("--ring-block-size", type=int, default=_env_int("VXCAP_RING_BLOCK_SIZE", 4 * MiB))
    p.add_argument("--ring-blocks", type=int, default=_env_int("VXCAP_RING_BLOCKS", 64))
    p.add_argument("--ring-frame-size", type=int, default=_env_int("VXCAP_RING_FRAME_SIZE", MIN_FRAME_SIZE))
    p.add_argument("--ring-timeout-ms", type=int, default=_env_int("VXCAP_RING_TIMEOUT_MS", 100))
    p.add_argument("--promisc", action="store_true")
    p.add_argument("--flush-interval", type=float, default=1.0, help="sink: seconds a batch may wait")
    p.add_argument("--stats-interval", type=float, default=1.0)
    p.add_argument("--counters", default=None, help="write the final counters here as JSON")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--version", action="version", version=f"vxcap {__version__}")
    # set by vxcap.workers for its children
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--fanout-group", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--status-fd", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _workers(args) -> int:
    if args.workers is not None:
        n = args.workers
    else:
        from vxcap.workers import default_workers

        n = default_workers()
    if not 1 <= n <= 256:
        raise ValueError(f"invalid --workers {n}: expected 1 to 256")
    return n


def open_source(args, n_workers: int, index: int, fanout_group: int):
    """The packet source of one worker: a fanout member ring, or a UDP socket of a reuseport group."""
    from vxcap import bpf

    port = int(args.vxlan_port)
    if args.engine == "udp":
        from vxcap.udp_engine import UdpEngine

        return UdpEngine(port, device=args.device or None, workers=n_workers)
    from vxcap.replay import parse_ports

    ports = sorted(parse_ports(args.ports, "--ports"))
    program = None
    if n_workers > 1:
        program = bpf.pack(bpf.fanout_program(n_workers, port, 6081, tcp=args.encap != "vxlan"))
    opts = RingOptions(device=args.device, block_size=args.ring_block_size, blocks=args.ring_blocks,
                       frame_size=args.ring_frame_size, timeout_ms=args.ring_timeout_ms, promisc=args.promisc,
                       filter=bpf.pack(bpf.capture_filter(args.encap, port, 6081, ports)),
                       fanout_group=fanout_group, fanout_program=program)
    # One worker still joins a fanout group of its own: PACKET_FANOUT_FLAG_DEFRAG then reassembles outer
    # IPv4 fragments (a VXLAN packet bigger than the path MTU) before the ring sees them.
    return RingSource(open_ring(opts))


def _sink_config(args, rules):
    from vxcap.sink import SinkConfig

    return SinkConfig(url=args.url, out=args.out, allow_http_url=rules.allow_http_url,
                      skip_compression=rules.skip_compression, skip_submission=rules.skip_submission,
                      flush_interval=args.flush_interval, user_agent=f"vxcap/{__version__}")


async def run_worker(args, n_workers: int, index: int, fanout_group: int,
                     report: Callable[[dict], None] | None = None) -> dict[str, int]:
    """One capture worker until SIGTERM/SIGINT; returns its final counters."""
    from vxcap.replay import make_pipeline
    from vxcap.sink import make_sink

    args.pure = False
    pipeline, rules = make_pipeline(args)
    source = open_source(args, n_workers, index, fanout_group)
    sink = make_sink(_sink_config(args, rules))
    await sink.start()

    def on_stats(c: dict[str, int]) -> None:
        if report is not None:
            report({"worker": index, "counters": c})

    cap = LiveCapture(source, pipeline, sink, stats_interval=args.stats_interval, on_stats=on_stats)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cap.start()
    if report is not None:
        report({"worker": index, "ready": True})
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([waiter, cap.failed], return_when=asyncio.FIRST_COMPLETED)
        error = cap.failed.result() if cap.failed.done() else None
        cap.stop()
        await sink.close(timeout=10.0)
        counters = cap.counters()
        if error is not None:
            raise error
        return counters
    finally:
        waiter.cancel()
        source.close()


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _write_counters(path: str | None, counters: dict) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(counters, f, sort_keys=True)
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        n = _workers(args)
        from vxcap.replay import make_pipeline, parse_ports

        args.pure = False
        make_pipeline(args)  # validates every pipeline option before anything is opened
        parse_ports(args.ports, "--ports")
        RingOptions(device=args.device, block_size=args.ring_block_size, blocks=args.ring_blocks,
                    frame_size=args.ring_frame_size, timeout_ms=args.ring_timeout_ms).validate()
    except ValueError as e:
        sys.stderr.write(f"vxcap capture: error: {e}\n")
        return 2
    loop = _new_loop(args.loop)
    try:
        if args.worker_index is not None:  # a child of vxcap.workers
            return loop.run_until_complete(_child(args, n))
        if n > 1:
            from vxcap.workers import Supervisor, worker_argv

            sup = Supervisor(worker_argv(argv if argv is not None else sys.argv[1:]), n)
            code = loop.run_until_complete(sup.run(on_ready=lambda: print("ready", flush=True)))
            counters = sup.counters()
            for i, c in sup.per_worker().items():  # which worker did what (tests, post-mortems)
                for k in ("capture.lines", "capture.segments", "decode.frames"):
                    counters[f"worker.{i}.{k}"] = c.get(k, 0)
            _write_counters(args.counters, counters)
            return code
        group = os.getpid() & 0xFFFF

        def report(msg: dict) -> None:
            if msg.get("ready"):
                print("ready", flush=True)

        counters = loop.run_until_complete(run_worker(args, 1, 0, group, report))
        _write_counters(args.counters, counters)
        return 0
    except OSError as e:
        sys.stderr.write(f"vxcap capture: error: {e}\n")
        return 1
    finally:
        loop.close()


async def _child(args, n: int) -> int:
    """A worker under vxcap.workers.Supervisor: status as JSON lines on --status-fd."""
    fd = args.status_fd

    def report(msg: dict) -> None:
        if fd is not None:
            try:
                os.write(fd, json.dumps(msg).encode() + b"\n")
            except OSError:
                pass  # the parent went away: SIGTERM (or the pipe) ends us soon

    counters = await run_worker(args, n, args.worker_index, args.fanout_group, report)
    report({"worker": args.worker_index, "counters": counters, "final": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
