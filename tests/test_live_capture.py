"""Live capture end to end on a real kernel mirror (vxcap.testing.netns.MirrorLab, root only).

The mirror has two sessions on the same interface (VNI 42 and 43): every frame arrives twice, once per VNI,
with identical inner addresses. vxcap runs in the capture namespace as ``python -m vxcap.capture`` with the
VNI filter 42, the client makes the sample's 17 calls, and exactly those 17 messages must come out: one
from VNI 43 would be a duplicate. The same with two workers (one fanout group, inner-flow CBPF hash) and
with the UDP engine (one socket, and a SO_REUSEPORT group of two).
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time

import orjson
import pytest

from conftest import REPO
from vxcap.testing.expected import expected_details
from vxcap import bpf
from vxcap.capture import RingOptions, open_ring
from vxcap.testing.make_sample import run_client
from vxcap.testing.netns import MirrorLab

pytestmark = pytest.mark.root


def without_times(msg):
    return [p for p in msg if p[0] not in ("now", "interval", "host")]


def start_capture(lab, out, counters, *extra):
    argv = [sys.executable, "-m", "vxcap.capture", "--device", lab.capture_iface, "--vnis", "42",
            "--rules", "include debug", "--out", str(out), "--counters", str(counters),
            # small rings: 8 MiB per worker; short block timeout and flush so the test does not wait
            "--ring-blocks", "8", "--ring-block-size", str(1 << 20), "--ring-timeout-ms", "20",
            "--flush-interval", "0.2", *extra]
    proc = lab.popen_in("capture", argv, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        proc.kill()
        raise AssertionError(f"capture did not start: {line!r} {proc.stderr.read().decode(errors='replace')}")
    return proc


def stop_capture(proc):
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")


@pytest.mark.parametrize("engine,workers", [("afpacket", 1), ("afpacket", 2), ("udp", 1), ("udp", 2)])
def test_every_call_arrives_once_from_the_filtered_session(engine, workers, tmp_path):
    out, counters_path = tmp_path / "calls.ndjson", tmp_path / "counters.json"
    with MirrorLab(second_vni=43) as lab:
        lab.start_nginx()
        lab.start_aiohttp()
        proc = start_capture(lab, out, counters_path, "--engine", engine, "--workers", str(workers))
        calls = asyncio.run(run_client(lab))
        time.sleep(0.5)  # the last frames cross the mirror and a 20 ms block timeout
        stop_capture(proc)
    got = sorted(orjson.dumps(without_times(orjson.loads(x))) for x in out.read_bytes().splitlines())
    want = sorted(orjson.dumps(expected_details(c)) for c in calls)
    assert len(calls) == 17
    assert got == want  # every call, each once: nothing of VNI 43 (it would duplicate every call)
    c = json.loads(counters_path.read_text())
    assert c["vni.43.frames"] > 0 and c["decode.vni_filtered"] == c["vni.43.frames"]
    # Both sessions mirror the same interface, but each copy crosses the kernel on its own: their frame
    # counts are equal unless the kernel dropped a mirrored copy, which is not what this test is about.
    assert c["vni.42.frames"] > 0
    assert c["messages.calls_built"] == 17 and c["sink.messages_delivered"] == 17
    if engine == "afpacket":
        assert c["ring.kernel_drops"] == 0 and c["ring.kernel_freeze_q"] == 0  # present, and nothing lost
        assert c["ring.kernel_packets"] == c["ring.packets"] > 0
        assert c["ring.cut_frames"] == 0
    else:
        assert c["udp.kernel_drops"] == 0 and c["udp.truncated_datagrams"] == 0
        assert c["udp.datagrams"] == c["decode.frames"] > 0
    if workers == 2:
        assert c["workers.configured"] == 2 and c["workers.exits_unexpected"] == 0
        # 4 connections over 2 workers: each worker built complete calls (the sum is exactly 17 above)
        lines = [c.get(f"worker.{i}.capture.lines", 0) for i in range(2)]
        assert sum(lines) == 17


# -- the fanout program on the real mirror: both directions of each inner connection in one ring --------

def inner_flow(frame: bytes):
    """(inner flow key, direction, outer UDP source port) of a mirrored VXLAN frame, or None."""
    if struct.unpack("!H", frame[12:14])[0] != 0x0800:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[14 + 9] != 17:
        return None
    udp = 14 + ihl
    sport, dport = struct.unpack("!HH", frame[udp:udp + 4])
    if dport != 4789:
        return None
    inner = udp + 16
    et = struct.unpack("!H", frame[inner + 12:inner + 14])[0]
    ip = inner + 14
    if et == 0x0800:
        proto, src, dst, l4 = frame[ip + 9], frame[ip + 12:ip + 16], frame[ip + 16:ip + 20], ip + (frame[ip] & 15) * 4
    elif et == 0x86DD:
        proto, src, dst, l4 = frame[ip + 6], frame[ip + 8:ip + 24], frame[ip + 24:ip + 40], ip + 40
    else:
        return None
    if proto != 6:
        return None
    a = (src, frame[l4:l4 + 2])
    b = (dst, frame[l4 + 2:l4 + 4])
    return (min(a, b), max(a, b)), a < b, sport


def test_fanout_program_keeps_both_directions_of_each_connection_together():
    with MirrorLab() as lab:
        lab.start_nginx()
        lab.start_aiohttp()
        group = (os.getpid() + 7) & 0xFFFF
        program = bpf.pack(bpf.fanout_program(2))
        # Nothing reads the rings while the client runs: 64 blocks retired at most every 100 ms hold 6 s.
        opts = RingOptions(device=lab.capture_iface, block_size=128 << 10, blocks=64, timeout_ms=100,
                           filter=bpf.pack(bpf.socket_filter([4789])), fanout_group=group, fanout_program=program)
        rings = [lab.call_in("capture", open_ring, opts) for _ in range(2)]
        try:
            for _ in range(2):  # 8 connections
                asyncio.run(run_client(lab))
            time.sleep(0.5)
            where = collections.defaultdict(set)
            sports = collections.defaultdict(set)
            for i, ring in enumerate(rings):
                for frame, wire_len, _ts, _pkttype in ring.read_frames():
                    assert len(frame) == wire_len
                    f = inner_flow(frame)
                    if f is not None:
                        where[f[0]].add(i)
                        sports[(f[0], f[1])].add(f[2])
        finally:
            stats = [r.read_stats() for r in rings]
            for r in rings:
                r.close()
    assert all(drops == 0 for _, drops, _ in stats), stats
    assert len(where) == 8
    assert all(len(w) == 1 for w in where.values()), where  # never split between workers
    assert {next(iter(w)) for w in where.values()} == {0, 1}  # and both workers got connections
    # The test means something: the outer source port of a flow differs between its two directions.
    flows_with_both = [k for k in where if (k, True) in sports and (k, False) in sports]
    assert flows_with_both and any(sports[(k, True)] != sports[(k, False)] for k in flows_with_both)
