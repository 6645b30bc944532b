# cython: language_level=3
"""Native per-message application of the logging rules: ``Rules.apply`` and ``Rules.session_fields``.

``vxcap/rules.py`` is the specification and the pure-Python twin: it parses the text (once) and its
``Rules.apply`` says what happens to a message, step by step. ``Engine`` is built from such a parsed
``Rules`` object and runs the same steps in the same order with the same results, counters included
(``vxcap/rules_select.py`` wires it in). Regexes stay the twin's compiled ``re`` objects and its rewrite
callables: the gains come from doing everything around them in C.

- What the rules do to a key is decided once per key and memoized in two bounded dicts that fill and
  reset exactly as the twin's two ``_Memo`` s do (stop decisions; detail decisions), so
  ``key_memo_resets`` agrees with the twin's on any sequence of messages.
- One pass per message: a borrowed list item, one dict lookup, an ``int`` switch. A detail kept as it is
  costs no Python call and no allocation (the output list is allocated once at the input's length and
  shrunk); only details whose fate depends on their value call a regex.
- strict's URL rewrite is recognised by its function (``vxcap.rules._strict_url``) and its "no ``?`` and
  no ``;``: unchanged" test is done here with ``PyUnicode_FindChar``; other values go to the twin's closure.
- Rule sets without stop rules, without sampling, or without any detail rule skip those steps.

The twin evaluates every key's decision before any value test; this pass interleaves them. The results are
identical for well-formed messages (lists of ``[str, str]``). For a malformed one both raise, the same
exception when one detail is malformed; with several malformed details the one reported may differ.
"""
cimport cython
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject, PyObject_GetItem
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_GET_LENGTH

cdef extern from "Python.h":
    # Raises (instead of hiding) an unhashable key's TypeError, as `memo[key]` does in the twin.
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    bint PyList_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    void Py_SET_SIZE(object o, Py_ssize_t size)
    Py_ssize_t PyUnicode_FindChar(object s, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end, int direction) except -2

cdef enum:
    DROP = 0    # removed whatever its value
    KEEP = 1    # kept as it is (if its value is not empty)
    VALUE = 2   # its value decides: removal tests, then rewrites


@cython.final
cdef class _KeyPlan:
    """The twin's ``_detail_code`` result and ``_value_plans[key]`` in one object."""
    cdef int code
    cdef tuple tests    # ((test, removes_on_match), ...): the twin's order
    cdef tuple subs     # rewrites, in line order
    cdef tuple strict   # per rewrite: is it strict's URL rewrite (skipped for values without ? and ;)

    def __cinit__(self, int code, tuple tests=(), tuple subs=(), tuple strict=()):
        self.code = code
        self.tests = tests
        self.subs = subs
        self.strict = strict

    cdef object run(self, object v):
        """The twin's ``plan(v)`` (or its lone rewrite): None when a removal test removes the detail."""
        cdef Py_ssize_t i, n
        cdef tuple t
        cdef bint hit
        for t in self.tests:
            hit = t[0](v) is not None
            if hit == (t[1] is True):
                return None
        n = len(self.subs)
        for i in range(n):
            if self.strict[i] is True and PyUnicode_CheckExact(v) and _plain_url(v):
                continue  # what strict_url returns: the value itself
            v = self.subs[i](v)
        return v


cdef inline bint _plain_url(object v) except -1:
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(v)
    return PyUnicode_FindChar(v, 0x3F, 0, n, 1) == -1 and PyUnicode_FindChar(v, 0x3B, 0, n, 1) == -1


cdef _KeyPlan _DROP_PLAN = _KeyPlan(DROP)
cdef _KeyPlan _KEEP_PLAN = _KeyPlan(KEEP)


@cython.final
cdef class _StopPlan:
    """The twin's ``_stop_plan`` tuple: a stop rule scoped to the key, then the value tests by family."""
    cdef bint stop
    cdef tuple if_found, if_whole, unless_found, unless_whole

    def __cinit__(self, bint stop, tuple if_found, tuple if_whole, tuple unless_found, tuple unless_whole):
        self.stop = stop
        self.if_found = if_found
        self.if_whole = if_whole
        self.unless_found = unless_found
        self.unless_whole = unless_whole


# A pair is read without a check when it is a list long enough; anything else (tuples, short lists) goes
# through PyObject_GetItem, so it does what `d[0]` does in the twin (IndexError, ...): Cython's `d[0]` would
# index a list unchecked under boundscheck=False.
cdef inline object _item0(object d):
    if PyList_CheckExact(d) and PyList_GET_SIZE(d) > 0:
        return <object>PyList_GET_ITEM(d, 0)
    return PyObject_GetItem(d, 0)


cdef inline object _item1(object d):
    if PyList_CheckExact(d) and PyList_GET_SIZE(d) > 1:
        return <object>PyList_GET_ITEM(d, 1)
    return PyObject_GetItem(d, 1)


cdef inline (Py_ssize_t, Py_ssize_t) _strip(str s, Py_ssize_t i, Py_ssize_t j):
    """``s[i:j].strip(" \\t")`` as bounds."""
    cdef Py_UCS4 c
    while i < j:
        c = s[i]
        if c != 0x20 and c != 0x09:
            break
        i += 1
    while j > i:
        c = s[j - 1]
        if c != 0x20 and c != 0x09:
            break
        j -= 1
    return i, j


cdef inline bint _truthy(object v) except -1:
    if PyUnicode_CheckExact(v):
        return PyUnicode_GET_LENGTH(v) != 0
    return bool(v)


@cython.final
cdef class Engine:
    """``apply``, ``session_fields`` and ``counters`` of a parsed ``vxcap.rules.Rules``, natively.

    ``Engine(rules, memo_limit, strict_url_code)``: ``rules`` is only read here (its parsed rules, sample
    percentage, random generator, session-field regexes); ``strict_url_code`` is the code object of the
    twin's strict URL wrapper, by which its rewrites are recognised. Not thread-safe (memos, counters).
    """
    cdef readonly dict key_codes    # detail memo: key -> _KeyPlan (the twin's ``_codes``)
    cdef readonly dict key_stops    # stop memo: key -> _StopPlan or None (the twin's ``_stop_memo``)
    cdef Py_ssize_t memo_limit
    cdef dict by
    cdef list stop_verbs
    cdef bint has_stop, has_detail_rules, has_sample
    cdef Py_ssize_t n_unless_found, n_unless
    cdef double sample
    cdef object rng_random
    cdef tuple session
    cdef dict cookie_names          # cookie name -> _cookie_name(name)
    cdef object strict_url_code
    cdef long long n_in, n_stop, n_sample, n_empty, codes_resets, stops_resets

    def __init__(self, rules, Py_ssize_t memo_limit, strict_url_code):
        if memo_limit < 1:
            raise ValueError(f"memo_limit must be at least 1, got {memo_limit}")
        self.key_codes = {}
        self.key_stops = {}
        self.memo_limit = memo_limit
        self.by = dict(rules._by)
        self.stop_verbs = [list(self.by.get(v, ())) for v in
                           ("stop", "stop_if_found", "stop_if", "stop_unless_found", "stop_unless")]
        self.has_stop = any(self.stop_verbs)
        self.n_unless_found = len(self.stop_verbs[3])
        self.n_unless = len(self.stop_verbs[4])
        self.has_detail_rules = any(v in self.by for v in ("remove", "remove_if", "remove_if_found", "remove_unless",
                                                           "remove_unless_found", "replace"))
        self.has_sample = rules.sample is not None
        self.sample = float(rules.sample) if self.has_sample else 0.0
        self.rng_random = rules._rng.random
        self.session = tuple(rules._session)
        self.cookie_names = {}
        self.strict_url_code = strict_url_code

    # -- per-key decisions (cold: once per key until a memo reset)
    cdef list _scoped(self, str verb, key):
        return [r for r in self.by.get(verb, ()) if r.scope.fullmatch(key)]

    cdef _KeyPlan _make_plan(self, key):
        """The twin's ``_detail_code``; the order of the tests and rewrites is its order."""
        if self._scoped("remove", key):
            return _DROP_PLAN
        tests = ([(r.regex.search, False) for r in self._scoped("remove_unless_found", key)]
                 + [(r.regex.search, True) for r in self._scoped("remove_if_found", key)]
                 + [(r.regex.fullmatch, False) for r in self._scoped("remove_unless", key)]
                 + [(r.regex.fullmatch, True) for r in self._scoped("remove_if", key)])
        subs = [r.repl for r in self._scoped("replace", key)]
        if not tests and not subs:
            return _KEEP_PLAN
        strict = tuple(getattr(s, "__code__", None) is self.strict_url_code for s in subs)
        return _KeyPlan(VALUE, tuple(tests), tuple(subs), strict)

    cdef _KeyPlan _plan_of(self, key):
        cdef PyObject* p = PyDict_GetItemWithError(self.key_codes, key)
        if p != NULL:
            return <_KeyPlan>p
        # _Memo.__missing__: empty a full memo first, then decide.
        if len(self.key_codes) >= self.memo_limit:
            self.key_codes.clear()
            self.codes_resets += 1
        plan = self._make_plan(key)
        self.key_codes[key] = plan
        return plan

    cdef object _stop_of(self, key):
        cdef PyObject* p = PyDict_GetItemWithError(self.key_stops, key)
        if p != NULL:
            return <object>p
        if len(self.key_stops) >= self.memo_limit:
            self.key_stops.clear()
            self.stops_resets += 1
        stop, if_found, if_whole, unless_found, unless_whole = (
            [r for r in rules if r.scope.fullmatch(key)] for rules in self.stop_verbs)
        if not (stop or if_found or if_whole or unless_found or unless_whole):
            plan = None
        else:
            plan = _StopPlan(bool(stop), tuple([r.regex.search for r in if_found]),
                             tuple([r.regex.fullmatch for r in if_whole]),
                             tuple([r.regex.search for r in unless_found]),
                             tuple([r.regex.fullmatch for r in unless_whole]))
        self.key_stops[key] = plan
        return plan

    # -- the pipeline
    cdef bint _stopped(self, list details) except -1:
        """The stop family: True when the message is dropped (the twin's first block of ``apply``)."""
        cdef Py_ssize_t i, found = 0, whole = 0
        cdef _StopPlan p
        for i in range(PyList_GET_SIZE(details)):
            d = <object>PyList_GET_ITEM(details, i)
            plan = self._stop_of(_item0(d))
            if plan is None:
                continue
            p = <_StopPlan>plan
            v = _item1(d)
            if p.stop:
                return True
            for t in p.if_found:
                if t(v) is not None:
                    return True
            for t in p.if_whole:
                if t(v) is not None:
                    return True
            # stop_unless counts (rule, detail) pairs, so two matching details satisfy two rules.
            for t in p.unless_found:
                if t(v) is not None:
                    found += 1
            for t in p.unless_whole:
                if t(v) is not None:
                    whole += 1
        return found != self.n_unless_found or whole != self.n_unless

    def apply(self, details):
        """Apply the rules to one message's ``[key, value]`` pairs; None means drop the message.

        The argument is never modified; the result shares the unchanged pairs with it (as the twin's does).
        """
        cdef Py_ssize_t i, n, kept = 0
        cdef _KeyPlan plan
        cdef list src, out
        self.n_in += 1
        src = details if PyList_CheckExact(details) else list(details)
        if self.has_stop and self._stopped(src):
            self.n_stop += 1
            return None
        if self.has_sample and self.rng_random() * 100.0 >= self.sample:
            self.n_sample += 1
            return None
        n = PyList_GET_SIZE(src)
        # Allocated at full length and shrunk at the end: items past `kept` stay NULL, which list_dealloc
        # skips if an exception leaves this function early.
        out = PyList_New(n)
        if not self.has_detail_rules:
            for i in range(n):
                d = <object>PyList_GET_ITEM(src, i)
                if _truthy(_item1(d)):
                    Py_INCREF(d)
                    PyList_SET_ITEM(out, kept, d)
                    kept += 1
        else:
            for i in range(n):
                d = <object>PyList_GET_ITEM(src, i)
                key = _item0(d)
                plan = self._plan_of(key)
                if plan.code == DROP:
                    continue
                v0 = _item1(d)
                if plan.code == KEEP:
                    if not _truthy(v0):
                        continue
                else:
                    v = plan.run(v0)
                    if v is None or not _truthy(v):
                        continue
                    if v is not v0:
                        d = [key, v]
                Py_INCREF(d)
                PyList_SET_ITEM(out, kept, d)
                kept += 1
        Py_SET_SIZE(out, kept)
        if kept == 0:
            self.n_empty += 1
            return None
        return out

    def session_fields(self, cookie_header_values):
        """``session_field:<name>`` details for the request cookies that copy_session_field selects.

        The twin's ``Rules.session_fields``, step for step (see it for the rules). A ``str`` header is
        scanned by index instead of split, partitioned and stripped into new strings; what a cookie name
        gives (its lower-cased ``session_field:`` key, which rules select it) is memoized per name.
        """
        cdef list cookies, out
        cdef tuple c
        cdef Py_ssize_t j
        if not self.session:
            return []
        cookies = []
        for header in cookie_header_values:
            if PyUnicode_CheckExact(header):
                self._scan_cookies(header, cookies)
            else:
                self._split_cookies(header, cookies)
        out = []
        for j in range(len(self.session)):
            for c in cookies:
                if (<tuple>c[0])[j + 1] is True:
                    out.append([(<tuple>c[0])[0], c[1]])
        return out

    cdef tuple _cookie_name(self, name):
        """(``session_field:`` + lower-cased name, then per rule: does its regex fully match that name)."""
        cdef PyObject* p = PyDict_GetItemWithError(self.cookie_names, name)
        if p != NULL:
            return <tuple>p
        if len(self.cookie_names) >= self.memo_limit:
            self.cookie_names.clear()  # names come from the wire: bounded like the key memos
        lower = name.lower()
        got = ("session_field:" + lower,) + tuple([regex.fullmatch(lower) is not None for regex in self.session])
        self.cookie_names[name] = got
        return got

    cdef int _scan_cookies(self, str header, list cookies) except -1:
        """``header.split(";")``, each part ``partition("=")`` and ``strip(" \\t")``, by index."""
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(header), start = 0, end, eq, ns, ne, vs, ve
        while True:
            end = PyUnicode_FindChar(header, 0x3B, start, n, 1)  # ';'
            if end < 0:
                end = n
            eq = PyUnicode_FindChar(header, 0x3D, start, end, 1)  # '='
            if eq >= 0:
                ns, ne = _strip(header, start, eq)
                vs, ve = _strip(header, eq + 1, end)
                if ve - vs > 1 and header[vs] == '"' and header[ve - 1] == '"':
                    vs += 1
                    ve -= 1
                if ne > ns and ve > vs:
                    cookies.append((self._cookie_name(header[ns:ne]), header[vs:ve]))
            if end == n:
                return 0
            start = end + 1

    @cython.boundscheck(True)
    @cython.wraparound(True)
    cdef int _split_cookies(self, header, list cookies) except -1:
        """The twin's loop as written, for anything but a ``str`` (it raises what the twin raises)."""
        for part in header.split(";"):
            name, eq, value = part.partition("=")
            name = name.strip(" \t")
            value = value.strip(" \t")
            if not name or not eq:
                continue
            if len(value) > 1 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            if value:
                lower = name.lower()
                cookies.append((("session_field:" + lower,)
                                + tuple([regex.fullmatch(lower) is not None for regex in self.session]), value))
        return 0

    def counters(self):
        cdef long long dropped = self.n_stop + self.n_sample + self.n_empty
        return {
            "messages_in": self.n_in,
            "messages_out": self.n_in - dropped,
            "dropped_stop": self.n_stop,
            "dropped_sample": self.n_sample,
            "dropped_empty": self.n_empty,
            "key_memo_resets": self.codes_resets + self.stops_resets,
        }
