"""A VPC Traffic Mirroring session rebuilt from kernel parts, in three network namespaces (root only).

Topology (addresses are assigned inside the namespaces only; nothing leaves them)::

    [client] eth0 --- application link (app_mtu) --- eth0 [app] mir0 --- mirror path (mirror_mtu) --- eth0 [capture]
     10.11.1.1/24, fd00:11:1::1/64     10.11.1.2/24, fd00:11:1::2/64  10.11.2.1                  10.11.2.2
                                                        |  ^
                                clsact on app eth0:     |  |  vxm0: VXLAN id=vni remote 10.11.2.2 dstport 4789
                                ingress + egress  ------+--+  (vxm1: second session, id=second_vni)
                                mirred mirror -> vxm0

AWS copies every frame crossing the source ENI, wraps it in VXLAN (RFC 7348) with the session's VNI and
sends it over UDP 4789 to the target. Here the source ENI is ``app``'s ``eth0``: a ``clsact`` qdisc
(tc-bpf(8) "clsact") gives it an ingress and an egress hook, and on each a catch-all u32 filter runs
``action mirred egress mirror dev vxm0`` (tc-mirred(8): "mirror" sends a copy, the original goes on),
so both directions reach the kernel VXLAN device (ip-link(8) "VXLAN Type Support"), which encapsulates
them towards the capture namespace. vxcap runs in ``capture`` (``ns_capture``), reading ``eth0`` with an
AF_PACKET socket or binding a UDP socket to port 4789 there.

API::

    with MirrorLab(vni=42, second_vni=None, mirror_mtu=9001, app_mtu=1500, ipv6=True,
                   mirror_ipv6=False, packet_length=None, wire_frames=True) as lab:
        lab.start_nginx()                 # port 80, config from vxcap.testing.apps.write_nginx_site
        lab.start_aiohttp()               # port 8080, vxcap.testing.apps
        cap = lab.tcpdump("capture", "eth0", "/tmp/x.pcap")        # filter "udp port 4789"
        sock = lab.connect("client", lab.app_ip, 8080)            # socket living in the client namespace
        lab.run_in("client", ["curl", ...]) / lab.popen_in("app", [...])   # argv in a namespace
        lab.call_in("capture", fn, *args)  # run fn in a thread switched into that namespace (sockets made
                                           # there stay in it: how a test opens an AF_PACKET socket)
        stats = cap.stop()                # waits until the file stops growing; CaptureStats
    # close(): every process started here is killed, then the namespaces (and their links) are deleted.

Properties: ``ns_client``, ``ns_app``, ``ns_capture`` (names for ``ip netns exec``); ``client_ip``,
``client_ip6``, ``app_ip``, ``app_ip6`` (application link); ``app_mirror_ip`` / ``app_mirror_ip6`` (VXLAN
source), ``capture_ip`` (VXLAN destination: ``mirror_ip``, or ``mirror_ip6`` when ``mirror_ipv6``);
``capture_iface`` (``"eth0"``); ``vnis``; ``vxlan_mtu``; ``tmpdir`` (removed by ``close()``).
Role names ``"client"``, ``"app"``, ``"capture"`` or full namespace names are accepted wherever ``ns``
is asked for.

Faithfulness and its limits:

* ``wire_frames=True`` (default) sets ``gso_max_segs 1`` on both ends of the application link, so TCP
  hands the veth one MSS per packet and the mirror copies wire-sized frames, as from a real NIC. Without
  it, veth passes 64 KB GSO super-packets and the mirror would copy those whole.
* The VXLAN device's MTU is ``mirror_mtu`` minus the encapsulation (50 bytes over IPv4, 70 over IPv6),
  so a 1514-byte mirrored frame travels whole on the 9001-byte mirror path, as on AWS.
* AWS truncates a mirrored packet to the session's "packet length" and to the target's MTU. tc-mirred(8)
  cannot cut a packet (no length argument), and the kernel VXLAN device fragments the outer IPv4 packet
  when it is too big (``df unset``, the default in ip-link(8)) instead. Truncation in the kernel would
  need an eBPF program (cls_bpf direct-action with ``bpf_skb_change_tail`` then ``bpf_clone_redirect``),
  which needs a BPF compiler this machine lacks. So ``packet_length=N`` replaces the tc mirror by a
  userspace relay (``python -m vxcap.testing.netns relay``) in the app namespace: an AF_PACKET socket on
  ``eth0`` sees both directions (PACKET_OUTGOING included, packet(7)), and each frame is cut to N bytes
  and to what fits the mirror path, then sent as VXLAN over UDP to port 4789, per-flow source port.
  ``packet_length=65535`` with a small ``mirror_mtu`` gives AWS's cut-to-the-target's-MTU alone.
* The second session (``second_vni``) mirrors the same interface again to ``vxm1``: the capture gets
  every frame twice, once per VNI, with identical inner addresses (inner address spaces of sessions
  overlap; only the VNI tells them apart), as with two sessions on one ENI.
* Nothing listens on UDP 4789 in ``capture`` until vxcap does, so until then that kernel answers the
  datagrams with ICMP port unreachable (rate-limited); an AF_PACKET reader sees those as outgoing frames.
* Checksums of mirrored frames are whatever veth left (often CHECKSUM_PARTIAL, so wrong on the wire),
  as AWS warns they may be.

Namespaces are named ``<prefix>-<pid>-<n>-<role>``; a lab removes the leftovers of labs whose process is
gone (``cleanup_stale``), so a killed test run does not poison the next one and parallel runs (other pids)
are never touched.
"""
from __future__ import annotations

import ctypes
import dataclasses
import itertools
import os
import pathlib
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from typing import Any, Callable, Sequence

PREFIX = "vxlab"
VXLAN_PORT = 4789  # IANA port for VXLAN, RFC 7348 section 5; AWS mirror targets listen on it
_CLONE_NEWNET = 0x40000000  # <linux/sched.h>; setns(2)
_NETNS_DIR = pathlib.Path("/run/netns")  # where `ip netns add` bind-mounts the namespaces, ip-netns(8)
_counter = itertools.count()

# Outer headers a VXLAN device adds in front of the inner Ethernet frame (RFC 7348 section 5):
# IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 = 50 (IPv6: 40 instead of 20, so 70). The device's MTU
# counts the inner IP packet, the mirror path's MTU the outer one.
_VXLAN_OVERHEAD_V4 = 50
_VXLAN_OVERHEAD_V6 = 70


class LabError(RuntimeError):
    """A command building or driving the lab failed; the message carries the command and its stderr."""


@dataclasses.dataclass(frozen=True)
class CaptureStats:
    """What tcpdump reported when it stopped (its "N packets captured/received by filter/dropped")."""

    path: pathlib.Path
    captured: int
    received: int
    dropped: int


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
         **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_netns() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(name: str) -> list[int]:
    """Pids of the processes whose network namespace is ``name`` (``ip netns pids``)."""
    proc = _run(["ip", "netns", "pids", name], check=False)
    return [int(x) for x in proc.stdout.split() if x.isdigit()]


def _kill_netns(name: str) -> None:
    for pid in netns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _run(["ip", "netns", "del", name], check=False)


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces ``<prefix>-<pid>-...`` whose creating process is gone; return their names."""
    pat = re.compile(rf"^{re.escape(prefix)}-(\d+)-\d+-\w+$")
    removed = []
    for name in list_netns():
        m = pat.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_netns(name)
            removed.append(name)
    return removed


_libc = None


def _setns(path: pathlib.Path) -> None:
    """Move the calling thread into the network namespace at ``path`` (setns(2); Python 3.11 lacks os.setns).

    A network namespace belongs to a thread, not to the process, so only the calling thread moves.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Capture:
    """A tcpdump writing a pcap; ``stop()`` returns only once every packet seen is in the file."""

    def __init__(self, lab: "MirrorLab", ns: str, iface: str, path: str | os.PathLike, bpf: str, snaplen: int):
        self.path = pathlib.Path(path)
        self.stats: CaptureStats | None = None
        # --immediate-mode: packets reach tcpdump one by one instead of when a ring block fills or its
        # timeout expires (pcap(3PCAP) "immediate mode"); -U flushes the file after each packet. With both,
        # the file's size tracks the packets seen. -B in KiB: room for bursts (a 100 KB response is ~70
        # frames at once) on 2 shared cores. -Z root: Debian's tcpdump otherwise drops to user tcpdump,
        # which cannot write into a root-only temp directory.
        argv = ["tcpdump", "-n", "--immediate-mode", "-U", "-B", "32768", "-s", str(snaplen), "-Z", "root",
                "-i", iface, "-w", str(self.path)]
        if bpf:
            argv.append(bpf)
        self._proc = lab.popen_in(ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._stderr = b""
        # tcpdump prints "listening on IFACE" once the socket and its filter are attached: from then on
        # nothing is missed.
        deadline = time.monotonic() + 10
        while b"listening on" not in self._stderr:
            left = deadline - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                self._proc.kill()
                rest = self._proc.stderr.read() if self._proc.poll() is not None else b""
                raise LabError(f"tcpdump did not start: {(self._stderr + rest).decode(errors='replace')}")
            r, _, _ = select.select([self._proc.stderr], [], [], left)
            if r:
                chunk = os.read(self._proc.stderr.fileno(), 4096)
                if not chunk:
                    continue
                self._stderr += chunk

    def stop(self, *, settle: float = 0.3, timeout: float = 10.0) -> CaptureStats:
        """Wait until the file has not grown for ``settle`` seconds, then stop tcpdump and read its counts."""
        if self.stats is not None:
            return self.stats
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= settle:
                break
            time.sleep(0.05)
        # SIGINT: tcpdump finishes the packet in hand, flushes, prints its statistics and exits 0.
        self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        text = (self._stderr + (err or b"")).decode(errors="replace")

        def count(what: str) -> int:
            m = re.search(rf"(\d+) packets? {what}", text)
            return int(m.group(1)) if m else -1

        self.stats = CaptureStats(self.path, count("captured"), count("received by filter"),
                                  count("dropped by kernel"))
        return self.stats

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class MirrorLab:
    """Client, app and capture namespaces with the app's interface mirrored over VXLAN (see module doc).

    Parameters:
        vni: VNI of the mirror session (AWS: one per session, 24 bits).
        second_vni: when set, a second session mirroring the same interface with this VNI.
        mirror_mtu: MTU of the mirror path (app <-> capture); AWS VPCs use 9001.
        app_mtu: MTU of the application link (client <-> app).
        ipv6: give the application link IPv6 addresses too.
        mirror_ipv6: encapsulate over IPv6 (outer IPv6) instead of IPv4.
        packet_length: truncate each mirrored frame to this many bytes (userspace relay, see module doc).
        wire_frames: one MSS per packet on the application link (see module doc).
        prefix: first part of the namespace names.
    """

    capture_iface = "eth0"
    app_iface = "eth0"
    client_ip = "10.11.1.1"
    app_ip = "10.11.1.2"
    client_ip6 = "fd00:11:1::1"
    app_ip6 = "fd00:11:1::2"
    app_mirror_ip = "10.11.2.1"
    mirror_ip = "10.11.2.2"
    app_mirror_ip6 = "fd00:11:2::1"
    mirror_ip6 = "fd00:11:2::2"

    def __init__(
        self,
        *,
        vni: int = 42,
        second_vni: int | None = None,
        mirror_mtu: int = 9001,
        app_mtu: int = 1500,
        ipv6: bool = True,
        mirror_ipv6: bool = False,
        packet_length: int | None = None,
        wire_frames: bool = True,
        prefix: str = PREFIX,
    ) -> None:
        for v in (vni, second_vni):
            if v is not None and not 0 <= v < 1 << 24:
                raise ValueError(f"VNI must fit 24 bits (RFC 7348): {v}")
        if second_vni is not None and second_vni == vni:
            raise ValueError("second_vni must differ from vni")
        if packet_length is not None and packet_length < 14:
            raise ValueError(f"packet_length below an Ethernet header: {packet_length}")
        overhead = _VXLAN_OVERHEAD_V6 if mirror_ipv6 else _VXLAN_OVERHEAD_V4
        if mirror_mtu - overhead < 576:
            raise ValueError(f"mirror_mtu {mirror_mtu} leaves no room for the VXLAN overhead ({overhead})")
        self.vni = vni
        self.second_vni = second_vni
        self.mirror_mtu = mirror_mtu
        self.app_mtu = app_mtu
        self.ipv6 = ipv6
        self.mirror_ipv6 = mirror_ipv6
        self.packet_length = packet_length
        self.wire_frames = wire_frames
        self.vxlan_mtu = mirror_mtu - overhead
        tag = f"{prefix}-{os.getpid()}-{next(_counter)}"
        self.ns_client = f"{tag}-client"
        self.ns_app = f"{tag}-app"
        self.ns_capture = f"{tag}-capture"
        self._prefix = prefix
        self._procs: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._tmp: str | None = None
        self.started = False

    # -- properties -------------------------------------------------------------------------------------

    @property
    def namespaces(self) -> dict[str, str]:
        return {"client": self.ns_client, "app": self.ns_app, "capture": self.ns_capture}

    @property
    def vnis(self) -> list[int]:
        return [self.vni] + ([self.second_vni] if self.second_vni is not None else [])

    @property
    def capture_ip(self) -> str:
        """Address the mirrored VXLAN datagrams are sent to (the mirror target's)."""
        return self.mirror_ip6 if self.mirror_ipv6 else self.mirror_ip

    @property
    def tmpdir(self) -> pathlib.Path:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix=f"{self.ns_app}-")
        return pathlib.Path(self._tmp)

    @property
    def processes(self) -> list[subprocess.Popen]:
        return list(self._procs)

    def ns(self, ns: str) -> str:
        """Full namespace name for a role name (``client``/``app``/``capture``) or a full name."""
        name = self.namespaces.get(ns, ns)
        if name not in (self.ns_client, self.ns_app, self.ns_capture):
            raise ValueError(f"not a namespace of this lab: {ns!r}")
        return name

    # -- building ---------------------------------------------------------------------------------------

    def __enter__(self) -> "MirrorLab":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> "MirrorLab":
        if self.started:
            return self
        cleanup_stale(self._prefix)
        self.started = True
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _ip(self, ns: str, *args: str) -> None:
        _run(["ip", "-n", ns, *args])

    def _build(self) -> None:
        for name in (self.ns_client, self.ns_app, self.ns_capture):
            _run(["ip", "netns", "add", name])
            self._created.append(name)
            # DAD would keep the IPv6 addresses "tentative" (unusable) for about a second (RFC 4862);
            # nothing else here could own them.
            self.run_in(name, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                               "net.ipv6.conf.default.accept_dad=0"])
            if not self.ipv6 and name != self.ns_capture:
                self.run_in(name, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            self._ip(name, "link", "set", "lo", "up")
        c, a, m = self.ns_client, self.ns_app, self.ns_capture
        # veth pairs created directly inside the namespaces (ip-link(8) "netns"), so no name ever
        # appears in the root namespace where parallel labs could collide.
        self._ip(c, "link", "add", "eth0", "mtu", str(self.app_mtu), "type", "veth", "peer", "name", "eth0",
                 "netns", a, "mtu", str(self.app_mtu))
        self._ip(a, "link", "add", "mir0", "mtu", str(self.mirror_mtu), "type", "veth", "peer", "name", "eth0",
                 "netns", m, "mtu", str(self.mirror_mtu))
        if self.wire_frames:
            # gso_max_segs 1: TCP builds one-MSS skbs for this device (sk_gso_max_segs), i.e. what a NIC
            # without TSO puts on the wire; the mirror then copies frames of at most MTU + 14 bytes.
            for ns in (c, a):
                self._ip(ns, "link", "set", "eth0", "gso_max_segs", "1")
        self._ip(c, "addr", "add", f"{self.client_ip}/24", "dev", "eth0")
        self._ip(a, "addr", "add", f"{self.app_ip}/24", "dev", "eth0")
        if self.ipv6:
            self._ip(c, "addr", "add", f"{self.client_ip6}/64", "dev", "eth0", "nodad")
            self._ip(a, "addr", "add", f"{self.app_ip6}/64", "dev", "eth0", "nodad")
        if self.mirror_ipv6:
            self._ip(a, "addr", "add", f"{self.app_mirror_ip6}/64", "dev", "mir0", "nodad")
            self._ip(m, "addr", "add", f"{self.mirror_ip6}/64", "dev", "eth0", "nodad")
        else:
            self._ip(a, "addr", "add", f"{self.app_mirror_ip}/24", "dev", "mir0")
            self._ip(m, "addr", "add", f"{self.mirror_ip}/24", "dev", "eth0")
        for ns, dev in ((c, "eth0"), (a, "eth0"), (a, "mir0"), (m, "eth0")):
            self._ip(ns, "link", "set", dev, "up")
        local = self.app_mirror_ip6 if self.mirror_ipv6 else self.app_mirror_ip
        if self.packet_length is None:
            devs = []
            for i, vni in enumerate(self.vnis):
                dev = f"vxm{i}"
                # ip-link(8) VXLAN: unicast "remote" = the mirror target; "nolearning" because nothing
                # ever comes back to learn from; dstport 4789 as AWS uses. The source port is the
                # kernel's per-flow hash (srcport range default), as AWS varies it per flow.
                self._ip(a, "link", "add", dev, "mtu", str(self.vxlan_mtu), "type", "vxlan", "id", str(vni),
                         "local", local, "remote", self.capture_ip, "dstport", str(VXLAN_PORT), "nolearning")
                # The device itself would send IPv6 MLD reports and router solicitations once up, and
                # they would travel inside the session as if the source ENI had sent them: AWS adds no
                # traffic of its own, so the tunnel device gets no IPv6.
                self.run_in(a, ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"])
                self._ip(a, "link", "set", dev, "up")
                devs.append(dev)
            self._mirror_tc(a, self.app_iface, devs)
        else:
            self._start_relay()

    def _mirror_tc(self, ns: str, iface: str, devs: list[str]) -> None:
        # clsact (tc-bpf(8)) attaches classifiers to both ingress and egress of the device. This kernel has
        # no cls_matchall, so the catch-all is u32 "match u32 0 0" (tc-u32(8)): every packet, any protocol.
        # One filter, several mirred actions: each "mirror" sends a copy and continues with the next action
        # (tc-mirred(8)), so every session gets every frame.
        _run(["tc", "-n", ns, "qdisc", "add", "dev", iface, "clsact"])
        actions: list[str] = []
        for dev in devs:
            actions += ["action", "mirred", "egress", "mirror", "dev", dev]
        for hook in ("ingress", "egress"):
            _run(["tc", "-n", ns, "filter", "add", "dev", iface, hook, "protocol", "all", "prio", "1",
                  "u32", "match", "u32", "0", "0", *actions])

    def _start_relay(self) -> None:
        argv = [sys.executable, "-m", "vxcap.testing.netns", "relay", "--iface", self.app_iface,
                "--remote", self.capture_ip, "--mtu", str(self.mirror_mtu), "--snap", str(self.packet_length)]
        for vni in self.vnis:
            argv += ["--vni", str(vni)]
        proc = self.popen_in(self.ns_app, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=_repo_root())
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            proc.kill()
            raise LabError(f"mirror relay failed: {line!r} {proc.stderr.read().decode(errors='replace')}")

    # -- running things ---------------------------------------------------------------------------------

    def run_in(self, ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
               **kw: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` in namespace ``ns`` and wait (text output captured)."""
        return _run(["ip", "netns", "exec", self.ns(ns), *argv], check=check, timeout=timeout, **kw)

    def popen_in(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start ``argv`` in namespace ``ns``; the process is killed by ``close()``.

        ``ip netns exec`` execs the command itself, so the Popen's pid is the program's pid.
        """
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), *argv], **kw)
        self._procs.append(proc)
        return proc

    def call_in(self, ns: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Call ``fn(*args, **kw)`` in a thread moved into namespace ``ns``; return its result or raise.

        Sockets created there belong to that namespace for their whole life, whichever thread uses them
        later: this is how the test process gets a client socket or a capture-side socket.
        """
        path = _NETNS_DIR / self.ns(ns)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                _setns(path)
                box["value"] = fn(*args, **kw)
            except BaseException as e:  # re-raised in the caller's thread
                box["error"] = e

        t = threading.Thread(target=target, name=f"netns-{ns}")
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def socket(self, ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        """A socket created in namespace ``ns``."""
        return self.call_in(ns, socket.socket, family, type, proto)

    def connect(self, ns: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP connection opened from namespace ``ns`` (blocking socket, timeout cleared)."""
        sock = self.call_in(ns, socket.create_connection, (host, port), timeout)
        sock.settimeout(None)
        return sock

    def wait_listening(self, ns: str, port: int, proc: subprocess.Popen | None = None,
                       timeout: float = 15.0) -> None:
        """Wait until something accepts on loopback ``port`` in ``ns`` (loopback: not on the mirrored link)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect(ns, "127.0.0.1", port, timeout=1.0).close()
                return
            except OSError:
                pass
            if proc is not None and proc.poll() is not None:
                raise LabError(f"{proc.args} exited with {proc.returncode} before listening on {port}")
            if time.monotonic() > deadline:
                raise LabError(f"nothing listening on port {port} in {ns} after {timeout}s")
            time.sleep(0.05)

    def start_nginx(self, port: int = 80) -> subprocess.Popen:
        """nginx in the app namespace on ``port`` (site of ``vxcap.testing.apps.write_nginx_site``)."""
        from vxcap.testing.apps import write_nginx_site

        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        d = self.tmpdir / f"nginx-{port}"
        conf = write_nginx_site(d, port)
        # -p: prefix for relative paths; -e: the startup error log, before the config's error_log applies
        # (the default /var/log/nginx/error.log may not be writable or may belong to another nginx).
        proc = self.popen_in(self.ns_app, [nginx, "-c", str(conf), "-p", str(d), "-e", str(d / "error.log")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listening(self.ns_app, port, proc)
        return proc

    def start_aiohttp(self, port: int = 8080) -> subprocess.Popen:
        """The aiohttp app of ``vxcap.testing.apps`` in the app namespace on ``port``."""
        proc = self.popen_in(self.ns_app, [sys.executable, "-m", "vxcap.testing.apps", "--port", str(port)],
                             cwd=_repo_root(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listening(self.ns_app, port, proc)
        return proc

    def tcpdump(self, ns: str, iface: str, path: str | os.PathLike, bpf: str = f"udp port {VXLAN_PORT}",
                snaplen: int | None = None) -> Capture:
        """Start ``tcpdump -w path`` on ``iface`` in ``ns``; returns once it listens. ``bpf=""``: no filter.

        The default snap length takes a whole frame of the mirror path, so nothing is cut by the capture.
        """
        return Capture(self, self.ns(ns), iface, path, bpf, snaplen or max(self.mirror_mtu, self.app_mtu) + 64)

    # -- teardown ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process started here (and anything else left in the namespaces); delete them."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        # nginx workers or anything a test spawned by other means: whatever still runs in our namespaces.
        for name in self._created:
            _kill_netns(name)
        self._created.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.started = False


def _repo_root() -> str:
    # So `python -m vxcap.testing...` in a namespace imports this checkout even when not installed.
    return str(pathlib.Path(__file__).resolve().parents[2])


# -- userspace mirror with truncation (packet_length) ---------------------------------------------------

_ETH_P_ALL = 0x0003  # <linux/if_ether.h>: every protocol, packet(7)


def _relay_main(argv: list[str]) -> None:
    """Mirror ``--iface`` to VXLAN like an AWS session with a packet length: see MirrorLab(packet_length)."""
    import argparse

    p = argparse.ArgumentParser(prog="vxcap.testing.netns relay")
    p.add_argument("--iface", required=True)
    p.add_argument("--remote", required=True)
    p.add_argument("--vni", type=int, action="append", required=True)
    p.add_argument("--snap", type=int, required=True, help="bytes of each frame to keep")
    p.add_argument("--mtu", type=int, default=9001, help="mirror path MTU: longer outer packets are cut")
    a = p.parse_args(argv)
    family = socket.AF_INET6 if ":" in a.remote else socket.AF_INET
    # Outer IP + UDP header sizes; what exceeds the path MTU is cut, as AWS does for the target's MTU.
    room = a.mtu - (40 if family == socket.AF_INET6 else 20) - 8 - 8
    keep = min(a.snap, room)
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    rx.bind((a.iface, 0))
    # Several sending sockets: the outer source port then differs between flows (hashed below) as on AWS,
    # where it "varies per flow"; within a flow it stays put.
    senders = []
    for _ in range(8):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        senders.append(s)
    # VXLAN header, RFC 7348 section 5:
    #  0                   1                   2                   3
    # |R|R|R|R|I|R|R|R|            Reserved                           |
    # |                VXLAN Network Identifier (VNI) |   Reserved    |
    headers = [struct.pack("!II", 0x08000000, vni << 8) for vni in a.vni]
    print("ready", flush=True)
    while True:
        # Both directions arrive: PACKET_HOST (received) and PACKET_OUTGOING (sent), packet(7).
        frame = rx.recv(65536)
        s = senders[zlib.crc32(frame[12:54]) % len(senders)] if len(frame) >= 54 else senders[0]
        cut = frame[:keep]
        for h in headers:
            try:
                s.sendto(h + cut, (a.remote, VXLAN_PORT))
            except OSError:
                pass  # a mirror drops what it cannot send; the lab goes on


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        _relay_main(sys.argv[2:])
    else:
        print(__doc__)
