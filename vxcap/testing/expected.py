"""The message vxcap must emit for a call whose facts are known independently of vxcap.

Both the committed mirror sample (``samples/*.calls.json``, written by make_sample from the bytes the client
sent and received) and the benchmark workloads (``*.truth.jsonl``, written by benchmarks/workload.py) describe
calls the same way; this turns one such description into the details SPEC section 2 prescribes under
``include debug``. One definition, used by the tests and the benchmarks' ground-truth check.
"""
from __future__ import annotations


def expected_details(call: dict, host: str | None = None) -> list[list[str]]:
    """Details in vxcap's order; with ``host``, also ``now``, ``interval`` and ``host`` (truth files only)."""
    from vxcap.rules import Rules

    out = [["request_method", call["method"]], ["request_url", call["url"]],
           ["response_code", str(call["status"])]]
    out += [[f"request_param:{k}", v] for k, v in call["params"]]
    out += [[f"request_header:{k}", v] for k, v in call["request_headers"]]
    if call["request_body"]:
        out.append(["request_body", call["request_body"]])
    out += [[f"response_header:{k}", v] for k, v in call["response_headers"]]
    if call["response_body"]:
        out.append(["response_body", call["response_body"]])
    cookies = [v for k, v in call["request_headers"] if k == "cookie"]
    if cookies:
        out += Rules.parse("include debug").session_fields(cookies)
    out = [p for p in out if p[1] != ""]  # empty values are dropped (SPEC section 2)
    if host is not None:
        out += [["now", str(call["now_ms"])], ["interval", str(call["interval_ms"])], ["host", host]]
    return out
