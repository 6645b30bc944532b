"""Every setting of ``vxcap run``, typed, defaulted, documented and validated in one table.

vxcap is a drop-in for Resurface's network sniffer, so the sniffer's variables (SPEC section 4) keep their
names and meaning; vxcap's own knobs are ``VXCAP_*``. Each row of ``OPTIONS`` names the variable(s), the
``Config`` field(s) it fills, a parser that knows the accepted syntax and range, and the doc text. The same
rows produce the error messages, ``vxcap config`` output and the table in docs/deploy.md (``vxcap config
--markdown``), so the three cannot drift apart (gopacket ``afpacket/options.go``: one place, one precise
message per broken rule).

Reading rules, in the order they apply:

* Several names for one setting (``APP_PORTS`` then ``APP_PORT``): the first *non-empty* one wins, as the
  sniffer's shell entrypoint does with ``${APP_PORTS:-$APP_PORT}``.
* An empty value means "unset" (the default applies) unless the row gives empty a meaning of its own
  (``SNIFFER_MIRROR_VNIS``, ``APP_PORTS``, ``NET_DEVICE``, ``VXCAP_METRICS_ADDR``, ...). Helm renders a nil
  value as an empty string: Resurface's chart sets ``USAGE_LOGGERS_DISABLE`` to nil whenever the logger is on.
* A bad value is one ``ConfigError`` naming the variable, the value (masked when secret) and what is expected.
  Variables the reference sniffer itself ignores in mirror mode (``SNIFFER_PROMISC_ENABLED``,
  ``SNIFFER_PCAP_BUFFER_SIZE``) only warn when malformed: refusing to start where the sniffer starts would
  break the drop-in promise.
* Unknown ``VXCAP_*`` variables are reported in ``Config.warnings`` (a typo must not pass silently).
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import mmap
import os
import re
import socket
import ssl
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["Config", "ConfigError", "load_config", "format_config", "format_markdown", "config_main", "OPTIONS"]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

PAGE_SIZE = mmap.PAGESIZE
# linux/if_packet.h: every frame in a PACKET_RX_RING starts on a 16-byte boundary.
TPACKET_ALIGNMENT = 16
# A GRO'd UDP or TCP packet reaches 64 KiB of IP payload; the frame also carries the tpacket3_hdr (48 bytes),
# the sockaddr_ll (20), alignment padding and the 14-byte Ethernet header (+4 for a VLAN tag). 256 bytes of
# headroom covers them with room to spare and keeps the frame a multiple of TPACKET_ALIGNMENT.
FRAME_HEADROOM = 256
VNI_MAX = (1 << 24) - 1  # the VNI is a 24-bit field (RFC 7348 section 5)
WORKERS_MAX = 256
CUSTOM_FIELDS = ("vni", "mirror_source")

# VXCAP_* variables read outside this table (the build, the pure-Python twins, test knobs): never "unknown".
# Whoever adds such a switch adds its name here.
NON_RUNTIME_VARIABLES = frozenset({"VXCAP_DEBUG_BUILD", "VXCAP_PURE_PYTHON", "VXCAP_SINK_OUTAGE"})


class ConfigError(ValueError):
    """A setting is malformed; ``str()`` is one line: ``NAME='value': expected ...``."""

    def __init__(self, variable: str, shown_value: str, expected: str):
        self.variable = variable
        self.value = shown_value
        self.expected = expected
        super().__init__(f"{variable}={shown_value!r}: expected {expected}")


class _Invalid(Exception):
    """Raised by a parser; carries the "expected ..." text (the parser's own unless more precise)."""

    def __init__(self, expected: str | None = None):
        super().__init__(expected)
        self.expected = expected


# ---------------------------------------------------------------------------------------------- defaults


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """CPUs granted by a cgroup v2 CPU quota (``resources.limits.cpu``), rounded up; None when unlimited.

    os.sched_getaffinity() sees every CPU of the node inside a pod with a CPU *limit* (a CFS quota, not an
    affinity mask); one worker per node CPU would then be throttled, not parallel.
    """
    try:
        with open(path, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, limit)
    return max(1, min(WORKERS_MAX, cpus))


# ---------------------------------------------------------------------------------------------- Config


@dataclass(frozen=True)
class Config:
    """The effective configuration. Field defaults are the documented defaults (``Config()`` is valid)."""

    # Resurface's variables (SPEC section 4)
    url: str | None = None  # USAGE_LOGGERS_URL; None: messages go to stdout as NDJSON
    rules_text: str = ""  # USAGE_LOGGERS_RULES, raw: the rules module splits on newlines and literal "\n"
    disabled: bool = False  # USAGE_LOGGERS_DISABLE
    bundle_size: int = 5 * MiB
    message_queue_size: int = 1000
    bundle_queue_size: int = 128
    body_limit: int = 1 * MiB
    sniffer_engine: str = "mirror"
    vxlan_port: int = 4789
    vnis_include: frozenset[int] = frozenset()  # empty: every VNI
    vnis_exclude: frozenset[int] = frozenset()
    app_ports: frozenset[int] = frozenset()  # empty: every connection that looks like HTTP
    device: str | None = None  # None: every interface
    realip_header: str | None = None  # lower-cased header name
    host: str = field(default_factory=socket.gethostname)  # DYNO
    # vxcap's own
    workers: int = field(default_factory=default_workers)
    engine: str = "afpacket"
    ring_block_size: int = 4 * MiB
    ring_blocks: int = 64
    ring_frame_size: int = 64 * KiB + FRAME_HEADROOM
    ring_timeout_ms: int = 100
    promisc: bool = False
    geneve_port: int = 6081
    encap: str = "vxlan"
    max_connections: int = 262144
    max_buffered_bytes: int = 256 * MiB
    max_conn_buffered_bytes: int = 4 * MiB
    max_header_bytes: int = 64 * KiB
    idle_timeout: float = 90.0
    gap_timeout: float = 2.0
    response_timeout: float = 120.0
    flush_interval: float = 1.0
    max_inflight: int = 2
    retry_budget: float = 30.0
    spool_dir: str | None = None
    spool_max_bytes: int = 1 * GiB
    ca_file: str | None = None
    metrics_addr: tuple[str, int] | None = ("0.0.0.0", 9108)
    log_level: str = "info"
    log_format: str = "json"
    shutdown_timeout: float = 20.0
    reload_file: str | None = None
    custom_fields: frozenset[str] = frozenset()
    decode_depth: int = 4
    # what load_config noticed but did not refuse: unknown VXCAP_* names, malformed ignorable variables
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:  # a Config in a log line or traceback must not leak the URL's token
        body = ", ".join(
            f"{f.name}={(mask_url(self.url) if f.name == 'url' and self.url else getattr(self, f.name))!r}"
            for f in dataclasses.fields(self)
        )
        return f"Config({body})"


# ---------------------------------------------------------------------------------------------- parsers

SIZE_SYNTAX = "bytes, or a whole number with a KiB, MiB or GiB suffix"
_SIZE_RE = re.compile(r"(\d+)\s*(kib|mib|gib)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "kib": KiB, "mib": MiB, "gib": GiB}
_INT_RE = re.compile(r"[+]?\d+")
_NUMBER_RE = re.compile(r"[+]?(\d+(\.\d*)?|\.\d+)")
_SEPARATORS = re.compile(r"[\s,]+")
# RFC 9110 section 5.6.2: token = 1*tchar
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 1123 host name: dot-separated labels of 1-63 letters, digits and inner hyphens, 253 characters at most
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def format_size(n: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return str(n)


def format_seconds(v: float) -> str:
    return f"{v:g}"


def _items(raw: str) -> list[str]:
    return [item for item in _SEPARATORS.split(raw.strip()) if item]


class Parser:
    kind = "text"  # the "type" column of the docs table
    expected = "a value"

    def parse(self, raw: str) -> Any:
        raise NotImplementedError

    def show(self, value: Any) -> str:
        """Format a parsed value back in the variable's own syntax (``parse(show(v)) == v``)."""
        return "" if value is None else str(value)


class Int(Parser):
    kind = "integer"

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.expected = f"an integer from {lo} to {hi}"

    def parse(self, raw: str) -> int:
        s = raw.strip()
        if not _INT_RE.fullmatch(s) or not self.lo <= int(s) <= self.hi:
            raise _Invalid
        return int(s)


class Port(Int):
    kind = "port"

    def __init__(self) -> None:
        super().__init__(1, 65535)
        self.expected = "a UDP port from 1 to 65535"


class Size(Parser):
    kind = "size"

    def __init__(self, lo: int, hi: int, *, power_of_two: bool = False, multiple: int = 1, what: str = ""):
        self.lo, self.hi, self.power_of_two, self.multiple = lo, hi, power_of_two, multiple
        noun = what or ("a power of two" if power_of_two else "a size")
        if multiple > 1:
            noun += f" that is a multiple of {multiple}"
        self.expected = f"{noun} from {format_size(lo)} to {format_size(hi)} ({SIZE_SYNTAX})"

    def parse(self, raw: str) -> int:
        m = _SIZE_RE.fullmatch(raw.strip())
        if not m:
            raise _Invalid
        n = int(m.group(1)) * _SIZE_UNITS[m.group(2) and m.group(2).lower()]
        if not self.lo <= n <= self.hi or n % self.multiple or (self.power_of_two and n & (n - 1)):
            raise _Invalid
        return n

    def show(self, value: int) -> str:
        return format_size(value)


class Seconds(Parser):
    kind = "seconds"

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi
        self.expected = f"a number of seconds from {format_seconds(lo)} to {format_seconds(hi)}"

    def parse(self, raw: str) -> float:
        s = raw.strip()
        # the regex refuses nan, inf, exponents and signs: a timeout is written as plain seconds
        if not _NUMBER_RE.fullmatch(s) or not self.lo <= float(s) <= self.hi:
            raise _Invalid
        return float(s)

    def show(self, value: float) -> str:
        return format_seconds(value)


class Bool(Parser):
    kind = "boolean"
    expected = "true or false (also 1/0, yes/no)"
    _VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

    def parse(self, raw: str) -> bool:
        try:
            return self._VALUES[raw.strip().lower()]
        except KeyError:
            raise _Invalid from None

    def show(self, value: bool) -> str:
        return "true" if value else "false"


class Choice(Parser):
    kind = "choice"

    def __init__(self, *values: str, aliases: Mapping[str, str] | None = None, note: str = ""):
        self.values = values
        self.aliases = dict(aliases or {})
        accepted = [*values, *self.aliases]
        self.expected = (", ".join(accepted[:-1]) + " or " + accepted[-1]) if len(accepted) > 1 else accepted[0]
        self.expected = "one of " + self.expected if len(accepted) > 2 else self.expected
        if note:
            self.expected += f" ({note})"

    def parse(self, raw: str) -> str:
        s = raw.strip().lower()
        if s in self.values:
            return s
        if s in self.aliases:
            return self.aliases[s]
        raise _Invalid


class Ports(Parser):
    kind = "port list"
    expected = "TCP ports from 1 to 65535 separated by commas or spaces"

    def parse(self, raw: str) -> frozenset[int]:
        ports = set()
        for item in _items(raw):
            if not _INT_RE.fullmatch(item) or not 1 <= int(item) <= 65535:
                raise _Invalid
            ports.add(int(item))
        return frozenset(ports)

    def show(self, value: frozenset[int]) -> str:
        return ",".join(map(str, sorted(value)))


class Vnis(Parser):
    kind = "VNI list"
    expected = f"VNIs from 0 to {VNI_MAX} separated by commas or spaces, -N to exclude N"

    def parse(self, raw: str) -> tuple[frozenset[int], frozenset[int]]:
        include, exclude = set(), set()
        for item in _items(raw):
            negative = item.startswith("-")
            digits = item[1:] if negative else item
            if not digits.isascii() or not digits.isdigit() or int(digits) > VNI_MAX:
                raise _Invalid
            (exclude if negative else include).add(int(digits))
        both = include & exclude
        if both:
            raise _Invalid(f"no VNI both included and excluded ({', '.join(map(str, sorted(both)))})")
        return frozenset(include), frozenset(exclude)

    def show(self, value: tuple[frozenset[int], frozenset[int]]) -> str:
        include, exclude = value
        return ",".join([*map(str, sorted(include)), *(f"-{v}" for v in sorted(exclude))])


class Url(Parser):
    kind = "URL"
    expected = "an http:// or https:// URL with a host"

    def parse(self, raw: str) -> str:
        s = raw.strip()
        try:
            parts = urlsplit(s)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise _Invalid from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname or any(c.isspace() for c in s):
            raise _Invalid
        return s

    def show(self, value: str | None) -> str:
        return "" if value is None else mask_url(value)


class Text(Parser):
    kind = "text"
    expected = "text without control characters"

    def parse(self, raw: str) -> str:
        s = raw.strip()
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
            raise _Invalid
        return s


class Rules(Parser):
    kind = "rules"
    expected = ""  # never refused here: the rules module reports its own parse errors

    def parse(self, raw: str) -> str:
        # Kept verbatim: the rules module owns the syntax (literal "\n", file://, include ...).
        return raw

    def show(self, value: str) -> str:
        # Real newlines, continuation lines indented so that every setting still starts a line at column 0.
        return "\n    ".join(value.replace("\\n", "\n").strip("\n").split("\n"))


class HeaderName(Parser):
    kind = "header name"
    expected = "an HTTP header name (an RFC 9110 token)"

    def parse(self, raw: str) -> str:
        s = raw.strip()
        if not _TOKEN_RE.fullmatch(s):
            raise _Invalid
        return s.lower()  # Resurface's detail keys carry lower-cased header names


class Device(Parser):
    kind = "interface"
    expected = "a network interface name of 1 to 15 characters without '/', ':' or spaces"

    def parse(self, raw: str) -> str | None:
        s = raw.strip()
        if s in ("", "any"):  # pcap's spelling of "every interface"
            return None
        # IFNAMSIZ is 16 including the NUL; dev_valid_name() refuses "/", ":" (alias syntax) and blanks
        if len(s) > 15 or s in (".", "..") or any(c in "/:" or c.isspace() for c in s) or not s.isprintable():
            raise _Invalid
        return s


class Directory(Parser):
    kind = "path"
    expected = "an absolute path to a writable directory, or to one vxcap can create in a writable directory"

    def parse(self, raw: str) -> str:
        # A directory that does not exist yet is fine (the spool creates it) if its parent is writable: an
        # emptyDir mounted at /var/spool lets VXCAP_SPOOL_DIR=/var/spool/vxcap work under a read-only root.
        s = os.path.normpath(raw.strip())
        existing = s if os.path.exists(s) else os.path.dirname(s)
        if not os.path.isabs(s) or not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise _Invalid
        return s


class AbsPath(Parser):
    kind = "path"
    expected = "an absolute path"

    def parse(self, raw: str) -> str | None:
        s = raw.strip()
        if not s:
            return None
        if not os.path.isabs(s):
            raise _Invalid
        return s


class CaFile(Parser):
    kind = "path"
    expected = "a readable PEM file of CA certificates"

    def parse(self, raw: str) -> str:
        s = raw.strip()
        try:
            # Loading it is the only honest readability test (os.access says yes to root for any mode).
            ssl.create_default_context().load_verify_locations(cafile=s)
        except (OSError, ssl.SSLError, ValueError):
            raise _Invalid from None
        return s


class ListenAddr(Parser):
    kind = "host:port"
    expected = "host:port or [IPv6]:port with a port from 1 to 65535, or empty to disable"

    def parse(self, raw: str) -> tuple[str, int] | None:
        s = raw.strip()
        if not s:
            return None
        host, sep, port = s.rpartition(":")
        if not sep or not _INT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
            raise _Invalid
        if host.startswith("[") and host.endswith("]"):
            try:
                host = str(ipaddress.IPv6Address(host[1:-1]))
            except ValueError:
                raise _Invalid from None
        elif host and not _HOSTNAME_RE.fullmatch(host):  # an IPv4 literal is a valid hostname spelling too
            raise _Invalid
        return host, int(port)

    def show(self, value: tuple[str, int] | None) -> str:
        if value is None:
            return ""
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FieldList(Parser):
    kind = "list"

    def __init__(self, *names: str):
        self.names = names
        self.expected = "a comma-separated list of: " + ", ".join(names)

    def parse(self, raw: str) -> frozenset[str]:
        items = [item.lower() for item in _items(raw)]
        if any(item not in self.names for item in items):
            raise _Invalid
        return frozenset(items)

    def show(self, value: frozenset[str]) -> str:
        return ",".join(n for n in self.names if n in value)


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Option:
    env: tuple[str, ...]  # first non-empty one wins; later names are Resurface's fallbacks
    fields: tuple[str, ...]  # Config fields filled (two for the VNI list)
    parser: Parser
    doc: str
    group: str  # "resurface" or "vxcap"
    empty_is_default: bool = True  # False: an empty value is parsed (it means something of its own)
    secret: bool = False
    default_doc: str | None = None  # when the default is computed or reads better in words
    lenient: frozenset[str] = frozenset()  # names whose malformed values warn instead of failing

    @property
    def name(self) -> str:
        return self.env[0]


def _o(env: str | tuple[str, ...], fields: str | tuple[str, ...], parser: Parser, doc: str, group: str,
       **kw: Any) -> Option:
    return Option(
        env=(env,) if isinstance(env, str) else env,
        fields=(fields,) if isinstance(fields, str) else fields,
        parser=parser, doc=doc, group=group, **kw,
    )


R, V = "resurface", "vxcap"
OPTIONS: tuple[Option, ...] = (
    _o("USAGE_LOGGERS_URL", "url", Url(),
       "Capture URL of the Resurface database, e.g. `http://worker.resurface:7701/message`. An `http:` URL "
       "also needs the `allow_http_url` rule. Unset or empty: messages are printed to stdout as NDJSON. Its "
       "userinfo and query string are masked in output.", R, secret=True, default_doc="stdout"),
    _o("USAGE_LOGGERS_RULES", "rules_text", Rules(),
       "Logging rules; real newlines and literal `\\n` both separate rules; `file://PATH` loads a file. "
       "Empty: the `strict` set.", R, empty_is_default=False, default_doc="(strict)"),
    _o("USAGE_LOGGERS_DISABLE", "disabled", Bool(), "`true` turns capture off (the pod stays up and ready).", R),
    _o("USAGE_LOGGERS_BUNDLE_SIZE", "bundle_size", Size(1 * KiB, 1 * GiB),
       "Largest NDJSON batch sent in one POST (before compression).", R),
    _o("USAGE_LOGGERS_MESSAGE_QUEUE_SIZE", "message_queue_size", Int(1, 1_000_000),
       "Messages waiting to be batched; when full, new messages are dropped and counted.", R),
    _o("USAGE_LOGGERS_BUNDLE_QUEUE_SIZE", "bundle_queue_size", Int(1, 100_000),
       "Batches waiting to be sent.", R),
    _o("USAGE_LOGGERS_BODY_LIMIT", "body_limit", Size(1, 1 * GiB),
       "Longest request or response body kept in a message; longer bodies are cut.", R),
    _o("SNIFFER_ENGINE", "sniffer_engine",
       Choice("mirror", aliases={"vxlan": "mirror"}, note="vxcap only captures VPC-mirrored traffic"),
       "Capture mode; vxcap only does Resurface's VPC-mirror mode.", R),
    _o("SNIFFER_MIRROR_VXLANPORT", "vxlan_port", Port(), "UDP port of the mirrored VXLAN traffic.", R),
    _o("SNIFFER_MIRROR_VNIS", ("vnis_include", "vnis_exclude"), Vnis(),
       "VNIs (one per mirror session) to capture, comma- or space-separated; `-N` excludes N. Empty: all.",
       R, empty_is_default=False, default_doc="(all)"),
    _o(("APP_PORTS", "APP_PORT"), "app_ports", Ports(),
       "Application ports whose connections are reassembled. Empty: every connection that looks like HTTP.",
       R, empty_is_default=False, default_doc="(all)"),
    _o(("NET_DEVICE", "VPC_MIRROR_DEVICE"), "device", Device(),
       "Interface receiving the mirrored VXLAN packets. Empty or `any`: every interface.",
       R, empty_is_default=False, default_doc="(all)"),
    _o("SNIFFER_REALIP_HEADER", "realip_header", HeaderName(),
       "Add this request header carrying the client's IP address.", R, default_doc="(none)"),
    _o("DYNO", "host", Text(), "Value of the `host` detail of every message.", R,
       default_doc="host name (the node's, with hostNetwork)"),
    _o("VXCAP_WORKERS", "workers", Int(1, WORKERS_MAX),
       "Capture workers running in parallel; each VXLAN flow stays on one worker.", V,
       default_doc="CPUs usable: affinity, capped by the cgroup CPU limit"),
    _o("VXCAP_ENGINE", "engine", Choice("afpacket", "udp"),
       "`afpacket`: TPACKET_V3 ring, nothing is cut (needs CAP_NET_RAW). `udp`: a plain UDP socket on the "
       "VXLAN port, no capability, slower.", V),
    _o("VXCAP_RING_BLOCK_SIZE", "ring_block_size", Size(PAGE_SIZE, 1 * GiB, power_of_two=True),
       "Ring block size: a power of two, so a multiple of the page size (packet_mmap.txt).", V),
    _o(("VXCAP_RING_BLOCKS",), "ring_blocks", Int(1, 65536),
       "Blocks per ring; a ring locks blocks x block size of memory. Unset: sized from "
       "`SNIFFER_PCAP_BUFFER_SIZE` when that is given.", V),
    _o("VXCAP_RING_FRAME_SIZE", "ring_frame_size", Size(1 * KiB, 1 * GiB, multiple=TPACKET_ALIGNMENT),
       "Largest frame: 64 KiB + 256 bytes of headroom so GRO'd 64 KiB packets are not cut; a multiple of 16 "
       "(TPACKET_ALIGNMENT), at most the block size.", V),
    _o("VXCAP_RING_TIMEOUT_MS", "ring_timeout_ms", Int(1, 10_000),
       "Milliseconds before the kernel hands over a block that is not full (latency at low traffic).", V),
    _o(("VXCAP_PROMISC", "SNIFFER_PROMISC_ENABLED"), "promisc", Bool(),
       "Promiscuous mode (needs NET_ADMIN). Mirrored VXLAN is addressed to the target ENI, so not needed.",
       V, lenient=frozenset({"SNIFFER_PROMISC_ENABLED"})),
    _o("VXCAP_GENEVE_PORT", "geneve_port", Port(), "UDP port recognised as GENEVE (Gateway Load Balancer).", V),
    _o("VXCAP_ENCAP", "encap", Choice("auto", "vxlan", "none"),
       "Outer encapsulation: `vxlan` (VPC mirroring), `auto` (VXLAN or GENEVE by port), `none` (plain "
       "traffic, for tests).", V),
    _o("VXCAP_MAX_CONNECTIONS", "max_connections", Int(1, 1 << 24),
       "TCP connections tracked at once, a hard limit: past it new connections are dropped and counted.", V),
    _o("VXCAP_MAX_BUFFERED_BYTES", "max_buffered_bytes", Size(1 * MiB, 64 * GiB),
       "Out-of-order bytes held by all connections together; past it gaps are skipped.", V),
    _o("VXCAP_MAX_CONN_BUFFERED_BYTES", "max_conn_buffered_bytes", Size(4 * KiB, 1 * GiB),
       "Out-of-order bytes held by one connection; at most VXCAP_MAX_BUFFERED_BYTES.", V),
    _o("VXCAP_MAX_HEADER_BYTES", "max_header_bytes", Size(1 * KiB, 16 * MiB),
       "Longest HTTP head (request line + headers); longer messages are skipped.", V),
    _o("VXCAP_IDLE_TIMEOUT", "idle_timeout", Seconds(1, 86400),
       "A connection without packets for this long is closed (capture time).", V),
    _o("VXCAP_GAP_TIMEOUT", "gap_timeout", Seconds(0.01, 60),
       "How long a missing segment is awaited before it is skipped: behind a load balancer reordering lasts "
       "milliseconds, and a segment lost before the mirror point is retransmitted after one RTO (1 s "
       "initially, RFC 6298); 2 s covers that and keeps buffers short.", V),
    _o("VXCAP_RESPONSE_TIMEOUT", "response_timeout", Seconds(1, 3600),
       "A request without a response after this long is dropped (Resurface's sniffer: 2 minutes).", V),
    _o("VXCAP_FLUSH_INTERVAL", "flush_interval", Seconds(0.01, 60),
       "A batch is sent after this long even if not full (Resurface's loggers: 1 s).", V),
    _o("VXCAP_MAX_INFLIGHT", "max_inflight", Int(1, 64), "POSTs in flight to the capture URL at once.", V),
    _o("VXCAP_RETRY_BUDGET", "retry_budget", Seconds(0, 3600),
       "How long a failed batch is retried before it is spooled or dropped (counted).", V),
    _o("VXCAP_SPOOL_DIR", "spool_dir", Directory(),
       "Directory where batches wait while the database is unreachable (an emptyDir with a read-only "
       "root). Unset: no spool, such batches are dropped and counted.", V, default_doc="(none)"),
    _o("VXCAP_SPOOL_MAX_BYTES", "spool_max_bytes", Size(1 * MiB, 1024 * GiB),
       "Largest spool; the oldest batches go first.", V),
    _o("VXCAP_CA_FILE", "ca_file", CaFile(),
       "PEM CA bundle trusted for an https capture URL, instead of the system's.", V, default_doc="(system)"),
    _o("VXCAP_METRICS_ADDR", "metrics_addr", ListenAddr(),
       "Address of the Prometheus `/metrics`, `/healthz` and `/readyz` endpoints; `[v6]:port` for IPv6, "
       "empty disables.", V, empty_is_default=False),
    _o("VXCAP_LOG_LEVEL", "log_level", Choice("debug", "info", "warning", "error"), "Log threshold.", V),
    _o("VXCAP_LOG_FORMAT", "log_format", Choice("json", "text"),
       "`json`: one object per line for log collectors; `text` for people.", V),
    _o("VXCAP_SHUTDOWN_TIMEOUT", "shutdown_timeout", Seconds(0, 3600),
       "After SIGTERM, time to flush batches before exiting; keep below the pod's "
       "terminationGracePeriodSeconds (30 by default).", V),
    _o("VXCAP_RELOAD_FILE", "reload_file", AbsPath(),
       "File of NAME=value lines (SNIFFER_MIRROR_VNIS, APP_PORTS, USAGE_LOGGERS_RULES) overriding the "
       "environment; re-read on SIGHUP (docs/operations.md).", V, default_doc="(none)"),
    _o("VXCAP_CUSTOM_FIELDS", "custom_fields", FieldList(*CUSTOM_FIELDS),
       "Opt-in `custom_field:` details: `vni` (mirror session), `mirror_source` (outer source address).",
       V, default_doc="(none)"),
    _o("VXCAP_DECODE_DEPTH", "decode_depth", Int(1, 16),
       "Nested encapsulations decoded (VXLAN, VLAN, GENEVE...) before a packet is dropped as too deep.", V),
)

# Read elsewhere: Resurface's sniffer variables accepted so that its chart's environment loads unchanged, and
# vxcap switches owned by other modules.
ACCEPTED_VARIABLES: tuple[tuple[str, str], ...] = (
    ("K8S_INPUT", "ignored: the sniffer's k8s-mode flags (the chart also sets it in mirror mode)"),
    ("SNIFFER_DEBUG_*", "ignored: use VXCAP_LOG_LEVEL=debug"),
    ("SNIFFER_PROMISC_ENABLED", "fallback for VXCAP_PROMISC (a malformed value only warns)"),
    ("SNIFFER_PCAP_BUFFER_SIZE", "a size; when VXCAP_RING_BLOCKS is unset, the ring gets enough blocks to "
                                 "hold it (a malformed value only warns)"),
    ("VXCAP_PURE_PYTHON", "`1` runs the pure-Python twins of the native stages (debugging; much slower)"),
)

_FIELD_OPTION = {f: opt for opt in OPTIONS for f in opt.fields}
assert set(_FIELD_OPTION) == {f.name for f in dataclasses.fields(Config)} - {"warnings"}, "OPTIONS vs Config"


def _default(opt: Option) -> Any:
    values = []
    for name in opt.fields:
        f = next(f for f in dataclasses.fields(Config) if f.name == name)
        values.append(f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    return values[0] if len(values) == 1 else tuple(values)


# ---------------------------------------------------------------------------------------------- loading


def mask_url(url: str) -> str:
    """Hide the URL's userinfo (``user:token@``) and query values, where tokens travel."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
        if parts.query and not query:
            query = "***"
        return urlunsplit((parts.scheme, netloc, parts.path, query, "***" if parts.fragment else ""))
    except ValueError:
        return "***"


def _shown(opt: Option, raw: str) -> str:
    return mask_url(raw) if opt.secret else raw


def _lookup(opt: Option, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, raw value) that decides this option, or None for the default."""
    present = [(name, environ[name]) for name in opt.env if name in environ]
    for name, raw in present:
        if raw.strip():
            return name, raw
    if present and not opt.empty_is_default:
        return present[0]
    return None


def load_config(environ: Mapping[str, str] = os.environ) -> Config:
    """Build the Config from the environment; raises ConfigError (one line) on the first bad setting."""
    env = environ
    values: dict[str, Any] = {}
    warnings: list[str] = []
    origin: dict[str, str] = {}  # field -> variable that set it (absent: default)
    for opt in OPTIONS:
        found = _lookup(opt, env)
        value: Any
        if found is None:
            value = _default(opt)
        else:
            name, raw = found
            try:
                value = opt.parser.parse(raw)
            except _Invalid as e:
                error = ConfigError(name, _shown(opt, raw), e.expected or opt.parser.expected)
                if name not in opt.lenient:
                    raise error from None
                warnings.append(f"{error} (ignored, as Resurface's sniffer does)")
                value = _default(opt)
            else:
                for f in opt.fields:
                    origin[f] = name
        if len(opt.fields) == 1:
            values[opt.fields[0]] = value
        else:
            values.update(zip(opt.fields, value))

    _apply_pcap_buffer_size(env, values, origin, warnings)
    _check_together(env, values, origin)
    warnings.extend(_unknown_variables(env))
    return Config(**values, warnings=tuple(warnings))


def _apply_pcap_buffer_size(env: Mapping[str, str], values: dict[str, Any], origin: dict[str, str],
                            warnings: list[str]) -> None:
    raw = env.get("SNIFFER_PCAP_BUFFER_SIZE", "")
    if not raw.strip() or "ring_blocks" in origin:
        return
    parser = Size(1 * MiB, 64 * GiB)
    try:
        total = parser.parse(raw)
    except _Invalid:
        warnings.append(f"{ConfigError('SNIFFER_PCAP_BUFFER_SIZE', raw, parser.expected)} (ignored)")
        return
    values["ring_blocks"] = min(65536, max(1, -(-total // values["ring_block_size"])))


def _check_together(env: Mapping[str, str], values: dict[str, Any], origin: dict[str, str]) -> None:
    """Rules between settings; the error names the variable the user set (the frame size if both were)."""

    def fail(small: str, big: str, reason: str) -> None:
        blame = small if small in origin or big not in origin else big
        other = big if blame == small else small
        opt, other_opt = _FIELD_OPTION[blame], _FIELD_OPTION[other]
        bound = other_opt.parser.show(values[other])
        word = "at most" if blame == small else "at least"
        expected = f"{word} {other_opt.name} ({bound}), since {reason}"
        raise ConfigError(origin[blame], _shown(opt, env[origin[blame]]), expected)

    if values["ring_frame_size"] > values["ring_block_size"]:
        fail("ring_frame_size", "ring_block_size", "a block holds whole frames")
    if values["max_conn_buffered_bytes"] > values["max_buffered_bytes"]:
        fail("max_conn_buffered_bytes", "max_buffered_bytes", "one connection's buffer is part of the total")


def _unknown_variables(env: Mapping[str, str]) -> list[str]:
    known = {name for opt in OPTIONS for name in opt.env} | NON_RUNTIME_VARIABLES
    out = []
    for name in sorted(env):
        if name.startswith("VXCAP_") and name not in known:
            # compare what follows the shared prefix, or every name would look close to every other
            suffixes = {k[len("VXCAP_"):]: k for k in known if k.startswith("VXCAP_")}
            close = difflib.get_close_matches(name[len("VXCAP_"):], sorted(suffixes), n=1, cutoff=0.75)
            hint = f"; did you mean {suffixes[close[0]]}?" if close else ""
            out.append(f"{name} is not a vxcap setting (ignored){hint}")
    return out


# ---------------------------------------------------------------------------------------------- output


def format_config(cfg: Config) -> str:
    """The effective configuration: one ``NAME=value`` per setting, secrets masked, rules on several lines."""
    lines = []
    for opt in OPTIONS:
        values = tuple(getattr(cfg, f) for f in opt.fields)
        value = values[0] if len(values) == 1 else values
        lines.append(f"{opt.name}={opt.parser.show(value)}")
    return "\n".join(lines) + "\n"


def format_markdown() -> str:
    """The docs table of every variable (docs/deploy.md embeds it verbatim; a test keeps them equal)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for opt in OPTIONS:
        names = f"`{opt.env[0]}`" + "".join(f" (`{n}`)" for n in opt.env[1:])
        if opt.default_doc is not None:
            default = opt.default_doc
        else:
            default = f"`{opt.parser.show(_default(opt))}`" if opt.parser.show(_default(opt)) else "(none)"
        kind = opt.parser.kind
        doc = f"{opt.doc} Accepts {opt.parser.expected}." if opt.parser.expected else opt.doc
        rows.append(f"| {names} | {cell(kind)} | {cell(default)} | {cell(doc)} |")
    for name, doc in ACCEPTED_VARIABLES:
        rows.append(f"| `{name}` | accepted | | {cell(doc)} |")
    return "\n".join(rows) + "\n"


CONFIG_USAGE = """usage: vxcap config [--markdown]

Print the effective configuration read from the environment (secrets masked), one NAME=value per line;
exit status 2 and one line on stderr if a setting is invalid. --markdown prints the table of every variable."""


def config_main(argv: list[str]) -> int:
    """``vxcap config``."""
    if argv in (["-h"], ["--help"]):
        print(CONFIG_USAGE)
        return 0
    if argv == ["--markdown"]:
        sys.stdout.write(format_markdown())
        return 0
    if argv:
        print(f"vxcap config: unexpected argument {argv[0]!r}\n{CONFIG_USAGE}", file=sys.stderr)
        return 2
    try:
        cfg = load_config()
    except ConfigError as e:
        print(f"vxcap: {e}", file=sys.stderr)
        return 2
    for warning in cfg.warnings:
        print(f"vxcap: warning: {warning}", file=sys.stderr)
    sys.stdout.write(format_config(cfg))
    return 0
