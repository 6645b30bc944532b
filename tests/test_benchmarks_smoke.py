"""The benchmark suite runs end to end at its smallest size and every figure carries a passing check.

``python benchmarks/run_all.py --quick`` (20k-frame captures) into a temporary directory: the JSON must hold
every section (machine, stages, end to end at each mix with the peers, impairments, targets), every stage
and tool must state what one iteration is or which command ran, and every correctness check must pass: a
benchmark that measures a wrong answer is a failure, whatever its speed.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

STAGES = {"read", "decode", "decode_pure", "reassembly_http", "messages", "messages_rules_strict",
          "messages_rules_debug", "serialise", "sink", "idle_connections", "idle_connections_handshake"}
TARGETS = {"e2e_small_api_calls_per_core", "tshark_per_call_cpu_ratio", "decode_frames_per_core",
           "large_body_gbit_per_core", "idle_connection_bytes"}
IMPAIRED = {"clean", "reorder_1pct", "duplicate_1pct", "loss_0.5pct", "truncate_256", "combined",
            "combined_truncate_256"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-results")
    work = tmp_path_factory.mktemp("bench-work")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--results",
                           str(out), "--workdir", str(work)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert (out / "latest.json").exists(), proc.stderr[-3000:]
    return proc, json.loads((out / "latest.json").read_text()), out


def test_every_section_is_there(quick_run):
    proc, r, out = quick_run
    for key in ("command", "started", "seconds", "machine", "stages", "e2e", "targets", "checks", "ok"):
        assert key in r, key
    m = r["machine"]
    for key in ("cpu_model", "logical_cpus", "memory_gib", "kernel", "python", "packages", "load_average_start"):
        assert m.get(key) is not None, key
    assert {s["stage"] for s in r["stages"]["stages"]} == STAGES
    for s in r["stages"]["stages"]:
        assert s["iteration"] and s["per_core"] and "peak_rss_mb" in s, s["stage"]
    e2e = r["e2e"]
    assert e2e["small_api"] and e2e["large_body"] and e2e["many_conns"]
    peers = {"vxcap", "vxcap_pure"} | {p for p in ("tshark", "tcpflow") if shutil.which(p)}
    for entry in e2e["small_api"] + [e2e["large_body"], e2e["many_conns"]]:
        assert peers <= set(entry["tools"]), entry["name"]
        vx = entry["tools"]["vxcap"]
        assert vx["calls"] > 0 and vx["calls_per_cpu_s"] > 0 and vx["peak_rss_mb"] > 0
        for peer in peers - {"vxcap"}:
            assert entry["ratios"][peer]["per_call_cpu"] > 0, (entry["name"], peer)
    assert set(e2e["impaired"]["variants"]) == IMPAIRED
    assert {t["name"] for t in r["targets"]} == TARGETS
    for t in r["targets"]:
        assert t["value"] is not None and isinstance(t["met"], bool) and t["status"], t
    assert (out / "latest.md").read_text().startswith("# vxcap benchmarks")
    png = out / "calls_per_second.png"
    if png.exists():  # matplotlib is optional
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_correctness_check_passed(quick_run):
    proc, r, _ = quick_run
    failed = [c["where"] for c in r["checks"] if not c["ok"]]
    assert not failed, failed
    assert r["ok"] and proc.returncode == 0, proc.stderr[-3000:]
    # A fast wrong answer is a failure: vxcap's figures come with exact recall against the truth.
    for entry in r["e2e"]["small_api"]:
        check = entry["tools"]["vxcap"]["check"]
        assert check["recall_complete"] == 1.0 and check["unexpected_calls"] == 0
