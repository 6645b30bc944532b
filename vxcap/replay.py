"""``vxcap replay``: capture files through the same pipeline as live traffic, one message per line out.

Defaults come from the sniffer's environment variables (SPEC section 4) so that a replay reproduces what the
daemon would do with the same configuration; command-line options override them.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import os
import sys
import time

from vxcap import __version__

ENCAPS = ("auto", "vxlan", "none")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.6.2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def parse_ports(text: str, what: str = "ports") -> frozenset[int]:
    ports = set()
    for tok in text.replace(",", " ").split():
        if not tok.isdigit() or not 1 <= int(tok) <= 65535:
            raise ValueError(f"invalid {what} {text!r}: {tok!r} is not a port number from 1 to 65535")
        ports.add(int(tok))
    return frozenset(ports)


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = _Parser(
        prog="vxcap replay",
        description="Turn VPC-mirror captures (pcap, pcapng, optionally .gz) into Resurface messages (NDJSON).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="capture files, read in order")
    p.add_argument("--vnis", default=env.get("SNIFFER_MIRROR_VNIS", ""),
                   help="VNIs to follow, comma- or space-separated; -N excludes N; empty = all "
                        "(default: $SNIFFER_MIRROR_VNIS)")
    p.add_argument("--ports", default=env.get("APP_PORTS", env.get("APP_PORT", "")),
                   help="application (server) ports; empty = every connection that looks like HTTP/1.x "
                        "(default: $APP_PORTS)")
    p.add_argument("--vxlan-port", default=env.get("SNIFFER_MIRROR_VXLANPORT", "4789"),
                   help="UDP port of VXLAN (default: $SNIFFER_MIRROR_VXLANPORT or 4789)")
    p.add_argument("--encap", default="auto", choices=ENCAPS,
                   help="auto: VXLAN and plain TCP; vxlan: only encapsulated; none: only plain (default auto)")
    p.add_argument("--rules", default=env.get("USAGE_LOGGERS_RULES"),
                   help="logging rules text or file://PATH (default: $USAGE_LOGGERS_RULES, else 'include strict')")
    p.add_argument("--out", default="-", help="output file, - for standard output (default -)")
    p.add_argument("--url", default=None,
                   help="send to this Resurface capture URL instead of --out (waits until delivered)")
    p.add_argument("--host", default=env.get("DYNO") or None,
                   help="value of the 'host' detail (default: $DYNO, else this machine's name)")
    p.add_argument("--body-limit", type=int, default=int(env.get("USAGE_LOGGERS_BODY_LIMIT", 1 << 20)),
                   help="bytes of each body kept (default: $USAGE_LOGGERS_BODY_LIMIT or 1048576)")
    p.add_argument("--realip-header", default=env.get("SNIFFER_REALIP_HEADER") or None,
                   help="add this request header carrying the client's address (default: $SNIFFER_REALIP_HEADER)")
    p.add_argument("--custom-fields", default=env.get("VXCAP_CUSTOM_FIELDS", ""),
                   help="opt-in custom_field: details, comma-separated: vni, mirror_source "
                        "(default: $VXCAP_CUSTOM_FIELDS)")
    p.add_argument("--pure", action="store_true",
                   help="use the pure-Python decoder and rules engine (for comparison; VXCAP_PURE_PYTHON=1 "
                        "also runs reassembly and HTTP from their Python source)")
    p.add_argument("--quiet", action="store_true", help="no summary on standard error")
    p.add_argument("--version", action="version", version=f"vxcap {__version__}")
    return p


def make_pipeline(args):
    """Pipeline and rules from parsed arguments over the environment's configuration (the same
    ``build_pipeline`` the daemon runs, so a replay honours VXCAP_* limits too); ValueError, one line."""
    import dataclasses

    from vxcap.config import ConfigError, load_config
    from vxcap.decode import DecodeConfigError, parse_vnis
    from vxcap.pipeline import build_pipeline
    from vxcap.rules import Rules, RulesError

    try:
        vnis = parse_vnis(args.vnis)
    except DecodeConfigError as e:
        raise ValueError(f"--vnis: {e}") from None
    ports = parse_ports(args.ports, "--ports")
    vxlan_port = parse_ports(args.vxlan_port, "--vxlan-port")
    if len(vxlan_port) != 1:
        raise ValueError(f"invalid --vxlan-port {args.vxlan_port!r}: expected one port number from 1 to 65535")
    if args.body_limit < 1:
        raise ValueError(f"invalid --body-limit {args.body_limit}: expected a positive number of bytes")
    fields = frozenset(f.strip() for f in args.custom_fields.split(",") if f.strip())
    unknown = fields - {"vni", "mirror_source"}
    if unknown:
        raise ValueError(f"--custom-fields: custom fields {sorted(unknown)}: expected any of vni, mirror_source")
    if args.realip_header and not _TOKEN.fullmatch(args.realip_header):
        raise ValueError(f"invalid --realip-header {args.realip_header!r}: expected an HTTP header name (RFC 9110 "
                         "token)")
    try:
        rules = Rules.parse(args.rules, pure=args.pure)
    except RulesError as e:
        raise ValueError(str(e)) from None
    try:
        cfg = load_config(os.environ)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    cfg = dataclasses.replace(
        cfg, vnis_include=vnis.include, vnis_exclude=vnis.exclude, app_ports=ports,
        vxlan_port=next(iter(vxlan_port)), encap=args.encap, host=args.host or cfg.host,
        body_limit=args.body_limit, realip_header=args.realip_header.lower() if args.realip_header else None,
        custom_fields=fields,
    )
    return build_pipeline(cfg, rules, pure=args.pure), rules


class Progress:
    """A one-line progress report on a terminal (never in a pipe or a log)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.last = 0.0

    def update(self, name: str, frames: int, calls: int, force: bool = False):
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self.last > 0.2:
            self.last = now
            sys.stderr.write(f"\r{name}: {frames:,} frames, {calls:,} calls")
            sys.stderr.flush()

    def done(self):
        if self.enabled:
            sys.stderr.write("\n")


def format_summary(counters: dict, files: list[str], calls: int, seconds: float, errors: list[str]) -> str:
    dec = counters["decode"]
    ras = counters["reassembly"]
    msg = counters["messages"]
    lines = [
        f"vxcap replay: {len(files)} file(s) in {seconds:.2f}s",
        f"  frames {dec.get('frames', 0):,}  bytes {dec.get('bytes', 0):,}",
    ]
    vni = counters.get("vni") or {}
    if vni:
        lines.append("  vxlan frames by VNI: " + ", ".join(f"{k}={v[0]:,}" for k, v in sorted(vni.items())))
    lines.append(
        f"  connections {ras.get('connections_opened', 0):,}  calls {calls:,}"
        f"  (built {msg.get('calls_built', 0):,}, dropped by rules {msg.get('calls_dropped_by_rules', 0):,})"
    )
    for title, group in (("decode", dec), ("reassembly/http", ras), ("messages", msg)):
        items = [f"{k}={v:,}" for k, v in sorted(group.items())
                 if v and k not in ("frames", "bytes", "calls_built")]
        if items:
            lines.append(f"  {title}: " + " ".join(items))
    native = counters.get("native") or {}
    slow = sorted(name for name, built in native.items() if not built)
    if slow:
        lines.append("  note: running from Python source (extensions not built or VXCAP_PURE_PYTHON=1): "
                     + ", ".join(slow))
    for e in errors:
        lines.append(f"  error: {e}")
    return "\n".join(lines)


def replay_batches(args, progress: Progress, result: dict):
    """Yield the lines of each frame batch's completed calls; fill ``result`` (counters, errors) at the end."""
    from vxcap.capfile import CaptureError, open_capture

    pipeline, _ = make_pipeline(args)
    errors: list[str] = []
    frames = calls = 0
    for path in args.files:
        try:
            reader = open_capture(path)
        except CaptureError as e:
            errors.append(str(e))
            continue
        except OSError as e:
            errors.append(f"{path}: {e.strerror or e}")
            continue
        for batch in reader:
            lines = pipeline.feed(batch)
            frames += len(batch)
            if lines:
                calls += len(lines)
                yield lines
            progress.update(path, frames, calls)
        if reader.error is not None:
            errors.append(str(reader.error))
    lines = pipeline.finish()
    if lines:
        calls += len(lines)
        yield lines
    progress.update("done", frames, calls, force=True)
    progress.done()
    counters = pipeline.counters()
    counters["vni"] = pipeline.decoder.vni_stats()
    import vxcap

    counters["native"] = dict(vxcap.compiled(), **{"vxcap._decode": not getattr(pipeline.decoder, "pure", False)})
    result.update(calls=calls, counters=counters, errors=errors, frames=frames)


def replay(args, out, progress: Progress) -> tuple[int, dict, list[str], int]:
    """Run the files through the pipeline, handing each batch's lines to ``out`` (a callable)."""
    result: dict = {}
    for lines in replay_batches(args, progress, result):
        out(lines)
    return result["calls"], result["counters"], result["errors"], result["frames"]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        make_pipeline(args)  # validate everything before any output is opened
    except ValueError as e:
        sys.stderr.write(f"vxcap replay: error: {e}\n")
        return 2
    progress = Progress(sys.stderr.isatty() and not args.quiet)
    if args.url:
        return _replay_to_url(args, progress, t0)
    if args.out == "-":
        stream = sys.stdout.buffer
        close = False
    else:
        try:
            stream = open(args.out, "wb")
        except OSError as e:
            sys.stderr.write(f"vxcap replay: error: cannot write --out {args.out}: {e.strerror}\n")
            return 2
        close = True

    def write(lines):
        stream.write(b"\n".join(lines) + b"\n")

    try:
        calls, counters, errors, _ = replay(args, write, progress)
    except BrokenPipeError:
        return 0
    finally:
        if close:
            stream.close()
        else:
            try:
                stream.flush()
            except BrokenPipeError:
                pass
    if not args.quiet:
        sys.stderr.write(format_summary(counters, args.files, calls, time.perf_counter() - t0, errors) + "\n")
    return 1 if errors else 0


def _replay_to_url(args, progress: Progress, t0: float) -> int:
    from vxcap.sink import SinkConfig, SinkConfigError, make_sink

    _, rules = make_pipeline(args)
    cfg = SinkConfig(url=args.url, allow_http_url=rules.allow_http_url, skip_compression=rules.skip_compression,
                     skip_submission=rules.skip_submission, user_agent=f"vxcap/{__version__}")
    try:
        cfg.validate()
    except SinkConfigError as e:
        sys.stderr.write(f"vxcap replay: error: {e}\n")
        return 2

    async def go():
        sink = make_sink(cfg)
        await sink.start()
        room = sink.queue_limits()["message_queue_size"]
        result: dict = {}
        for lines in replay_batches(args, progress, result):
            # A replay waits for the collector instead of dropping: nothing is lost to a full queue.
            for i in range(0, len(lines), room):
                await sink.wait_for_room()
                sink.submit_many(lines[i:i + room])
        await sink.close(timeout=cfg.retry_budget + cfg.request_timeout)
        counters = result["counters"]
        counters["sink"] = sink.counters()
        return result["calls"], counters, result["errors"]

    calls, counters, errors = asyncio.run(go())
    sink = counters.pop("sink")
    if not args.quiet:
        text = format_summary(counters, args.files, calls, time.perf_counter() - t0, errors)
        text += "\n  sink: " + " ".join(f"{k}={v:,}" for k, v in sorted(sink.items()) if v)
        sys.stderr.write(text + "\n")
    undelivered = sum(v for k, v in sink.items() if k.startswith("dropped"))
    return 1 if errors or undelivered else 0
