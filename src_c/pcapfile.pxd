# cython: language_level=3
"""Declarations shared with the decoder: ``FrameBatch`` is read by ``decode.pyx`` straight from C arrays."""
from libc.stdint cimport int32_t, int64_t, uint32_t


cdef class FrameBatch:
    # All frames of the batch live in ``data`` (for files: the read chunk itself, so frames are not copied);
    # frame i is data[offset[i] : offset[i] + caplen[i]]. ``base`` points into ``data`` and is valid for as long
    # as the batch is alive: the batch owns the only reference the decoder relies on.
    cdef readonly bytes data
    cdef const unsigned char* base
    cdef Py_ssize_t count
    cdef Py_ssize_t capacity
    cdef Py_ssize_t* offset
    cdef uint32_t* caplen
    cdef uint32_t* wirelen
    cdef int64_t* ts_ns
    cdef int32_t* linktype

    cdef int _alloc(self, Py_ssize_t capacity) except -1
    cdef void _bind(self, bytes data) noexcept
