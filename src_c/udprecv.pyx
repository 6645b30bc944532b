# cython: language_level=3
"""Batched UDP receive for the VXLAN/Geneve port (``VXCAP_ENGINE=udp``): recvmmsg(2) into 64 KiB slots.

Where raw sockets are not allowed, vxcap binds the tunnel port as a plain UDP socket. The kernel then has
already taken off the outer Ethernet, IP and UDP headers; the decoder wants a frame, so each slot keeps 48
bytes of headroom in front of the payload and a synthetic outer header is written there after the datagram
arrived, without copying the payload::

    slot:  [ headroom 48 ][ datagram payload: VXLAN (or Geneve) header | inner Ethernet frame ... ]
    IPv4 sender:     [20 IPv4 | 8 UDP][payload]   linktype 228 (LINKTYPE_IPV4), starts at headroom - 28
    IPv6 sender:  [40 IPv6     | 8 UDP][payload]   linktype 229 (LINKTYPE_IPV6), starts at slot
                   src = datagram source (the mirror source: tunnel_src), dst = unspecified,
                   UDP src port = datagram's, dst port = the bound port, checksums 0 (never verified).

The decoder then walks it exactly like a frame from the ring. Kernel facts per datagram come as control
messages: SO_TIMESTAMPNS (receive time, CLOCK_REALTIME, socket(7)) and SO_RXQ_OVFL (the socket's drop
counter so far, socket(7)), so drops of a full receive buffer are counted as with the ring's tp_drops.
A datagram longer than its slot is cut by the kernel (MSG_TRUNC) and counted; 64 KiB slots fit any UDP
datagram over IPv4 (65507 bytes) or IPv6 without jumbograms (65527 bytes).

No asyncio here: vxcap.udp_engine registers the socket with the loop and calls ``poll``.
"""
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset, strerror

from vxcap._decode cimport Decoder

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    struct iovec:
        void* iov_base
        size_t iov_len
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags, void* timeout)
    cmsghdr* CMSG_FIRSTHDR(msghdr* m)
    cmsghdr* CMSG_NXTHDR(msghdr* m, cmsghdr* c)
    unsigned char* CMSG_DATA(cmsghdr* c)
    enum:
        MSG_DONTWAIT
        MSG_TRUNC
        SOL_SOCKET
        SO_TIMESTAMPNS
        SO_RXQ_OVFL
        AF_INET
        AF_INET6

cdef extern from "<time.h>":
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    enum:
        CLOCK_REALTIME

cdef extern from "<netinet/in.h>":
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        unsigned short sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

cdef enum:
    HEADROOM = 48                   # IPv6 40 + UDP 8: the larger synthetic header
    SLOT_PAYLOAD = 65536
    NAME_LEN = 32                   # >= sizeof(struct sockaddr_in6) (28)
    CONTROL_LEN = 64                # CMSG_SPACE(timespec 16) 32 + CMSG_SPACE(uint32 4) 24, rounded up
    LINKTYPE_IPV4 = 228
    LINKTYPE_IPV6 = 229
    U_DATAGRAMS = 0
    U_BYTES
    U_BATCHES
    U_CALLS
    U_TRUNCATED
    U_FOREIGN_FAMILY
    U_KERNEL_DROPS
    N_UDP_COUNTERS

COUNTER_NAMES = ("datagrams", "bytes", "batches", "polls", "truncated_datagrams", "foreign_family",
                 "kernel_drops")


cdef inline void put16(uint8_t* p, unsigned int v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef class UdpReceiver:
    """recvmmsg(2) on a non-blocking UDP socket ``fd`` bound to ``port``; ``poll(decoder)`` drains it."""

    cdef int _fd
    cdef unsigned int _port
    cdef unsigned int _batch
    cdef unsigned int _max_batches
    cdef uint8_t* _slots
    cdef uint8_t* _names
    cdef uint8_t* _control
    cdef iovec* _iov
    cdef mmsghdr* _msgs
    cdef uint64_t _cnt[N_UDP_COUNTERS]
    cdef uint32_t _last_ovfl
    cdef bint _have_ovfl

    def __cinit__(self):
        self._slots = NULL
        self._names = NULL
        self._control = NULL
        self._iov = NULL
        self._msgs = NULL
        memset(self._cnt, 0, sizeof(self._cnt))

    def __init__(self, int fd, int port, int batch=64, int max_batches=64):
        """``batch`` datagrams per recvmmsg call; at most ``max_batches`` calls per ``poll`` (fairness to
        the event loop: the rest stays queued and the socket stays readable)."""
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port}: expected 1 to 65535")
        if not 1 <= batch <= 1024:
            raise ValueError(f"batch {batch}: expected 1 to 1024 datagrams per recvmmsg call")
        if not 1 <= max_batches <= 1 << 20:
            raise ValueError(f"max_batches {max_batches}: expected 1 to 1048576")
        self._fd = fd
        self._port = port
        self._batch = batch
        self._max_batches = max_batches
        self._slots = <uint8_t*>calloc(batch, HEADROOM + SLOT_PAYLOAD)
        self._names = <uint8_t*>calloc(batch, NAME_LEN)
        self._control = <uint8_t*>calloc(batch, CONTROL_LEN)
        self._iov = <iovec*>calloc(batch, sizeof(iovec))
        self._msgs = <mmsghdr*>calloc(batch, sizeof(mmsghdr))
        if not (self._slots and self._names and self._control and self._iov and self._msgs):
            raise MemoryError()

    def __dealloc__(self):
        free(self._slots)
        free(self._names)
        free(self._control)
        free(self._iov)
        free(self._msgs)

    cdef void _arm(self) noexcept nogil:
        cdef unsigned int i
        for i in range(self._batch):
            self._iov[i].iov_base = self._slots + <size_t>i * (HEADROOM + SLOT_PAYLOAD) + HEADROOM
            self._iov[i].iov_len = SLOT_PAYLOAD
            memset(&self._msgs[i], 0, sizeof(mmsghdr))
            self._msgs[i].msg_hdr.msg_name = self._names + <size_t>i * NAME_LEN
            self._msgs[i].msg_hdr.msg_namelen = NAME_LEN
            self._msgs[i].msg_hdr.msg_iov = &self._iov[i]
            self._msgs[i].msg_hdr.msg_iovlen = 1
            self._msgs[i].msg_hdr.msg_control = self._control + <size_t>i * CONTROL_LEN
            self._msgs[i].msg_hdr.msg_controllen = CONTROL_LEN

    def poll(self, Decoder decoder not None):
        """Receive until the socket is empty (or ``max_batches`` calls), decode each datagram as a frame,
        return the segments."""
        cdef list out = []
        cdef int got, i, e
        cdef unsigned int rounds = 0, length
        cdef uint8_t* slot
        cdef uint8_t* h
        cdef sockaddr_in* sin
        cdef sockaddr_in6* sin6
        cdef msghdr* mh
        cdef cmsghdr* cm
        cdef int64_t ts, now
        cdef timespec tsp
        cdef uint32_t ovfl
        cdef bint v4
        self._cnt[U_CALLS] += 1
        decoder.set_output(out)
        try:
            while rounds < self._max_batches:
                self._arm()
                got = recvmmsg(self._fd, self._msgs, self._batch, MSG_DONTWAIT, NULL)
                if got < 0:
                    e = errno
                    if e == EAGAIN:                  # == EWOULDBLOCK on Linux
                        break
                    if e == EINTR:
                        continue
                    raise OSError(e, f"recvmmsg: {strerror(e).decode()}")
                if got == 0:
                    break
                rounds += 1
                self._cnt[U_BATCHES] += 1
                clock_gettime(CLOCK_REALTIME, &tsp)
                now = <int64_t>tsp.tv_sec * 1000000000 + tsp.tv_nsec
                for i in range(got):
                    mh = &self._msgs[i].msg_hdr
                    length = self._msgs[i].msg_len
                    self._cnt[U_DATAGRAMS] += 1
                    self._cnt[U_BYTES] += length
                    if mh.msg_flags & MSG_TRUNC:
                        self._cnt[U_TRUNCATED] += 1
                    ts = now
                    cm = CMSG_FIRSTHDR(mh)
                    while cm != NULL:
                        if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SO_TIMESTAMPNS:
                            memcpy(&tsp, CMSG_DATA(cm), sizeof(timespec))
                            ts = <int64_t>tsp.tv_sec * 1000000000 + tsp.tv_nsec
                        elif cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SO_RXQ_OVFL:
                            # The socket's sk_drops so far (wraps at 32 bits): count the increase.
                            memcpy(&ovfl, CMSG_DATA(cm), 4)
                            if self._have_ovfl:
                                self._cnt[U_KERNEL_DROPS] += <uint32_t>(ovfl - self._last_ovfl)
                            else:
                                self._cnt[U_KERNEL_DROPS] += ovfl
                            self._last_ovfl = ovfl
                            self._have_ovfl = True
                        cm = CMSG_NXTHDR(mh, cm)
                    slot = self._slots + <size_t>i * (HEADROOM + SLOT_PAYLOAD)
                    sin = <sockaddr_in*>mh.msg_name
                    sin6 = <sockaddr_in6*>mh.msg_name
                    if sin.sin_family == AF_INET:
                        v4 = True
                    elif sin6.sin6_family == AF_INET6:
                        # ::ffff:a.b.c.d is an IPv4 sender on a dual-stack socket.
                        v4 = (sin6.sin6_addr.s6_addr[10] == 0xFF and sin6.sin6_addr.s6_addr[11] == 0xFF
                              and sin6.sin6_addr.s6_addr[0] == 0 and sin6.sin6_addr.s6_addr[8] == 0)
                    else:
                        self._cnt[U_FOREIGN_FAMILY] += 1
                        continue
                    if length > SLOT_PAYLOAD:
                        length = SLOT_PAYLOAD
                    if v4:
                        h = slot + HEADROOM - 28
                        memset(h, 0, 28)
                        h[0] = 0x45                     # version 4, IHL 5 (RFC 791)
                        put16(h + 2, 28 + length)       # total length (<= 65563 only when cut: then 0)
                        if 28 + length > 0xFFFF:
                            put16(h + 2, 0)             # the decoder reads 0 as "as captured"
                        h[8] = 64
                        h[9] = 17                       # UDP
                        if sin.sin_family == AF_INET:
                            memcpy(h + 12, &sin.sin_addr, 4)
                        else:
                            memcpy(h + 12, &sin6.sin6_addr.s6_addr[12], 4)
                        memcpy(h + 20, &sin.sin_port, 2)    # both in network order already
                        put16(h + 22, self._port)
                        put16(h + 24, 8 + length if 8 + length <= 0xFFFF else 0)
                        decoder.decode_frame(h, 28 + length, 28 + length, LINKTYPE_IPV4, ts)
                    else:
                        h = slot
                        memset(h, 0, 48)
                        h[0] = 0x60                     # version 6 (RFC 8200)
                        put16(h + 4, 8 + length)        # payload length
                        h[6] = 17
                        h[7] = 64
                        memcpy(h + 8, &sin6.sin6_addr, 16)
                        memcpy(h + 40, &sin6.sin6_port, 2)
                        put16(h + 42, self._port)
                        put16(h + 44, 8 + length)
                        decoder.decode_frame(h, 48 + length, 48 + length, LINKTYPE_IPV6, ts)
                if <unsigned int>got < self._batch:
                    break                               # the queue is empty: skip one EAGAIN call
        finally:
            decoder.set_output([])
        return out

    def counters(self):
        cdef int i
        return {COUNTER_NAMES[i]: self._cnt[i] for i in range(N_UDP_COUNTERS)}
