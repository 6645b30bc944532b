"""Run the peer tools vxcap is compared with on a capture, and measure them.

    python benchmarks/peers.py FILE.pcap [--peer tshark|tcpflow|all]

prints one JSON line: for each peer, wall seconds, CPU seconds (user + system), peak RSS and the number of
HTTP calls it found. Each peer runs as a child process reaped with ``os.wait4``, whose resource usage is
that child's alone (``getrusage(RUSAGE_CHILDREN)`` would mix all children of this process).

tshark decodes VXLAN on UDP 4789 by default (``udp.port 4789 -> vxlan``) and dissects HTTP with TCP
reassembly, de-chunking and decompression; a call is a response it paired with a request (``http.request_in``).
It does not key TCP streams by VNI: identical inner 4-tuples in two mirror sessions become one stream, so
on multi-VNI captures with such overlaps it finds fewer calls than there are.

tcpflow (1.6) only demultiplexes TCP found directly in Ethernet/IP frames: it has no VXLAN or other tunnel
decoding, and on a mirror capture it writes no flow at all. It is therefore measured on a copy whose outer
Ethernet/IPv4/UDP/VXLAN headers were stripped by ``decapsulate`` (not timed: that is work tcpflow does
not do). Its HTTP scanner (``-e http``) splits each server-to-client flow into responses; a call is a
response status line in those flows, counted after tcpflow has finished (tcpflow does not pair calls).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from typing import NamedTuple

VXLAN_PORT = 4789
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1), b"\xa1\xb2\xc3\xd4": (">", 1),
               b"\x4d\x3c\xb2\xa1": ("<", 1000), b"\xa1\xb2\x3c\x4d": (">", 1000)}
TSHARK_OPTS = [
    "-n",  # no name resolution: it would time DNS, not dissection
    "-d", f"udp.port=={VXLAN_PORT},vxlan",  # the default already; stated so a changed profile cannot drop it
    "-o", "tcp.desegment_tcp_streams:TRUE",
    "-o", "http.desegment_headers:TRUE",
    "-o", "http.desegment_body:TRUE",
    "-o", "http.dechunk_body:TRUE",
    "-o", "http.decompress_body:TRUE",
]


class _Pair(NamedTuple):
    seconds: float
    calls: int


class PeerRun(_Pair):
    """``(seconds, calls)``, unpackable as a pair; the other measurements are attributes:
    ``cpu_seconds``, ``peak_rss_mb``, ``command`` and ``note``."""

    def __new__(cls, seconds: float, calls: int, **extra):
        self = super().__new__(cls, seconds, calls)
        self.__dict__.update(extra)
        return self

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "calls": self.calls, **{
            k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}}


# The measured command is started by a small launcher (a fresh ``python -S``, ~6 MB) that forks and execs
# it and reaps it with os.wait4. Started directly from this process it would inherit our peak RSS: Linux
# keeps a task's RSS high-water mark across exec (and subprocess forks with vfork, sharing our memory), so
# ru_maxrss would report this benchmark's own size (the truth files of a large capture) for every tool.
_LAUNCHER = r"""
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "maxrss_kb": ru.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(argv: list[str], env: dict | None = None, stdout_path: str | None = None, cwd: str | None = None) -> dict:
    """Run ``argv``; wall seconds, CPU seconds (user + system) and peak RSS (MiB) of that child alone."""
    with tempfile.TemporaryDirectory(prefix="vxcap-measure-") as tmp, tempfile.TemporaryFile() as err:
        usage_path = os.path.join(tmp, "usage.json")
        with open(stdout_path or os.devnull, "wb") as out:
            subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, usage_path, *argv], stdout=out, stderr=err,
                           stdin=subprocess.DEVNULL, env=env, cwd=cwd, check=True)
        u = json.loads(pathlib.Path(usage_path).read_text())
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {"wall_s": u["wall_s"], "cpu_s": u["user_s"] + u["sys_s"], "user_s": u["user_s"], "sys_s": u["sys_s"],
            "peak_rss_mb": u["maxrss_kb"] / 1024, "rc": u["rc"], "stderr": stderr[-2000:]}


def _measure(argv: list[str], stdout_path: str) -> tuple[float, float, float]:
    """Run ``argv`` with stdout to a file; return (wall seconds, CPU seconds, peak RSS in MiB)."""
    m = measure(argv, stdout_path=stdout_path)
    if m["rc"] != 0:
        raise RuntimeError(f"{argv[0]} exited with {m['rc']}: {m['stderr']}")
    return m["wall_s"], m["cpu_s"], m["peak_rss_mb"]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise FileNotFoundError(f"{tool} is not installed (Debian: apt-get install -y {tool})")
    return path


def run_tshark(pcap: str) -> PeerRun:
    """tshark on the mirror capture as it is; calls = responses paired with a request."""
    argv = [_need("tshark"), "-r", pcap, *TSHARK_OPTS, "-Y", "http.response && http.request_in",
            "-T", "fields", "-e", "http.request_in"]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "fields")
        wall, cpu, rss = _measure(argv, out)
        with open(out, "rb") as f:
            calls = sum(1 for line in f if line.strip())
    return PeerRun(wall, calls, cpu_seconds=cpu, peak_rss_mb=rss, command=" ".join(argv[1:]),
                   note="VXLAN decoded by tshark itself")


# tcpflow's server-to-client files hold each flow's byte stream: responses back to back, a status line
# right after the previous body. The workload's bodies never contain one.
_STATUS = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9] ")


def run_tcpflow(pcap: str, keep: str | None = None) -> PeerRun:
    """tcpflow with its HTTP scanner on a decapsulated copy of ``pcap`` (see the module docstring).

    ``keep``: a directory to leave tcpflow's output in (default: a temporary one, removed).
    """
    tcpflow = _need("tcpflow")
    with tempfile.TemporaryDirectory() as tmp:
        inner = os.path.join(tmp, "inner.pcap")
        decap = decapsulate(pcap, inner)
        outdir = keep or os.path.join(tmp, "flows")
        os.makedirs(outdir, exist_ok=True)
        # -Fk: 1000 flows per directory, or 100k connections would fill one directory; -e http: split
        # responses (and gunzip bodies, as -Z would not), the HTTP work closest to a capture agent's.
        argv = [tcpflow, "-r", inner, "-o", outdir, "-e", "http", "-Fk", "-q"]
        wall, cpu, rss = _measure(argv, os.path.join(tmp, "stdout"))
        calls = _count_responses(outdir)
    return PeerRun(wall, calls, cpu_seconds=cpu, peak_rss_mb=rss, command=" ".join(argv[1:]),
                   note=f"on a decapsulated copy ({decap['frames']} frames; decapsulation not timed): "
                        "tcpflow 1.6 has no VXLAN decoding")


def _count_responses(outdir: str) -> int:
    """Status lines in the server-to-client flows (source port 80); the scanner's body files excluded."""
    calls = 0
    for root, _dirs, files in os.walk(outdir):
        for name in files:
            # Flow files are named SRCIP.SRCPORT-DSTIP.DSTPORT[...]; the scanner's extracted bodies carry
            # -HTTPBODY- and are not streams.
            if "-HTTPBODY-" in name or name.endswith(".xml") or not re.match(r"[0-9a-f.:]+\.00080-", name):
                continue
            with open(os.path.join(root, name), "rb") as f:
                calls += len(_STATUS.findall(f.read()))
    return calls


def decapsulate(pcap: str, out: str, port: int = VXLAN_PORT) -> dict:
    """Write ``out``: the inner Ethernet frames of the VXLAN packets in ``pcap`` (classic pcap, either byte
    order and time resolution), stripping outer Ethernet [802.1Q] / IPv4 / UDP (dport ``port``) / VXLAN.

    Records whose outer headers are cut, or that are not VXLAN with the I flag, are dropped. Caplen and
    wirelen both shrink by the outer header length. Returns {"frames", "skipped"}.
    """
    with open(pcap, "rb") as f:
        data = f.read()
    if len(data) < 24 or data[:4] not in PCAP_MAGICS:
        raise ValueError(f"{pcap}: not a classic pcap file")
    endian, _ = PCAP_MAGICS[data[:4]]
    rec = struct.Struct(endian + "IIII")
    _, _, _, _, snaplen, linktype = struct.unpack_from(endian + "HHiIII", data, 4)
    if linktype != 1:
        raise ValueError(f"{pcap}: link type {linktype}, expected 1 (Ethernet)")
    outbuf = bytearray(data[:24])
    frames = skipped = 0
    pos, end = 24, len(data)
    while pos + 16 <= end:
        sec, frac, caplen, wirelen = rec.unpack_from(data, pos)
        pkt = pos + 16
        pos = pkt + caplen
        off = 12
        ethertype = int.from_bytes(data[pkt + 12:pkt + 14], "big")
        if ethertype == 0x8100:
            off += 4
            ethertype = int.from_bytes(data[pkt + 16:pkt + 18], "big")
        off += 2
        ip = pkt + off
        if ethertype != 0x0800 or caplen < off + 20 or data[ip + 9] != 17:
            skipped += 1
            continue
        udp = ip + (data[ip] & 0x0F) * 4
        inner = udp + 16
        if inner - pkt > caplen or int.from_bytes(data[udp + 2:udp + 4], "big") != port \
                or not data[udp + 8] & 0x08:
            skipped += 1
            continue
        strip = inner - pkt
        outbuf += rec.pack(sec, frac, caplen - strip, wirelen - strip)
        outbuf += data[inner:pos]
        frames += 1
    with open(out, "wb") as f:
        f.write(outbuf)
    return {"frames": frames, "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="peers.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("pcap", metavar="FILE", help="a classic pcap of VXLAN-mirrored traffic")
    ap.add_argument("--peer", choices=("tshark", "tcpflow", "all"), default="all")
    a = ap.parse_args(argv)
    if not os.path.isfile(a.pcap):
        ap.error(f"no such file: {a.pcap}")
    result: dict = {"file": a.pcap, "bytes": os.path.getsize(a.pcap)}
    if a.peer in ("tshark", "all"):
        result["tshark"] = run_tshark(a.pcap).as_dict()
    if a.peer in ("tcpflow", "all"):
        result["tcpflow"] = run_tcpflow(a.pcap).as_dict()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
