"""The disk spool: format, order, eviction, corruption, crash leftovers, exclusive use."""
from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings, strategies as st

from vxcap.spool import HEADER, Spool, SpoolCorrupt, SpoolError, decode_header, encode_header


def opened(path, max_bytes=1 << 20) -> Spool:
    s = Spool(path, max_bytes, fsync=False)
    s.open()
    return s


def test_roundtrip_order_and_restart(tmp_path):
    s = opened(tmp_path)
    for i in range(3):
        assert s.put(f"batch {i}\n".encode(), i + 1, compressed=bool(i % 2))
    assert (s.files, s.messages) == (3, 6)
    assert s.bytes == sum(HEADER.size + len(f"batch {i}\n") for i in range(3))
    s.close()
    again = opened(tmp_path)  # a new process finds them, oldest first
    seen = []
    while (e := again.peek()) is not None:
        seen.append((again.read(e), e.count, e.compressed))
        again.remove(e)
    assert seen == [(b"batch 0\n", 1, False), (b"batch 1\n", 2, True), (b"batch 2\n", 3, False)]
    assert again.bytes == 0 and again.files == 0
    assert again.put(b"x", 1, False)  # sequence numbers continue after a restart
    assert sorted(p.name for p in tmp_path.glob("*.vxs")) == ["00000000000000000004.vxs"]


def test_eviction_oldest_first_but_not_the_pinned(tmp_path):
    size = HEADER.size + 100
    s = opened(tmp_path, max_bytes=3 * size)
    for i in range(3):
        s.put(bytes([65 + i]) * 100, 10, False)
    s.pin(s.peek())  # being sent: must survive
    s.put(b"D" * 100, 10, False)
    assert s.evicted_messages == 10 and s.evicted_files == 1
    bodies = [s.read(e)[:1] for e in list(s._entries)]
    assert bodies == [b"A", b"C", b"D"]
    assert s.bytes <= 3 * size
    assert not s.put(b"E" * (3 * size), 7, False)  # alone too big: counted, not written
    assert s.evicted_messages == 17


@pytest.mark.parametrize("damage", ["body", "header", "magic", "truncate", "empty"])
def test_corrupt_file_is_skipped_counted_and_set_aside(tmp_path, damage):
    s = opened(tmp_path)
    s.put(b"good-1\n", 1, False)
    s.put(b"bad---\n", 1, False)
    s.put(b"good-2\n", 1, False)
    s.close()
    bad = sorted(tmp_path.glob("*.vxs"))[1]
    data = bytearray(bad.read_bytes())
    if damage == "body":
        data[-2] ^= 0xFF
    elif damage == "header":
        data[12] ^= 0x01  # the count: only the header CRC notices
    elif damage == "magic":
        data[0:8] = b"NOTSPOOL"
    elif damage == "truncate":
        data = data[:-3]
    else:
        data = bytearray()
    bad.write_bytes(bytes(data))
    s = opened(tmp_path)
    got = []
    while (e := s.peek()) is not None:
        try:
            got.append(s.read(e))
            s.remove(e)
        except SpoolCorrupt as exc:
            s.quarantine(e, str(exc))
    assert got == [b"good-1\n", b"good-2\n"]
    assert s.corrupt_files == 1
    assert (tmp_path / (bad.name + ".corrupt")).exists()


def test_interrupted_write_is_removed(tmp_path):
    (tmp_path / ".00000000000000000007.tmp").write_bytes(b"half a batch")
    s = opened(tmp_path)
    assert s.files == 0 and s.corrupt_files == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_one_process_per_directory(tmp_path):
    s = opened(tmp_path)
    with pytest.raises(SpoolError, match="in use by another process"):
        opened(tmp_path)
    s.close()
    opened(tmp_path).close()


def test_unusable_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SpoolError, match="spool_dir"):
        Spool(f / "sub", 1000).open()


def test_fsync_path(tmp_path):
    s = Spool(tmp_path, 1 << 20)  # real fsyncs of the file and the directory
    s.open()
    assert s.put(b"durable\n", 1, False)
    assert s.read(s.peek()) == b"durable\n"


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=2000), count=st.integers(0, 2**32 - 1), compressed=st.booleans())
def test_header_roundtrip_and_any_flipped_bit_is_caught(body, count, compressed):
    head = encode_header(body, count, compressed)
    assert len(head) == HEADER.size
    flags, c, length, crc = decode_header(head, "f")
    assert (bool(flags), c, length, crc) == (compressed, count, len(body), zlib.crc32(body))
    for bit in range(0, HEADER.size * 8, 7):
        broken = bytearray(head)
        broken[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SpoolCorrupt):
            decode_header(bytes(broken), "f")
