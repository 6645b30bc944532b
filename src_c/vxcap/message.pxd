# cython: language_level=3
# Augmenting declarations for vxcap/message.py (Cython pure Python mode, see src_c/vxcap/http.pxd).
cimport cython

from vxcap.http cimport Message


cdef class MessageOptions:
    cdef public str host
    cdef public long long body_limit
    cdef public object realip_header
    cdef public bint custom_vni
    cdef public bint custom_mirror_source


cdef class MessageBuilder:
    cdef public MessageOptions options
    cdef public object rules
    cdef public object stats
    cdef public dict _req_keys
    cdef public dict _resp_keys

    @cython.locals(out=list, req_headers=list, keys=dict, cookies=list, incomplete=list,
                   start=cython.longlong, now=cython.longlong, interval=cython.longlong)
    cpdef list details(self, conn, Message req, Message resp)
    cpdef build(self, conn, Message req, Message resp)
