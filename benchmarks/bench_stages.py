"""Per-stage benchmarks of vxcap's pipeline, all on one generated capture, each figure beside its check.

    python benchmarks/bench_stages.py --frames 100000 [--seed 1] [--repeat 3] [--json OUT]
    python benchmarks/bench_stages.py --pcap FILE.pcap [--truth FILE.truth.jsonl] ...

The stages are timed one after the other in this process, each on the output of the one before (kept in
memory, prepared untimed), so a stage's figure is that stage's work alone:

| stage | one iteration is | check beside the figure |
|---|---|---|
| ``read`` | one frame out of ``vxcap.capfile.open_capture`` (file in the page cache, 4096-frame batches) | frames and captured bytes equal the pcap's record headers |
| ``decode`` | one frame through the native ``vxcap._decode.Decoder`` | segments + drop reasons == frames |
| ``decode_pure`` | the same through the pure twin ``vxcap.decode_py.Decoder`` | the same, and segments identical to the native ones |
| ``reassembly_http`` | one segment through ``Reassembler.process`` (TCP + HTTP/1.x), emit a no-op append | calls == truth calls, no gap |
| ``messages`` | one call through ``MessageBuilder.details`` | one details list per call |
| ``messages_rules_strict`` | ``details`` + ``Rules.apply`` under ``include strict`` | every result equals a line-by-line reference (bench_rules.py) |
| ``messages_rules_debug`` | ``details`` + ``Rules.apply`` under ``include debug`` | every call exactly as the truth says (truth.py) |
| ``serialise`` | ``orjson.dumps`` of one call's details | every line loads back equal |
| ``sink`` | one ~600-byte line through ``ResurfaceSink`` (zlib, HTTP) to the test collector (bench_sink.py) | the collector received them all |
| ``idle_connections`` | one idle tracked connection (SYN only; SYN + SYN-ACK) | connections_active == N |

Rates are per core: iterations divided by the CPU time of this process over the stage (``process_time``:
the machine is shared, wall time would measure the neighbours). Gbit/s counts captured frame bytes (outer
headers included: what the mirror target receives). Peak RSS is the process's high-water mark during the
stage (reset before it through ``/proc/self/clear_refs``), so it includes the stage's input held in memory;
that input is frozen out of the garbage collector's view (``gc.freeze``) while the stage runs, as the
pipeline never holds more than a batch of it.
Each timed stage is the best of ``--repeat`` runs (reassembly runs once: it is stateful and the slowest).
The last line printed (or ``--json``) is every figure as JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import orjson  # noqa: E402

import truth  # noqa: E402
from vxcap import decode_py  # noqa: E402
from vxcap.capfile import open_capture  # noqa: E402
from vxcap.decode import COUNTER_NAMES, NATIVE_AVAILABLE, Decoder  # noqa: E402
from vxcap.message import MessageBuilder, MessageOptions  # noqa: E402
from vxcap.reassembly import Reassembler, ReassemblyLimits  # noqa: E402
from vxcap.rules import Rules  # noqa: E402

HOST = "bench"
DROP_REASONS = COUNTER_NAMES[COUNTER_NAMES.index("truncated_frames") + 1:]
PCAP_HEADER, PCAP_RECORD = 24, 16


def _status_kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", pathlib.Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: 5 > /proc/PID/clear_refs); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Meter:
    """CPU time, wall time and peak RSS of the block it wraps."""

    def __enter__(self) -> "Meter":
        gc.collect()
        # The stage's whole input is in memory here (unlike the pipeline, which holds one batch): frozen,
        # the collector does not rescan it on every full collection the stage triggers.
        gc.freeze()
        self.rss_before_mb = _status_kb("VmRSS") / 1024
        self.peak_reset = _reset_peak()
        self._c0, self._w0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu = time.process_time() - self._c0
        self.wall = time.perf_counter() - self._w0
        self.peak_rss_mb = _status_kb("VmHWM") / 1024
        gc.unfreeze()


def figure(stage: str, iteration: str, n: int, meter: Meter, check: dict, *, frames: int = 0,
           nbytes: int = 0, calls: int = 0, **extra) -> dict:
    """One stage's record: per-core rates derived from the CPU time, the check beside them."""
    cpu = max(meter.cpu, 1e-9)
    rates: dict = {"iterations_per_s": round(n / cpu)}
    if frames:
        rates["frames_per_s"] = round(frames / cpu)
    if nbytes:
        rates["gbit_per_s"] = round(nbytes * 8 / cpu / 1e9, 3)
    if calls:
        rates["calls_per_s"] = round(calls / cpu)
        rates["us_per_call"] = round(cpu / calls * 1e6, 2)
    return {"stage": stage, "iteration": iteration, "iterations": n, "frames": frames, "bytes": nbytes,
            "calls": calls, "cpu_s": round(meter.cpu, 4), "wall_s": round(meter.wall, 4), "per_core": rates,
            "peak_rss_mb": round(meter.peak_rss_mb, 1), "rss_before_mb": round(meter.rss_before_mb, 1),
            "check": check, **extra}


def best_of(repeat: int, fn):
    """Run ``fn()`` (which returns (meter, result)) ``repeat`` times; keep the run with the least CPU."""
    best = None
    for _ in range(max(1, repeat)):
        m, result = fn()
        if best is None or m.cpu < best[0].cpu:
            best = (m, result)
        del result
    return best


# ---- stages ------------------------------------------------------------------------------------------
def stage_read(pcap: str, repeat: int):
    def once():
        with Meter() as m:
            reader = open_capture(pcap)
            batches = list(reader)
        return m, (batches, reader.counters(), reader.error)

    m, (batches, counters, error) = best_of(repeat, once)
    frames = sum(len(b) for b in batches)
    size = os.path.getsize(pcap)
    expect_bytes = size - PCAP_HEADER - PCAP_RECORD * frames
    check = {"frames": frames, "captured_bytes": counters["bytes"], "file_bytes_minus_headers": expect_bytes,
             "error": str(error) if error else None}
    check["ok"] = error is None and counters["frames"] == frames and counters["bytes"] == expect_bytes
    return batches, counters["bytes"], figure("read", "one frame read from the file into a FrameBatch", frames,
                                              m, check, frames=frames, nbytes=counters["bytes"])


def _decode_all(pure: bool, batches):
    dec = decode_py.Decoder() if pure else Decoder()
    decode = dec.decode
    with Meter() as m:
        out = [decode(b) for b in batches]
    return m, (out, dec.counters())


def _decode_check(counters: dict, frames: int) -> dict:
    drops = sum(counters.get(k, 0) for k in DROP_REASONS)
    check = {"frames_counted": counters["frames"], "segments": counters["segments"], "dropped": drops,
             "pure_acks": counters.get("pure_ack", 0)}
    check["ok"] = counters["frames"] == frames and counters["segments"] + drops == frames
    return check


def stage_decode(batches, nbytes: int, repeat: int, pure_repeat: int):
    frames = sum(len(b) for b in batches)
    results = []
    native = None
    if NATIVE_AVAILABLE:
        m, (native, counters) = best_of(repeat, lambda: _decode_all(False, batches))
        check = _decode_check(counters, frames)
        results.append(figure("decode", "one frame through the native decoder (VXLAN to a TCP segment tuple)",
                              frames, m, check, frames=frames, nbytes=nbytes, segments=counters["segments"]))
    m, (pure, counters) = best_of(pure_repeat, lambda: _decode_all(True, batches))
    check = _decode_check(counters, frames)
    if native is not None:
        check["identical_to_native"] = pure == native
        check["ok"] = check["ok"] and check["identical_to_native"]
    results.append(figure("decode_pure", "one frame through the pure-Python twin decoder", frames, m, check,
                          frames=frames, nbytes=nbytes, segments=counters["segments"]))
    return (native if native is not None else pure), results


def stage_reassembly(seg_batches, frames: int, truth_calls: list[dict]):
    calls: list = []
    append = calls.append

    def emit(conn, req, resp):
        append((conn, req, resp))

    segments = sum(map(len, seg_batches))
    r = Reassembler(emit, ReassemblyLimits())
    process = r.process
    with Meter() as m:
        for segs in seg_batches:
            if segs:
                process(segs)
        r.close_all()
    c = r.counters()
    paired = sum(1 for _, q, p in calls if q is not None and p is not None)
    check = {"calls": len(calls), "paired": paired, "truth_calls": len(truth_calls),
             "gap_bytes": c.get("gap_bytes", 0), "connections_opened": c.get("connections_opened", 0)}
    check["ok"] = len(calls) == paired == len(truth_calls) and check["gap_bytes"] == 0
    fig = figure("reassembly_http", "one TCP segment through Reassembler.process (TCP reassembly and HTTP/1.x "
                 "framing and pairing), emit = a no-op append", segments, m, check, frames=frames,
                 nbytes=c.get("bytes_delivered", 0), calls=len(calls), segments=segments,
                 note="gbit_per_s counts reassembled TCP payload bytes")
    return calls, fig


def stage_messages(calls, truth_path: str, repeat: int):
    import bench_rules

    n = len(calls)
    figs = []

    def details_only():
        b = MessageBuilder(MessageOptions(host=HOST), None)
        details = b.details
        with Meter() as m:
            out = [details(c, q, p) for c, q, p in calls]
        return m, out

    m, out = best_of(repeat, details_only)
    check = {"messages": len(out), "ok": len(out) == n and all(out)}
    figs.append(figure("messages", "one call through MessageBuilder.details without rules (URL, params, "
                       "headers, bodies decoded)", n, m, check, calls=n))
    del out
    debug_out = None
    for name in ("strict", "debug"):
        text = f"include {name}"

        def with_rules():
            rules = Rules.parse(text)  # a fresh memo each run: the figure includes warming it up
            b = MessageBuilder(MessageOptions(host=HOST), rules)
            details, apply = b.details, rules.apply
            with Meter() as m:
                out = [apply(details(c, q, p)) for c, q, p in calls]
            return m, out

        m, out = best_of(repeat, with_rules)
        if name == "debug":
            lines = [orjson.dumps(d) for d in out if d is not None]
            r = truth.check(lines, truth_path, host=HOST)
            check = {k: r[k] for k in ("truth_calls", "exact", "recall_complete", "unexpected_calls")}
            check["ok"] = r["ok"] and len(lines) == r["truth_calls"] == n
            debug_out = out
        else:
            rules = Rules.parse(text)
            raw = [d for d in (MessageBuilder(MessageOptions(host=HOST), rules).details(c, q, p)
                               for c, q, p in calls)]
            ref = [bench_rules.reference_apply(rules, d) for d in raw]
            same = sum(1 for a, b in zip(out, ref) if a == b)
            kept = sum(1 for a in out if a is not None)
            check = {"messages": n, "kept": kept, "equal_to_reference": same, "ok": same == n and kept > 0}
        figs.append(figure(f"messages_rules_{name}", f"one call through MessageBuilder.details + Rules.apply "
                           f"under 'include {name}'", n, m, check, calls=n))
    return debug_out, figs


def stage_serialise(details_list, repeat: int):
    details_list = [d for d in details_list if d is not None]
    n = len(details_list)

    def once():
        dumps = orjson.dumps
        with Meter() as m:
            out = [dumps(d) for d in details_list]
        return m, out

    m, lines = best_of(repeat, once)
    nbytes = sum(map(len, lines))
    same = sum(1 for line, d in zip(lines, details_list) if orjson.loads(line) == d)
    check = {"lines": len(lines), "round_trip_equal": same, "ok": same == n}
    return figure("serialise", "one call's details serialised by orjson.dumps", n, m, check, calls=n,
                  nbytes=nbytes, mb_per_s=round(nbytes / max(m.cpu, 1e-9) / 1e6, 1),
                  note="gbit_per_s counts NDJSON bytes out")


def stage_sink(n: int):
    """bench_sink.run: the production sink path (batching, zlib, aiohttp) to the collector in a subprocess."""
    import bench_sink

    args = argparse.Namespace(n=n, chunk=256, level=1, bundle_size=5 * 1024 * 1024, inflight=2,
                              in_process=False, uvloop=False)
    with Meter() as m:
        r = asyncio.run(bench_sink.run(args))
    check = {"submitted": n, "received": r["received"], "dropped": r["dropped"], "ok": bool(r["correct"])}
    fig = figure("sink", "one ~600-byte NDJSON line through ResurfaceSink.submit_many to the test collector "
                 "(batched, zlib level 1, HTTP POST)", n, m, check, calls=n,
                 nbytes=round(r["raw_MB_per_s"] * 1e6 * r["seconds"]),
                 messages_per_s_wall=r["messages_per_s"], compression_ratio=r["compression_ratio"],
                 loop_lag_p99_ms=r["loop_lag_p99_ms"],
                 note="CPU = this process (sink, event loop and its compression threads), not the collector "
                      "subprocess; gbit_per_s counts uncompressed NDJSON")
    return fig


def stage_idle_connections(n: int, handshake: bool) -> dict:
    """RSS growth with ``n`` idle connections open in the Reassembler, divided by ``n``.

    The segments are built and fed in chunks of 4096 (and dropped) so that only the tracked connections
    stay: key (VNI 7, IPv4, 10.1.x.y:port <-> 10.0.1.10:80), SYN from the client, with ``handshake`` also
    the server's SYN-ACK. All within one second of capture time: no timer expires them.
    """
    r = Reassembler(lambda *a: None, ReassemblyLimits(max_connections=max(262144, n)))
    server = bytes((10, 0, 1, 10)) + (80).to_bytes(2, "big")
    tunnel = bytes((10, 0, 1, 10))
    ts0 = 1_764_500_000_000_000_000
    gc.collect()
    rss0 = _status_kb("VmRSS")
    peak_reset = _reset_peak()
    c0 = time.process_time()
    chunk = 4096
    for start in range(0, n, chunk):
        segs = []
        for i in range(start, min(n, start + chunk)):
            client = bytes((10, 1 + (i >> 24) % 200, (i >> 16) & 0xFF, (i >> 8) & 0xFF)) + \
                (1024 + (i & 0xFF) * 250 + (i >> 8) % 250).to_bytes(2, "big")
            # the decoder's key: VNI, IP version, then the two endpoints in bytewise order (server first here)
            key = (7).to_bytes(4, "big") + b"\x04" + (server + client if server < client else client + server)
            d = 0 if client < server else 1
            ts = ts0 + i * 1000
            segs.append((key, d, 1000 + i, 0, 0x02, ts, b"", 0, tunnel))
            if handshake:
                segs.append((key, 1 - d, 5000 + i, 1001 + i, 0x12, ts + 500, b"", 0, tunnel))
        r.process(segs)
        del segs
    cpu = time.process_time() - c0
    gc.collect()
    rss1 = _status_kb("VmRSS")
    active = r.counters().get("connections_active", 0)
    per_conn = (rss1 - rss0) * 1024 / n
    what = "SYN + SYN-ACK" if handshake else "SYN only"
    return {"stage": "idle_connections_handshake" if handshake else "idle_connections",
            "iteration": f"one idle tracked connection ({what}) in the Reassembler", "iterations": n,
            "bytes_per_connection": round(per_conn), "rss_growth_mb": round((rss1 - rss0) / 1024, 1),
            "cpu_s": round(cpu, 3), "per_core": {"connections_opened_per_s": round(n / max(cpu, 1e-9))},
            "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1), "rss_before_mb": round(rss0 / 1024, 1),
            "check": {"connections_active": active, "ok": active == n and peak_reset}}


def idle_connections_in_child(n: int, handshake: bool) -> dict:
    """The idle-connection figure in a fresh interpreter: in this one, memory freed by the earlier stages
    would be reused by the connections and hide their cost."""
    argv = [sys.executable, __file__, "--idle-only", str(n)] + (["--handshake"] if handshake else [])
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---- driver ------------------------------------------------------------------------------------------
def run(pcap: str, truth_path: str, repeat: int = 3, sink_n: int = 100_000, idle_conns: int = 200_000,
        log=print) -> dict:
    truth_calls = [json.loads(x) for x in pathlib.Path(truth_path).read_text().splitlines() if x.strip()]
    stages = []

    def done(fig):
        stages.append(fig)
        rate = fig["per_core"]
        shown = ", ".join(f"{k} {v:,}" for k, v in rate.items() if k != "iterations_per_s") or \
            f"{rate.get('iterations_per_s', 0):,}/s"
        log(f"  {fig['stage']:<28} {shown:<70} peak {fig['peak_rss_mb']:>7.1f} MB  "
            f"check {'OK' if fig['check']['ok'] else 'FAILED'}")

    batches, nbytes, fig = stage_read(pcap, repeat)
    done(fig)
    frames = fig["frames"]
    segs, figs = stage_decode(batches, nbytes, repeat, pure_repeat=1)
    for f in figs:
        done(f)
    del batches
    calls, fig = stage_reassembly(segs, frames, truth_calls)
    done(fig)
    del segs
    debug_out, figs = stage_messages(calls, truth_path, repeat)
    for f in figs:
        done(f)
    del calls
    done(stage_serialise(debug_out, repeat))
    del debug_out
    if sink_n:
        done(stage_sink(sink_n))
    if idle_conns:
        for handshake in (False, True):
            done(idle_connections_in_child(idle_conns, handshake))
    return {"pcap": pcap, "frames": frames, "captured_bytes": nbytes, "truth_calls": len(truth_calls),
            "repeat": repeat, "native_decoder": NATIVE_AVAILABLE,
            "ok": all(s["check"]["ok"] for s in stages), "stages": stages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pcap", help="a workload capture (default: generate small-api --frames)")
    ap.add_argument("--truth", help="its truth file (default: PCAP with .truth.jsonl)")
    ap.add_argument("--frames", type=int, default=100_000, help="small-api frames to generate (no --pcap)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs per stage; the least CPU time is kept")
    ap.add_argument("--sink-n", type=int, default=100_000, help="lines through the sink (0: skip)")
    ap.add_argument("--idle-conns", type=int, default=200_000, help="idle connections for the memory "
                    "figure (0: skip)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--idle-only", type=int, metavar="N", help=argparse.SUPPRESS)
    ap.add_argument("--handshake", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.idle_only:
        print(json.dumps(stage_idle_connections(a.idle_only, a.handshake)))
        return 0
    with tempfile.TemporaryDirectory(prefix="vxcap-stages-") as tmp:
        pcap = a.pcap
        if pcap is None:
            import workload

            pcap = os.path.join(tmp, "small-api.pcap")
            workload.generate(pcap, mix="small-api", frames=a.frames, seed=a.seed)
        truth_path = a.truth or re.sub(r"\.pcap$", "", pcap) + ".truth.jsonl"
        print(f"stages on {pcap}")
        result = run(pcap, truth_path, a.repeat, a.sink_n, a.idle_conns)
    text = json.dumps(result)
    if a.json:
        pathlib.Path(a.json).write_text(text)
    print(text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
