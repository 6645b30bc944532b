"""Ground-truth check of vxcap's output against a workload's ``.truth.jsonl`` (benchmarks/workload.py).

A fast wrong answer is a failure, so every benchmark figure is recorded beside this check. Calls are matched
by their unique ``x-request-id`` header; a truth call marked complete must come out exactly (every detail,
timestamps included, under ``include debug``); a damaged one (loss, truncation) counts as recovered when a
call with its request id comes out at all.
"""
from __future__ import annotations

import json
import pathlib

import orjson

from vxcap.testing.expected import expected_details


def _untimed(details):
    return [p for p in details if p[0] not in ("now", "interval")]


def _request_id(details) -> str | None:
    for k, v in details:
        if k == "request_header:x-request-id":
            return v
    return None


def check(lines, truth_path: str | pathlib.Path, host: str = "bench") -> dict:
    """Compare emitted NDJSON lines (bytes) with the truth; return counts and the first mismatches."""
    truth = [json.loads(x) for x in pathlib.Path(truth_path).read_text().splitlines() if x.strip()]
    by_id: dict[str, list] = {}
    for line in lines:
        details = orjson.loads(line)
        by_id.setdefault(_request_id(details), []).append(details)
    complete = exact = recovered = damaged = 0
    mismatches = []
    unmatched_damaged: set = set()
    timing_only = 0
    for t in truth:
        rid = next((v for k, v in t["request_headers"] if k == "x-request-id"), None)
        got = by_id.pop(rid, None)
        if t.get("complete", True):
            complete += 1
            want = expected_details(t, host)
            if got is not None and len(got) == 1 and got[0] == want:
                exact += 1
            elif got is not None and len(got) == 1 and _untimed(got[0]) == _untimed(want):
                # Reordering moves frames to other capture times, so the observed start of a message
                # can differ from the generator's by the reorder window: exact but for timing.
                exact += 1
                timing_only += 1
            elif len(mismatches) < 3:
                mismatches.append({"request_id": rid, "want": want, "got": got})
        else:
            damaged += 1
            if got is not None:
                recovered += 1
            else:
                unmatched_damaged.add(rid)
    # Damaged calls whose request id was cut away (truncation) are matched by method, URL and status.
    leftovers = {}
    for calls in by_id.values():
        for details in calls:
            d = dict((k, v) for k, v in details if k in ("request_method", "request_url", "response_code"))
            key = (d.get("request_method"), d.get("request_url"), d.get("response_code"))
            leftovers[key] = leftovers.get(key, 0) + 1
    for t in truth:
        rid = next((v for k, v in t["request_headers"] if k == "x-request-id"), None)
        if t.get("complete", True) or rid not in unmatched_damaged:
            continue
        key = (t["method"], t["url"], str(t["status"]))
        bare = (t["method"], t["url"], None)  # its response lost: emitted without a status
        for k in (key, bare):
            if leftovers.get(k):
                leftovers[k] -= 1
                recovered += 1
                break
    extra = sum(leftovers.values())
    return {
        "truth_calls": len(truth),
        "complete_calls": complete,
        "exact": exact,
        "recall_complete": exact / complete if complete else 1.0,
        "timing_differs": timing_only,
        "damaged_calls": damaged,
        "damaged_recovered": recovered,
        "recall_all": (exact + recovered) / len(truth) if truth else 1.0,
        "unexpected_calls": extra,
        "ok": exact == complete and extra == 0,
        "mismatches": mismatches,
    }
