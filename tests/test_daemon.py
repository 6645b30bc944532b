"""``vxcap run`` as users deploy it: a real process in a MirrorLab's capture namespace, the helm chart's
environment, a real collector, /metrics scraped, SIGTERM and SIGHUP; refused configurations; logs."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vxcap import daemon
from vxcap.config import load_config
from vxcap.logs import JsonFormatter, RateLimitFilter, TextFormatter, setup_logging
from vxcap.rules import Rules, RulesError

REPO = pathlib.Path(__file__).resolve().parent.parent
COLLECTOR_PORT = 7701
METRICS_PORT = 9108


def helm_env(**extra: str) -> dict[str, str]:
    """The environment Resurface's chart renders for its sniffer in VPC-mirror mode (tests/test_config.py),
    pointed at the lab: the collector in the capture namespace, the lab's VNI and capture interface."""
    env = {
        "USAGE_LOGGERS_URL": f"http://127.0.0.1:{COLLECTOR_PORT}/message",
        "USAGE_LOGGERS_RULES": "include debug\\nallow_http_url\\n",
        "USAGE_LOGGERS_DISABLE": "",
        "K8S_INPUT": "'--input-raw :80,8080 --input-raw-engine vxlan --input-raw-vxlan-port 4789 "
                     "--input-raw-vxlan-vni 42'",
        "SNIFFER_ENGINE": "mirror",
        "APP_PORTS": "80,8080",
        "SNIFFER_MIRROR_VXLANPORT": "4789",
        "SNIFFER_MIRROR_VNIS": "42",
        "SNIFFER_DEBUG_ENABLED": "false",
        "SNIFFER_DEBUG_VERBOSITY": "0",
        "SNIFFER_PCAP_BUFFER_SIZE": "",
        "NET_DEVICE": "eth0",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
    }
    env.update(extra)
    return env


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Running:
    """A ``vxcap run`` process in the lab's capture namespace; stderr (JSON logs) collected in a thread."""

    def __init__(self, lab, env: dict[str, str]):
        self.lab = lab
        self.proc = lab.popen_in("capture", [sys.executable, "-m", "vxcap", "run"], env=env, cwd=str(REPO),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.logs: list[dict] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        lab.wait_listening("capture", METRICS_PORT, self.proc)

    def _read(self) -> None:
        for line in self.proc.stderr:
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"raw": line.decode(errors="replace")})

    def get(self, path: str) -> tuple[int, str]:
        return self.lab.call_in("capture", fetch, f"http://127.0.0.1:{METRICS_PORT}{path}")

    def metrics(self) -> dict[str, dict]:
        _, text = self.get("/metrics")
        out: dict[str, dict] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels) -> float:
        return self.metrics().get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def wait(self, pred, what: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; logs: {self.logs[-10:]}")
            time.sleep(0.1)

    def wait_ready(self) -> None:
        self.wait(lambda: self.get("/readyz")[0] == 200, "/readyz 200")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._t.join(5)
        return code

    def log(self, msg: str) -> dict:
        found = [rec for rec in self.logs if rec.get("msg") == msg]
        assert found, f"no log {msg!r} in {self.logs}"
        return found[-1]


def start_collector(lab, *extra: str) -> subprocess.Popen:
    proc = lab.popen_in("capture", [sys.executable, "-m", "vxcap.testing.collector", "--port",
                                    str(COLLECTOR_PORT), *extra], cwd=str(REPO), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    lab.wait_listening("capture", COLLECTOR_PORT, proc)
    return proc


def collector_stats(lab) -> dict:
    return json.loads(lab.call_in("capture", fetch, f"http://127.0.0.1:{COLLECTOR_PORT}/stats")[1])


@pytest.fixture
def lab():
    from vxcap.testing.netns import MirrorLab

    with MirrorLab(vni=42, second_vni=43) as lab:
        lab.start_nginx(80)
        lab.start_aiohttp(8080)
        yield lab


# ---------------------------------------------------------------------------------------------- (a)


@pytest.mark.root
@pytest.mark.slow
def test_helm_environment_calls_metrics_and_sigterm_mid_traffic(lab):
    from vxcap.testing.make_sample import run_client

    start_collector(lab)
    vx = Running(lab, helm_env())
    vx.wait_ready()
    assert vx.get("/healthz") == (200, "ok\n")
    assert vx.get("/readyz") == (200, "capturing\n")

    calls = asyncio.run(run_client(lab))
    assert len(calls) == 17
    vx.wait(lambda: vx.value("vxcap_sink_delivered_total") >= 17, "17 calls delivered")
    time.sleep(0.5)  # nothing more may come: 17 calls, the VNI 43 copy filtered out
    m = vx.metrics()
    assert m["vxcap_calls_emitted_total"][()] == 17 == collector_stats(lab)["messages"]
    assert m["vxcap_vni_frames_total"][(("vni", "42"),)] > 0
    # VNI 43 is mirrored too (a second session), counted per VNI, and filtered: SNIFFER_MIRROR_VNIS="42"
    assert m["vxcap_vni_frames_total"][(("vni", "43"),)] > 0
    assert m["vxcap_frames_ignored_total"][(("reason", "vni_filtered"),)] > 0
    assert m["vxcap_kernel_drops_total"][()] == 0
    assert m["vxcap_capture_up"][()] == 1 and m["vxcap_ready"][()] == 1
    assert sum(m["vxcap_calls_dropped_total"].values()) == 0
    assert vx.log("capturing")["device"] == "eth0"

    # SIGTERM while a client keeps calling: every call emitted before the stop reaches the collector.
    stop = threading.Event()
    made = []

    def traffic():
        while not stop.is_set():
            made.extend(asyncio.run(run_client(lab)))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        vx.wait(lambda: vx.value("vxcap_calls_emitted_total") > 17 + 5, "traffic flowing")
        code = vx.stop(signal.SIGTERM)
    finally:
        stop.set()
        t.join(60)
    assert code == 0, vx.logs[-5:]
    flushed = vx.log("flushed")
    assert flushed["calls"] > 17
    assert flushed["delivered"] == flushed["calls"] == collector_stats(lab)["messages"]
    assert flushed["dropped_shutdown"] == 0
    assert vx.log("vxcap stopped")["exit"] == 0
    # the logs are JSON lines and carry no body or header value of the captured calls
    assert all("raw" not in rec for rec in vx.logs), vx.logs
    text = json.dumps(vx.logs)
    assert "203.0.113.9" not in text and "session=abc123" not in text and "widget" not in text


# ---------------------------------------------------------------------------------------------- (b)


@pytest.mark.root
@pytest.mark.slow
def test_sighup_changes_the_vni_filter_and_keeps_connections(lab, tmp_path):
    from vxcap.testing.make_sample import AIOHTTP_HOST, Connection, request_bytes

    start_collector(lab)
    reload_file = tmp_path / "reload.env"  # absent at start: no overrides
    env = helm_env(SNIFFER_MIRROR_VNIS="42,43", VXCAP_RELOAD_FILE=str(reload_file), VXCAP_CUSTOM_FIELDS="vni")
    vx = Running(lab, env)
    vx.wait_ready()

    async def scenario():
        records: list[dict] = []
        c = await Connection(lab, lab.app_ip, 8080, records).open()
        await c.exchange(request_bytes("GET", "/items?id=1", AIOHTTP_HOST, []))
        await asyncio.to_thread(vx.wait, lambda: vx.value("vxcap_calls_emitted_total") == 2,
                                "one call per VNI")
        opened = vx.value("vxcap_connections_opened_total")
        assert opened == 2  # the same connection, once per mirror session

        # A broken reload file changes nothing.
        reload_file.write_text("SNIFFER_MIRROR_VNIS=42,abc\n")
        vx.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(vx.wait, lambda: vx.value("vxcap_reloads_total", result="failed") == 1,
                                "failed reload counted")
        # Now exclude VNI 43, on the fly, while the connection stays open.
        reload_file.write_text("# set by the test\nSNIFFER_MIRROR_VNIS='42'\n")
        vx.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(vx.wait, lambda: vx.value("vxcap_reloads_total", result="ok") == 1,
                                "reload applied")
        frames_43 = vx.value("vxcap_vni_frames_total", vni="43")
        await c.exchange(request_bytes("GET", "/items?id=2", AIOHTTP_HOST, []))
        await asyncio.to_thread(vx.wait, lambda: vx.value("vxcap_calls_emitted_total") == 3,
                                "the second call, on VNI 42 only")
        await asyncio.sleep(1.0)
        assert vx.value("vxcap_calls_emitted_total") == 3  # and none on VNI 43
        # still mirrored and counted per VNI, but filtered
        assert vx.value("vxcap_vni_frames_total", vni="43") > frames_43
        # The VNI 42 connection carried on: no new connection, no stream picked up midway.
        assert vx.value("vxcap_connections_opened_total") == opened
        assert vx.value("vxcap_pipeline_events_total", stage="reassembly", event="streams_started_midway") == 0
        await c.close()

    asyncio.run(scenario())
    assert vx.log("reloaded rules and filters")["vnis"] == "42"
    refused = [r["msg"] for r in vx.logs if r.get("msg", "").startswith("reload refused")]
    assert len(refused) == 1 and "SNIFFER_MIRROR_VNIS='42,abc'" in refused[0]
    assert vx.stop() == 0
    assert collector_stats(lab)["messages"] == 3


# ---------------------------------------------------------------------------------------------- (c)


def run_vxcap(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vxcap", "run"], env={**base, **env}, capture_output=True,
                          text=True, timeout=timeout, cwd=str(REPO))


def _config_error(env: dict[str, str]) -> str:
    try:
        load_config(env)
    except ValueError as e:
        return str(e)
    raise AssertionError("valid")


BAD = [
    ({"VXCAP_WORKERS": "abc"}, "VXCAP_WORKERS='abc': expected an integer from 1 to 256"),
    ({"SNIFFER_ENGINE": "k8s"}, _config_error({"SNIFFER_ENGINE": "k8s"})),
    ({"SNIFFER_MIRROR_VNIS": "7,-7"}, _config_error({"SNIFFER_MIRROR_VNIS": "7,-7"})),
    ({"USAGE_LOGGERS_URL": "http://worker.resurface:7701/message"},
     "USAGE_LOGGERS_URL http://worker.resurface:7701/message is plain http: add the rule 'allow_http_url' "
     "to USAGE_LOGGERS_RULES to permit it"),
    ({"USAGE_LOGGERS_RULES": "allow_http_url\\n/request_body/ frobnicate"},
     "Invalid rule: /request_body/ frobnicate"),
    ({"USAGE_LOGGERS_RULES": "file:///nonexistent/rules.txt"}, "Failed to load rules: /nonexistent/rules.txt"),
    ({"USAGE_LOGGERS_URL": "https://user:secret@db.example/message?token=abc", "VXCAP_METRICS_ADDR": "x:y"},
     _config_error({"VXCAP_METRICS_ADDR": "x:y"})),
]


@pytest.mark.parametrize("env,line", BAD, ids=[next(iter(e)) + "=" + next(iter(e.values()))[:20] for e, _ in BAD])
def test_refused_configuration_is_one_line_and_exit_2(env, line):
    proc = run_vxcap(env)
    assert proc.returncode == 2
    assert proc.stderr == f"vxcap: {line}\n"
    assert proc.stdout == ""
    assert "secret" not in proc.stderr and "token=abc" not in proc.stderr


def test_rules_error_text_is_the_rules_module_s():
    with pytest.raises(RulesError) as e:
        Rules.parse("/request_body/ frobnicate")
    assert str(e.value) == "Invalid rule: /request_body/ frobnicate"


def test_reload_file_errors(tmp_path):
    f = tmp_path / "reload.env"
    f.write_text("APP_PORTS=80\nUSAGE_LOGGERS_URL=http://x/\n")
    proc = run_vxcap({"VXCAP_RELOAD_FILE": str(f)})
    assert proc.returncode == 2
    assert proc.stderr == (f"vxcap: VXCAP_RELOAD_FILE {f}:2: USAGE_LOGGERS_URL cannot be reloaded (expected one "
                           f"of SNIFFER_MIRROR_VNIS, APP_PORTS, APP_PORT, USAGE_LOGGERS_RULES)\n")
    f.write_text("APP_PORTS=80,99999\n")
    proc = run_vxcap({"VXCAP_RELOAD_FILE": str(f)})
    assert proc.returncode == 2
    assert proc.stderr == f"vxcap: {_config_error({'APP_PORTS': '80,99999'})}\n"
    f.write_text("junk\n")
    assert run_vxcap({"VXCAP_RELOAD_FILE": str(f)}).stderr.startswith(f"vxcap: VXCAP_RELOAD_FILE {f}:1: ")


def test_reload_file_overrides_the_environment(tmp_path):
    f = tmp_path / "reload.env"
    f.write_text('# comment\n\nexport SNIFFER_MIRROR_VNIS="5 6"\nAPP_PORT=8443\n')
    s = daemon.load_settings({"SNIFFER_MIRROR_VNIS": "1", "APP_PORTS": "80", "VXCAP_RELOAD_FILE": str(f)})
    assert s.cfg.vnis_include == {5, 6} and s.cfg.app_ports == {8443}
    assert s.overrides == {"SNIFFER_MIRROR_VNIS": "5 6", "APP_PORT": "8443"}
    assert s.cfg.warnings == ()
    missing = daemon.load_settings({"SNIFFER_MIRROR_VNIS": "1", "VXCAP_RELOAD_FILE": str(tmp_path / "no")})
    assert missing.cfg.vnis_include == {1} and missing.overrides == {}


def test_cli_dispatch_and_config_reexport():
    from vxcap.config import config_main

    assert daemon.config_main is config_main
    proc = subprocess.run([sys.executable, "-m", "vxcap", "run", "--bogus"], capture_output=True, text=True,
                          cwd=str(REPO))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------- (d)


def test_disabled_stays_up_healthy_and_ready(tmp_path):
    # No capture at all: runs in this namespace, metrics on loopback only.
    import socket

    with socket.socket() as s:  # a free loopback port (the setting refuses port 0)
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    env = {"USAGE_LOGGERS_DISABLE": "true", "VXCAP_METRICS_ADDR": f"127.0.0.1:{free}", "VXCAP_BOGUS": "1",
           "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "VXCAP_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "vxcap", "run"], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        logs = []
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            rec = json.loads(proc.stderr.readline())
            logs.append(rec)
            if rec["msg"].startswith("metrics on "):
                port = int(rec["msg"].rsplit(":", 1)[1].split("/")[0])
        assert port, logs
        assert fetch(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        status, reason = fetch(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and "disabled" in reason
        _, text = fetch(f"http://127.0.0.1:{port}/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["vxcap_capture_up"].samples[0].value == 0
        assert fams["vxcap_ready"].samples[0].value == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        logs += [json.loads(line) for line in proc.stderr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    msgs = [r["msg"] for r in logs]
    assert any(m.startswith("capture disabled by USAGE_LOGGERS_DISABLE") for m in msgs)
    # the unknown VXCAP_ variable is warned about exactly once
    warned = [r for r in logs if r["level"] == "warning" and "VXCAP_BOGUS" in r["msg"]]
    assert len(warned) == 1
    assert proc.stdout.read() == b""  # stdout is for calls only


@pytest.mark.root
@pytest.mark.slow
def test_readyz_follows_the_sink(lab):
    from vxcap.testing.make_sample import AIOHTTP_HOST, Connection, request_bytes

    # No collector yet: the first POST fails, there is no spool, so the pod is not ready.
    vx = Running(lab, helm_env(VXCAP_FLUSH_INTERVAL="0.05", VXCAP_RETRY_BUDGET="60"))
    vx.wait_ready()

    async def one_call():
        c = await Connection(lab, lab.app_ip, 8080, []).open()
        await c.exchange(request_bytes("GET", "/items?id=1", AIOHTTP_HOST, []))
        await c.close()

    asyncio.run(one_call())
    vx.wait(lambda: vx.get("/readyz")[0] == 503, "/readyz 503 while the collector is down")
    status, reason = vx.get("/readyz")
    assert reason.startswith("sink unhealthy")
    assert vx.get("/healthz")[0] == 200  # alive all along: a restart would not help
    assert vx.value("vxcap_sink_failures_total", reason="connection") >= 1
    start_collector(lab)
    vx.wait(lambda: vx.get("/readyz")[0] == 200, "ready again once the collector answers", timeout=30)
    vx.wait(lambda: collector_stats(lab)["messages"] == 1, "the retried call delivered")
    assert vx.stop() == 0


# ---------------------------------------------------------------------------------------------- logs


def _record(msg, *args, level=logging.WARNING, name="vxcap.test", **extra):
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_warnings_are_rate_limited_per_key_with_a_suppressed_count():
    now = [0.0]
    f = RateLimitFilter(10.0, clock=lambda: now[0])
    assert f.filter(_record("collector answered %d", 503))
    assert not f.filter(_record("collector answered %d", 502))  # same template, same key
    assert f.filter(_record("another warning"))  # other keys are independent
    assert f.filter(_record("collector answered %d", 500, level=logging.INFO))  # info is never limited
    now[0] = 9.9
    assert not f.filter(_record("collector answered %d", 503))
    now[0] = 10.0
    rec = _record("collector answered %d", 503)
    assert f.filter(rec) and rec.suppressed == 2
    assert f.suppressed() == 2
    assert f.filter(_record("x", key="a")) and f.filter(_record("x", key="b"))  # explicit keys


def test_json_and_text_lines_never_show_bytes():
    body = b"password=hunter2"
    line = JsonFormatter().format(_record("bad message %s from %s", body, "10.0.0.1", suppressed=3,
                                          fields={"vni": 42}))
    rec = json.loads(line)
    assert rec["msg"] == "bad message <16 bytes> from 10.0.0.1"
    assert rec["level"] == "warning" and rec["logger"] == "vxcap.test" and rec["vni"] == 42
    assert rec["suppressed"] == 3 and rec["ts"].endswith("Z")
    text = TextFormatter().format(_record("payload %r", bytearray(b"secret"), fields={"n": 1}))
    assert "secret" not in text and "<6 bytes>" in text and text.endswith("n=1")


def test_setup_logging_goes_to_the_given_stream_with_levels():
    out = io.StringIO()
    setup_logging("warning", "json", stream=out)
    try:
        logging.getLogger("vxcap.x").info("hidden")
        logging.getLogger("vxcap.x").warning("shown %d", 1)
        logging.getLogger("vxcap.x").warning("shown %d", 2)  # rate-limited
    finally:
        setup_logging("info", "text", stream=sys.stderr)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["msg"] for r in lines] == ["shown 1"]
