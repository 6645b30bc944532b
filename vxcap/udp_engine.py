"""``VXCAP_ENGINE=udp``: receive the mirror as a plain UDP socket on the VXLAN port (no CAP_NET_RAW).

The kernel hands over the VXLAN payload (header + inner Ethernet frame) of each datagram; the native
receiver (src_c/udprecv.pyx) reads batches with recvmmsg(2) into 64 KiB slots, so jumbo (9001-byte) mirror
frames are never cut, unlike Resurface's sniffer with its 1526-byte buffer (SPEC section 4), and rebuilds
an outer IP/UDP header in front of each payload so the decoder sees the same frame as from the ring, with
the datagram's source address as ``tunnel_src``.

Several workers: every worker binds the port with SO_REUSEPORT. Left alone the kernel then picks the socket
by a hash of the OUTER 4-tuple, and the mirror's outer UDP source port differs per direction (AWS and Linux
derive it from the inner flow hash of each direction), so requests and responses would land in different
workers and no call would be complete. So the group gets SO_ATTACH_REUSEPORT_CBPF with the inner-flow hash
of ``vxcap.bpf.reuseport_program`` (socket(7)), which keeps both directions together as the ring's fanout
does. If that cannot be attached (kernel older than 4.5), use one worker with this engine.

Limits compared with the ring: the kernel has already reassembled outer IPv4 fragments (good) and checked
the outer UDP checksum (a mirror packet with a wrong outer checksum is dropped before we see it, counted
in the kernel's UDP InCsumErrors, not here); only the VXLAN port is bound (no Geneve).
"""
from __future__ import annotations

import socket

from vxcap import bpf

SO_RXQ_OVFL = 40  # <asm-generic/socket.h>: cmsg with the socket's drop count
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
DEFAULT_RCVBUF = 32 << 20  # bytes: absorbs a burst of ~3500 jumbo frames while the worker is busy


class UdpEngine:
    """A non-blocking UDP socket on ``port`` plus the batched native receiver (LiveCapture source)."""

    kind = "udp"

    def __init__(self, port: int = 4789, *, device: str | None = None, workers: int = 1,
                 rcvbuf: int = DEFAULT_RCVBUF, batch: int = 64, host: str = "") -> None:
        from vxcap._udprecv import UdpReceiver

        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"udp engine port {port!r}: expected 1 to 65535")
        if not isinstance(workers, int) or not 1 <= workers <= 256:
            raise ValueError(f"udp engine workers {workers!r}: expected 1 to 256")
        if not isinstance(rcvbuf, int) or not 64 << 10 <= rcvbuf <= 1 << 31:
            raise ValueError(f"udp engine rcvbuf {rcvbuf!r}: expected 64 KiB to 2 GiB")
        self.port = port
        self.workers = workers
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 senders as ::ffff:a.b.c.d
            bind_host = host or "::"
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            bind_host = host or "0.0.0.0"
        try:
            if workers > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # past rmem_max: CAP_NET_ADMIN
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            if device:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            sock.bind((bind_host, port))
            if workers > 1:
                # Any member may attach: the program belongs to the group (sock_reuseport.c).
                bpf.attach_reuseport(sock, bpf.reuseport_program(workers, "vxlan"))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._rx = UdpReceiver(sock.fileno(), port, batch)

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, decoder) -> list:
        return self._rx.poll(decoder)

    def read_stats(self) -> None:
        """Drops arrive with the datagrams (SO_RXQ_OVFL); nothing to read separately."""

    def counters(self) -> dict[str, int]:
        c = self._rx.counters()
        c["rcvbuf"] = self.rcvbuf
        return c

    def close(self) -> None:
        self.sock.close()


__all__ = ["UdpEngine"]
