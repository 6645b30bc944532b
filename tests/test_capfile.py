"""Capture file readers: pcap and pcapng variants written here byte by byte, gzip, damage, real captures."""
from __future__ import annotations

import gzip
import json
import pathlib
import struct

import pytest

from vxcap._pcapfile import FrameBatch
from vxcap.capfile import CaptureError, open_capture

T0 = 1_700_000_000  # seconds


def frame_bytes(i: int, size: int = 60) -> bytes:
    """A recognisable frame: its index, then filler."""
    return struct.pack("!I", i) + bytes((i + k) & 0xFF for k in range(size - 4))


# -- pcap ----------------------------------------------------------------------------------------------------

def pcap(records, endian="<", nano=False, linktype=1, snaplen=65535):
    """records: (ts_sec, ts_frac, data[, orig_len])."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    for rec in records:
        sec, frac, data = rec[:3]
        orig = rec[3] if len(rec) > 3 else len(data)
        out += struct.pack(endian + "IIII", sec, frac, len(data), orig) + data
    return out


# -- pcapng --------------------------------------------------------------------------------------------------

def pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def block(btype, body, e="<"):
    body = pad4(body)
    total = 12 + len(body)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def option(code, value, e="<"):
    return struct.pack(e + "HH", code, len(value)) + pad4(value)


def shb(e="<"):
    return block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + option(0, b"", e), e)


def idb(linktype, snaplen=0, tsresol=None, tsoffset=None, e="<"):
    opts = b""
    if tsresol is not None:
        opts += option(9, bytes([tsresol]), e)
    if tsoffset is not None:
        opts += option(14, struct.pack(e + "q", tsoffset), e)
    if opts:
        opts += option(0, b"", e)
    return block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts, e)


def epb(ifid, ticks, data, orig=None, e="<"):
    body = struct.pack(e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                       len(data) if orig is None else orig) + pad4(data) + option(1, b"comment", e) + option(0, b"", e)
    return block(6, body, e)


def opb(ifid, ticks, data, e="<"):
    body = struct.pack(e + "HHIIII", ifid, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)) + data
    return block(2, body, e)


def spb(data, orig=None, e="<"):
    return block(3, struct.pack(e + "I", len(data) if orig is None else orig) + data, e)


def read_all(path, batch_frames=4096):
    reader = open_capture(str(path), batch_frames=batch_frames)
    frames, sizes = [], []
    for batch in reader:
        assert isinstance(batch, FrameBatch)
        sizes.append(len(batch))
        frames.extend(batch.frame(i) for i in range(len(batch)))
    return frames, reader, sizes


def write(tmp_path, name, data, compress=False):
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if compress else data)
    return p


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("compress", [False, True])
def test_pcap_variants(tmp_path, endian, nano, compress):
    frac = 123456789 if nano else 123456
    recs = [(T0, frac, frame_bytes(0)), (T0 + 1, 0, frame_bytes(1, 100)[:64], 100), (T0 + 2, 5, b"")]
    path = write(tmp_path, "trace.bin", pcap(recs, endian, nano, linktype=1), compress)
    frames, reader, _ = read_all(path)
    assert reader.error is None and reader.format == "pcap"
    assert frames == [
        (T0 * 10**9 + (123456789 if nano else 123456000), 1, 60, frame_bytes(0)),
        (T0 * 10**9 + 10**9, 1, 100, frame_bytes(1, 100)[:64]),
        (T0 * 10**9 + 2 * 10**9 + (5 if nano else 5000), 1, 0, b""),
    ]
    c = reader.counters()
    assert (c["frames"], c["bytes"], c["truncated_records"], c["batches"]) == (3, 124, 1, 1)


@pytest.mark.parametrize("linktype", [0, 1, 12, 14, 101, 108, 113, 228, 229, 276])
def test_pcap_supported_linktypes(tmp_path, linktype):
    # The upper 16 bits of the link-type field carry FCS information, not the link type.
    path = write(tmp_path, "lt.pcap", pcap([(T0, 0, b"x")], linktype=linktype | 0x0400_0000))
    frames, reader, _ = read_all(path)
    assert frames[0][1] == linktype and reader.error is None


@pytest.mark.parametrize("compress", [False, True])
def test_pcapng_sections_interfaces_blocks(tmp_path, compress):
    f = [frame_bytes(i) for i in range(6)]
    data = (
        shb("<")
        + idb(1)                                      # interface 0: Ethernet, microseconds (default)
        + block(4, b"\x00\x00\x00\x00")               # Name Resolution Block: skipped
        + idb(101, tsresol=9)                         # interface 1: raw IP, nanoseconds
        + epb(0, T0 * 10**6 + 7, f[0])
        + epb(1, T0 * 10**9 + 8, f[1], orig=1000)
        + block(5, struct.pack("<IIIII", 0, 0, 0, 0, 0))  # Interface Statistics Block: skipped
        + opb(0, T0 * 10**6 + 9, f[2])
        + block(0x0000000A, b"secrets")               # Decryption Secrets Block: skipped
        + block(0x40000BAD, b"\x00\x00\x7e\x00data")  # custom block: skipped
        # Second section, big-endian; interface numbering restarts.
        + shb(">")
        + idb(113, snaplen=40, tsresol=0x80 | 20, tsoffset=100, e=">")  # SLL, 2^-20 s, +100 s
        + idb(147, e=">")                              # unsupported link type: frames still pass
        + epb(0, (T0 << 20) + (1 << 19), f[3], e=">")  # half a second
        + spb(f[4], e=">")                             # 60 bytes, truncated to the snap length 40
        + epb(1, T0 * 10**6, f[5], e=">")
    )
    path = write(tmp_path, "trace.pcapng.whatever", data, compress)
    frames, reader, _ = read_all(path)
    assert reader.error is None and reader.format == "pcapng"
    t3 = (T0 + 100) * 10**9 + 500_000_000
    assert frames == [
        (T0 * 10**9 + 7000, 1, 60, f[0]),
        (T0 * 10**9 + 8, 101, 1000, f[1]),
        (T0 * 10**9 + 9000, 1, 60, f[2]),
        (t3, 113, 60, f[3]),
        (t3, 113, 60, f[4][:40]),           # SPB has no timestamp: the previous one is reused
        (T0 * 10**9, 147, 60, f[5]),
    ]
    c = reader.counters()
    assert (c["frames"], c["sections"], c["interfaces"], c["blocks_skipped"], c["truncated_records"]) == \
        (6, 2, 4, 4, 2)


@pytest.mark.parametrize("tsresol,ticks,expected_ns", [
    (0, T0, T0 * 10**9),                            # seconds
    (3, T0 * 1000 + 5, T0 * 10**9 + 5_000_000),     # milliseconds
    (12, 5 * 10**12 + 7_999, 5 * 10**9 + 7),        # picoseconds, floored (2^64 ps is only 7 months)
    (0x80 | 10, (T0 << 10) + 512, T0 * 10**9 + 500_000_000),
    (0x80 | 30, (T0 << 30) + 3, T0 * 10**9 + 2),    # 3 * 2^-30 s = 2.79 ns
])
def test_pcapng_tsresol(tmp_path, tsresol, ticks, expected_ns):
    path = write(tmp_path, "r.pcapng", shb() + idb(1, tsresol=tsresol) + epb(0, ticks, b"abcd"))
    frames, reader, _ = read_all(path)
    assert frames == [(expected_ns, 1, 4, b"abcd")] and reader.error is None


def test_batches_and_chunk_boundaries(tmp_path):
    # 3 MiB of frames of an odd size: records straddle every 1 MiB read chunk.
    recs = [(T0, i, frame_bytes(i, 1001)) for i in range(3000)]
    path = write(tmp_path, "big.pcap", pcap(recs))
    frames, reader, sizes = read_all(path, batch_frames=700)
    assert reader.error is None
    assert [f[3] for f in frames] == [r[2] for r in recs]
    assert [f[0] for f in frames] == [T0 * 10**9 + i * 1000 for i in range(3000)]
    assert all(s <= 700 for s in sizes) and sum(sizes) == 3000
    assert reader.counters()["batches"] == len(sizes)
    # Same through gzip and pcapng.
    ng = shb() + idb(1) + b"".join(epb(0, i, frame_bytes(i, 999)) for i in range(3000))
    frames, reader, _ = read_all(write(tmp_path, "big.pcapng.gz", ng, compress=True), batch_frames=4096)
    assert reader.error is None and [f[3] for f in frames] == [frame_bytes(i, 999) for i in range(3000)]


def test_fifo(tmp_path):
    # Not seekable: the gzip magic must be peeked, not read and rewound (vxcap replay /dev/stdin).
    import os
    import threading

    path = tmp_path / "fifo"
    os.mkfifo(path)
    data = gzip.compress(pcap([(T0, i, frame_bytes(i)) for i in range(50)]))
    writer = threading.Thread(target=path.write_bytes, args=(data,))
    writer.start()
    try:
        frames, reader, _ = read_all(path)
    finally:
        writer.join(10)
    assert reader.error is None and [f[3] for f in frames] == [frame_bytes(i) for i in range(50)]


def test_batch_frames_limits(tmp_path):
    path = write(tmp_path, "t.pcap", pcap([(T0, 0, frame_bytes(i)) for i in range(10)]))
    _, _, sizes = read_all(path, batch_frames=3)
    assert sizes == [3, 3, 3, 1]
    for bad in (0, -1, 1 << 21, 2.0, True):
        with pytest.raises(ValueError, match=r"batch_frames must be an integer 1\.\.1048576"):
            open_capture(str(path), batch_frames=bad)


def test_frame_batch_api():
    b = FrameBatch.from_frames([(5, 1, 100, b"abc"), (6, 228, 3, b"xyz")])
    assert len(b) == 2 and b.frame(1) == (6, 228, 3, b"xyz") and b.data == b"abcxyz"
    with pytest.raises(IndexError):
        b.frame(2)
    with pytest.raises(IndexError):
        b.frame(-1)


# -- damage --------------------------------------------------------------------------------------------------

def expect_damage(path, problem, offset, frames_before):
    frames, reader, _ = read_all(path)
    assert len(frames) == frames_before
    assert isinstance(reader.error, CaptureError)
    assert str(reader.error) == f"{path}: offset {offset}: {problem}"
    assert (reader.error.path, reader.error.offset, reader.error.problem) == (str(path), offset, problem)


@pytest.mark.parametrize("compress", [False, True])
def test_pcap_cut_mid_record(tmp_path, compress):
    good = pcap([(T0, 0, frame_bytes(0)), (T0, 1, frame_bytes(1, 1514))])
    path = write(tmp_path, "cut.pcap", good[:24 + 76 + 16 + 200], compress)
    expect_damage(path, "truncated record (need 1514 bytes, have 200)", 24 + 76, 1)


def test_pcap_cut_mid_header(tmp_path):
    good = pcap([(T0, 0, frame_bytes(0)), (T0, 1, frame_bytes(1))])
    path = write(tmp_path, "cut.pcap", good[:24 + 76 + 5])
    expect_damage(path, "truncated record header (need 16 bytes, have 5)", 100, 1)


def test_pcap_lying_record_length(tmp_path):
    data = bytearray(pcap([(T0, 0, frame_bytes(0)), (T0, 1, frame_bytes(1)), (T0, 2, frame_bytes(2))]))
    struct.pack_into("<I", data, 24 + 76 + 8, 70000)
    expect_damage(write(tmp_path, "lie.pcap", bytes(data)), "record length 70000 exceeds snap length 65535",
                  100, 1)


def test_pcap_huge_length_without_snaplen(tmp_path):
    data = bytearray(pcap([(T0, 0, frame_bytes(0))], snaplen=0))
    struct.pack_into("<I", data, 24 + 8, 0xFFFFFFF0)
    expect_damage(write(tmp_path, "huge.pcap", bytes(data)), "record length 4294967280 exceeds limit 67108864",
                  24, 0)


def test_gzip_cut(tmp_path):
    raw = pcap([(T0, i, frame_bytes(i, 1000)) for i in range(3000)])
    z = gzip.compress(raw)
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(z[: len(z) // 2])
    frames, reader, _ = read_all(path)
    assert 0 < len(frames) < 3000
    assert [f[3] for f in frames] == [frame_bytes(i, 1000) for i in range(len(frames))]
    assert reader.error is not None
    assert reader.error.problem.startswith("decompression failed: Compressed file ended")
    assert 24 + len(frames) * 1016 <= reader.error.offset < 24 + (len(frames) + 1) * 1016


@pytest.mark.parametrize("data,problem,offset", [
    (b"GARBAGE-GARBAGE-GARBAGE-GARBAGE", "not a pcap or pcapng file (magic 0x47415242)", 0),
    (b"\xd4\xc3", "not a pcap or pcapng file (only 2 bytes)", 0),
    (b"", "not a pcap or pcapng file (only 0 bytes)", 0),
    (pcap([], linktype=147), "unsupported link type 147", 20),
    (pcap([])[:20], "truncated file header (need 24 bytes, have 20)", 0),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1), "unsupported pcap version 3.0", 4),
    (shb()[:20], "truncated block (need 32 bytes, have 20)", 0),
    (shb()[:8] + b"\x00\x00\x00\x00" + shb()[12:], "bad pcapng byte-order magic 0x00000000", 8),
    (block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)), "unsupported pcapng version 2.0", 12),
])
def test_cannot_start(tmp_path, data, problem, offset):
    path = write(tmp_path, "bad.pcap", data)
    with pytest.raises(CaptureError) as e:
        open_capture(str(path))
    assert str(e.value) == f"{path}: offset {offset}: {problem}"


def test_missing_file(tmp_path):
    with pytest.raises(CaptureError) as e:
        open_capture(str(tmp_path / "nope.pcap"))
    assert str(e.value) == f"{tmp_path / 'nope.pcap'}: offset 0: cannot open: No such file or directory"


def _ng_damage_cases():
    head = shb() + idb(1)
    good = epb(0, 1, frame_bytes(0))
    bad_trailer = bytearray(epb(0, 2, frame_bytes(1)))
    struct.pack_into("<I", bad_trailer, len(bad_trailer) - 4, 12)
    too_long = bytearray(epb(0, 2, frame_bytes(1)))
    struct.pack_into("<I", too_long, 20, 5000)
    odd_len = bytearray(epb(0, 2, frame_bytes(1)))
    struct.pack_into("<I", odd_len, 4, 13)
    n = len(head) + len(good)
    return [
        ("trailer", head + good + bytes(bad_trailer),
         f"block length mismatch (header {len(bad_trailer)}, trailer 12)", n + len(bad_trailer) - 4),
        ("interface", head + good + epb(3, 2, frame_bytes(1)), "packet for undefined interface 3", n + 8),
        ("caplen", head + good + bytes(too_long), f"packet length 5000 exceeds block length {len(too_long)}", n + 20),
        ("cut", head + good + epb(0, 2, frame_bytes(1))[:50],
         f"truncated block (need {len(epb(0, 2, frame_bytes(1)))} bytes, have 50)", n),
        ("odd-length", head + good + bytes(odd_len), "invalid block length 13", n + 4),
        ("spb-first", shb() + spb(b"abc"), "simple packet block before any interface description", len(shb())),
    ]


@pytest.mark.parametrize("data,problem,offset", [c[1:] for c in _ng_damage_cases()],
                         ids=[c[0] for c in _ng_damage_cases()])
def test_pcapng_damage(tmp_path, data, problem, offset):
    path = write(tmp_path, "bad.pcapng", data)
    expect_damage(path, problem, offset, 0 if "simple" in problem else 1)


# -- real captures -------------------------------------------------------------------------------------------

PCAPS = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "pcaps"


def _index():
    index = PCAPS / "index.json"
    return json.loads(index.read_text())["files"] if index.is_file() else []


@pytest.mark.parametrize("entry", _index(), ids=lambda e: e["file"])
def test_real_captures_frame_counts(pcaps_dir, entry):
    frames, reader, _ = read_all(pcaps_dir / entry["file"])
    assert reader.error is None
    assert len(frames) == entry["packets"] == reader.counters()["frames"]
    assert sum(len(f[3]) for f in frames) == reader.counters()["bytes"]
