"""Capture-file readers (src_c/pcapfile.pyx via vxcap.capfile): any bytes as a pcap, pcapng or gzip file.

Rules: reading ends with frames or a CaptureError, never another exception; every frame's bytes exist;
the reader's counters agree with what was yielded; frames are yielded only before the damage.
"""
from __future__ import annotations

import gzip
import os
import struct
import tempfile

from vxcap.capfile import CaptureError, open_capture

MAX_LEN = 1 << 16
_FILE = os.path.join(tempfile.gettempdir(), f"vxcap-fuzz-capfile-{os.getpid()}")


def _pcap(recs, magic=0xA1B2C3D4, snap=65535, lt=1):
    out = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snap, lt)
    for i, f in enumerate(recs):
        out += struct.pack("<IIII", 1_700_000_000 + i, i, len(f), len(f) + i) + f
    return out


def _block(t, body):
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("<II", t, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def _pcapng(recs):
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += _block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HHB3x", 9, 1, 9) + b"\x00" * 4)
    for i, f in enumerate(recs):
        out += _block(6, struct.pack("<IIIII", 0, 0, i, len(f), len(f)) + f)
    out += _block(3, struct.pack("<I", 4) + b"abcd")
    out += _block(5, b"\x00" * 8)
    return out


_FRAMES = [bytes(range(60)), b"\x00" * 14, b"\xff" * 200]
SEEDS = [b"\x00" + _pcap(_FRAMES), b"\x00" + _pcap(_FRAMES, magic=0x4D3CB2A1), b"\x00" + _pcapng(_FRAMES),
         b"\x01" + _pcap(_FRAMES), b"\x00" + _pcap(_FRAMES, snap=0, lt=101)]


def one_input(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    with open(_FILE, "wb") as f:
        f.write(gzip.compress(body, 1, mtime=0) if data[0] & 1 else body)
    try:
        reader = open_capture(_FILE, batch_frames=1 + data[0] % 7)
    except CaptureError as e:
        assert e.problem and e.offset >= 0
        return
    frames = 0
    for batch in reader:
        assert len(batch) >= 1
        for i in range(len(batch)):
            ts, lt, wirelen, fb = batch.frame(i)
            frames += 1
    c = reader.counters()
    assert c["frames"] == frames, (c, frames)
    if reader.error is not None:
        assert isinstance(reader.error, CaptureError) and reader.error.offset >= 0
