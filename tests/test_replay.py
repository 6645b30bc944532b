"""``vxcap replay`` end to end: the committed mirror sample, the command line, damaged files, --url."""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys

import orjson
import pytest

from conftest import PCAPS, REPO
from support.replay import first, replay_calls
from vxcap.testing.expected import expected_details

SAMPLE = REPO / "samples" / "mirror-sample.pcap"
SAMPLE_CALLS = json.loads((REPO / "samples" / "mirror-sample.calls.json").read_text())


def without_times(msg):
    return [p for p in msg if p[0] not in ("now", "interval", "host")]


def test_sample_gives_exactly_the_calls_the_client_made():
    calls, counters, errors = replay_calls(SAMPLE)
    assert errors == []
    got = sorted(orjson.dumps(without_times(c)) for c in calls)
    want = sorted(orjson.dumps(expected_details(c)) for c in SAMPLE_CALLS)
    assert len(got) == len(want) == 17
    for g, w in zip(got, want):
        assert orjson.loads(g) == orjson.loads(w)
    for c in calls:
        assert int(first(c, "now")) > 1_700_000_000_000 and int(first(c, "interval")) >= 1
        assert c[-1][0] == "host"


def test_sample_under_default_rules_is_strict():
    calls, _, _ = replay_calls(SAMPLE, rules="")
    assert len(calls) == 17
    for c in calls:
        keys = {k for k, _ in c}
        assert not any(k.endswith("_body") or k.startswith("request_param") for k in keys)
        assert {k for k in keys if k.startswith("request_header:")} <= {"request_header:user-agent"}


def test_vni_filter_excludes_and_includes():
    assert replay_calls(SAMPLE, extra=("--vnis", "-42"))[0] == []
    assert len(replay_calls(SAMPLE, extra=("--vnis", "42"))[0]) == 17
    assert replay_calls(SAMPLE, extra=("--vnis", "7 8"))[0] == []


def test_ports_filter():
    calls, counters, _ = replay_calls(SAMPLE, extra=("--ports", "8080"))
    assert calls and all(":8080/" in first(c, "request_url") for c in calls)
    assert counters["decode"]["port_filtered"] > 0


def test_pure_python_decoder_gives_the_same_output():
    a, _, _ = replay_calls(SAMPLE)
    b, _, _ = replay_calls(SAMPLE, extra=("--pure",))
    assert a == b


def vxcap(*args, env=None, stdin=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "vxcap", *args], capture_output=True, env=e, timeout=120,
                          input=stdin, cwd=REPO)


def test_cli_writes_ndjson_and_a_summary(tmp_path):
    out = tmp_path / "calls.ndjson"
    r = vxcap("replay", str(SAMPLE), "--rules", "include debug", "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == 17 and all(orjson.loads(x)[0][0] == "request_method" for x in lines)
    summary = r.stderr.decode()
    for word in ("frames 170", "vxlan frames by VNI: 42=170", "calls 17", "pure_ack="):
        assert word in summary, summary


def test_environment_gives_the_defaults():
    r = vxcap("replay", str(SAMPLE), "--quiet", env={"SNIFFER_MIRROR_VNIS": "-42"})
    assert r.returncode == 0 and r.stdout == b""
    r = vxcap("replay", str(SAMPLE), "--quiet", env={"USAGE_LOGGERS_RULES": r"include debug\n/response_body/ remove"})
    msgs = [orjson.loads(x) for x in r.stdout.splitlines()]
    assert len(msgs) == 17 and all(first(m, "response_body") is None for m in msgs)
    assert any(first(m, "request_header:accept") for m in msgs)


@pytest.mark.parametrize("args,message", [
    (["--vnis", "x"], "--vnis: invalid VNI 'x'"),
    (["--ports", "0"], "invalid --ports '0': '0' is not a port number from 1 to 65535"),
    (["--vxlan-port", "70000"], "invalid --vxlan-port '70000'"),
    (["--encap", "gre"], "argument --encap: invalid choice: 'gre'"),
    (["--rules", "bogus"], "Invalid rule: bogus"),
    (["--body-limit", "0"], "invalid --body-limit 0"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    r = vxcap("replay", str(SAMPLE), *args)
    err = r.stderr.decode()
    assert r.returncode == 2 and r.stdout == b""
    assert err.count("\n") == 1 and message in err, err


def test_corrupt_capture_keeps_earlier_frames_and_names_the_offset(tmp_path):
    data = SAMPLE.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 700])
    r = vxcap("replay", str(cut), "--rules", "include debug")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"{cut}: offset " in err and "truncated record" in err and "Traceback" not in err, err
    assert 10 <= len(r.stdout.splitlines()) <= 17


def test_gzip_and_missing_file(tmp_path):
    gz = tmp_path / "sample.pcap.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    calls, _, errors = replay_calls(gz)
    assert errors == [] and len(calls) == 17
    r = vxcap("replay", str(tmp_path / "nope.pcap"))
    assert r.returncode == 1 and b"nope.pcap" in r.stderr and b"Traceback" not in r.stderr


def test_not_a_capture(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"hello, this is not a capture file at all")
    r = vxcap("replay", str(bad))
    assert r.returncode == 1 and b"bad.pcap: offset 0: not a pcap or pcapng file" in r.stderr, r.stderr


def test_replay_to_a_collector(arun):
    from vxcap.testing.collector import Collector

    async def go():
        async with Collector() as c:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vxcap", "replay", str(SAMPLE), "--url", c.url,
                "--rules", "include debug\nallow_http_url", cwd=REPO,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err
            assert b"messages_delivered=17" in err, err
            return c.messages, c.requests

    messages, requests = arun(go())
    assert len(messages) == 17
    assert requests[0].headers["Content-Encoding"] == "deflated" and requests[0].status == 204


def test_http_url_without_allow_http_url_is_refused():
    r = vxcap("replay", str(SAMPLE), "--url", "http://127.0.0.1:9/message")
    assert r.returncode == 2 and b"allow_http_url" in r.stderr and r.stderr.count(b"\n") == 1


def test_shared_captures_replay_without_error():
    for p in sorted(PCAPS.glob("*/*.pcap")):
        _, counters, errors = replay_calls(p)
        assert errors == [], p


def test_compiled_and_pure_python_paths_give_identical_output(tmp_path):
    """The per-call modules compiled by Cython and their Python source (the twin) agree byte for byte."""
    import vxcap

    assert all(vxcap.compiled().values()), "the extensions are not built"
    captures = [SAMPLE] + sorted(PCAPS.glob("*/*.pcap"))
    args = ["replay", *map(str, captures), "--rules", "include debug", "--host", "twin", "--quiet"]
    native = vxcap_run(args)
    pure = vxcap_run(args, env={"VXCAP_PURE_PYTHON": "1"})
    assert native.returncode == pure.returncode == 0, (native.stderr, pure.stderr)
    assert native.stdout.count(b"\n") > 1000 and native.stdout == pure.stdout


def vxcap_run(args, env=None):
    e = {k: v for k, v in os.environ.items() if k != "VXCAP_PURE_PYTHON"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "vxcap", *args], capture_output=True, env=e, timeout=300, cwd=REPO)


def test_options_beyond_the_sniffer_are_off_by_default_and_work_when_on():
    plain, _, _ = replay_calls(SAMPLE)
    assert not any(k.startswith("custom_field:") or k == "request_header:x-real-ip" for c in plain for k, _ in c)
    calls, _, _ = replay_calls(SAMPLE, extra=("--realip-header", "X-Real-IP", "--custom-fields", "vni,mirror_source"))
    assert len(calls) == 17
    for c in calls:
        assert first(c, "request_header:x-real-ip") in ("10.11.1.1", "fd00:11:1::1")
        assert first(c, "custom_field:vni") == "42"
        assert first(c, "custom_field:mirror_source")  # the app's address on the mirror path
    r = vxcap("replay", str(SAMPLE), "--custom-fields", "vni,pod")
    assert r.returncode == 2 and b"--custom-fields" in r.stderr


def test_replay_honours_the_daemons_limits_from_the_environment():
    # The same build_pipeline as `vxcap run`: a header block over VXCAP_MAX_HEADER_BYTES is dropped, counted.
    wrapped = PCAPS / "arkime" / "http-wrapped-header.pcap"  # a ~3.4 KB request header block
    assert vxcap("replay", str(wrapped)).stdout.count(b"\n") == 1
    r = vxcap("replay", str(wrapped), env={"VXCAP_MAX_HEADER_BYTES": "2KiB"})
    assert r.returncode == 0, r.stderr
    assert b"header_limit_hits=1" in r.stderr and r.stdout.count(b"\n") == 0
    bad = vxcap("replay", str(SAMPLE), env={"VXCAP_MAX_HEADER_BYTES": "lots"})
    assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1 and b"VXCAP_MAX_HEADER_BYTES" in bad.stderr
