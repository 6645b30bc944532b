# cython: language_level=3
# Augmenting declarations for vxcap/reassembly.py (Cython pure Python mode, see src_c/vxcap/http.pxd).
cimport cython

from vxcap.http cimport HttpConnection, Limits

cpdef long long _serial_diff(long long a, long long b)


cdef class ReassemblyLimits:
    cdef public long long max_connections
    cdef public long long max_buffered
    cdef public long long max_conn_buffered
    cdef public long long gap_timeout_ns
    cdef public long long idle_timeout_ns
    cdef public long long response_timeout_ns
    cdef public long long acked_grace_ns
    cdef public Limits http


cdef class Half:
    cdef public object next_seq
    cdef public object early
    cdef public long long early_bytes
    cdef public object fin_seq
    cdef public bint closed
    cdef public bint syn
    cdef public object isn
    cdef public object acked


cdef class Conn:
    cdef public bytes key
    cdef public tuple halves
    cdef public HttpConnection http
    cdef public long long last_ns
    cdef public object client_dir
    cdef public bytes tunnel_src
    cdef public object _ends


cdef class Reassembler:
    cdef public object emit
    cdef public ReassemblyLimits limits
    cdef public object ports
    cdef public object conns
    cdef public object stats
    cdef public long long buffered
    cdef public object pending
    cdef public object recently_closed
    cdef public long long now
    cdef public long long _next_sweep
    cdef public long long _next_response_sweep

    @cython.locals(conn=Conn, half=Half, peer=Half, h=Half, d=int, hd=int, flags=int, ts=cython.longlong,
                   missing=cython.longlong, seq=cython.longlong, ack=cython.longlong, payload=bytes, key=bytes,
                   conns=object, stats=object)
    cpdef process(self, segments)
    @cython.locals(diff=cython.longlong, total=cython.longlong, cut=cython.longlong)
    cpdef _data(self, Conn conn, int d, Half half, long long seq, bytes payload, long long missing,
                long long ts, object ack)
    @cython.locals(h=HttpConnection)
    cpdef _deliver(self, Conn conn, int d, Half half, bytes payload, long long missing, long long ts,
                   object ack)
    cpdef HttpConnection _http(self, Conn conn)
    cpdef _maybe_close_half(self, Conn conn, int d, Half half)
