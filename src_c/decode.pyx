# cython: language_level=3
"""Native packet decoder: ``FrameBatch`` in, TCP segment tuples out, one call per batch.

This is a line-by-line translation of ``vxcap/decode_py.py``, which documents every rule (segment tuple, key
layout, drop reasons, tunnel handling); keep the two in the same order when changing either. What differs is
only how bytes are read: every header goes through a bounds-checked ``Cursor`` (cursor.pxd), state lives in
C fields, counters in a C array, VNI statistics in a small open-addressing table, and the port and VNI filters
are bitmaps. A frame that yields no segment creates no Python object; an emitted segment costs its tuple, the
payload bytes, and (only when the flow or tunnel source changed since the previous segment) a key / source
bytes object.

Pointers into the frame (``_src``, ``_dst``) are valid only during ``decode_frame``: the caller keeps the frame
memory (a FrameBatch, a ring block) alive for that call and nothing here keeps them beyond it.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from cursor cimport Cursor, be16, be32, cur_init, cur_limit, cur_peek, cur_take
from vxcap._pcapfile cimport FrameBatch

from vxcap.decode_py import COUNTER_NAMES, VniFilter, validate_config

if len(COUNTER_NAMES) != N_COUNTERS:
    raise ImportError("vxcap._decode is out of step with vxcap.decode_py.COUNTER_NAMES; rebuild it")

cdef enum:
    PROCEED = 0             # returned by _enter_tunnel: keep decoding
    NO_VNI = 0xFFFFFFFF
    MAX_VNI = 0xFFFFFF
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    GRE_C = 0x8000
    GRE_R = 0x4000
    GRE_K = 0x2000
    GRE_S = 0x1000
    GRE_VER = 0x0007
    ETH_IPV4 = 0x0800
    ETH_IPV6 = 0x86DD
    ETH_8021Q = 0x8100
    ETH_8021AD = 0x88A8
    ETH_QINQ_OLD = 0x9100
    ETH_MPLS_UC = 0x8847
    ETH_MPLS_MC = 0x8848
    ETH_TEB = 0x6558
    ETH_ERSPAN_2 = 0x88BE
    ETH_ERSPAN_3 = 0x22EB

cdef bytes EMPTY = b""


cdef class Decoder:
    """Native twin of ``vxcap.decode_py.Decoder`` (same arguments, same results)."""

    pure = False

    def __cinit__(self):
        self._vni_denied = NULL
        self._vni_tab = NULL
        self._vni_mask = 0
        self._vni_used = 0
        memset(self._cnt, 0, sizeof(self._cnt))
        memset(self._portbits, 0, sizeof(self._portbits))
        self._out = []
        self._tsrc_obj = EMPTY
        self._key_obj = EMPTY

    def __init__(self, vxlan_port=4789, geneve_port=6081, encap="auto", vnis=VniFilter(),
                 ports=frozenset(), max_depth=4):
        cdef uint32_t v
        cdef int port
        (vxlan_port, geneve_port, encap, vnis, ports, max_depth) = validate_config(
            vxlan_port, geneve_port, encap, vnis, ports, max_depth)
        self.vxlan_port = vxlan_port
        self.geneve_port = geneve_port
        self.encap = encap
        self.vnis = vnis
        self.ports = ports
        self.max_depth = max_depth
        self._follow_tunnels = encap != "none"
        self._need_tunnel = encap == "vxlan"
        self._filter_ports = bool(ports)
        for port in ports:
            self._portbits[port >> 3] |= <uint8_t>(1 << (port & 7))
        free(self._vni_denied)
        self._vni_denied = NULL
        # ("include" is a Cython keyword, hence getattr.)
        inc = getattr(vnis, "include")
        exc = getattr(vnis, "exclude")
        if inc or exc:
            # 2 MiB bitmap, one bit per 24-bit VNI: one load per frame whatever the size of the lists.
            self._vni_denied = <uint8_t*>calloc((MAX_VNI + 1) >> 3, 1)
            if self._vni_denied == NULL:
                raise MemoryError()
            if inc:
                memset(self._vni_denied, 0xFF, (MAX_VNI + 1) >> 3)
                for v in inc:
                    self._vni_denied[v >> 3] &= <uint8_t>~(1 << (v & 7))
            for v in exc:
                self._vni_denied[v >> 3] |= <uint8_t>(1 << (v & 7))

    def __dealloc__(self):
        free(self._vni_denied)
        free(self._vni_tab)

    def counters(self):
        cdef int i
        return {COUNTER_NAMES[i]: self._cnt[i] for i in range(N_COUNTERS)}

    def vni_stats(self):
        """Outermost VNI -> (frames, captured bytes), counted before the VNI filter."""
        cdef Py_ssize_t i
        cdef list items = []
        if self._vni_tab != NULL:
            for i in range(self._vni_mask + 1):
                if self._vni_tab[i].vni != NO_VNI:
                    items.append((self._vni_tab[i].vni, (self._vni_tab[i].frames, self._vni_tab[i].bytes)))
        items.sort()
        return dict(items)

    def decode(self, FrameBatch batch not None):
        """Decode every frame of ``batch``; returns the list of segment tuples."""
        cdef Py_ssize_t i
        cdef list out = []
        self._out = out
        try:
            for i in range(batch.count):
                self.decode_frame(batch.base + batch.offset[i], batch.caplen[i], batch.wirelen[i],
                                  batch.linktype[i], batch.ts_ns[i])
        finally:
            self._out = []
        return out

    cdef void set_output(self, list out) noexcept:
        self._out = out

    cdef int decode_frame(self, const unsigned char* p, Py_ssize_t caplen, Py_ssize_t wirelen, int linktype,
                          int64_t ts_ns) except -1:
        cdef Cursor c
        cdef int r
        self._cnt[C_FRAMES] += 1
        self._cnt[C_BYTES] += <uint64_t>caplen
        self._vni = NO_VNI
        self._tunneled = False
        self._depth = 0
        self._trunc = caplen < wirelen
        self._ts = ts_ns
        self._caplen = caplen
        cur_init(&c, p, caplen)
        r = self._link(&c, linktype)
        if r == R_EMITTED:
            self._cnt[C_SEGMENTS] += 1
        else:
            self._cnt[r] += 1
        if self._depth:
            self._cnt[C_ENCAPSULATED] += 1
        if self._trunc:
            self._cnt[C_TRUNCATED_FRAMES] += 1
        return 0

    # -- link layer ----------------------------------------------------------------------------------------

    cdef int _link(self, Cursor* c, int linktype) except -2:
        cdef const unsigned char* h
        cdef uint32_t family
        if linktype == 1:
            return self._ether(c)
        if linktype == 113:
            # Linux cooked v1: packet type (2), ARPHRD (2), address length (2), address (8), protocol (2)
            h = cur_take(c, 16)
            if h == NULL:
                return R_SHORT_LINK_HEADER
            return self._ethertype(c, be16(h + 14))
        if linktype == 276:
            # Linux cooked v2: protocol (2), reserved (2), ifindex (4), ARPHRD (2), type (1), alen (1), addr (8)
            h = cur_take(c, 20)
            if h == NULL:
                return R_SHORT_LINK_HEADER
            return self._ethertype(c, be16(h))
        if linktype == 101 or linktype == 12 or linktype == 14:
            if cur_peek(c, 1) == NULL:
                return R_NON_IP
            return self._ip_by_version(c)
        if linktype == 228:
            return self._ipv4(c)
        if linktype == 229:
            return self._ipv6(c)
        if linktype == 0 or linktype == 108:
            h = cur_take(c, 4)
            if h == NULL:
                return R_SHORT_LINK_HEADER
            if linktype == 108:
                family = be32(h)
            else:
                # Host byte order of the writer; a family above 16 bits means the other endianness.
                family = (<uint32_t>h[3] << 24) | (<uint32_t>h[2] << 16) | (<uint32_t>h[1] << 8) | h[0]
                if family > 0xFFFF:
                    family = be32(h)
            if family == 2:
                return self._ipv4(c)
            if family == 10 or family == 24 or family == 28 or family == 30:
                return self._ipv6(c)
            return R_NON_IP
        return R_UNSUPPORTED_LINKTYPE

    cdef int _ip_by_version(self, Cursor* c) except -2:
        # Caller has checked that one byte is there.
        cdef unsigned int version = c.p[0] >> 4
        if version == 4:
            return self._ipv4(c)
        if version == 6:
            return self._ipv6(c)
        return R_NON_IP

    cdef int _ether(self, Cursor* c) except -2:
        cdef const unsigned char* h = cur_take(c, 14)
        if h == NULL:
            return R_SHORT_ETHERNET
        return self._ethertype(c, be16(h + 12))

    cdef int _ethertype(self, Cursor* c, unsigned int etype) except -2:
        cdef const unsigned char* h
        while etype == ETH_8021Q or etype == ETH_8021AD or etype == ETH_QINQ_OLD:
            h = cur_take(c, 4)
            if h == NULL:
                return R_SHORT_ETHERNET
            etype = be16(h + 2)
        if etype == ETH_IPV4:
            return self._ipv4(c)
        if etype == ETH_IPV6:
            return self._ipv6(c)
        if etype == ETH_MPLS_UC or etype == ETH_MPLS_MC:
            return self._mpls(c)
        return R_NON_IP

    cdef int _mpls(self, Cursor* c) except -2:
        cdef const unsigned char* h
        while True:
            h = cur_take(c, 4)
            if h == NULL:
                return R_SHORT_MPLS
            if h[2] & 0x01:             # bottom of stack
                break
        if cur_peek(c, 1) == NULL:
            return R_SHORT_MPLS
        return self._ip_by_version(c)

    # -- IP ------------------------------------------------------------------------------------------------

    cdef int _ipv4(self, Cursor* c) except -2:
        cdef Py_ssize_t avail = c.n, hlen, total, missing = 0
        cdef const unsigned char* h = cur_peek(c, 20)
        if h == NULL:
            return R_BAD_IPV4_HEADER
        hlen = (h[0] & 0x0F) * 4
        if (h[0] >> 4) != 4 or hlen < 20 or hlen > avail:
            return R_BAD_IPV4_HEADER
        total = be16(h + 2)
        if total == 0:
            total = avail               # TSO on the capturing host
        elif total < hlen:
            return R_BAD_IP_LENGTH
        if total > avail:
            missing = total - avail
            total = avail
            self._trunc = True
        if be16(h + 6) & 0x3FFF:
            return R_IP_FRAGMENT
        self._ipver = 4
        self._src = h + 12
        self._dst = h + 16
        cur_limit(c, total)             # drops Ethernet padding
        cur_take(c, hlen)
        return self._transport(h[9], c, missing)

    cdef int _ipv6(self, Cursor* c) except -2:
        cdef Py_ssize_t avail = c.n, plen, body, missing = 0, hlen
        cdef const unsigned char* h = cur_peek(c, 40)
        cdef const unsigned char* e
        cdef unsigned int nh
        if h == NULL or (h[0] >> 4) != 6:
            return R_BAD_IPV6_HEADER
        plen = be16(h + 4)
        body = avail - 40
        if plen == 0:
            plen = body                 # jumbogram or TSO
        if plen > body:
            missing = plen - body
            plen = body
            self._trunc = True
        nh = h[6]
        cur_limit(c, 40 + plen)
        cur_take(c, 40)
        while True:
            if nh == 0 or nh == 43 or nh == 60:
                e = cur_peek(c, 2)
                if e == NULL:
                    return R_BAD_IPV6_EXT_HEADER
                hlen = (e[1] + 1) * 8
            elif nh == 51:
                e = cur_peek(c, 2)
                if e == NULL:
                    return R_BAD_IPV6_EXT_HEADER
                hlen = (e[1] + 2) * 4
            elif nh == 44:
                e = cur_peek(c, 8)
                if e == NULL:
                    return R_BAD_IPV6_EXT_HEADER
                if be16(e + 2) & 0xFFF9:    # offset or M set; offset 0 and M 0 is atomic (RFC 6946)
                    return R_IP_FRAGMENT
                hlen = 8
            else:
                break
            e = cur_take(c, hlen)
            if e == NULL:
                return R_BAD_IPV6_EXT_HEADER
            nh = e[0]
        self._ipver = 6
        self._src = h + 8
        self._dst = h + 24
        return self._transport(nh, c, missing)

    cdef int _transport(self, int proto, Cursor* c, Py_ssize_t missing) except -2:
        if proto == 6:
            if self._need_tunnel and not self._tunneled:
                return R_NOT_ENCAPSULATED
            return self._tcp(c, missing)
        if proto == 17:
            return self._udp(c)
        if proto == 47:
            return self._gre(c)
        return R_NON_TCP

    # -- tunnels -------------------------------------------------------------------------------------------

    cdef int _enter_tunnel(self, int64_t vni) except -2:
        cdef uint32_t v
        if self._depth >= self.max_depth:
            return R_ENCAP_DEPTH_EXCEEDED
        self._depth += 1
        if vni >= 0 and not self._tunneled:
            v = <uint32_t>vni
            self._tunneled = True
            self._vni = v
            self._tsrc_len = 4 if self._ipver == 4 else 16
            memcpy(self._tsrc, self._src, self._tsrc_len)
            self._vni_count(v)
            if self._vni_denied != NULL and (self._vni_denied[v >> 3] >> (v & 7)) & 1:
                return R_VNI_FILTERED
        return PROCEED

    cdef int _vni_count(self, uint32_t vni) except -1:
        cdef Py_ssize_t i, size, old_size
        cdef VniSlot* old
        cdef VniSlot* slot
        if self._vni_tab == NULL or (self._vni_used + 1) * 2 > self._vni_mask + 1:
            old = self._vni_tab
            old_size = self._vni_mask + 1 if old != NULL else 0
            size = old_size * 2 if old_size else 16
            self._vni_tab = <VniSlot*>malloc(size * sizeof(VniSlot))
            if self._vni_tab == NULL:
                self._vni_tab = old
                raise MemoryError()
            for i in range(size):
                self._vni_tab[i].vni = NO_VNI
            self._vni_mask = size - 1
            self._vni_used = 0
            for i in range(old_size):
                if old[i].vni != NO_VNI:
                    slot = self._vni_slot(old[i].vni)
                    slot[0] = old[i]
                    self._vni_used += 1
            free(old)
        slot = self._vni_slot(vni)
        if slot.vni == NO_VNI:
            slot.vni = vni
            slot.frames = 0
            slot.bytes = 0
            self._vni_used += 1
        slot.frames += 1
        slot.bytes += <uint64_t>self._caplen
        return 0

    cdef VniSlot* _vni_slot(self, uint32_t vni) noexcept:
        """Slot holding ``vni``, or the empty slot where it belongs (the table is never full)."""
        cdef Py_ssize_t i = <Py_ssize_t>((vni * <uint32_t>2654435761U) >> 8) & self._vni_mask
        while self._vni_tab[i].vni != vni and self._vni_tab[i].vni != NO_VNI:
            i = (i + 1) & self._vni_mask
        return &self._vni_tab[i]

    cdef int _udp(self, Cursor* c) except -2:
        cdef const unsigned char* h = cur_take(c, 8)
        cdef const unsigned char* v
        cdef unsigned int sport, dport, vx, gn
        cdef Py_ssize_t hlen
        cdef int r
        if h == NULL:
            return R_SHORT_UDP
        # Destination port first, then source port (see decode_py._udp for why both).
        sport = be16(h)
        dport = be16(h + 2)
        vx = self.vxlan_port
        gn = self.geneve_port
        if vx and (dport == vx or (sport == vx and dport != gn)):
            if not self._follow_tunnels:
                return R_ENCAP_IGNORED
            # RFC 7348 section 5: flags (8, I = 0x08) | reserved (24) | VNI (24) | reserved (8)
            v = cur_take(c, 8)
            if v == NULL:
                return R_SHORT_VXLAN
            if not v[0] & 0x08:
                return R_VXLAN_NO_I_FLAG
            r = self._enter_tunnel(be32(v + 4) >> 8)
            if r != PROCEED:
                return r
            return self._ether(c)
        if gn and (dport == gn or sport == gn):
            if not self._follow_tunnels:
                return R_ENCAP_IGNORED
            # RFC 8926 section 3.4: Ver (2) | Opt Len (6) | O | C | Rsvd (6) | Protocol (16) | VNI (24) | Rsvd
            v = cur_peek(c, 8)
            if v == NULL:
                return R_SHORT_GENEVE
            if v[0] >> 6:
                return R_BAD_GENEVE_HEADER
            hlen = 8 + (v[0] & 0x3F) * 4
            if cur_take(c, hlen) == NULL:
                return R_SHORT_GENEVE
            r = self._enter_tunnel(be32(v + 4) >> 8)
            if r != PROCEED:
                return r
            if be16(v + 2) == ETH_TEB:
                return self._ether(c)
            return self._ethertype(c, be16(v + 2))
        return R_NON_TCP

    cdef int _gre(self, Cursor* c) except -2:
        cdef const unsigned char* h
        cdef const unsigned char* e
        cdef unsigned int flags, proto
        cdef Py_ssize_t hlen
        cdef int r
        if not self._follow_tunnels:
            return R_ENCAP_IGNORED
        # RFC 2784 / 2890: C R K S Reserved0 Ver | Protocol, then checksum+reserved1, key, sequence if flagged.
        h = cur_peek(c, 4)
        if h == NULL:
            return R_SHORT_GRE
        flags = be16(h)
        proto = be16(h + 2)
        if flags & (GRE_R | GRE_VER):
            return R_GRE_UNSUPPORTED
        hlen = 4 + (4 if flags & GRE_C else 0) + (4 if flags & GRE_K else 0) + (4 if flags & GRE_S else 0)
        if cur_take(c, hlen) == NULL:
            return R_SHORT_GRE
        r = self._enter_tunnel(-1)
        if r != PROCEED:
            return r
        if proto == ETH_ERSPAN_2:
            # Type II carries an 8-byte header and sets the GRE S bit; type I has neither.
            if flags & GRE_S:
                if cur_take(c, 8) == NULL:
                    return R_SHORT_ERSPAN
            return self._ether(c)
        if proto == ETH_ERSPAN_3:
            # 12-byte header; O (last bit) adds an 8-byte platform subheader; FT (5 bits at bit 81) 0 = Ethernet.
            e = cur_peek(c, 12)
            if e == NULL:
                return R_SHORT_ERSPAN
            hlen = 20 if e[11] & 0x01 else 12
            if cur_peek(c, hlen) == NULL:
                return R_SHORT_ERSPAN
            if (e[10] >> 2) & 0x1F:
                return R_ERSPAN_UNSUPPORTED
            cur_take(c, hlen)
            return self._ether(c)
        if proto == ETH_TEB:
            return self._ether(c)
        return self._ethertype(c, proto)

    # -- TCP -----------------------------------------------------------------------------------------------

    cdef int _tcp(self, Cursor* c, Py_ssize_t missing) except -2:
        cdef Py_ssize_t avail = c.n, doff, alen, klen
        cdef const unsigned char* h
        cdef unsigned int sport, dport, flags
        cdef unsigned char kb[41]
        cdef unsigned char* k
        cdef int cmp, direction
        cdef const unsigned char* first
        cdef const unsigned char* second
        cdef unsigned int pfirst, psecond
        cdef bytes key, tsrc
        if avail + missing < 20:
            return R_BAD_TCP_HEADER
        h = cur_peek(c, 20)
        if h == NULL:
            return R_SHORT_TCP
        doff = (h[12] >> 4) * 4
        if doff < 20 or doff > avail + missing:
            return R_BAD_TCP_HEADER
        if doff > avail:
            return R_SHORT_TCP
        sport = be16(h)
        dport = be16(h + 2)
        if self._filter_ports and not ((self._portbits[sport >> 3] >> (sport & 7)) & 1) \
                and not ((self._portbits[dport >> 3] >> (dport & 7)) & 1):
            return R_PORT_FILTERED
        flags = h[13]
        if avail == doff and missing == 0 and not (flags & (TCP_SYN | TCP_FIN | TCP_RST)):
            return R_PURE_ACK
        # Key: VNI (4) | version (1) | addrA | portA | addrB | portB, A the bytewise smaller endpoint.
        alen = 4 if self._ipver == 4 else 16
        cmp = memcmp(self._src, self._dst, alen)
        if cmp == 0:
            cmp = <int>sport - <int>dport       # big-endian bytes compare like the numbers they encode
        if cmp <= 0:
            direction = 0
            first, pfirst, second, psecond = self._src, sport, self._dst, dport
        else:
            direction = 1
            first, pfirst, second, psecond = self._dst, dport, self._src, sport
        k = kb
        k[0] = self._vni >> 24
        k[1] = (self._vni >> 16) & 0xFF
        k[2] = (self._vni >> 8) & 0xFF
        k[3] = self._vni & 0xFF
        k[4] = self._ipver
        memcpy(k + 5, first, alen)
        k[5 + alen] = pfirst >> 8
        k[6 + alen] = pfirst & 0xFF
        memcpy(k + 7 + alen, second, alen)
        k[7 + 2 * alen] = psecond >> 8
        k[8 + 2 * alen] = psecond & 0xFF
        klen = 9 + 2 * alen
        key = self._key_obj
        if PyBytes_GET_SIZE(key) != klen or memcmp(PyBytes_AS_STRING(key), kb, klen) != 0:
            key = PyBytes_FromStringAndSize(<const char*>kb, klen)
            self._key_obj = key
        if self._tunneled:
            tsrc = self._tsrc_obj
            if PyBytes_GET_SIZE(tsrc) != self._tsrc_len \
                    or memcmp(PyBytes_AS_STRING(tsrc), self._tsrc, self._tsrc_len) != 0:
                tsrc = PyBytes_FromStringAndSize(<const char*>self._tsrc, self._tsrc_len)
                self._tsrc_obj = tsrc
        else:
            tsrc = EMPTY
        self._out.append((key, direction, be32(h + 4), be32(h + 8), flags, self._ts,
                          PyBytes_FromStringAndSize(<const char*>h + doff, avail - doff), missing, tsrc))
        return R_EMITTED
