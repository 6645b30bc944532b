"""Builders of adversarial captures: struct-built Ethernet/IPv4/UDP/VXLAN/TCP frames written to pcap files.

Every builder takes the lying field as an explicit argument (an IP total length, a TCP data offset, a VXLAN
flags byte, a pcap record length) so a test says exactly which lie it tells. Checksums are left zero: vxcap
never verifies them (a mirror copies packets before the NIC fills them in).

Layouts (outer to inner, what AWS VPC Traffic Mirroring sends)::

    Ethernet (14) | IPv4 (20) | UDP (8, dport 4789) | VXLAN (8: flags 0x08, VNI) | Ethernet | IPv4 | TCP | data
"""
from __future__ import annotations

import ipaddress
import struct

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
LINKTYPE_ETHERNET = 1
T0_NS = 1_700_000_000_000_000_000

_ETH = struct.Struct(">6s6sH")
_IPV4 = struct.Struct(">BBHHHBBH4s4s")
_UDP = struct.Struct(">HHHH")
_VXLAN = struct.Struct(">B3sI")  # flags, reserved, VNI << 8 | reserved
_TCP = struct.Struct(">HHIIBBHHH")
_PCAP_HDR = struct.Struct("<IHHiIII")
_PCAP_REC = struct.Struct("<IIII")
PCAP_NS_MAGIC = 0xA1B23C4D  # nanosecond timestamps (draft-ietf-opsawg-pcap section 4)

MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
MIRROR_SRC, MIRROR_DST = "10.9.0.1", "10.9.0.2"


def ip4(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def eth(payload: bytes, ethertype: int = 0x0800) -> bytes:
    return _ETH.pack(MAC_B, MAC_A, ethertype) + payload


def ipv4(payload: bytes, src: str, dst: str, proto: int = 6, total_len: int | None = None, ihl: int = 5,
         frag: int = 0x4000) -> bytes:
    """An IPv4 header (options zero-filled when ``ihl`` > 5); ``total_len`` may lie."""
    tl = 4 * ihl + len(payload) if total_len is None else total_len
    hdr = _IPV4.pack(0x40 | ihl, 0, tl & 0xFFFF, 1, frag, 64, proto, 0, ip4(src), ip4(dst))
    return hdr + b"\x00" * (4 * ihl - 20) + payload


def udp(payload: bytes, sport: int, dport: int, length: int | None = None) -> bytes:
    return _UDP.pack(sport, dport, (8 + len(payload) if length is None else length) & 0xFFFF, 0) + payload


def vxlan(inner: bytes, vni: int, flags: int = 0x08) -> bytes:
    """A VXLAN header (RFC 7348 section 5) and the inner Ethernet frame."""
    return _VXLAN.pack(flags, b"\x00\x00\x00", vni << 8) + inner


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"", doff: int = 5) -> bytes:
    """A TCP header (options zero-filled when ``doff`` > 5 and fitting) and payload; ``doff`` may lie."""
    hdr = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (doff & 0xF) << 4, flags, 65535, 0, 0)
    return hdr + b"\x00" * max(0, 4 * doff - 20) + payload


def mirror(inner_frame: bytes, vni: int = 7, flags: int = 0x08, sport: int = 50000) -> bytes:
    """Wrap an inner Ethernet frame as a mirror session sends it: Ethernet/IPv4/UDP 4789/VXLAN."""
    return eth(ipv4(udp(vxlan(inner_frame, vni, flags), sport, 4789), MIRROR_SRC, MIRROR_DST, proto=17))


def tcp_frame(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int, payload: bytes = b"",
              vni: int | None = 7, ip_total: int | None = None, doff: int = 5) -> bytes:
    """One mirrored TCP segment (``vni=None``: plain, not encapsulated)."""
    inner = eth(ipv4(tcp(src[1], dst[1], seq, ack, flags, payload, doff), src[0], dst[0], total_len=ip_total))
    return inner if vni is None else mirror(inner, vni)


class Conversation:
    """The frames of one TCP connection carrying HTTP, in capture order, 1 ms apart (``frames``)."""

    def __init__(self, client=("10.0.0.1", 40000), server=("10.0.0.2", 80), vni: int | None = 7,
                 isn=(1000, 5000), t0_ns: int = T0_NS, step_ns: int = 1_000_000, mss: int = 1400):
        self.ends = (client, server)
        self.vni = vni
        self.seq = [isn[0], isn[1]]
        self.t = t0_ns
        self.step = step_ns
        self.mss = mss
        self.frames: list[tuple[int, bytes]] = []

    def segment(self, side: int, flags: int, payload: bytes = b"", **lies) -> "Conversation":
        src, dst = self.ends[side], self.ends[1 - side]
        self.frames.append((self.t, tcp_frame(src, dst, self.seq[side], self.seq[1 - side], flags, payload,
                                              self.vni, **lies)))
        self.t += self.step
        return self

    def handshake(self) -> "Conversation":
        self.segment(0, SYN)
        self.seq[0] += 1
        self.segment(1, SYN | ACK)
        self.seq[1] += 1
        return self.segment(0, ACK)

    def send(self, side: int, data: bytes, mss: int | None = None) -> "Conversation":
        mss = mss or self.mss
        for i in range(0, len(data), mss):
            part = data[i:i + mss]
            self.segment(side, ACK | PSH, part)
            self.seq[side] += len(part)
        return self

    def request(self, data: bytes, mss: int | None = None) -> "Conversation":
        return self.send(0, data, mss)

    def response(self, data: bytes, mss: int | None = None) -> "Conversation":
        return self.send(1, data, mss)

    def close(self) -> "Conversation":
        for side in (0, 1):
            self.segment(side, FIN | ACK)
            self.seq[side] += 1
        return self


# A normal call mixed into every hostile capture: its message must come out exactly as it does alone.
NORMAL_REQUEST = (b"POST /orders?id=42 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: t/1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"qty\": 3000}")
NORMAL_RESPONSE = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
                   b"{\"id\": 777}")
NORMAL_CLIENT = ("10.77.0.1", 41111)
NORMAL_SERVER = ("10.77.0.2", 8080)


def normal_conversation(t0_ns: int = T0_NS, step_ns: int = 1_000_000, vni: int | None = 7) -> Conversation:
    c = Conversation(NORMAL_CLIENT, NORMAL_SERVER, vni=vni, t0_ns=t0_ns, step_ns=step_ns)
    return c.handshake().request(NORMAL_REQUEST, mss=40).response(NORMAL_RESPONSE, mss=40).close()


def merge(*frame_lists: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Interleave frame lists by capture time (stable: equal times keep list order)."""
    tagged = [(t, i, j, f) for i, fl in enumerate(frame_lists) for j, (t, f) in enumerate(fl)]
    tagged.sort(key=lambda x: (x[0], x[1], x[2]))
    return [(t, f) for t, _, _, f in tagged]


def pcap_header(snaplen: int = 262144, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    return _PCAP_HDR.pack(PCAP_NS_MAGIC, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(ts_ns: int, frame: bytes, incl_len: int | None = None, orig_len: int | None = None) -> bytes:
    """A record header (both lengths may lie) and the frame bytes."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    incl = len(frame) if incl_len is None else incl_len
    return _PCAP_REC.pack(sec, ns, incl, len(frame) if orig_len is None else orig_len) + frame


def write_pcap(path, frames: list[tuple[int, bytes]], snaplen: int = 262144) -> str:
    with open(path, "wb") as f:
        f.write(pcap_header(snaplen))
        f.write(b"".join(pcap_record(t, fr) for t, fr in frames))
    return str(path)


def syn_flood_pcap(path, n: int, t0_ns: int = T0_NS, step_ns: int = 1000, vni: int = 7,
                   insert: list[tuple[int, bytes]] = (), insert_at: int = 0) -> str:
    """A pcap of ``n`` SYNs from distinct (address, port) pairs, ``step_ns`` apart, mirrored in VXLAN.

    One template record is packed once; per SYN only the timestamp, the client address and port and the
    sequence number change (``struct.pack_into`` at fixed offsets, no per-frame allocation). ``insert``
    (frames, e.g. a normal conversation) is written, in its own time order, after SYN number ``insert_at``.
    """
    template = pcap_record(0, tcp_frame(("10.128.0.0", 1), ("10.0.0.2", 80), 0, 0, SYN, vni=vni))
    rec = len(template)
    # Offsets inside one record: 16 pcap record header, 50 outer headers, 14 inner Ethernet.
    ip_off = 16 + 50 + 14
    off_src, off_seq = ip_off + 12, ip_off + 24  # source address+port are packed together (src_port)
    ts = struct.Struct("<II")
    src_port = struct.Struct(">4sH")
    seq = struct.Struct(">I")
    chunk_n = 65536

    def syns(f, lo: int, hi: int) -> None:
        for start in range(lo, hi, chunk_n):
            k = min(chunk_n, hi - start)
            buf = bytearray(template * k)
            for j in range(k):
                i = start + j
                base = j * rec
                t = t0_ns + i * step_ns
                ts.pack_into(buf, base, t // 1_000_000_000, t % 1_000_000_000)
                # 10.128.0.0/9 gives 2**23 addresses, each with 64 ports: distinct 4-tuples for i < 2**29.
                src_port.pack_into(buf, base + off_src, (0x0A800000 | (i >> 6)).to_bytes(4, "big"),
                                   1024 + (i & 63))
                seq.pack_into(buf, base + off_seq, (i * 2654435761) & 0xFFFFFFFF)
            f.write(buf)

    with open(path, "wb") as f:
        f.write(pcap_header())
        syns(f, 0, min(insert_at, n))
        f.write(b"".join(pcap_record(t, fr) for t, fr in insert))
        syns(f, min(insert_at, n), n)
    return str(path)


def slow_loris_pcap(path, n: int, data: bytes = b"GET /", t0_ns: int = T0_NS, step_ns: int = 1000,
                    vni: int = 7, insert: list[tuple[int, bytes]] = ()) -> str:
    """``n`` connections that open (SYN, SYN-ACK) and then each send ``data`` one byte per segment, never
    finishing: round-robin, so all ``n`` are open at once. Built like ``syn_flood_pcap``: one template per
    kind of frame, patched in place. ``insert`` goes after the handshakes."""
    server = ("10.0.0.2", 80)
    kinds = [(SYN, b"", 0, 0, 0), (SYN | ACK, b"", 1, 0, 0)]
    kinds += [(ACK | PSH, data[k:k + 1], 0, k + 1, 1) for k in range(len(data))]
    ip_off = 16 + 50 + 14
    ts = struct.Struct("<II")
    addr = struct.Struct(">4s")
    port = struct.Struct(">H")
    seqack = struct.Struct(">II")
    with open(path, "wb") as f:
        f.write(pcap_header())
        i_frame = 0
        for ki, (flags, payload, side, cseq_off, sseq_off) in enumerate(kinds):
            if side == 0:
                tpl = pcap_record(0, tcp_frame(("10.128.0.0", 1), server, 0, 0, flags, payload, vni=vni))
                o_addr, o_port = ip_off + 12, ip_off + 20
            else:
                tpl = pcap_record(0, tcp_frame(server, ("10.128.0.0", 1), 0, 0, flags, payload, vni=vni))
                o_addr, o_port = ip_off + 16, ip_off + 22
            rec = len(tpl)
            for start in range(0, n, 65536):
                k = min(65536, n - start)
                buf = bytearray(tpl * k)
                for j in range(k):
                    i = start + j
                    b = j * rec
                    t = t0_ns + (i_frame + j) * step_ns
                    ts.pack_into(buf, b, t // 1_000_000_000, t % 1_000_000_000)
                    addr.pack_into(buf, b + o_addr, (0x0A800000 | (i >> 6)).to_bytes(4, "big"))
                    port.pack_into(buf, b + o_port, 1024 + (i & 63))
                    cisn, sisn = (i * 7919) & 0xFFFFFF, (i * 104729) & 0xFFFFFF
                    if side == 0:
                        seqack.pack_into(buf, b + ip_off + 24, cisn + cseq_off, sisn + sseq_off if ki else 0)
                    else:
                        seqack.pack_into(buf, b + ip_off + 24, sisn, cisn + 1)
                f.write(buf)
                i_frame += k
            if ki == 1:
                f.write(b"".join(pcap_record(t, fr) for t, fr in insert))
    return str(path)


# ---- the watcher: a replay in a child process, with peaks of the internal accounting and of RSS ----------

def _http_held(conns) -> int:
    """Bytes the HTTP layer holds for the given connections (buffers, held chunks, bodies in progress)."""
    total = 0
    for conn in conns:
        h = getattr(conn, "http", None)
        if h is None:
            continue
        for half in getattr(h, "halves", ()):
            total += len(getattr(half, "buf", b"") or b"") + (getattr(half, "held_bytes", 0) or 0)
            msg = getattr(half, "msg", None)
            if msg is not None:
                total += getattr(msg, "body_size", 0)
    return total


def _peak_rss_kb() -> int:
    """This process's peak RSS. VmHWM, not getrusage: ru_maxrss survives execve, so a child forked from a
    big pytest process would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def zeros_bomb(coding: str, nbytes: int) -> bytes:
    """``nbytes`` of zeros gzip- or brotli-compressed, streamed 1 MiB at a time (the builder stays small)."""
    import zlib

    import brotli

    mib = bytes(1 << 20)
    if coding == "gzip":
        z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return b"".join([z.compress(mib) for _ in range(nbytes >> 20)] + [z.flush()])
    c = brotli.Compressor(quality=5)
    return b"".join([c.process(mib) for _ in range(nbytes >> 20)] + [c.finish()])


def watch_replay(path: str, extra: list[str], batch_frames: int = 256) -> dict:
    """``vxcap replay PATH --rules 'include debug' EXTRA`` batch by batch, recording after every batch the
    peak of Reassembler.buffered, of the open connections and (while they are few) of HTTP-held bytes."""
    import orjson

    from vxcap.capfile import CaptureError, open_capture
    from vxcap.replay import build_parser, make_pipeline

    args = build_parser().parse_args([path, "--rules", "include debug", *extra])
    pipeline, _ = make_pipeline(args)
    r = pipeline.reassembler
    lines: list[bytes] = []
    errors: list[str] = []
    peak = {"buffered": 0, "connections": 0, "http_held": 0}
    try:
        reader = open_capture(path, batch_frames)
    except CaptureError as e:
        errors.append(str(e))
        reader = ()
    for batch in reader:
        lines += pipeline.feed(batch)
        peak["buffered"] = max(peak["buffered"], r.buffered)
        peak["connections"] = max(peak["connections"], len(r.conns))
        if len(r.conns) <= 2000:
            peak["http_held"] = max(peak["http_held"], _http_held(r.conns.values()))
    if getattr(reader, "error", None) is not None:
        errors.append(str(reader.error))
    lines += pipeline.finish()
    limits = r.limits
    return {
        "calls": [orjson.loads(x) for x in lines], "counters": pipeline.counters(), "errors": errors,
        "peak": peak, "maxrss_kb": _peak_rss_kb(),
        "limits": {"max_connections": limits.max_connections, "max_buffered": limits.max_buffered,
                   "max_header_bytes": limits.http.max_header_bytes, "body_limit": limits.http.body_limit},
    }


if __name__ == "__main__":
    import json
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    out = watch_replay(sys.argv[1], sys.argv[3:], int(sys.argv[2]))
    sys.stdout.write(json.dumps(out))
