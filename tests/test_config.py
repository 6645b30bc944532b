"""vxcap.config: every variable's syntax, range and one-line error, and Resurface's helm environment."""
from __future__ import annotations

import os
import pathlib
import ssl
import subprocess
import sys

import pytest

from vxcap import config as config_mod
from vxcap.config import (
    OPTIONS,
    Config,
    ConfigError,
    cgroup_cpu_limit,
    config_main,
    format_config,
    format_markdown,
    load_config,
)

REPO = pathlib.Path(__file__).resolve().parent.parent
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SIZE = "(bytes, or a whole number with a KiB, MiB or GiB suffix)"
BOOL = "true or false (also 1/0, yes/no)"
URL = "an http:// or https:// URL with a host"
VNIS = "VNIs from 0 to 16777215 separated by commas or spaces, -N to exclude N"
PORTS = "TCP ports from 1 to 65535 separated by commas or spaces"
DEV = "a network interface name of 1 to 15 characters without '/', ':' or spaces"
ADDR = "host:port or [IPv6]:port with a port from 1 to 65535, or empty to disable"
ENGINE = "mirror or vxlan (vxcap only captures VPC-mirrored traffic)"
TOKEN = "an HTTP header name (an RFC 9110 token)"
SPOOL = "an absolute path to a writable directory, or to one vxcap can create in a writable directory"

# (variable, bad value, the exact one-line error)
BAD = [
    ("USAGE_LOGGERS_URL", "ftp://db/message", f"USAGE_LOGGERS_URL='ftp://db/message': expected {URL}"),
    ("USAGE_LOGGERS_URL", "worker:7701/message", f"USAGE_LOGGERS_URL='worker:7701/message': expected {URL}"),
    ("USAGE_LOGGERS_URL", "http:///message", f"USAGE_LOGGERS_URL='http:///message': expected {URL}"),
    ("USAGE_LOGGERS_URL", "http://db:99999/message", f"USAGE_LOGGERS_URL='http://db:99999/message': expected {URL}"),
    # a refused URL is still masked in the message: it may carry a token
    ("USAGE_LOGGERS_URL", "ftp://u:s3cret@db/m?token=abc", f"USAGE_LOGGERS_URL='ftp://***@db/m?token=***': expected {URL}"),
    ("USAGE_LOGGERS_DISABLE", "maybe", f"USAGE_LOGGERS_DISABLE='maybe': expected {BOOL}"),
    ("USAGE_LOGGERS_BUNDLE_SIZE", "5MB", f"USAGE_LOGGERS_BUNDLE_SIZE='5MB': expected a size from 1KiB to 1GiB {SIZE}"),
    ("USAGE_LOGGERS_BUNDLE_SIZE", "1023", f"USAGE_LOGGERS_BUNDLE_SIZE='1023': expected a size from 1KiB to 1GiB {SIZE}"),
    ("USAGE_LOGGERS_BUNDLE_SIZE", "2GiB", f"USAGE_LOGGERS_BUNDLE_SIZE='2GiB': expected a size from 1KiB to 1GiB {SIZE}"),
    ("USAGE_LOGGERS_BUNDLE_SIZE", "1.5MiB", f"USAGE_LOGGERS_BUNDLE_SIZE='1.5MiB': expected a size from 1KiB to 1GiB {SIZE}"),
    ("USAGE_LOGGERS_BUNDLE_SIZE", "-1", f"USAGE_LOGGERS_BUNDLE_SIZE='-1': expected a size from 1KiB to 1GiB {SIZE}"),
    ("USAGE_LOGGERS_MESSAGE_QUEUE_SIZE", "0", "USAGE_LOGGERS_MESSAGE_QUEUE_SIZE='0': expected an integer from 1 to 1000000"),
    ("USAGE_LOGGERS_MESSAGE_QUEUE_SIZE", "1e3", "USAGE_LOGGERS_MESSAGE_QUEUE_SIZE='1e3': expected an integer from 1 to 1000000"),
    ("USAGE_LOGGERS_BUNDLE_QUEUE_SIZE", "100001", "USAGE_LOGGERS_BUNDLE_QUEUE_SIZE='100001': expected an integer from 1 to 100000"),
    ("USAGE_LOGGERS_BODY_LIMIT", "0", f"USAGE_LOGGERS_BODY_LIMIT='0': expected a size from 1 to 1GiB {SIZE}"),
    ("SNIFFER_ENGINE", "k8s", f"SNIFFER_ENGINE='k8s': expected {ENGINE}"),
    ("SNIFFER_ENGINE", "pcap", f"SNIFFER_ENGINE='pcap': expected {ENGINE}"),
    ("SNIFFER_MIRROR_VXLANPORT", "0", "SNIFFER_MIRROR_VXLANPORT='0': expected a UDP port from 1 to 65535"),
    ("SNIFFER_MIRROR_VXLANPORT", "65536", "SNIFFER_MIRROR_VXLANPORT='65536': expected a UDP port from 1 to 65535"),
    ("SNIFFER_MIRROR_VNIS", "16777216", f"SNIFFER_MIRROR_VNIS='16777216': expected {VNIS}"),
    ("SNIFFER_MIRROR_VNIS", "1;2", f"SNIFFER_MIRROR_VNIS='1;2': expected {VNIS}"),
    ("SNIFFER_MIRROR_VNIS", "7 -", f"SNIFFER_MIRROR_VNIS='7 -': expected {VNIS}"),
    ("SNIFFER_MIRROR_VNIS", "7,-7,8,-8", "SNIFFER_MIRROR_VNIS='7,-7,8,-8': expected no VNI both included and excluded (7, 8)"),
    ("APP_PORTS", "80,http", f"APP_PORTS='80,http': expected {PORTS}"),
    ("APP_PORTS", "0", f"APP_PORTS='0': expected {PORTS}"),
    ("APP_PORT", "70000", f"APP_PORT='70000': expected {PORTS}"),
    ("NET_DEVICE", "a-very-long-interface", f"NET_DEVICE='a-very-long-interface': expected {DEV}"),
    ("NET_DEVICE", "eth0:1", f"NET_DEVICE='eth0:1': expected {DEV}"),
    ("VPC_MIRROR_DEVICE", "../x", f"VPC_MIRROR_DEVICE='../x': expected {DEV}"),
    ("SNIFFER_REALIP_HEADER", "X Real IP", f"SNIFFER_REALIP_HEADER='X Real IP': expected {TOKEN}"),
    ("SNIFFER_REALIP_HEADER", "x-real-ip:", f"SNIFFER_REALIP_HEADER='x-real-ip:': expected {TOKEN}"),
    ("DYNO", "node\x01", "DYNO='node\\x01': expected text without control characters"),
    ("VXCAP_WORKERS", "abc", "VXCAP_WORKERS='abc': expected an integer from 1 to 256"),
    ("VXCAP_WORKERS", "0", "VXCAP_WORKERS='0': expected an integer from 1 to 256"),
    ("VXCAP_WORKERS", "257", "VXCAP_WORKERS='257': expected an integer from 1 to 256"),
    ("VXCAP_WORKERS", "2.5", "VXCAP_WORKERS='2.5': expected an integer from 1 to 256"),
    ("VXCAP_ENGINE", "pcap", "VXCAP_ENGINE='pcap': expected afpacket or udp"),
    ("VXCAP_RING_BLOCK_SIZE", "3MiB", f"VXCAP_RING_BLOCK_SIZE='3MiB': expected a power of two from 4KiB to 1GiB {SIZE}"),
    ("VXCAP_RING_BLOCK_SIZE", "2048", f"VXCAP_RING_BLOCK_SIZE='2048': expected a power of two from 4KiB to 1GiB {SIZE}"),
    ("VXCAP_RING_BLOCK_SIZE", "2GiB", f"VXCAP_RING_BLOCK_SIZE='2GiB': expected a power of two from 4KiB to 1GiB {SIZE}"),
    ("VXCAP_RING_BLOCKS", "0", "VXCAP_RING_BLOCKS='0': expected an integer from 1 to 65536"),
    ("VXCAP_RING_FRAME_SIZE", "65537", f"VXCAP_RING_FRAME_SIZE='65537': expected a size that is a multiple of 16 from 1KiB to 1GiB {SIZE}"),
    ("VXCAP_RING_FRAME_SIZE", "512", f"VXCAP_RING_FRAME_SIZE='512': expected a size that is a multiple of 16 from 1KiB to 1GiB {SIZE}"),
    ("VXCAP_RING_FRAME_SIZE", "8MiB", "VXCAP_RING_FRAME_SIZE='8MiB': expected at most VXCAP_RING_BLOCK_SIZE (4MiB), since a block holds whole frames"),
    ("VXCAP_RING_TIMEOUT_MS", "0", "VXCAP_RING_TIMEOUT_MS='0': expected an integer from 1 to 10000"),
    ("VXCAP_PROMISC", "on", f"VXCAP_PROMISC='on': expected {BOOL}"),
    ("VXCAP_GENEVE_PORT", "x", "VXCAP_GENEVE_PORT='x': expected a UDP port from 1 to 65535"),
    ("VXCAP_ENCAP", "gre", "VXCAP_ENCAP='gre': expected one of auto, vxlan or none"),
    ("VXCAP_MAX_CONNECTIONS", "16777217", "VXCAP_MAX_CONNECTIONS='16777217': expected an integer from 1 to 16777216"),
    ("VXCAP_MAX_BUFFERED_BYTES", "1KiB", f"VXCAP_MAX_BUFFERED_BYTES='1KiB': expected a size from 1MiB to 64GiB {SIZE}"),
    ("VXCAP_MAX_CONN_BUFFERED_BYTES", "1GiB", "VXCAP_MAX_CONN_BUFFERED_BYTES='1GiB': expected at most VXCAP_MAX_BUFFERED_BYTES (256MiB), since one connection's buffer is part of the total"),
    ("VXCAP_MAX_CONN_BUFFERED_BYTES", "100", f"VXCAP_MAX_CONN_BUFFERED_BYTES='100': expected a size from 4KiB to 1GiB {SIZE}"),
    ("VXCAP_MAX_HEADER_BYTES", "32MiB", f"VXCAP_MAX_HEADER_BYTES='32MiB': expected a size from 1KiB to 16MiB {SIZE}"),
    ("VXCAP_IDLE_TIMEOUT", "0", "VXCAP_IDLE_TIMEOUT='0': expected a number of seconds from 1 to 86400"),
    ("VXCAP_IDLE_TIMEOUT", "90s", "VXCAP_IDLE_TIMEOUT='90s': expected a number of seconds from 1 to 86400"),
    ("VXCAP_GAP_TIMEOUT", "nan", "VXCAP_GAP_TIMEOUT='nan': expected a number of seconds from 0.01 to 60"),
    ("VXCAP_GAP_TIMEOUT", "inf", "VXCAP_GAP_TIMEOUT='inf': expected a number of seconds from 0.01 to 60"),
    ("VXCAP_GAP_TIMEOUT", "0.001", "VXCAP_GAP_TIMEOUT='0.001': expected a number of seconds from 0.01 to 60"),
    ("VXCAP_RESPONSE_TIMEOUT", "-1", "VXCAP_RESPONSE_TIMEOUT='-1': expected a number of seconds from 1 to 3600"),
    ("VXCAP_FLUSH_INTERVAL", "1e-3", "VXCAP_FLUSH_INTERVAL='1e-3': expected a number of seconds from 0.01 to 60"),
    ("VXCAP_MAX_INFLIGHT", "65", "VXCAP_MAX_INFLIGHT='65': expected an integer from 1 to 64"),
    ("VXCAP_RETRY_BUDGET", "3601", "VXCAP_RETRY_BUDGET='3601': expected a number of seconds from 0 to 3600"),
    ("VXCAP_SPOOL_DIR", "/nonexistent/spool", f"VXCAP_SPOOL_DIR='/nonexistent/spool': expected {SPOOL}"),
    ("VXCAP_SPOOL_DIR", "spool", f"VXCAP_SPOOL_DIR='spool': expected {SPOOL}"),
    ("VXCAP_SPOOL_MAX_BYTES", "2TiB", f"VXCAP_SPOOL_MAX_BYTES='2TiB': expected a size from 1MiB to 1024GiB {SIZE}"),
    ("VXCAP_CA_FILE", "/nonexistent/ca.pem", "VXCAP_CA_FILE='/nonexistent/ca.pem': expected a readable PEM file of CA certificates"),
    ("VXCAP_METRICS_ADDR", "9108", f"VXCAP_METRICS_ADDR='9108': expected {ADDR}"),
    ("VXCAP_METRICS_ADDR", "::1:9108", f"VXCAP_METRICS_ADDR='::1:9108': expected {ADDR}"),
    ("VXCAP_METRICS_ADDR", "[zz::1]:9108", f"VXCAP_METRICS_ADDR='[zz::1]:9108': expected {ADDR}"),
    ("VXCAP_METRICS_ADDR", "0.0.0.0:0", f"VXCAP_METRICS_ADDR='0.0.0.0:0': expected {ADDR}"),
    ("VXCAP_METRICS_ADDR", "bad_host:9108", f"VXCAP_METRICS_ADDR='bad_host:9108': expected {ADDR}"),
    ("VXCAP_LOG_LEVEL", "trace", "VXCAP_LOG_LEVEL='trace': expected one of debug, info, warning or error"),
    ("VXCAP_LOG_FORMAT", "xml", "VXCAP_LOG_FORMAT='xml': expected json or text"),
    ("VXCAP_SHUTDOWN_TIMEOUT", "forever", "VXCAP_SHUTDOWN_TIMEOUT='forever': expected a number of seconds from 0 to 3600"),
    ("VXCAP_RELOAD_FILE", "relative/path.env", "VXCAP_RELOAD_FILE='relative/path.env': expected an absolute path"),
    ("VXCAP_CUSTOM_FIELDS", "vni,pod", "VXCAP_CUSTOM_FIELDS='vni,pod': expected a comma-separated list of: vni, mirror_source"),
    ("VXCAP_DECODE_DEPTH", "0", "VXCAP_DECODE_DEPTH='0': expected an integer from 1 to 16"),
    ("VXCAP_DECODE_DEPTH", "17", "VXCAP_DECODE_DEPTH='17': expected an integer from 1 to 16"),
]


@pytest.mark.parametrize("name,value,message", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_bad_value_gives_its_one_line_error(name, value, message):
    with pytest.raises(ConfigError) as info:
        load_config({name: value})
    assert str(info.value) == message
    assert "\n" not in str(info.value)
    assert info.value.variable == name


def test_every_variable_has_a_bad_case():
    # Table completeness: a variable added to OPTIONS without an error case fails here.
    covered = {name for name, _, _ in BAD}
    for opt in OPTIONS:
        if opt.name == "USAGE_LOGGERS_RULES":  # the rules module owns rule syntax errors
            continue
        assert opt.name in covered, opt.name


def test_unreadable_and_malformed_ca_file(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    for path in (bogus, tmp_path):  # junk, and a directory
        with pytest.raises(ConfigError, match=r"^VXCAP_CA_FILE='.*': expected a readable PEM file of CA certificates$"):
            load_config({"VXCAP_CA_FILE": str(path)})
    system_bundle = ssl.get_default_verify_paths().cafile
    if system_bundle and os.path.isfile(system_bundle):
        assert load_config({"VXCAP_CA_FILE": system_bundle}).ca_file == system_bundle


def test_spool_dir(tmp_path):
    file = tmp_path / "f"
    file.write_text("")
    for bad in (file, file / "sub", tmp_path / "a" / "b"):  # a file, under a file, two levels missing
        with pytest.raises(ConfigError, match=f"expected {SPOOL}$"):
            load_config({"VXCAP_SPOOL_DIR": str(bad)})
    assert load_config({"VXCAP_SPOOL_DIR": str(tmp_path)}).spool_dir == str(tmp_path)
    # created by the spool on first use, as under an emptyDir mounted at the parent
    assert load_config({"VXCAP_SPOOL_DIR": f"{tmp_path}/spool/"}).spool_dir == f"{tmp_path}/spool"


def test_defaults():
    cfg = load_config({})
    assert cfg == Config(workers=cfg.workers, host=cfg.host)
    assert cfg.url is None and cfg.rules_text == "" and cfg.disabled is False
    assert (cfg.bundle_size, cfg.message_queue_size, cfg.bundle_queue_size) == (5 * MiB, 1000, 128)
    assert cfg.body_limit == MiB and cfg.vxlan_port == 4789 and cfg.geneve_port == 6081
    assert cfg.vnis_include == cfg.vnis_exclude == cfg.app_ports == frozenset() and cfg.device is None
    assert 1 <= cfg.workers <= min(256, len(os.sched_getaffinity(0)))
    assert (cfg.engine, cfg.encap, cfg.ring_block_size, cfg.ring_blocks) == ("afpacket", "vxlan", 4 * MiB, 64)
    # the frame holds a whole GRO'd 64 KiB packet plus headers, TPACKET_ALIGNMENT-aligned, inside a block
    assert cfg.ring_frame_size > 64 * KiB + 14 + 48 + 20 and cfg.ring_frame_size % 16 == 0
    assert cfg.ring_frame_size <= cfg.ring_block_size
    assert (cfg.idle_timeout, cfg.gap_timeout, cfg.response_timeout, cfg.flush_interval) == (90, 2, 120, 1)
    assert cfg.max_conn_buffered_bytes <= cfg.max_buffered_bytes
    assert cfg.metrics_addr == ("0.0.0.0", 9108)
    assert cfg.shutdown_timeout < 30  # below Kubernetes' default grace period
    assert cfg.warnings == ()


HELM_ENV = {
    # As Resurface's chart renders its sniffer DaemonSet with sniffer.vpcmirror.enabled and provider=aws.
    "USAGE_LOGGERS_URL": "http://worker.resurface:7701/message",
    "USAGE_LOGGERS_RULES": "include default\\nallow_http_url\\n/request_header:x-api-key/ remove\n",
    "USAGE_LOGGERS_DISABLE": "",  # `{{ not .Values.sniffer.logger.enabled | default nil }}` renders empty
    "K8S_INPUT": "'--input-raw :80,8080 --input-raw-engine vxlan --input-raw-vxlan-port 4789 "
                 "--input-raw-vxlan-vni 123 --input-raw-vxlan-vni 456'",
    "SNIFFER_ENGINE": "mirror",
    "APP_PORTS": "80,8080",
    "SNIFFER_MIRROR_VXLANPORT": "4789",
    "SNIFFER_MIRROR_VNIS": "123 456 -789",
    "SNIFFER_DEBUG_ENABLED": "false",
    "SNIFFER_DEBUG_VERBOSITY": "0",
    "SNIFFER_PCAP_BUFFER_SIZE": "",
    "PATH": "/usr/bin",
    "HOSTNAME": "ip-10-0-1-7",
}


def test_resurface_helm_environment_loads():
    cfg = load_config(HELM_ENV)
    assert cfg.url == "http://worker.resurface:7701/message"
    assert cfg.rules_text == HELM_ENV["USAGE_LOGGERS_RULES"]  # raw: the rules module expands "\n"
    assert cfg.disabled is False
    assert cfg.sniffer_engine == "mirror"
    assert cfg.app_ports == frozenset({80, 8080})
    assert cfg.vnis_include == frozenset({123, 456}) and cfg.vnis_exclude == frozenset({789})
    assert cfg.vxlan_port == 4789
    assert cfg.warnings == ()


@pytest.mark.parametrize("raw,include,exclude", [
    ("", set(), set()),
    ("  ", set(), set()),
    ("1,2,3", {1, 2, 3}, set()),
    ("1 2\t3\n4", {1, 2, 3, 4}, set()),
    ("1, 2 ,,3", {1, 2, 3}, set()),
    ("-5", set(), {5}),
    ("0 16777215 -7", {0, 16777215}, {7}),
])
def test_vni_lists(raw, include, exclude):
    cfg = load_config({"SNIFFER_MIRROR_VNIS": raw})
    assert (cfg.vnis_include, cfg.vnis_exclude) == (frozenset(include), frozenset(exclude))


def test_sniffer_fallback_names_follow_the_shell_entrypoint():
    # ${APP_PORTS:-$APP_PORT}: an empty first name falls through to the second
    assert load_config({"APP_PORT": "80"}).app_ports == {80}
    assert load_config({"APP_PORTS": "", "APP_PORT": "80"}).app_ports == {80}
    assert load_config({"APP_PORTS": "443 8443", "APP_PORT": "80"}).app_ports == {443, 8443}
    assert load_config({"APP_PORTS": ""}).app_ports == frozenset()
    assert load_config({"VPC_MIRROR_DEVICE": "ens5"}).device == "ens5"
    assert load_config({"NET_DEVICE": "eth1", "VPC_MIRROR_DEVICE": "ens5"}).device == "eth1"
    assert load_config({"NET_DEVICE": "any"}).device is None
    assert load_config({"SNIFFER_ENGINE": "VXLAN"}).sniffer_engine == "mirror"


@pytest.mark.parametrize("raw,value", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True),
    ("false", False), ("0", False), ("No", False), ("", False),
])
def test_booleans(raw, value):
    assert load_config({"USAGE_LOGGERS_DISABLE": raw}).disabled is value


@pytest.mark.parametrize("raw,value", [
    ("4096", 4096), ("64KiB", 64 * KiB), ("64 kib", 64 * KiB), ("4MiB", 4 * MiB), ("1GiB", GiB),
])
def test_sizes(raw, value):
    assert load_config({"VXCAP_RING_BLOCK_SIZE": raw, "VXCAP_RING_FRAME_SIZE": "2KiB"}).ring_block_size == value


def test_block_smaller_than_default_frame_blames_the_block():
    with pytest.raises(ConfigError) as info:
        load_config({"VXCAP_RING_BLOCK_SIZE": "64KiB"})
    assert str(info.value) == (
        "VXCAP_RING_BLOCK_SIZE='64KiB': expected at least VXCAP_RING_FRAME_SIZE (65792), since a block holds whole frames")
    with pytest.raises(ConfigError) as info:
        load_config({"VXCAP_MAX_BUFFERED_BYTES": "1MiB"})
    assert str(info.value) == ("VXCAP_MAX_BUFFERED_BYTES='1MiB': expected at least VXCAP_MAX_CONN_BUFFERED_BYTES "
                               "(4MiB), since one connection's buffer is part of the total")


@pytest.mark.parametrize("raw,value", [
    ("0.0.0.0:9108", ("0.0.0.0", 9108)),
    ("127.0.0.1:1", ("127.0.0.1", 1)),
    ("[::]:9108", ("::", 9108)),
    ("[fe80::1]:9000", ("fe80::1", 9000)),
    ("localhost:9108", ("localhost", 9108)),
    (":9108", ("", 9108)),
    ("", None),
])
def test_metrics_addresses(raw, value):
    cfg = load_config({"VXCAP_METRICS_ADDR": raw})
    assert cfg.metrics_addr == value
    # what format_config prints loads back to the same value
    line = next(x for x in format_config(cfg).splitlines() if x.startswith("VXCAP_METRICS_ADDR="))
    assert load_config({"VXCAP_METRICS_ADDR": line.partition("=")[2]}).metrics_addr == value


def test_other_values():
    cfg = load_config({
        "SNIFFER_REALIP_HEADER": "X-Real-IP", "DYNO": "node-a", "VXCAP_WORKERS": "3",
        "VXCAP_CUSTOM_FIELDS": "mirror_source, vni", "VXCAP_GAP_TIMEOUT": ".5", "VXCAP_LOG_LEVEL": "DEBUG",
        "VXCAP_ENCAP": "auto", "VXCAP_ENGINE": "udp", "VXCAP_PROMISC": "yes",
    })
    assert cfg.realip_header == "x-real-ip" and cfg.host == "node-a" and cfg.workers == 3
    assert cfg.custom_fields == {"vni", "mirror_source"} and cfg.gap_timeout == 0.5
    assert (cfg.log_level, cfg.encap, cfg.engine, cfg.promisc) == ("debug", "auto", "udp", True)
    assert load_config({"DYNO": ""}).host == load_config({}).host  # empty = unset


def test_sniffer_promisc_and_pcap_buffer_map_but_never_refuse():
    assert load_config({"SNIFFER_PROMISC_ENABLED": "true"}).promisc is True
    assert load_config({"SNIFFER_PROMISC_ENABLED": "true", "VXCAP_PROMISC": "false"}).promisc is False
    cfg = load_config({"SNIFFER_PROMISC_ENABLED": "sure"})
    assert cfg.promisc is False
    assert cfg.warnings == ("SNIFFER_PROMISC_ENABLED='sure': expected true or false (also 1/0, yes/no) "
                            "(ignored, as Resurface's sniffer does)",)
    # the pcap buffer sizes the ring in whole blocks, unless VXCAP_RING_BLOCKS says otherwise
    assert load_config({"SNIFFER_PCAP_BUFFER_SIZE": "10MiB"}).ring_blocks == 3
    assert load_config({"SNIFFER_PCAP_BUFFER_SIZE": "10MiB", "VXCAP_RING_BLOCKS": "8"}).ring_blocks == 8
    cfg = load_config({"SNIFFER_PCAP_BUFFER_SIZE": "lots"})
    assert cfg.ring_blocks == 64 and len(cfg.warnings) == 1
    assert cfg.warnings[0].startswith("SNIFFER_PCAP_BUFFER_SIZE='lots': expected a size from 1MiB to 64GiB")


def test_unknown_vxcap_variables_warn():
    cfg = load_config({"VXCAP_FOO": "1", "VXCAP_WORKER": "2", "VXCAP_DEBUG_BUILD": "1", "OTHER_THING": "x"})
    assert cfg.warnings == (
        "VXCAP_FOO is not a vxcap setting (ignored)",
        "VXCAP_WORKER is not a vxcap setting (ignored); did you mean VXCAP_WORKERS?",
    )


SECRET_URL = "https://resurface:s3cr3t-t0ken@db.example.com:7701/message?token=abc123&x=1"


def test_secrets_are_masked():
    cfg = load_config({"USAGE_LOGGERS_URL": SECRET_URL})
    assert cfg.url == SECRET_URL  # the sink needs the real one
    for text in (format_config(cfg), repr(cfg)):
        assert "s3cr3t" not in text and "abc123" not in text and "resurface:" not in text
    assert "USAGE_LOGGERS_URL=https://***@db.example.com:7701/message?token=***&x=***\n" in format_config(cfg)


def test_format_config_lists_every_setting_and_reloads():
    env = dict(HELM_ENV, VXCAP_RING_FRAME_SIZE="2KiB", VXCAP_RING_BLOCK_SIZE="64KiB", VXCAP_GAP_TIMEOUT="0.25",
               VXCAP_CUSTOM_FIELDS="vni", SNIFFER_REALIP_HEADER="X-Real-IP", VXCAP_METRICS_ADDR="[::1]:9000")
    cfg = load_config(env)
    text = format_config(cfg)
    top = [line for line in text.splitlines() if not line.startswith("    ")]
    assert [line.partition("=")[0] for line in top] == [opt.name for opt in OPTIONS]
    # rules are shown with real newlines (continuations indented), one rule per line
    assert "USAGE_LOGGERS_RULES=include default\n    allow_http_url\n    /request_header:x-api-key/ remove\n" in text
    # every other line is a NAME=value that loads back to the same configuration
    reloaded = {k: v for k, _, v in (line.partition("=") for line in top)}
    reloaded["USAGE_LOGGERS_RULES"] = cfg.rules_text
    again = load_config(reloaded)
    assert dataclass_values(again) == dataclass_values(cfg)


def dataclass_values(cfg: Config) -> dict:
    return {k: v for k, v in vars(cfg).items() if k != "warnings"}


def test_cgroup_cpu_limit(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("max 100000\n")
    assert cgroup_cpu_limit(str(f)) is None
    f.write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(f)) == 2  # 1.5 CPUs: two workers, the second one half-busy
    f.write_text("50000 100000\n")
    assert cgroup_cpu_limit(str(f)) == 1
    assert cgroup_cpu_limit(str(tmp_path / "missing")) is None


@pytest.fixture
def clean_env(monkeypatch):
    """os.environ without any variable vxcap reads, whatever the machine running the tests has set."""
    read = {name for opt in OPTIONS for name in opt.env}
    for name in list(os.environ):
        if name in read or name.startswith(("VXCAP_", "SNIFFER_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_config_main_prints_the_configuration(clean_env, monkeypatch, capsys):
    monkeypatch.setenv("USAGE_LOGGERS_URL", SECRET_URL)
    monkeypatch.setenv("VXCAP_WORKERS", "2")
    monkeypatch.setenv("VXCAP_TYPO", "1")
    assert config_main([]) == 0
    out, err = capsys.readouterr()
    assert "VXCAP_WORKERS=2\n" in out and "s3cr3t" not in out
    assert err == "vxcap: warning: VXCAP_TYPO is not a vxcap setting (ignored)\n"


def test_config_main_refuses_a_bad_setting(clean_env, monkeypatch, capsys):
    monkeypatch.setenv("VXCAP_WORKERS", "abc")
    assert config_main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "vxcap: VXCAP_WORKERS='abc': expected an integer from 1 to 256\n"


def test_config_main_arguments(capsys):
    assert config_main(["--help"]) == 0
    assert "usage: vxcap config" in capsys.readouterr().out
    assert config_main(["--bogus"]) == 2
    assert "unexpected argument '--bogus'" in capsys.readouterr().err
    assert config_main(["--markdown"]) == 0
    assert capsys.readouterr().out == format_markdown()


def test_config_command_in_a_fresh_interpreter():
    # The module must work on its own (no import-time dependence on the capture stack).
    env = {"PATH": os.environ.get("PATH", ""), "VXCAP_WORKERS": "abc", "PYTHONPATH": str(REPO)}
    code = "import sys; from vxcap.config import config_main; sys.exit(config_main([]))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "vxcap: VXCAP_WORKERS='abc': expected an integer from 1 to 256\n"


def test_markdown_table_lists_every_variable():
    table = format_markdown()
    for opt in OPTIONS:
        for name in opt.env:
            assert f"`{name}`" in table
    for name, _ in config_mod.ACCEPTED_VARIABLES:
        assert f"`{name}`" in table
