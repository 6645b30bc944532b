# cython: language_level=3
"""Streaming readers for pcap and pcapng capture files, producing ``FrameBatch`` objects.

The reader pulls the (possibly gzip-compressed) stream in chunks of ``CHUNK_BYTES`` and parses records in
place: a batch's ``data`` *is* the chunk, and the batch only records where each frame starts, so a frame is
never copied on its way to the decoder. A record that straddles the end of a chunk is carried into the next
one (the tail of the old chunk plus a fresh read), which is the only copy made.

The module knows nothing of exception types: damage is stored as ``problem`` (text) and ``problem_offset``
(byte offset in the decompressed stream) and ``vxcap.capfile`` turns it into ``CaptureError`` (httptools style:
errors cross the C boundary as data and are raised as typed errors in Python).

Formats:
  * pcap: https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcap/ (file header 24 bytes, record header 16).
  * pcapng: https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcapng/ (blocks of type, length, body, length).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc

from cursor cimport rd16, rd32, rd64, be32

import gzip
import io
import zlib


cdef enum:
    # Read granularity: large enough that a read() call per chunk is noise next to parsing, small enough that
    # a reader never holds more than a few MiB of one file.
    CHUNK_BYTES = 1 << 20
    # A record or block larger than this is treated as damage rather than allocated: no link type vxcap
    # decodes has frames anywhere near it (libpcap's own MAXIMUM_SNAPLEN is 256 KiB).
    MAX_RECORD = 64 << 20
    MAX_INTERFACES = 65536
    MAX_BATCH_FRAMES = 1 << 20

    FMT_PCAP = 1
    FMT_PCAPNG = 2

    # pcapng block types (draft-ietf-opsawg-pcapng section 10.1).
    BT_SHB = 0x0A0D0D0A
    BT_IDB = 0x00000001
    BT_OPB = 0x00000002     # obsolete Packet Block, still written by old tools
    BT_SPB = 0x00000003
    BT_EPB = 0x00000006
    BYTE_ORDER_MAGIC = 0x1A2B3C4D

    OPT_ENDOFOPT = 0
    OPT_IF_TSRESOL = 9
    OPT_IF_TSOFFSET = 14

# LINKTYPE_* values the decoder understands (https://www.tcpdump.org/linktypes.html).
SUPPORTED_LINKTYPES = frozenset({0, 1, 12, 14, 101, 108, 113, 228, 229, 276})


cdef inline bint _linktype_ok(uint32_t lt) noexcept:
    return lt == 0 or lt == 1 or lt == 12 or lt == 14 or lt == 101 or lt == 108 or lt == 113 \
        or lt == 228 or lt == 229 or lt == 276


cdef class FrameBatch:
    """A run of captured frames backed by one ``bytes`` object and parallel C arrays."""

    def __cinit__(self):
        self.data = b""
        self.base = NULL
        self.count = 0
        self.capacity = 0
        self.offset = NULL

    def __dealloc__(self):
        # One allocation holds all five arrays; offset is its start.
        free(self.offset)

    cdef int _alloc(self, Py_ssize_t capacity) except -1:
        cdef size_t per = sizeof(Py_ssize_t) + 2 * sizeof(uint32_t) + sizeof(int64_t) + sizeof(int32_t)
        cdef char* mem
        if capacity < 1:
            capacity = 1
        mem = <char*>malloc(per * <size_t>capacity)
        if mem == NULL:
            raise MemoryError()
        free(self.offset)
        # Widest members first so every array stays naturally aligned.
        self.offset = <Py_ssize_t*>mem
        self.ts_ns = <int64_t*>(mem + sizeof(Py_ssize_t) * capacity)
        self.caplen = <uint32_t*>(mem + (sizeof(Py_ssize_t) + sizeof(int64_t)) * capacity)
        self.wirelen = self.caplen + capacity
        self.linktype = <int32_t*>(self.wirelen + capacity)
        self.capacity = capacity
        self.count = 0
        return 0

    cdef void _bind(self, bytes data) noexcept:
        self.data = data
        self.base = <const unsigned char*>PyBytes_AS_STRING(data)

    @staticmethod
    def from_frames(frames):
        """Build a batch from ``(ts_ns, linktype, wirelen, data)`` tuples (tests, replay tools)."""
        cdef FrameBatch b = FrameBatch.__new__(FrameBatch)
        cdef list items = list(frames)
        cdef Py_ssize_t i, pos = 0
        cdef bytes blob = b"".join([bytes(f[3]) for f in items])
        b._alloc(len(items))
        b._bind(blob)
        for i in range(len(items)):
            ts, lt, wl, d = items[i]
            b.offset[i] = pos
            b.caplen[i] = <uint32_t>len(d)
            b.wirelen[i] = <uint32_t>wl
            b.ts_ns[i] = <int64_t>ts
            b.linktype[i] = <int32_t>lt
            pos += len(d)
        b.count = len(items)
        return b

    def __len__(self):
        return self.count

    def frame(self, Py_ssize_t i):
        """Return ``(ts_ns, linktype, wirelen, frame_bytes)`` of frame ``i`` (copies the bytes)."""
        if i < 0 or i >= self.count:
            raise IndexError(f"frame index {i} out of range 0..{self.count - 1}")
        return (self.ts_ns[i], self.linktype[i], self.wirelen[i],
                PyBytes_FromStringAndSize(<const char*>self.base + self.offset[i], self.caplen[i]))

    def __repr__(self):
        return f"<FrameBatch frames={self.count} bytes={len(self.data)}>"


cdef struct Interface:
    int32_t linktype
    uint32_t snaplen
    bint pow2            # if_tsresol base: True for 2^-exp, False for 10^-exp
    int exp
    int64_t mul          # pow10 only: ticks * mul // div = ns
    int64_t div
    int64_t offset_ns    # if_tsoffset, seconds to add, pre-scaled


cdef inline int64_t _ticks_to_ns(Interface* itf, uint64_t ticks) noexcept:
    cdef uint64_t sec, frac
    cdef int k
    if not itf.pow2:
        return <int64_t>(ticks * <uint64_t>itf.mul // <uint64_t>itf.div) + itf.offset_ns
    k = itf.exp
    sec = ticks >> k
    frac = ticks & ((<uint64_t>1 << k) - 1) if k < 64 else ticks
    # frac * 1e9 must fit 64 bits: below 2^-30 s (< 1 ns) the extra fraction bits carry no information.
    if k > 30:
        frac >>= (k - 30)
        k = 30
    return <int64_t>(sec * 1000000000ULL + ((frac * 1000000000ULL) >> k)) + itf.offset_ns


cdef class CaptureReader:
    """Parse a pcap or pcapng stream from a binary file object; call ``start()`` once, then ``next_batch()``."""

    cdef object _f
    cdef bint _gz
    cdef bytes _buf
    cdef Py_ssize_t _pos
    cdef int64_t _base                  # stream offset of _buf[0]
    cdef bint _eof
    cdef object _read_error             # text from the decompressor / OS, reported when buffered data ends
    cdef Py_ssize_t _batch_frames
    cdef int _fmt
    cdef bint _be                       # current section / file is big-endian
    cdef bint _nano                     # pcap: nanosecond timestamps
    cdef uint32_t _snaplen
    cdef int32_t _linktype
    cdef Interface* _ifs
    cdef Py_ssize_t _nif
    cdef Py_ssize_t _capif
    cdef int64_t _last_ts
    cdef bint _done
    cdef readonly object problem
    cdef readonly int64_t problem_offset
    cdef readonly str format
    cdef uint64_t c_frames, c_bytes, c_truncated, c_batches, c_sections, c_interfaces, c_skipped

    def __cinit__(self, fileobj, bint gzipped, Py_ssize_t batch_frames):
        if batch_frames < 1 or batch_frames > MAX_BATCH_FRAMES:
            raise ValueError(f"batch_frames must be 1..{MAX_BATCH_FRAMES}, got {batch_frames}")
        self._f = fileobj
        self._gz = gzipped
        self._buf = b""
        self._pos = 0
        self._base = 0
        self._eof = False
        self._read_error = None
        self._batch_frames = batch_frames
        self._ifs = NULL
        self._nif = 0
        self._capif = 0
        self._done = False
        self.problem = None
        self.problem_offset = 0
        self.format = ""

    def __dealloc__(self):
        free(self._ifs)

    def counters(self):
        return {
            "frames": self.c_frames,
            "bytes": self.c_bytes,
            "truncated_records": self.c_truncated,
            "batches": self.c_batches,
            "sections": self.c_sections,
            "interfaces": self.c_interfaces,
            "blocks_skipped": self.c_skipped,
        }

    # -- buffer management (once per chunk, Python objects are fine here) -----------------------------------

    cdef Py_ssize_t _have(self) noexcept:
        return PyBytes_GET_SIZE(self._buf) - self._pos

    cdef int _fill(self, Py_ssize_t need) except -1:
        """Make at least ``need`` unread bytes available if the stream has them; returns 1 if it did."""
        cdef list parts
        cdef Py_ssize_t have = self._have()
        cdef Py_ssize_t want
        if have >= need:
            return 1
        if self._eof:
            return 0
        parts = [self._buf[self._pos:]]
        self._base += self._pos
        self._pos = 0
        want = need - have
        if want < CHUNK_BYTES:
            want = CHUNK_BYTES
        while want > 0:
            try:
                # read1 on gzip returns what one decompression step produced, so a damaged tail loses only
                # the step that failed, never data decoded earlier.
                data = self._f.read1(want) if self._gz else self._f.read(want)
            except (OSError, EOFError, zlib.error) as e:
                self._read_error = f"{'decompression' if self._gz else 'read'} failed: {e}"
                self._eof = True
                break
            if not data:
                self._eof = True
                break
            parts.append(data)
            want -= len(data)
            have += len(data)
            if have >= need and self._gz:
                # Keep chunks near CHUNK_BYTES, but do not spin on tiny gzip steps once the record fits.
                if want < CHUNK_BYTES // 2:
                    break
        self._buf = b"".join(parts)
        return 1 if self._have() >= need else 0

    cdef int _fail(self, int64_t offset, str problem) except -2:
        self.problem = problem
        self.problem_offset = offset
        self._done = True
        return -1

    cdef int _at_eof(self, Py_ssize_t need, str what) except -2:
        """The stream ended with ``_have()`` < ``need`` bytes where a ``what`` should start: end or damage."""
        cdef Py_ssize_t have = self._have()
        cdef int64_t off = self._base + self._pos
        if self._read_error is not None:
            return self._fail(off + have, self._read_error)
        if have == 0:
            self._done = True
            return -1
        return self._fail(off, f"truncated {what} (need {need} bytes, have {have})")

    # -- header ---------------------------------------------------------------------------------------------

    def start(self):
        """Read the file header. Returns True, or False with ``problem`` set."""
        cdef const unsigned char* p
        cdef uint32_t magic
        cdef FrameBatch scratch
        self._fill(24)
        if self._have() < 4:
            if self._read_error is not None:
                self._fail(self._have(), self._read_error)
            else:
                self._fail(0, f"not a pcap or pcapng file (only {self._have()} bytes)")
            return False
        p = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        magic = be32(p)
        if magic == BT_SHB:
            self._fmt = FMT_PCAPNG
            self.format = "pcapng"
            # Process the first Section Header Block now so a broken one fails open_capture.
            scratch = FrameBatch.__new__(FrameBatch)
            scratch._alloc(1)
            return self._pcapng_block(scratch) == 1
        # pcap magic 0xA1B2C3D4 (microseconds) or 0xA1B23C4D (nanoseconds), in the writer's byte order.
        if magic == 0xA1B2C3D4 or magic == 0xA1B23C4D:
            self._be = True
        elif magic == 0xD4C3B2A1 or magic == 0x4D3CB2A1:
            self._be = False
        else:
            self._fail(0, f"not a pcap or pcapng file (magic 0x{magic:08x})")
            return False
        self._nano = magic == 0xA1B23C4D or magic == 0x4D3CB2A1
        self._fmt = FMT_PCAP
        self.format = "pcap"
        if self._have() < 24:
            self._at_eof(24, "file header")
            return False
        #  0        4        6        8           12         16          20
        # +--------+--------+--------+-----------+----------+-----------+
        # | magic  | major  | minor  | reserved1 | reserved2 | snaplen  | linktype (+FCS bits) |
        if rd16(p + 4, self._be) != 2:
            self._fail(4, f"unsupported pcap version {rd16(p + 4, self._be)}.{rd16(p + 6, self._be)}")
            return False
        self._snaplen = rd32(p + 16, self._be)
        # The upper 16 bits carry FCS length flags (draft-ietf-opsawg-pcap section 4), not the link type.
        self._linktype = <int32_t>(rd32(p + 20, self._be) & 0xFFFF)
        if not _linktype_ok(self._linktype):
            self._fail(20, f"unsupported link type {self._linktype}")
            return False
        self._pos = 24
        return True

    def next_batch(self):
        """Return the next non-empty ``FrameBatch``, or None at the end of the stream or at damage."""
        cdef FrameBatch batch
        cdef int r
        if self._done:
            return None
        batch = FrameBatch.__new__(FrameBatch)
        batch._alloc(self._batch_frames)
        while batch.count < batch.capacity:
            if self._fmt == FMT_PCAP:
                r = self._pcap_record(batch)
            else:
                r = self._pcapng_block(batch)
            if r != 1:
                break
        if batch.count == 0:
            return None
        # Frames were parsed from the current chunk only (a refill happens only while the batch is empty).
        batch._bind(self._buf)
        self.c_batches += 1
        return batch

    # -- pcap -----------------------------------------------------------------------------------------------

    cdef int _pcap_record(self, FrameBatch batch) except -2:
        """1: a record was consumed; 0: the batch must be handed out before refilling; -1: end or damage."""
        cdef const unsigned char* p
        cdef uint32_t incl, orig, frac
        cdef Py_ssize_t i
        cdef int64_t off
        if self._have() < 16:
            if batch.count:
                return 0
            if not self._fill(16):
                return self._at_eof(16, "record header")
        p = <const unsigned char*>PyBytes_AS_STRING(self._buf) + self._pos
        off = self._base + self._pos
        # Record header: ts_sec, ts_usec|ts_nsec, incl_len, orig_len (all 32 bits, file byte order).
        incl = rd32(p + 8, self._be)
        orig = rd32(p + 12, self._be)
        if self._snaplen and incl > self._snaplen:
            return self._fail(off, f"record length {incl} exceeds snap length {self._snaplen}")
        if incl > MAX_RECORD:
            return self._fail(off, f"record length {incl} exceeds limit {MAX_RECORD}")
        if self._have() < 16 + <Py_ssize_t>incl:
            if batch.count:
                return 0
            if not self._fill(16 + incl):
                if self._read_error is not None:
                    return self._fail(self._base + self._pos + self._have(), self._read_error)
                return self._fail(self._base + self._pos,
                                  f"truncated record (need {incl} bytes, have {self._have() - 16})")
            p = <const unsigned char*>PyBytes_AS_STRING(self._buf) + self._pos
        frac = rd32(p + 4, self._be)
        i = batch.count
        batch.offset[i] = self._pos + 16
        batch.caplen[i] = incl
        batch.wirelen[i] = orig
        batch.ts_ns[i] = <int64_t>rd32(p, self._be) * 1000000000 + (frac if self._nano else <int64_t>frac * 1000)
        batch.linktype[i] = self._linktype
        batch.count = i + 1
        self._pos += 16 + incl
        self.c_frames += 1
        self.c_bytes += incl
        if incl < orig:
            self.c_truncated += 1
        return 1

    # -- pcapng ---------------------------------------------------------------------------------------------

    cdef int _pcapng_block(self, FrameBatch batch) except -2:
        """Consume one block. Same return convention as ``_pcap_record``."""
        cdef const unsigned char* p
        cdef uint32_t btype, blen, trailer, bom
        cdef int64_t off
        if self._have() < 12:
            if batch.count:
                return 0
            if not self._fill(12):
                return self._at_eof(12, "block header")
        p = <const unsigned char*>PyBytes_AS_STRING(self._buf) + self._pos
        off = self._base + self._pos
        btype = rd32(p, self._be)
        if be32(p) == BT_SHB:
            # Byte order is a property of each section: the SHB's byte-order magic decides how to read it,
            # including its own length field (0x0A0D0D0A is a palindrome so the type reads the same).
            btype = BT_SHB
            bom = be32(p + 8)
            if bom == BYTE_ORDER_MAGIC:
                self._be = True
            elif bom == 0x4D3C2B1A:
                self._be = False
            else:
                return self._fail(off + 8, f"bad pcapng byte-order magic 0x{bom:08x}")
        blen = rd32(p + 4, self._be)
        if blen < 12 or blen % 4 != 0:
            return self._fail(off + 4, f"invalid block length {blen}")
        if blen > MAX_RECORD:
            return self._fail(off + 4, f"block length {blen} exceeds limit {MAX_RECORD}")
        if self._have() < <Py_ssize_t>blen:
            if batch.count:
                return 0
            if not self._fill(blen):
                if self._read_error is not None:
                    return self._fail(self._base + self._pos + self._have(), self._read_error)
                return self._fail(self._base + self._pos,
                                  f"truncated block (need {blen} bytes, have {self._have()})")
            p = <const unsigned char*>PyBytes_AS_STRING(self._buf) + self._pos
        trailer = rd32(p + blen - 4, self._be)
        if trailer != blen:
            return self._fail(off + blen - 4, f"block length mismatch (header {blen}, trailer {trailer})")
        if btype == BT_EPB or btype == BT_OPB or btype == BT_SPB:
            if self._packet_block(batch, btype, p, blen, off) < 0:
                return -1
        elif btype == BT_SHB:
            if self._section_header(p, blen, off) < 0:
                return -1
        elif btype == BT_IDB:
            if self._interface(p, blen, off) < 0:
                return -1
        else:
            # NRB, ISB, DSB, custom and future blocks carry nothing the decoder needs.
            self.c_skipped += 1
        self._pos += blen
        return 1

    cdef int _section_header(self, const unsigned char* p, uint32_t blen, int64_t off) except -2:
        # | type | length | byte-order magic | major | minor | section length (64) | options | length |
        cdef uint16_t major, minor
        if blen < 28:
            return self._fail(off + 4, f"section header block too short ({blen} bytes)")
        major = rd16(p + 12, self._be)
        minor = rd16(p + 14, self._be)
        if major != 1:
            return self._fail(off + 12, f"unsupported pcapng version {major}.{minor}")
        # Interface ids are numbered per section (draft section 4.1).
        self._nif = 0
        self.c_sections += 1
        return 0

    cdef int _interface(self, const unsigned char* p, uint32_t blen, int64_t off) except -2:
        # | type | length | linktype (16) | reserved (16) | snaplen | options | length |
        cdef Interface itf
        cdef const unsigned char* o
        cdef const unsigned char* end
        cdef uint16_t code, olen
        cdef uint8_t v
        cdef int i
        cdef Interface* newp
        if blen < 20:
            return self._fail(off + 4, f"interface description block too short ({blen} bytes)")
        if self._nif >= MAX_INTERFACES:
            return self._fail(off, f"more than {MAX_INTERFACES} interfaces in one section")
        # An unsupported link type is not fatal here (a capture may mix e.g. USB and Ethernet interfaces):
        # its frames are passed on and the decoder counts them as unsupported_linktype.
        itf.linktype = rd16(p + 8, self._be)
        itf.snaplen = rd32(p + 12, self._be)
        itf.pow2 = False
        itf.exp = 6                      # default resolution: microseconds
        itf.offset_ns = 0
        o = p + 16
        end = p + blen - 4
        # Options: code (16), length (16), value padded to 32 bits; malformed options are ignored.
        while o + 4 <= end:
            code = rd16(o, self._be)
            olen = rd16(o + 2, self._be)
            if code == OPT_ENDOFOPT or o + 4 + olen > end:
                break
            if code == OPT_IF_TSRESOL and olen >= 1:
                # MSB clear: 10^-v seconds; MSB set: 2^-(v & 0x7F) seconds.
                v = o[4]
                itf.pow2 = (v & 0x80) != 0
                itf.exp = v & 0x7F
            elif code == OPT_IF_TSOFFSET and olen >= 8:
                itf.offset_ns = <int64_t>rd64(o + 4, self._be) * 1000000000
            o += 4 + ((olen + 3) & ~3)
        if itf.pow2:
            if itf.exp > 63:
                return self._fail(off, f"unsupported if_tsresol 2^-{itf.exp}")
        else:
            if itf.exp > 18:
                return self._fail(off, f"unsupported if_tsresol 10^-{itf.exp}")
            itf.mul = 1
            itf.div = 1
            for i in range(itf.exp, 9):
                itf.mul *= 10
            for i in range(9, itf.exp):
                itf.div *= 10
        if self._nif == self._capif:
            self._capif = self._capif * 2 if self._capif else 4
            newp = <Interface*>realloc(self._ifs, self._capif * sizeof(Interface))
            if newp == NULL:
                raise MemoryError()
            self._ifs = newp
        self._ifs[self._nif] = itf
        self._nif += 1
        self.c_interfaces += 1
        return 0

    cdef int _packet_block(self, FrameBatch batch, uint32_t btype, const unsigned char* p, uint32_t blen,
                           int64_t off) except -2:
        cdef uint32_t ifid, caplen, origlen, body = blen - 12
        cdef uint64_t ticks = 0
        cdef Py_ssize_t data_off, i
        cdef Interface* itf
        cdef int64_t ts
        if btype == BT_SPB:
            # | type | length | original length | data ... | length |  (interface 0, no timestamp)
            if body < 4:
                return self._fail(off + 4, f"simple packet block too short ({blen} bytes)")
            if self._nif == 0:
                return self._fail(off, "simple packet block before any interface description")
            itf = &self._ifs[0]
            origlen = rd32(p + 8, self._be)
            caplen = origlen
            if caplen > body - 4:
                caplen = body - 4
            if itf.snaplen and caplen > itf.snaplen:
                caplen = itf.snaplen
            data_off = 12
            # The format has no timestamp; reuse the last one seen so capture-time timeouts keep working.
            ts = self._last_ts
        else:
            if body < 20:
                return self._fail(off + 4, f"packet block too short ({blen} bytes)")
            if btype == BT_EPB:
                # | type | length | interface id | ts high | ts low | captured len | original len | data | opts |
                ifid = rd32(p + 8, self._be)
            else:
                # Obsolete Packet Block: interface id (16), drops count (16), then as EPB.
                ifid = rd16(p + 8, self._be)
            ticks = (<uint64_t>rd32(p + 12, self._be) << 32) | rd32(p + 16, self._be)
            caplen = rd32(p + 20, self._be)
            origlen = rd32(p + 24, self._be)
            if caplen > body - 20:
                return self._fail(off + 20, f"packet length {caplen} exceeds block length {blen}")
            if ifid >= self._nif:
                return self._fail(off + 8, f"packet for undefined interface {ifid}")
            itf = &self._ifs[ifid]
            data_off = 28
            ts = _ticks_to_ns(itf, ticks)
            self._last_ts = ts
        i = batch.count
        batch.offset[i] = self._pos + data_off
        batch.caplen[i] = caplen
        batch.wirelen[i] = origlen
        batch.ts_ns[i] = ts
        batch.linktype[i] = itf.linktype
        batch.count = i + 1
        self.c_frames += 1
        self.c_bytes += caplen
        if caplen < origlen:
            self.c_truncated += 1
        return 0


def open_stream(str path, Py_ssize_t batch_frames):
    """Open ``path`` and return ``(CaptureReader, file)``; the caller closes the file.

    gzip (RFC 1952) is recognised by its magic bytes 1f 8b, not by the name. The magic is peeked through a
    buffered reader rather than read and rewound, so pipes and FIFOs (``/dev/stdin``) work too.
    """
    raw = open(path, "rb", buffering=0)
    try:
        f = io.BufferedReader(raw, buffer_size=65536)
        if f.peek(2)[:2] == b"\x1f\x8b":
            return CaptureReader(gzip.GzipFile(fileobj=f, mode="rb"), True, batch_frames), f
        return CaptureReader(f, False, batch_frames), f
    except BaseException:
        raw.close()
        raise
