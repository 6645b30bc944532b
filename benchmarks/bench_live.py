"""Live capture throughput: tcpreplay pushes a mirror capture over a veth into ``python -m vxcap.capture``.

Setup (root): namespaces ``send`` and ``recv`` joined by a veth (MTU 9001, as a VPC). tcpreplay in ``send``
replays ``samples/mirror-sample.pcap`` (VXLAN, VNI 42, 170 frames: 17 HTTP calls) in a loop at a fixed
packet rate out of its eth0; vxcap captures eth0 in ``recv`` with the TPACKET_V3 ring (or the UDP engine: the
frames are rewritten to the receiver's MAC and IP by tcprewrite first, so the kernel delivers them to the
UDP socket), writing messages to /dev/null.

One iteration = one mirrored frame offered by tcpreplay. For each rate the figures are: frames tcpreplay
sent, frames the ring saw (``ring.kernel_packets``) and dropped (``ring.kernel_drops``), and the CPU time of
the vxcap processes (user + system of the process tree, /proc/PID/stat, start-up excluded) per second of replay, scaled to
"CPU per 100k frames/s". Reported: the highest rate with zero kernel drops. Correctness check: at the
lowest rate the ring must have seen every frame sent. (Loops repeat the same TCP sequence numbers, so the
reassembler sees retransmissions after the first loop: the figure is the capture path, decode included,
with a light HTTP load.)

    python benchmarks/bench_live.py [--rates 5000,10000,20000,40000] [--seconds 3] [--workers 1,2]
                                    [--engine afpacket|udp]
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SAMPLE = os.path.join(REPO, "samples", "mirror-sample.pcap")
FRAMES_PER_LOOP = 170


def sh(*argv: str) -> str:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p.stdout


class Link:
    def __init__(self) -> None:
        tag = f"vxbench-{os.getpid()}"
        self.send, self.recv = f"{tag}-send", f"{tag}-recv"
        for ns in (self.send, self.recv):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.send, "link", "add", "eth0", "mtu", "9001", "type", "veth", "peer", "name", "eth0",
           "netns", self.recv, "mtu", "9001")
        sh("ip", "-n", self.send, "addr", "add", "10.11.2.1/24", "dev", "eth0")
        sh("ip", "-n", self.recv, "addr", "add", "10.11.2.2/24", "dev", "eth0")  # the sample's VXLAN target
        for ns in (self.send, self.recv):
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.recv_mac = sh("ip", "netns", "exec", self.recv, "cat", "/sys/class/net/eth0/address").strip()

    def close(self) -> None:
        for ns in (self.send, self.recv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def tree_cpu(pid: int) -> float:
    """User + system seconds of ``pid`` and all its descendants so far (/proc/PID/stat, proc(5))."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(x) for x in open(f"/proc/{p}/task/{task}/children").read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def run_rate(link: Link, pcap: str, rate: int, seconds: float, workers: int, engine: str) -> dict:
    tmp = tempfile.mkdtemp(prefix="vxbench-")
    counters = os.path.join(tmp, "counters.json")
    cap = subprocess.Popen(["ip", "netns", "exec", link.recv, sys.executable, "-m", "vxcap.capture", "--device", "eth0",
                            "--vnis", "42", "--out", "/dev/null", "--counters", counters, "--workers", str(workers),
                            "--engine", engine, "--ring-blocks", "16"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    r, _, _ = select.select([cap.stdout], [], [], 20)
    if not r or cap.stdout.readline().strip() != b"ready":
        cap.kill()
        raise SystemExit(f"capture did not start: {cap.stderr.read().decode()}")
    loops = max(1, int(rate * seconds / FRAMES_PER_LOOP))
    cpu0 = tree_cpu(cap.pid)  # after start-up (imports): only the capture work is measured
    t0 = time.monotonic()
    rep = subprocess.run(["ip", "netns", "exec", link.send, "tcpreplay", "-q", "-i", "eth0", f"--pps={rate}",
                          f"--loop={loops}", pcap], capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    time.sleep(0.5)
    cpu = tree_cpu(cap.pid) - cpu0
    cap.send_signal(signal.SIGTERM)
    cap.communicate(timeout=60)
    c = json.load(open(counters))
    sent = loops * FRAMES_PER_LOOP
    seen = c.get("ring.kernel_packets", c.get("udp.datagrams", 0))
    drops = c.get("ring.kernel_drops", c.get("udp.kernel_drops", 0))
    achieved = sent / elapsed if elapsed else 0.0
    return {"rate": rate, "achieved_pps": round(achieved), "sent": sent, "seen": seen, "drops": drops,
            "cpu_s": round(cpu, 2), "seconds": round(elapsed, 2),
            "cpu_per_100k_pps": round(cpu / elapsed * 100_000 / achieved, 3) if achieved else None,
            "replay_rc": rep.returncode}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="5000,10000,20000,40000")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--engine", choices=("afpacket", "udp"), default="afpacket")
    a = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("root needed (namespaces, AF_PACKET)")
    link = Link()
    pcap = SAMPLE
    try:
        if a.engine == "udp":
            pcap = os.path.join(tempfile.mkdtemp(prefix="vxbench-"), "to-recv.pcap")
            sh("tcprewrite", "-i", SAMPLE, "-o", pcap, f"--enet-dmac={link.recv_mac}", "--fixcsum")
        for w in [int(x) for x in a.workers.split(",")]:
            best = None
            for rate in [int(x) for x in a.rates.split(",")]:
                res = run_rate(link, pcap, rate, a.seconds, w, a.engine)
                res["workers"] = w
                print(json.dumps(res), flush=True)
                if res["drops"] == 0 and res["seen"] >= res["sent"]:
                    best = res
            print(json.dumps({"workers": w, "engine": a.engine,
                              "highest_rate_without_drops": best and best["achieved_pps"],
                              "cpu_per_100k_pps_there": best and best["cpu_per_100k_pps"]}), flush=True)
    finally:
        link.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
