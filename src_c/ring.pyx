# cython: language_level=3
"""AF_PACKET TPACKET_V3 receive ring: one ``poll(decoder)`` call drains every ready block into segments.

Kernel contract (Documentation/networking/packet_mmap.rst, "TPACKET_V3"): the ring is ``blocks`` blocks of
``block_size`` bytes mapped into this process. The kernel fills a block with variable-length frames and
*retires* it to user space (``block_status`` gets TP_STATUS_USER) when it is full or when ``retire_blk_tov``
milliseconds have passed since its first frame; the socket then polls readable. User space reads the block
and hands it back by writing TP_STATUS_KERNEL. Blocks are retired in order, so the reader walks them round
robin from where it stopped. While user space holds every block the kernel drops frames and counts them
(PACKET_STATISTICS ``tp_drops``, ``tp_freeze_q_cnt``), which is why each block is returned right after its
frames are decoded, not after the whole batch.

Block layout (linux/if_packet.h)::

    struct tpacket_block_desc        version, offset_to_priv, hdr.bh1 = tpacket_hdr_v1:
                                     block_status | num_pkts | offset_to_first_pkt | blk_len | seq_num | ts
    ... offset_to_first_pkt ...
    struct tpacket3_hdr              tp_next_offset | tp_sec | tp_nsec | tp_snaplen | tp_len | tp_status |
                                     tp_mac | tp_net | hv1 (rxhash, vlan tci/tpid)
    struct sockaddr_ll               at TPACKET_ALIGN(sizeof(tpacket3_hdr)): sll_hatype = ARPHRD_* of the device
    ... frame bytes at tp_mac ...    tp_snaplen captured of tp_len on the wire
    next frame at tp_next_offset (0 for the last one)

Ownership: the mapped block belongs to user space from the moment its status reads TP_STATUS_USER until we
store TP_STATUS_KERNEL; the decoder reads it only inside ``decode_frame`` and copies what it keeps (segment
payloads), so the block can go back as soon as its last frame is decoded. The status word is read with
acquire and written with release ordering so frame bytes are never read before the kernel's writes are
visible, nor the block returned before our reads are done (the kernel pairs them with smp_wmb/smp_rmb).

No asyncio here (STYLE.md 1): vxcap.capture registers ``fileno()`` with the event loop and calls ``poll``.
Options are validated in Python (vxcap.capture.RingOptions) before they reach the constructor.
"""
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset, strerror
from posix.unistd cimport close

from vxcap._decode cimport Decoder

import os

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    int socket(int domain, int type, int protocol)
    int setsockopt(int fd, int level, int name, const void* val, socklen_t len)
    int getsockopt(int fd, int level, int name, void* val, socklen_t* len)
    struct sockaddr:
        pass
    int bind(int fd, const sockaddr* addr, socklen_t len)
    enum:
        AF_PACKET
        SOCK_RAW
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_ATTACH_FILTER

cdef extern from "<sys/mman.h>":
    void* mmap(void* addr, size_t len, int prot, int flags, int fd, long off)
    int munmap(void* addr, size_t len)
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
    void* MAP_FAILED

cdef extern from "<net/if.h>":
    unsigned int if_nametoindex(const char* name)

cdef extern from "<arpa/inet.h>":
    uint16_t htons(uint16_t)

cdef extern from "<linux/filter.h>":
    struct sock_filter:
        uint16_t code
        uint8_t jt
        uint8_t jf
        uint32_t k
    struct sock_fprog:
        unsigned short len
        sock_filter* filter

cdef extern from "<linux/if_packet.h>":
    struct sockaddr_ll:
        unsigned short sll_family
        uint16_t sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]
    struct tpacket_req3:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
        unsigned int tp_retire_blk_tov
        unsigned int tp_sizeof_priv
        unsigned int tp_feature_req_word
    struct tpacket_stats_v3:
        unsigned int tp_packets
        unsigned int tp_drops
        unsigned int tp_freeze_q_cnt
    struct packet_mreq:
        int mr_ifindex
        unsigned short mr_type
        unsigned short mr_alen
        unsigned char mr_address[8]
    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint32_t tp_status
        uint16_t tp_mac
        uint16_t tp_net
    struct tpacket_hdr_v1:
        uint32_t block_status
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
        uint32_t blk_len
    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1
    struct tpacket_block_desc:
        uint32_t version
        uint32_t offset_to_priv
        tpacket_bd_header_u hdr
    enum:
        SOL_PACKET
        PACKET_VERSION
        PACKET_RX_RING
        PACKET_STATISTICS
        PACKET_ADD_MEMBERSHIP
        PACKET_MR_PROMISC
        PACKET_FANOUT
        PACKET_FANOUT_DATA
        PACKET_IGNORE_OUTGOING
        TPACKET_V3
        TP_STATUS_KERNEL
        TP_STATUS_USER
        TPACKET_ALIGNMENT

cdef extern from *:
    """
    /* Acquire/release on the block status word shared with the kernel (packet_mmap.rst). */
    static inline unsigned int vx_status_load(const volatile unsigned int* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void vx_status_store(volatile unsigned int* p, unsigned int v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    #define VX_TPACKET_ALIGN(x) (((x) + TPACKET_ALIGNMENT - 1) & ~(TPACKET_ALIGNMENT - 1))
    #define VX_SLL_OFFSET VX_TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
    """
    uint32_t vx_status_load(const uint32_t* p) noexcept nogil
    void vx_status_store(uint32_t* p, uint32_t v) noexcept nogil
    size_t VX_SLL_OFFSET

cdef enum:
    ETH_P_ALL = 0x0003              # linux/if_ether.h: every protocol (packet(7))
    ARPHRD_ETHER = 1                # linux/if_arp.h
    ARPHRD_LOOPBACK = 772
    ARPHRD_NONE = 0xFFFE
    LINKTYPE_ETHERNET = 1           # pcap linktypes the decoder reads (vxcap.decode_py)
    LINKTYPE_RAW = 101

# Counter indexes; names (same order) in COUNTER_NAMES.
cdef enum:
    RC_BLOCKS = 0           # blocks handed back to the kernel
    RC_PACKETS              # frames read from the ring
    RC_BYTES                # captured bytes (tp_snaplen) of those frames
    RC_WIRE_BYTES           # their length on the wire (tp_len)
    RC_CUT                  # frames whose tp_snaplen < tp_len: cut by the ring (must stay 0)
    RC_UNSUPPORTED_LINK     # frames of a device type the decoder cannot read (skipped)
    RC_POLLS                # poll() calls
    RC_EMPTY_POLLS          # poll() calls that found no ready block
    RC_KERNEL_PACKETS       # PACKET_STATISTICS tp_packets, accumulated (the kernel resets on read)
    RC_KERNEL_DROPS         # tp_drops: frames the kernel had no ring room for
    RC_KERNEL_FREEZE_Q      # tp_freeze_q_cnt: times the ring was full (all blocks in user space)
    N_RING_COUNTERS



COUNTER_NAMES = ("blocks", "packets", "bytes", "wire_bytes", "cut_frames", "unsupported_link", "polls",
                 "empty_polls", "kernel_packets", "kernel_drops", "kernel_freeze_q")


cdef class Ring:
    """A TPACKET_V3 RX ring on one interface (``""``: all interfaces), filtered in the kernel.

    ``Ring(options)`` takes a validated ``vxcap.capture.RingOptions`` (device, block_size, blocks,
    frame_size, timeout_ms, promisc, ignore_outgoing, filter (packed sock_filter array or None),
    fanout_group / fanout_program / fanout_defrag). It is non-blocking: wait for ``fileno()`` to poll
    readable, then call ``poll``.
    """

    cdef int _fd
    cdef uint8_t* _map
    cdef size_t _map_len
    cdef uint32_t _block_size
    cdef uint32_t _nblocks
    cdef uint32_t _frame_size
    cdef uint32_t _cur                  # next block to look at
    cdef int _ifindex
    cdef uint64_t _cnt[N_RING_COUNTERS]
    cdef readonly str device
    cdef readonly bint promisc
    cdef readonly object fanout_group

    cdef int _fail(self, str what) except -1
    cdef void _release(self, uint32_t i) noexcept nogil

    def __cinit__(self):
        self._fd = -1
        self._map = NULL
        self._map_len = 0
        self._cur = 0
        memset(self._cnt, 0, sizeof(self._cnt))

    def __init__(self, options):
        cdef tpacket_req3 req
        cdef sockaddr_ll sll
        cdef packet_mreq mreq
        cdef int v
        cdef void* m
        options.validate()
        self.device = options.device
        self.promisc = options.promisc
        self.fanout_group = options.fanout_group
        self._block_size = options.block_size
        self._nblocks = options.blocks
        self._frame_size = options.frame_size
        if self.device:
            self._ifindex = if_nametoindex(self.device.encode())
            if self._ifindex == 0:
                raise OSError(errno, f"interface {self.device!r}: {strerror(errno).decode()}")
        else:
            self._ifindex = 0
        # Protocol 0: the socket receives nothing until bind() names one, so no frame reaches it before the
        # ring and the filter are in place (packet(7): "protocol 0 ... no packets are received").
        self._fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if self._fd < 0:
            self._fail("socket(AF_PACKET, SOCK_RAW)")
        v = TPACKET_V3
        if setsockopt(self._fd, SOL_PACKET, PACKET_VERSION, &v, sizeof(v)) != 0:
            self._fail("setsockopt(PACKET_VERSION, TPACKET_V3)")
        if options.ignore_outgoing:
            # Mirror targets only receive; frames this host sends (ICMP errors, its own traffic on "all
            # interfaces") never belong in the ring. PACKET_IGNORE_OUTGOING: Linux 4.20, packet(7).
            v = 1
            if setsockopt(self._fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &v, sizeof(v)) != 0:
                self._fail("setsockopt(PACKET_IGNORE_OUTGOING)")
        memset(&req, 0, sizeof(req))
        req.tp_block_size = self._block_size
        req.tp_block_nr = self._nblocks
        req.tp_frame_size = self._frame_size
        # The kernel checks tp_frame_nr == (block_size / frame_size) * block_nr; with TPACKET_V3 frames are
        # packed at their real length and this number only sizes bookkeeping.
        req.tp_frame_nr = (self._block_size // self._frame_size) * self._nblocks
        req.tp_retire_blk_tov = options.timeout_ms
        if setsockopt(self._fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) != 0:
            self._fail(f"setsockopt(PACKET_RX_RING, {self._nblocks} blocks of {self._block_size} bytes)")
        self._map_len = <size_t>self._block_size * self._nblocks
        m = mmap(NULL, self._map_len, PROT_READ | PROT_WRITE, MAP_SHARED, self._fd, 0)
        if m == MAP_FAILED:
            what = f"mmap of the ring ({self._map_len} bytes)"
            self._map_len = 0
            self._fail(what)
        self._map = <uint8_t*>m
        if options.filter is not None:
            self._attach(options.filter)
        memset(&sll, 0, sizeof(sll))
        sll.sll_family = AF_PACKET
        sll.sll_protocol = htons(ETH_P_ALL)
        sll.sll_ifindex = self._ifindex
        if bind(self._fd, <sockaddr*>&sll, sizeof(sll)) != 0:
            self._fail(f"bind to {self.device or 'all interfaces'}")
        if self.promisc and self._ifindex:
            # A membership, not IFF_PROMISC: the kernel drops it when the socket closes (packet(7)).
            memset(&mreq, 0, sizeof(mreq))
            mreq.mr_ifindex = self._ifindex
            mreq.mr_type = PACKET_MR_PROMISC
            if setsockopt(self._fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, sizeof(mreq)) != 0:
                self._fail("setsockopt(PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC)")
        if options.fanout_group is not None:
            self._join_fanout(options.fanout_group, options.fanout_mode, options.fanout_program)

    cdef int _fail(self, str what) except -1:
        cdef int e = errno
        self.close()
        raise OSError(e, f"{what}: {strerror(e).decode()}")

    def _attach(self, bytes program):
        cdef sock_fprog prog
        if len(program) % 8 or not 0 < len(program) // 8 <= 4096:
            raise ValueError(f"a packed BPF program is 1 to 4096 instructions of 8 bytes, got {len(program)} bytes")
        prog.len = <unsigned short>(len(program) // 8)
        prog.filter = <sock_filter*><const char*>program
        if setsockopt(self._fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0:
            self._fail("setsockopt(SO_ATTACH_FILTER)")

    def _join_fanout(self, int group, int mode, bytes program):
        # packet(7) PACKET_FANOUT: the low 16 bits are the group id (per network namespace), the high 16 the
        # mode and flags; every member binds the same device and protocol. For PACKET_FANOUT_CBPF the
        # program arrives afterwards through PACKET_FANOUT_DATA and serves the whole group.
        cdef uint32_t arg = (<uint32_t>group & 0xFFFF) | (<uint32_t>mode << 16)
        cdef sock_fprog prog
        if setsockopt(self._fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof(arg)) != 0:
            self._fail(f"setsockopt(PACKET_FANOUT, group {group}, mode 0x{mode:x})")
        if program is not None:
            prog.len = <unsigned short>(len(program) // 8)
            prog.filter = <sock_filter*><const char*>program
            if setsockopt(self._fd, SOL_PACKET, PACKET_FANOUT_DATA, &prog, sizeof(prog)) != 0:
                self._fail("setsockopt(PACKET_FANOUT_DATA)")

    def fileno(self):
        return self._fd

    @property
    def block_size(self):
        return self._block_size

    @property
    def blocks(self):
        return self._nblocks

    @property
    def frame_size(self):
        return self._frame_size

    @property
    def closed(self):
        return self._fd < 0

    cdef void _release(self, uint32_t i) noexcept nogil:
        cdef tpacket_block_desc* bd = <tpacket_block_desc*>(self._map + <size_t>i * self._block_size)
        vx_status_store(&bd.hdr.bh1.block_status, TP_STATUS_KERNEL)

    def poll(self, Decoder decoder not None):
        """Decode every frame of every ready block (at most one lap of the ring) and hand each block back
        as soon as it is done; return the segments. Costs no Python object per frame beyond the segments."""
        cdef list out = []
        cdef tpacket_block_desc* bd
        cdef tpacket3_hdr* h
        cdef sockaddr_ll* sll
        cdef uint8_t* blk
        cdef uint32_t n, k, laps = 0, off
        cdef int linktype
        cdef const unsigned char* frame
        if self._map == NULL:
            raise ValueError("poll on a closed ring")
        self._cnt[RC_POLLS] += 1
        decoder.set_output(out)
        try:
            while laps < self._nblocks:
                blk = self._map + <size_t>self._cur * self._block_size
                bd = <tpacket_block_desc*>blk
                if not (vx_status_load(&bd.hdr.bh1.block_status) & TP_STATUS_USER):
                    break
                try:
                    n = bd.hdr.bh1.num_pkts
                    off = bd.hdr.bh1.offset_to_first_pkt
                    for k in range(n):
                        # Offsets come from the kernel; still, never step outside this block.
                        if off == 0 or <size_t>off + sizeof(tpacket3_hdr) > self._block_size:
                            break
                        h = <tpacket3_hdr*>(blk + off)
                        if <size_t>off + h.tp_mac + h.tp_snaplen > self._block_size:
                            break
                        sll = <sockaddr_ll*>(blk + off + VX_SLL_OFFSET)
                        frame = <const unsigned char*>(blk + off + h.tp_mac)
                        self._cnt[RC_PACKETS] += 1
                        self._cnt[RC_BYTES] += h.tp_snaplen
                        self._cnt[RC_WIRE_BYTES] += h.tp_len
                        if h.tp_snaplen < h.tp_len:
                            self._cnt[RC_CUT] += 1
                        if sll.sll_hatype == ARPHRD_ETHER or sll.sll_hatype == ARPHRD_LOOPBACK:
                            linktype = LINKTYPE_ETHERNET
                        elif h.tp_mac == h.tp_net or sll.sll_hatype == ARPHRD_NONE:
                            linktype = LINKTYPE_RAW     # no link header (tun, ipip): IP first
                        else:
                            self._cnt[RC_UNSUPPORTED_LINK] += 1
                            linktype = -1
                        if linktype >= 0:
                            decoder.decode_frame(frame, h.tp_snaplen, h.tp_len, linktype,
                                                 <int64_t>h.tp_sec * 1000000000 + h.tp_nsec)
                        if h.tp_next_offset == 0:
                            break
                        off += h.tp_next_offset
                finally:
                    self._release(self._cur)
                self._cnt[RC_BLOCKS] += 1
                self._cur = (self._cur + 1) % self._nblocks
                laps += 1
        finally:
            decoder.set_output([])
        if laps == 0:
            self._cnt[RC_EMPTY_POLLS] += 1
        return out

    def read_frames(self):
        """Like ``poll`` but return copies ``(frame, wire_len, ts_ns, sll_pkttype)`` instead of decoding
        (tests and debugging; one bytes object per frame)."""
        cdef list out = []
        cdef tpacket_block_desc* bd
        cdef tpacket3_hdr* h
        cdef sockaddr_ll* sll
        cdef uint8_t* blk
        cdef uint32_t n, k, laps = 0, off
        if self._map == NULL:
            raise ValueError("read_frames on a closed ring")
        self._cnt[RC_POLLS] += 1
        while laps < self._nblocks:
            blk = self._map + <size_t>self._cur * self._block_size
            bd = <tpacket_block_desc*>blk
            if not (vx_status_load(&bd.hdr.bh1.block_status) & TP_STATUS_USER):
                break
            n = bd.hdr.bh1.num_pkts
            off = bd.hdr.bh1.offset_to_first_pkt
            for k in range(n):
                if off == 0 or <size_t>off + sizeof(tpacket3_hdr) > self._block_size:
                    break
                h = <tpacket3_hdr*>(blk + off)
                if <size_t>off + h.tp_mac + h.tp_snaplen > self._block_size:
                    break
                sll = <sockaddr_ll*>(blk + off + VX_SLL_OFFSET)
                self._cnt[RC_PACKETS] += 1
                self._cnt[RC_BYTES] += h.tp_snaplen
                self._cnt[RC_WIRE_BYTES] += h.tp_len
                if h.tp_snaplen < h.tp_len:
                    self._cnt[RC_CUT] += 1
                out.append(((<char*>(blk + off + h.tp_mac))[:h.tp_snaplen], h.tp_len,
                            <int64_t>h.tp_sec * 1000000000 + h.tp_nsec, sll.sll_pkttype))
                if h.tp_next_offset == 0:
                    break
                off += h.tp_next_offset
            self._release(self._cur)
            self._cnt[RC_BLOCKS] += 1
            self._cur = (self._cur + 1) % self._nblocks
            laps += 1
        return out

    def read_stats(self):
        """Add PACKET_STATISTICS to the kernel counters (reading resets them in the kernel, packet(7));
        return this read's ``(packets, drops, freeze_q)``."""
        cdef tpacket_stats_v3 st
        cdef socklen_t length = sizeof(st)
        if self._fd < 0:
            return (0, 0, 0)
        memset(&st, 0, sizeof(st))
        if getsockopt(self._fd, SOL_PACKET, PACKET_STATISTICS, &st, &length) != 0:
            e = errno
            raise OSError(e, f"getsockopt(PACKET_STATISTICS): {strerror(e).decode()}")
        self._cnt[RC_KERNEL_PACKETS] += st.tp_packets
        self._cnt[RC_KERNEL_DROPS] += st.tp_drops
        self._cnt[RC_KERNEL_FREEZE_Q] += st.tp_freeze_q_cnt
        return (st.tp_packets, st.tp_drops, st.tp_freeze_q_cnt)

    def counters(self):
        """Every counter (see ring.pxd), kernel ones as of the last ``read_stats``."""
        cdef int i
        return {COUNTER_NAMES[i]: self._cnt[i] for i in range(N_RING_COUNTERS)}

    def close(self):
        """Unmap and close; the kernel leaves the fanout group and drops the promiscuous membership."""
        if self._map != NULL:
            munmap(self._map, self._map_len)
            self._map = NULL
        if self._fd >= 0:
            close(self._fd)
            self._fd = -1

    def __dealloc__(self):
        if self._map != NULL:
            munmap(self._map, self._map_len)
        if self._fd >= 0:
            close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
