# cython: language_level=3
"""Declarations of the native decoder, for the ring reader to call ``decode_frame`` without Python calls."""
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from cursor cimport Cursor


# Counter indexes; the names (same order) are vxcap.decode_py.COUNTER_NAMES. Drop reasons start at R_FIRST_DROP
# and double as return codes of the layer functions (R_EMITTED = a segment was appended).
cdef enum:
    R_EMITTED = -1
    C_FRAMES = 0
    C_BYTES
    C_SEGMENTS
    C_ENCAPSULATED
    C_TRUNCATED_FRAMES
    R_UNSUPPORTED_LINKTYPE
    R_SHORT_LINK_HEADER
    R_SHORT_ETHERNET
    R_SHORT_MPLS
    R_NON_IP
    R_BAD_IPV4_HEADER
    R_BAD_IPV6_HEADER
    R_BAD_IP_LENGTH
    R_BAD_IPV6_EXT_HEADER
    R_IP_FRAGMENT
    R_NON_TCP
    R_SHORT_UDP
    R_SHORT_VXLAN
    R_VXLAN_NO_I_FLAG
    R_SHORT_GENEVE
    R_BAD_GENEVE_HEADER
    R_SHORT_GRE
    R_GRE_UNSUPPORTED
    R_SHORT_ERSPAN
    R_ERSPAN_UNSUPPORTED
    R_ENCAP_DEPTH_EXCEEDED
    R_ENCAP_IGNORED
    R_VNI_FILTERED
    R_NOT_ENCAPSULATED
    R_SHORT_TCP
    R_BAD_TCP_HEADER
    R_PORT_FILTERED
    R_PURE_ACK
    N_COUNTERS


cdef struct VniSlot:
    uint32_t vni        # NO_VNI marks an empty slot (a real VNI has only 24 bits)
    uint64_t frames
    uint64_t bytes


cdef class Decoder:
    cdef readonly int vxlan_port
    cdef readonly int geneve_port
    cdef readonly str encap
    cdef readonly object vnis
    cdef readonly frozenset ports
    cdef readonly int max_depth

    cdef bint _follow_tunnels
    cdef bint _need_tunnel
    cdef bint _filter_ports
    cdef uint8_t _portbits[8192]        # bit per TCP port
    cdef uint8_t* _vni_denied           # bit per 24-bit VNI, NULL when no VNI filter is set
    cdef uint64_t _cnt[N_COUNTERS]
    cdef VniSlot* _vni_tab              # open addressing, size _vni_mask + 1 (a power of two)
    cdef Py_ssize_t _vni_mask
    cdef Py_ssize_t _vni_used

    cdef list _out                      # segments of the current decode() call

    # Per-frame state.
    cdef int64_t _ts
    cdef Py_ssize_t _caplen
    cdef uint32_t _vni
    cdef bint _tunneled
    cdef int _depth
    cdef bint _trunc
    cdef int _ipver
    cdef const unsigned char* _src
    cdef const unsigned char* _dst
    cdef unsigned char _tsrc[16]
    cdef int _tsrc_len
    cdef bytes _tsrc_obj                # last tunnel_src object handed out, reused while the source repeats
    cdef bytes _key_obj                 # last key object handed out, reused while the flow repeats

    cdef int decode_frame(self, const unsigned char* p, Py_ssize_t caplen, Py_ssize_t wirelen, int linktype,
                          int64_t ts_ns) except -1
    cdef void set_output(self, list out) noexcept
    cdef int _link(self, Cursor* c, int linktype) except -2
    cdef int _ethertype(self, Cursor* c, unsigned int etype) except -2
    cdef int _ether(self, Cursor* c) except -2
    cdef int _mpls(self, Cursor* c) except -2
    cdef int _ip_by_version(self, Cursor* c) except -2
    cdef int _ipv4(self, Cursor* c) except -2
    cdef int _ipv6(self, Cursor* c) except -2
    cdef int _transport(self, int proto, Cursor* c, Py_ssize_t missing) except -2
    cdef int _enter_tunnel(self, int64_t vni) except -2
    cdef int _udp(self, Cursor* c) except -2
    cdef int _gre(self, Cursor* c) except -2
    cdef int _tcp(self, Cursor* c, Py_ssize_t missing) except -2
    cdef int _vni_count(self, uint32_t vni) except -1
    cdef VniSlot* _vni_slot(self, uint32_t vni) noexcept
