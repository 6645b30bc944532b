"""vxcap's calls against Zeek's http.log baselines, one for one (method, host, URI path, status).

Zeek logs one row per request/response pair, plus rows for replies it could not pair (method '-'). vxcap
emits one message per request (with its response when there is one) and counts unpaired replies instead of
emitting them, because a Resurface message needs a request URL. Every other difference is listed in
``JUSTIFIED`` with its reason; a difference not listed fails the test, and so does a listed difference that
no longer happens (the list must stay true).
"""
from __future__ import annotations

import collections
import urllib.parse

import pytest

from support.replay import first, replay_calls
from conftest import PCAPS

ZEEK = PCAPS / "zeek"
LOGS = sorted(p for p in ZEEK.glob("*.zeek-http.log*"))


def zeek_rows(log):
    fields = None
    rows = []
    for line in log.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
            continue
        if line.startswith("#"):
            continue
        if fields is None and line.startswith("ts\t"):  # zeek-cut -m header
            fields = line.split("\t")
            continue
        if fields is None:
            continue
        row = dict(zip(fields, line.split("\t")))
        rows.append(row)
    return rows


def zeek_key(row):
    method = row["method"]
    uri = row["uri"]
    path = uri.split("?", 1)[0] if uri != "-" else "-"
    host = row["host"]
    if host == "-" and method != "-":
        # No Host header: SPEC section 2 has vxcap build the URL from the server's address and port.
        addr, port = row["id.resp_h"], row["id.resp_p"]
        addr = f"[{addr}]" if ":" in addr else addr
        host = addr if port == "80" else f"{addr}:{port}"
    status = row["status_code"]
    return (method, host, path, status)


def vxcap_key(details):
    url = first(details, "request_url")
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc
    path = url[len(parts.scheme) + 3 + len(host):] or "/"
    return (first(details, "request_method"), host, path, first(details, "response_code", "-"))


G = "www.google.com"
_09 = "/HTTP/1.1"  # "GET /HTTP/1.1" has no version: an HTTP/0.9-style request line

# capture -> (rows only Zeek has, calls only vxcap has, why). Keys are (method, host, path, status).
JUSTIFIED = {
    "http-desync-request-response-5.pcap": (
        {("-", "-", "-", "200"): 2}, {},
        "the first request is answered by three responses: Zeek logs the two extra replies as rows "
        "without a request; vxcap counts them (responses_without_request), a Resurface message needs a "
        "request"),
    "methods.pcap": (
        {("-", "-", "-", "400"): 22, ("-", "-", "-", "405"): 1,
         ("OPTIONS", G, "*", "405"): 1, ("OPTIONS", G, "(empty)", "400"): 1,
         **{(m, G, _09, "0"): 1 for m in ("GET", "CCM_POST", "CONNECT", "TRACE", "DELETE", "PUT", "POST",
                                           "HEAD")}},
        {("OPTIONS", G, "/", "405"): 1,
         **{(m, G, _09, st): 1 for m, st in (("GET", "403"), ("CONNECT", "400"), ("TRACE", "400"),
                                             ("DELETE", "400"), ("PUT", "411"), ("POST", "411"),
                                             ("HEAD", "400"))}},
        "a probe of malformed requests. 23 connections open with no request line at all: Zeek logs their "
        "replies without a request, vxcap counts them (connections_not_http). 'OPTIONS *': the "
        "asterisk-form target has no path, vxcap's URL is the origin (http://host). 'OPTIONS HTTP/1.1' "
        "has no target: llhttp rejects it (http_parse_errors). Version-less request lines ('GET "
        "/HTTP/1.1'): Zeek takes them as HTTP/0.9 and logs no status; vxcap pairs the server's real "
        "HTTP/1.0 reply, except for 'CCM_POST /HTTP/1.1', which has neither a known method nor a version"),
    "mixed-vlan-mpls.pcap": (
        {("GET", "10.0.0.15", "/", "0"): 1}, {("GET", "10.0.0.15", "/", "-"): 1},
        "an HTTP/0.9 exchange ('GET /' and a bare HTML reply): Zeek logs status 0, vxcap emits the request "
        "marked no_response because the reply is not HTTP/1.x (connections_not_http)"),
    "wikipedia.pcap": (
        {}, {("GET", "www.wikipedia.org", "/", "304"): 1},
        "the first connection was captured without its handshake; Zeek (run with -b, no partial "
        "connections) skips it, vxcap resynchronises on the request line and keeps the call"),
}


def _diff(expected, got):
    e, g = collections.Counter(expected), collections.Counter(got)
    return dict(e - g), dict(g - e)


@pytest.mark.parametrize("log", LOGS, ids=[p.name.split(".zeek-")[0] for p in LOGS])
def test_matches_zeek_http_log(log):
    pcap = ZEEK / (log.name.split(".zeek-")[0] + ".pcap")
    calls, counters, errors = replay_calls(pcap)
    assert errors == []
    expected = [zeek_key(r) for r in zeek_rows(log)]
    got = [vxcap_key(c) for c in calls]
    zeek_only, vxcap_only = _diff(expected, got)
    want_zeek_only, want_vxcap_only, why = JUSTIFIED.get(pcap.name, ({}, {}, ""))
    assert (zeek_only, vxcap_only) == (want_zeek_only, want_vxcap_only), (why, counters["reassembly"])


def test_justifications_name_real_captures():
    names = {p.name.split(".zeek-")[0] + ".pcap" for p in LOGS}
    assert set(JUSTIFIED) <= names


@pytest.mark.parametrize("name", ["zeek/vxlan-encapsulated-http.pcap", "suricata/vxlan-non-zero-reserved-fields.pcap",
                                  "arkime/gre-erspan-vxlan.pcap"])
def test_http_in_vxlan_captures_give_their_call(name):
    calls, counters, errors = replay_calls(PCAPS / name)
    assert errors == [] and len(calls) == 1
    c = calls[0]
    assert first(c, "request_method") == "GET" and first(c, "response_code") == "200"
    assert first(c, "response_body")


@pytest.mark.parametrize("name", ["zeek/vxlan.pcap", "zeek/vxlan-triple-v2.pcap", "zeek/vxlan-inner-tcp-bad-checksum.pcap",
                                  "suricata/vxlan-decoder-01.pcap",
                                  "suricata/vxlan-decoder-03-aws-traffic-mirror.pcap"])
def test_non_http_vxlan_captures_give_none(name):
    calls, counters, errors = replay_calls(PCAPS / name)
    assert errors == [] and calls == []
    assert counters["decode"]["encapsulated"] > 0
