"""End to end against generated ground truth: every call of every workload mix comes out exactly.

benchmarks/workload.py writes VXLAN-mirrored HTTP exactly as a mirror session delivers it, with the calls it
contains; vxcap's replay must reproduce each complete call detail for detail (timestamps included), and
recover damaged ones (loss, truncation) as marked calls.
"""
from __future__ import annotations

import sys

import orjson
import pytest

from conftest import REPO
from support.replay import first, replay_calls

sys.path.insert(0, str(REPO / "benchmarks"))
import truth  # noqa: E402
import workload  # noqa: E402

VARIANTS = {
    "small-api": dict(mix="small-api"),
    "large-body": dict(mix="large-body"),
    "many-conns": dict(mix="many-conns"),
    "ipv6-vlan": dict(mix="small-api", ipv6=True, vlan=True),
    "three-vnis-overlapping": dict(mix="small-api", vni=[7, 8, 9]),
    "impaired": dict(mix="small-api", reorder=0.01, duplicate=0.01, loss=0.005),
    # A response held for its request (that request's segment was lost) while the server side also loses
    # bytes: the gap must keep its place among the held bytes (found by benchmarks/bench_e2e.py).
    "impaired-seed-1": dict(mix="small-api", reorder=0.01, duplicate=0.01, loss=0.005, seed=1, frames=20000),
    "truncated-256": dict(mix="small-api", truncate=256),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_ground_truth(tmp_path, name):
    v = VARIANTS[name]
    pcap = tmp_path / f"{name}.pcap"
    v = dict(v)
    stats = workload.generate(str(pcap), frames=v.pop("frames", 4000), seed=v.pop("seed", 11), **v)
    calls, counters, errors = replay_calls(pcap, extra=("--host", "bench"))
    assert errors == []
    r = truth.check([orjson.dumps(c) for c in calls], workload.truth_path(str(pcap)), host="bench")
    assert r["truth_calls"] == stats["calls"] > 0
    assert r["ok"], r["mismatches"]
    assert r["exact"] == r["complete_calls"] and r["unexpected_calls"] == 0
    if "reorder" not in v:
        assert r["timing_differs"] == 0
    if name.startswith("impaired"):
        assert r["damaged_calls"] > 0 and counters["reassembly"]["gap_bytes"] > 0
        assert counters["reassembly"]["retransmitted_segments"] + counters["reassembly"].get(
            "duplicate_early_segments", 0) > 0
    if name == "truncated-256":
        # Every call survives with its method, URL and status, marked incomplete.
        assert r["damaged_recovered"] == r["damaged_calls"] == r["truth_calls"]
        assert all(first(c, "custom_field:vxcap_incomplete") for c in calls)
        assert counters["reassembly"]["truncated_bytes"] > 0
        assert counters["reassembly"]["headers_salvaged"] > 0
