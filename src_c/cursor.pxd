# cython: language_level=3
"""A bounds-checked reader over a pointer and a length (asyncpg pgproto ``frb.pxd``).

Every packet header vxcap reads goes through a ``Cursor``: ``cur_take(c, n)`` hands out a pointer to the next
``n`` bytes and advances, or returns NULL when fewer than ``n`` remain, so each header costs one comparison and a
short frame turns into a reason code at the caller instead of a read past the buffer. Captured bytes are
untrusted input; nothing in ``src_c`` indexes a frame buffer except through these functions.

The cursor does not own the memory: the pointer stays valid only while the Python object holding the bytes
(a ``FrameBatch``, a ring block) is alive, which the caller guarantees for the duration of the decode call.
"""
from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef struct Cursor:
    const unsigned char* p      # next unread byte
    Py_ssize_t n                # bytes left; never negative


cdef inline void cur_init(Cursor* c, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    c.p = p
    c.n = n if n > 0 else 0


cdef inline const unsigned char* cur_take(Cursor* c, Py_ssize_t k) noexcept nogil:
    """Return a pointer to the next ``k`` bytes and consume them, or NULL (cursor unchanged) if short."""
    cdef const unsigned char* r
    if k < 0 or k > c.n:
        return NULL
    r = c.p
    c.p += k
    c.n -= k
    return r


cdef inline const unsigned char* cur_peek(Cursor* c, Py_ssize_t k) noexcept nogil:
    """Like ``cur_take`` but leaves the cursor where it is."""
    if k < 0 or k > c.n:
        return NULL
    return c.p


cdef inline void cur_limit(Cursor* c, Py_ssize_t n) noexcept nogil:
    """Shrink the readable window to at most ``n`` bytes (e.g. to an IP total length, dropping padding)."""
    if n < 0:
        n = 0
    if n < c.n:
        c.n = n


# Fixed-width loads. Callers pass pointers obtained from cur_take/cur_peek, so the bytes are known to exist.
cdef inline uint16_t be16(const unsigned char* p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t be32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline uint16_t le16(const unsigned char* p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[1] << 8) | p[0])


cdef inline uint32_t le32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | <uint32_t>p[0]


cdef inline uint16_t rd16(const unsigned char* p, bint big_endian) noexcept nogil:
    return be16(p) if big_endian else le16(p)


cdef inline uint32_t rd32(const unsigned char* p, bint big_endian) noexcept nogil:
    return be32(p) if big_endian else le32(p)


cdef inline uint64_t rd64(const unsigned char* p, bint big_endian) noexcept nogil:
    if big_endian:
        return (<uint64_t>be32(p) << 32) | be32(p + 4)
    return (<uint64_t>le32(p + 4) << 32) | le32(p)
