# cython: language_level=3
# Augmenting declarations for vxcap/http.py (Cython "pure Python mode"): the same source runs as plain
# Python (the readable twin, VXCAP_PURE_PYTHON=1) and compiles, with these C types, into vxcap.http.
# Attributes are `public` where other modules or tests read them.
cimport cython

cpdef long long _serial_diff(long long a, long long b)


cdef class Message:
    cdef public bint is_request
    cdef public object method
    cdef public bytes target
    cdef public long long status
    cdef public list headers
    cdef public list body
    cdef public long long body_size
    cdef public long long ts_ns
    cdef public list incomplete
    cdef public bint done
    cdef public long long seq
    cdef public object ack
    cpdef mark(self, str reason)


cdef class Limits:
    cdef public long long max_header_bytes
    cdef public long long body_limit
    cdef public long long max_pending


cdef class ChunkScanner:
    cdef public int state
    cdef public long long remaining
    cdef public bytes line
    cdef public list trailers
    @cython.locals(n=Py_ssize_t, j=Py_ssize_t, take=Py_ssize_t, st=int, size=cython.longlong)
    cpdef tuple scan(self, bytes data, Py_ssize_t i, object out)
    cpdef bint skip(self, long long nbytes)


cdef class HalfParser:
    cdef public HttpConnection conn
    cdef public object is_request
    cdef public int state
    cdef public bytes buf
    cdef public long long buf_ts
    cdef public object parser
    cdef public Message msg
    cdef public long long remaining
    cdef public ChunkScanner chunks
    cdef public object stats
    cdef public Limits limits
    cdef public bint _complete
    cdef public object held
    cdef public long long held_bytes
    cdef public bint eof_pending
    cdef public bint _salvaging
    cdef public long long buf_seq
    cdef public object buf_ack
    cdef public long long rest_seq
    cdef public long long end_seq
    cdef public bint seen
    cdef public bint _unsure_body
    cdef public bytes _probe

    cpdef feed(self, bytes data, long long ts_ns, long long seq=*, object ack=*)
    @cython.locals(st=int, n=cython.longlong, end=Py_ssize_t)
    cpdef _feed(self, bytes data, long long ts_ns, long long seq, object ack)
    cpdef gap(self, long long nbytes)
    cpdef _gap(self, long long nbytes)
    cpdef eof(self)
    @cython.locals(a=Py_ssize_t, b=Py_ssize_t, end=Py_ssize_t, line_end=Py_ssize_t, msg=Message, buf=bytes,
                   block=bytes, rest=bytes, ok=bint, upgrade=bint)
    cpdef bytes _take_headers(self)
    cpdef bytes _scan(self)
    @cython.locals(conn=HttpConnection, status=cython.longlong, q=Message)
    cpdef bytes _framing(self, Message msg, bint upgrade, bytes rest)
    @cython.locals(msg=Message)
    cpdef _finish(self)
    @cython.locals(msg=Message)
    cpdef _emit_partial(self)
    @cython.locals(msg=Message, room=cython.longlong)
    cpdef _body(self, bytes body)
    cpdef tuple _parse_block(self, bytes block)


cdef class HttpConnection:
    cdef public object info
    cdef public list halves
    cdef public list requests
    cdef public list responses
    cdef public object emit
    cdef public object stats
    cdef public Limits limits
    cdef public bint sized_up
    cdef public bint ended
    cdef public object _client_dir
    cdef public object deferred
    cdef public bint force_responses

    cpdef feed(self, int direction, bytes data, long long ts_ns, long long seq=*, object ack=*)
    cpdef gap(self, int direction, long long nbytes)
    cpdef message_done(self, HalfParser half, Message msg)
    @cython.locals(old=Message)
    cpdef request_started(self, Message msg)
    @cython.locals(req_half=HalfParser)
    cpdef bint response_may_proceed(self, long long seq, object ack, long long held)
    @cython.locals(q=Message, q1=Message, j=Py_ssize_t, n=Py_ssize_t, reqs=list)
    cpdef Message answered_request(self, long long seq, object ack)
    @cython.locals(q0=Message, r=Message, q1=Message, reqs=list, resps=list)
    cpdef _pair(self, bint final=*)
    @cython.locals(half=HalfParser)
    cpdef bint _requests_seen_until(self, object ack)
