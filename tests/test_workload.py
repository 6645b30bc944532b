"""The benchmark workload generator (benchmarks/workload.py) and peer runners (benchmarks/peers.py).

Captures are checked without vxcap: tshark dissects them (VXLAN on 4789, TCP reassembly, HTTP with
de-chunking and gunzip) and must agree with the truth file call by call, matched on X-Request-Id; the pcap
records are read here with struct, so the impairment checks do not trust the generator's own statistics.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
from urllib.parse import parse_qsl

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # classes defined there find their module by name (typing, pickle)
    spec.loader.exec_module(module)
    return module


workload = _load("workload")
peers = _load("peers")

FRAMES = 2000
SEED = 11


def _truth(pcap):
    with open(workload.truth_path(str(pcap)), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _records(pcap):
    """(magic, snaplen, [(sec, frac, caplen, wirelen, bytes)]) of a little-endian classic pcap."""
    data = pcap.read_bytes()
    magic, _, _, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert linktype == 1
    out, pos = [], 24
    while pos < len(data):
        sec, frac, caplen, wirelen = struct.unpack_from("<IIII", data, pos)
        out.append((sec, frac, caplen, wirelen, data[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    assert pos == len(data)
    return magic, snaplen, out


def _tshark(pcap, display_filter, *fields, checksums=False):
    argv = ["tshark", "-n", "-r", str(pcap), "-Y", display_filter, "-T", "fields", "-E", "separator=\t"]
    if checksums:
        argv += ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, check=True).stdout.decode("utf-8", "replace")
    return [line.split("\t") for line in out.splitlines()]


def _count(pcap, display_filter, checksums=False):
    return len(_tshark(pcap, display_filter, "frame.number", checksums=checksums))


_HEADER = re.compile(r"(?:^|,)([A-Za-z0-9-]+): (.*?)\\r\\n")


def _headers(lines):
    """tshark prints header lines as 'Name: value\\r\\n' joined by commas (values may hold commas)."""
    return [[k.lower(), v] for k, v in _HEADER.findall(lines)]


def _as_tshark_text(text):
    """tshark prints each byte of a non-ASCII character as U+FFFD."""
    return "".join(c if ord(c) < 128 else "\ufffd" * len(c.encode()) for c in text)


def _rid(headers):
    return next(v for k, v in headers if k == "x-request-id")


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    d = tmp_path_factory.mktemp("workload")
    made = {}

    def make(name, **kw):
        if name not in made:
            path = d / f"{name}.pcap"
            made[name] = (path, workload.generate(str(path), **kw))
        return made[name]

    return make


def _base(captures, mix="small-api"):
    # large-body frames are 1.5 KB and its bodies are gzipped and reassembled: fewer keep the suite quick
    return captures(mix, mix=mix, frames=FRAMES // 2 if mix == "large-body" else FRAMES, seed=SEED)


@pytest.mark.parametrize("mix", workload.MIXES)
def test_tshark_agrees_with_truth(captures, mix):
    pcap, stats = _base(captures, mix)
    truth = _truth(pcap)
    assert stats["calls"] == stats["complete_calls"] == len(truth) > 0
    assert all(t["complete"] for t in truth)
    # Zero malformed or warning-level packets, with checksum verification on; and the checks did run.
    assert _count(pcap, "_ws.malformed || _ws.expert.severity >= warning || ip.checksum.status == 0 "
                        "|| tcp.checksum.status == 0", checksums=True) == 0
    assert _count(pcap, "tcp.checksum.status == 1 && vxlan.vni == 7", checksums=True) == stats["frames"]

    by_rid = {_rid(t["request_headers"]): t for t in truth}
    assert len(by_rid) == len(truth), "request ids are unique per call"
    reqs = _tshark(pcap, "http.request", "http.request.method", "http.host", "http.request.uri",
                   "http.request.line", "http.file_data")
    assert len(reqs) == len(truth)
    for method, host, uri, lines, body in reqs:
        headers = _headers(lines)
        t = by_rid[_rid(headers)]
        path, _, query = uri.partition("?")
        assert t["method"] == method and t["url"] == f"http://{host}{path}"
        assert t["params"] == [[k.lower(), v] for k, v in parse_qsl(query)]
        assert t["request_headers"] == [h for h in headers if h[0] != "host"]
        assert _as_tshark_text(t["request_body"]) == body
    resps = _tshark(pcap, "http.response && http.request_in", "http.response.code", "http.response.line",
                    "http.file_data")
    assert len(resps) == len(truth)
    for code, lines, body in resps:
        headers = _headers(lines)
        t = by_rid[_rid(headers)]
        assert t["status"] == int(code)
        assert t["response_headers"] == [h for h in headers if h[0] != "transfer-encoding"]
        assert _as_tshark_text(t["response_body"]) == body  # de-chunked and gunzipped by tshark too
    if mix == "large-body":
        heads = [t["response_headers"] for t in truth]
        assert any(["content-encoding", "gzip"] in h for h in heads)
        assert any(len(t["response_body"]) > 10_000 for t in truth)
        # chunked on the wire, absent from the truth's headers
        assert _count(pcap, "http.transfer_encoding == \"chunked\"") > 0


def test_truth_timing_and_order(captures):
    pcap, _ = _base(captures)
    truth = _truth(pcap)
    _, _, recs = _records(pcap)
    first_ms = recs[0][0] * 1000 + recs[0][1] // 1000
    last_ms = recs[-1][0] * 1000 + recs[-1][1] // 1000
    nows = [t["now_ms"] for t in truth]
    assert nows == sorted(nows), "in order of response start"
    assert all(first_ms <= n <= last_ms for n in nows)
    assert all(t["interval_ms"] >= 1 for t in truth)
    assert all("?" not in t["url"] and t["vni"] == 7 for t in truth)
    # The response starts are real frames: a server->client data frame at each now_ms.
    starts = _tshark(pcap, "tcp.srcport == 80 && tcp.len > 0 && http.response.code", "frame.time_epoch")
    starts_ms = {int(float(s[0]) * 1000) for s in starts}
    assert {t["now_ms"] for t in truth if t["status"] != 204} <= starts_ms | {n - 1 for n in starts_ms}


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (tmp_path / f"{n}.pcap" for n in "abc")
    workload.generate(str(a), mix="many-conns", frames=800, seed=5, reorder=0.02, loss=0.01)
    workload.generate(str(b), mix="many-conns", frames=800, seed=5, reorder=0.02, loss=0.01)
    workload.generate(str(c), mix="many-conns", frames=800, seed=6, reorder=0.02, loss=0.01)
    assert a.read_bytes() == b.read_bytes()
    assert workload.truth_path(str(a)) != str(a)
    assert open(workload.truth_path(str(a)), "rb").read() == open(workload.truth_path(str(b)), "rb").read()
    assert a.read_bytes() != c.read_bytes()


def test_outer_headers_as_aws_sends_them(tmp_path):
    pcap = tmp_path / "v.pcap"
    workload.generate(str(pcap), mix="small-api", frames=3000, seed=3, vni=[7, 8, 9])
    _, _, recs = _records(pcap)
    sport_of = {}
    vnis = set()
    open_in = collections.defaultdict(set)  # inner 4-tuple (client side first) -> VNIs where it is open
    overlaps = 0
    for *_, data in recs:
        assert data[12:14] == b"\x08\x00" and data[23] == 17
        osport, odport = struct.unpack_from(">HH", data, 34)
        assert odport == 4789
        assert data[42] == 0x08  # VXLAN I flag
        vni = int.from_bytes(data[46:49], "big")
        vnis.add(vni)
        inner = data[50:]
        ip = inner[14:]
        flow = (vni, ip[12:16], ip[16:20], ip[20:22], ip[22:24])  # one direction of one inner flow
        assert sport_of.setdefault(flow, osport) == osport, "the outer source port is fixed per flow direction"
        flags = ip[33]
        tup = flow[1:] if flow[4] == b"\x00\x50" else (flow[2], flow[1], flow[4], flow[3])
        if flags & 0x12 == 0x02:  # SYN
            overlaps += bool(open_in[tup] - {vni})
            open_in[tup].add(vni)
        elif flags & 0x01:  # FIN
            open_in[tup].discard(vni)
    assert vnis == {7, 8, 9}
    assert overlaps > 0, "the same inner 4-tuple is open in two sessions at once: only the VNI separates them"
    ports = collections.Counter(sport_of.values())
    assert len(ports) > len(sport_of) * 0.9, "source ports differ between flows and between directions"


@pytest.mark.parametrize("variant", [{"vlan": True}, {"ipv6": True}, {"ipv6": True, "vlan": True}])
def test_vlan_and_ipv6_decode(tmp_path, variant):
    pcap = tmp_path / "x.pcap"
    stats = workload.generate(str(pcap), mix="small-api", frames=800, seed=4, **variant)
    inner = "ipv6" if variant.get("ipv6") else "ip.proto == 6"
    if variant.get("vlan"):
        inner += " && vlan.id == 100"
    assert _count(pcap, f"vxlan && {inner} && tcp", checksums=True) == stats["frames"]
    assert _count(pcap, "_ws.malformed || _ws.expert.severity >= warning || tcp.checksum.status == 0",
                  checksums=True) == 0
    assert _count(pcap, "http.response && http.request_in") == stats["calls"] == len(_truth(pcap))


def test_loss_duplicate_reorder(captures):
    base_path, base = _base(captures)
    _, _, base_recs = _records(base_path)
    base_frames = [r[4] for r in base_recs]

    lossy_path, lossy = captures("loss", mix="small-api", frames=FRAMES, seed=SEED, loss=0.02)
    _, _, recs = _records(lossy_path)
    assert lossy["generated_frames"] == base["generated_frames"]
    assert len(recs) == lossy["frames"] == base["frames"] - lossy["lost"] and lossy["lost"] > 0
    assert not collections.Counter(r[4] for r in recs) - collections.Counter(base_frames)  # a subset
    truth = _truth(lossy_path)
    assert len(truth) == base["calls"]
    assert 0 < sum(not t["complete"] for t in truth) == lossy["calls"] - lossy["complete_calls"]
    assert [t["request_headers"] for t in truth] == [t["request_headers"] for t in _truth(base_path)]

    dup_path, dup = captures("dup", mix="small-api", frames=FRAMES, seed=SEED, duplicate=0.02)
    _, _, recs = _records(dup_path)
    assert len(recs) == base["frames"] + dup["duplicated"] and dup["duplicated"] > 0
    repeats = sum(1 for a, b in zip(recs, recs[1:]) if a[4] == b[4])
    assert repeats == dup["duplicated"]
    assert all(t["complete"] for t in _truth(dup_path))
    assert _count(dup_path, "tcp.analysis.duplicate_ack || tcp.analysis.retransmission "
                            "|| tcp.analysis.spurious_retransmission") > 0

    re_path, reo = captures("reorder", mix="small-api", frames=FRAMES, seed=SEED, reorder=0.02)
    _, _, recs = _records(re_path)
    assert len(recs) == base["frames"] and reo["reordered"] > 0
    assert collections.Counter(r[4] for r in recs) == collections.Counter(base_frames)
    assert [r[:2] for r in recs] == [r[:2] for r in base_recs], "arrival timestamps stay in place"
    moved = sum(1 for a, b in zip(recs, base_recs) if a[4] != b[4])
    assert reo["reordered"] * 2 <= moved <= reo["reordered"] * (workload.REORDER_WINDOW + 1)
    assert _count(re_path, "tcp.analysis.out_of_order || tcp.analysis.lost_segment") > 0
    assert all(t["complete"] for t in _truth(re_path))


@pytest.mark.parametrize("snap", [256, 700])
def test_truncation(captures, snap):
    base_path, base = _base(captures)
    path, stats = captures(f"trunc{snap}", mix="small-api", frames=FRAMES, seed=SEED, truncate=snap)
    magic, snaplen, recs = _records(path)
    assert snaplen == snap and len(recs) == base["frames"]
    assert all(caplen == min(snap, wirelen) == len(data) for _, _, caplen, wirelen, data in recs)
    cut = sum(wirelen > caplen for _, _, caplen, wirelen, _ in recs)
    assert cut == stats["truncated"] > 0
    _, _, base_recs = _records(base_path)
    assert [r[4][:snap] for r in base_recs] == [r[4] for r in recs]
    truth = _truth(path)
    assert sum(t["complete"] for t in truth) == stats["complete_calls"]
    # 116 bytes of headers (outer 50, Ethernet 14, IPv4 20, TCP 32) leave snap - 116 for HTTP bytes: at 256
    # every request is cut; at 700 a call stays complete only if its messages fit.
    if snap == 256:
        assert stats["complete_calls"] == 0
    else:
        assert 0 < stats["complete_calls"] < stats["calls"]
        room = snap - 116
        for t in truth:
            if t["complete"]:
                assert len(t["response_body"].encode()) < room and len(t["request_body"].encode()) < room
            if len(t["response_body"].encode()) >= room:
                assert not t["complete"]


def test_nanosecond_pcap(tmp_path):
    us, ns = tmp_path / "us.pcap", tmp_path / "ns.pcap"
    workload.generate(str(us), mix="small-api", frames=300, seed=2)
    workload.generate(str(ns), mix="small-api", frames=300, seed=2, ns=True)
    m1, _, r1 = _records(us)
    m2, _, r2 = _records(ns)
    assert (m1, m2) == (0xA1B2C3D4, 0xA1B23C4D)
    assert [(s, f * 1000) for s, f, *_ in r1] == [(s, f) for s, f, *_ in r2]
    assert _count(ns, "http.response") == _count(us, "http.response") > 0


def test_frames_is_about_n(tmp_path):
    for mix, slack in (("small-api", 300), ("many-conns", 600)):
        stats = workload.generate(str(tmp_path / "n.pcap"), mix=mix, frames=1500, seed=9)
        assert 1500 <= stats["generated_frames"] <= 1500 + slack


@pytest.mark.parametrize("args, message", [
    (["--mix", "tiny"], "invalid choice: 'tiny'"),
    (["--frames", "0"], "--frames must be an integer between 1 and"),
    (["--loss", "1.5"], "--loss must be a probability per frame, 0 <= p < 1, got 1.5"),
    (["--reorder", "-0.1"], "--reorder must be a probability per frame"),
    (["--truncate", "20"], "--truncate must be a frame length between 64 and 65535 bytes, got 20"),
    (["--vni", "16777216"], "--vni values must be integers between 0 and 16777215"),
    (["--vni", "7,7"], "--vni values must be distinct, got 7,7"),
    (["--vni", "x"], "expected comma-separated integers"),
    (["--concurrency", "0"], "--concurrency must be an integer between 1 and"),
    (["--out", "/nonexistent/dir/x.pcap"], "--out directory does not exist: /nonexistent/dir"),
])
def test_cli_rejects_bad_options(tmp_path, capsys, args, message):
    argv = {"--mix": "small-api", "--frames": "100", "--out": str(tmp_path / "x.pcap")}
    argv.update(dict(zip(args[::2], args[1::2])))
    with pytest.raises(SystemExit) as exc:
        workload.main([x for kv in argv.items() for x in kv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_writes_stats(tmp_path, capsys):
    out = tmp_path / "c.pcap"
    assert workload.main(["--mix", "many-conns", "--frames", "300", "--seed", "3", "--out", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["frames"] == len(_records(out)[2]) and stats["calls"] == len(_truth(out))


def test_peers_count_the_calls(captures, tmp_path):
    pcap, stats = _base(captures)
    run = peers.run_tshark(str(pcap))
    seconds, calls = run
    assert calls == stats["calls"] and seconds > 0 and run.cpu_seconds > 0 and run.peak_rss_mb > 1
    inner = tmp_path / "inner.pcap"
    assert peers.decapsulate(str(pcap), str(inner)) == {"frames": stats["frames"], "skipped": 0}
    assert _count(inner, "vxlan") == 0 and _count(inner, "http.response") == stats["calls"]
    if shutil.which("tcpflow") is None:
        pytest.skip("tcpflow is not installed (apt-get install -y tcpflow)")
    flows = tmp_path / "flows"
    # tcpflow does not see through VXLAN: on the capture itself it writes no flow.
    subprocess.run(["tcpflow", "-r", str(pcap), "-o", str(flows), "-q"], check=True, capture_output=True)
    assert [p.name for p in flows.iterdir()] == ["report.xml"]
    run = peers.run_tcpflow(str(pcap))
    assert run.calls == stats["calls"] and run.seconds > 0 and "decapsulated" in run.note
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "peers.py"), str(pcap), "--peer", "tshark"],
                         capture_output=True, check=True, text=True).stdout
    assert json.loads(out)["tshark"]["calls"] == stats["calls"]
