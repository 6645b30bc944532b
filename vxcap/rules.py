"""Resurface logging rules, with the semantics of logger-java 2.2.1's ``HttpRules`` (SPEC section 3).

Resurface's reference engine is Java, so rule texts written for it use ``java.util.regex``. This module
parses a rules text exactly as ``HttpRules`` does (same line grammar, same order of tries, same error
texts), translates every Java regex into an equivalent Python ``re`` pattern (or rejects it with
``Invalid regex (X) in rule: R`` when Python cannot express it), and applies the rules to messages.

``Rules.apply`` never modifies its argument: it returns a new list, or ``None`` when the message is
dropped. The new list may share the unchanged ``[key, value]`` pairs of the input (copying them would
cost a third of the time of ``include strict``); replaced values always get a new pair.

Speed: a message's keys repeat from message to message, so what the rules do to a key (nothing, remove it
whatever its value, or test/rewrite its value) is decided once per key and memoized in a bounded dict.
With ``include strict`` the per-message work is then one dict lookup per detail inside one list
comprehension, plus one regex substitution for ``request_url``.
"""
from __future__ import annotations

import functools
import operator
import os
import random
import re
from collections.abc import Callable, Iterable
from itertools import compress

try:
    from re import _parser as sre_parse  # Python 3.11+
except ImportError:  # pragma: no cover
    import sre_parse  # type: ignore[no-redef]

__all__ = ["Rules", "RulesError", "DEBUG_RULES", "STANDARD_RULES", "STRICT_RULES"]


class RulesError(ValueError):
    """A rules text that logger-java would refuse; ``str(error)`` is logger-java's message verbatim."""


# Predefined sets, character for character as in HttpRules (including the typographic apostrophe in the
# e-mail class and the missing space before ``remove``): `vxcap rules check` prints them back.
DEBUG_RULES = "allow_http_url\ncopy_session_field /.*/\n"
STANDARD_RULES = (
    "/request_header:cookie|response_header:set-cookie/remove\n"
    "/(request|response)_body|request_param/ replace "
    "/[a-zA-Z0-9.!#$%&\u2019*+\\/=?^_`{|}~-]+@[a-zA-Z0-9-]+(?:\\.[a-zA-Z0-9-]+)/, /x@y.com/\n"
    "/request_body|request_param|response_body/ replace /[0-9\\.\\-\\/]{9,}/, /xyxy/\n"
)
STRICT_RULES = (
    "/request_url/ replace /([^\\?;]+).*/, /$1/\n"
    "/request_body|response_body|request_param:.*|request_header:(?!user-agent).*"
    "|response_header:(?!(content-length)|(content-type)).*/ remove\n"
)
DEFAULT_RULES = STRICT_RULES

# Memoized per-key decisions. Keys come from the wire (header and parameter names), so a hostile client
# could mint unlimited distinct keys: past this many the memo is emptied and refilled.
MEMO_LIMIT = 8192

# --------------------------------------------------------------------------------------------------------
# Java character classes spelled for Python. java.util.regex without flags: `.` excludes five line
# terminators, `\s` is [ \t\n\x0B\f\r], `$` also matches before a final terminator (\r\n counting as one).
_JWS = "[ \\t\\n\\x0b\\f\\r]"
_JDOT = "[^\\n\\r\\x85\\u2028\\u2029]"
_TERM = "\\n\\r\\x85\\u2028\\u2029"


def _grammar(body: str) -> re.Pattern[str]:
    # HttpRules' line patterns with `\s` and `.` made Java's; compiled with fullmatch in mind.
    body = body.replace("[\\s]", "\\s").replace("\\s", _JWS).replace(".", _JDOT)
    return re.compile(body, re.ASCII)


_EXPR = r"([~!%|/].+[~!%|/])"
_TAIL = r"\s*(#.*)?"
_BLANK_OR_COMMENT = _grammar(r"\s*([#].*)*")
# Order matters: HttpRules tries these one after the other and the first full match wins.
_VERBS: list[tuple[str, re.Pattern[str]]] = [
    ("allow_http_url", _grammar(r"\s*allow_http_url" + _TAIL)),
    ("copy_session_field", _grammar(r"\s*copy_session_field\s+" + _EXPR + _TAIL)),
    ("remove", _grammar(r"\s*" + _EXPR + r"\s*remove" + _TAIL)),
    ("remove_if", _grammar(r"\s*" + _EXPR + r"\s*remove_if\s+" + _EXPR + _TAIL)),
    ("remove_if_found", _grammar(r"\s*" + _EXPR + r"\s*remove_if_found\s+" + _EXPR + _TAIL)),
    ("remove_unless", _grammar(r"\s*" + _EXPR + r"\s*remove_unless\s+" + _EXPR + _TAIL)),
    ("remove_unless_found", _grammar(r"\s*" + _EXPR + r"\s*remove_unless_found\s+" + _EXPR + _TAIL)),
    ("replace", _grammar(r"\s*" + _EXPR + r"\s*replace[\s]+" + _EXPR + r",[\s]+([~!%|/].*[~!%|/])" + _TAIL)),
    ("sample", _grammar(r"\s*sample\s+(\d+)" + _TAIL)),
    ("skip_compression", _grammar(r"\s*skip_compression" + _TAIL)),
    ("skip_submission", _grammar(r"\s*skip_submission" + _TAIL)),
    ("stop", _grammar(r"\s*" + _EXPR + r"\s*stop" + _TAIL)),
    ("stop_if", _grammar(r"\s*" + _EXPR + r"\s*stop_if\s+" + _EXPR + _TAIL)),
    ("stop_if_found", _grammar(r"\s*" + _EXPR + r"\s*stop_if_found\s+" + _EXPR + _TAIL)),
    ("stop_unless", _grammar(r"\s*" + _EXPR + r"\s*stop_unless\s+" + _EXPR + _TAIL)),
    ("stop_unless_found", _grammar(r"\s*" + _EXPR + r"\s*stop_unless_found\s+" + _EXPR + _TAIL)),
]
# Which groups are a scope, a whole-value regex, a searching regex, a replacement.
_SHAPE = {
    "copy_session_field": "F",
    "remove": "S",
    "stop": "S",
    "remove_if": "SF",
    "remove_unless": "SF",
    "stop_if": "SF",
    "stop_unless": "SF",
    "remove_if_found": "SD",
    "remove_unless_found": "SD",
    "stop_if_found": "SD",
    "stop_unless_found": "SD",
    "replace": "SDR",
}
_SEPARATORS = "~!%|/"
_SEP_WHOLE = {s: re.compile(f"[{s}]({_JDOT}*)[{s}]") for s in _SEPARATORS}
_SEP_BAD = {s: re.compile(f"[{s}]{_JDOT}*|{_JDOT}*[^\\\\][{s}]{_JDOT}*") for s in _SEPARATORS}

# `(?m)^\s*include X\s*$` in Java: `^` after any terminator (not between \r and \n), `$` before one.
_LINE_START = "(?:\\A|(?<=[\\n\\x85\\u2028\\u2029])|(?<=\\r)(?!\\n))"
_LINE_END = f"(?!(?<=\\r)\\n)(?=[{_TERM}]|\\Z)"


def _include(name: str) -> re.Pattern[str]:
    return re.compile(f"{_LINE_START}{_JWS}*include {name}{_JWS}*{_LINE_END}", re.ASCII)


_INCLUDES = [("default", DEFAULT_RULES)] + [
    (name, text) for name, text in (("debug", DEBUG_RULES), ("standard", STANDARD_RULES), ("strict", STRICT_RULES))
]
_INCLUDE_RES = [(_include(name), text) for name, text in _INCLUDES]
_LINE_SPLIT = re.compile("\r?\n")
_JAVA_TRIM = "".join(map(chr, range(33)))  # String.trim() strips every char <= U+0020
_INT_MAX = 2**31 - 1


# --------------------------------------------------------------------------------------------------------
# Java regex -> Python re.


class _Unsupported(Exception):
    """The Java regex is invalid, or valid but beyond what Python's re can express."""


_HEX = "0123456789abcdefABCDEF"
_OCT = "01234567"
_MAXCP = 0x10FFFF
# Java's \h and \v (Java 8+), and its POSIX classes, which are ASCII-only unless (?U) is on.
_RANGES = {
    "h": [(0x20, 0x20), (0x09, 0x09), (0xA0, 0xA0), (0x1680, 0x1680), (0x180E, 0x180E), (0x2000, 0x200A),
          (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)],
    "v": [(0x0A, 0x0D), (0x85, 0x85), (0x2028, 0x2029)],
}
_POSIX = {
    "Lower": [(0x61, 0x7A)],
    "Upper": [(0x41, 0x5A)],
    "ASCII": [(0x00, 0x7F)],
    "Alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "Digit": [(0x30, 0x39)],
    "Alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "Punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "Graph": [(0x21, 0x7E)],
    "Print": [(0x20, 0x7E)],
    "Blank": [(0x20, 0x20), (0x09, 0x09)],
    "Cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "XDigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
    "Space": [(0x09, 0x0D), (0x20, 0x20)],
}
_POSIX.update({"Is" + k: v for k, v in list(_POSIX.items())})  # \p{IsAlpha} is a spelling of \p{Alpha}


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= _MAXCP:
        out.append((nxt, _MAXCP))
    return out


def _cp(c: int) -> str:
    # Every literal is spelled as an escape so no character can be re-read as Python syntax.
    return f"\\x{c:02x}" if c < 0x100 else (f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}")


def _ranges_text(ranges: list[tuple[int, int]]) -> str:
    return "".join(_cp(lo) if lo == hi else f"{_cp(lo)}-{_cp(hi)}" for lo, hi in ranges)


_JAVA_DOLLAR = f"(?!(?<=\\r)\\n)(?=(?:\\r\\n|[{_TERM}])?\\Z)"


class _Translator:
    """One pass over a Java pattern producing a Python pattern with the same matches.

    Python only learns about the `i` flag and the Unicode/ASCII switch (`u`/`U`): `.`, `^`, `$`, `\\Z`,
    comments mode and UNIX_LINES are spelled out here because their Java meanings differ from Python's.
    Mid-pattern `(?i)` is legal in Java but not in Python 3.11, so it becomes a scoped `(?i:` group that is
    closed, and reopened, at every `|` of the enclosing group and at its end.
    """

    def __init__(self, src: str) -> None:
        self.s = src
        self.i = 0
        self.out: list[str] = []
        self.groups = 0
        self.closed: set[int] = set()
        self.names: dict[str, int] = {}
        # Frames: [Java flag letters, Python (i, u) state at the group's start, mid-group flag wrappers
        # open, capturing group number or 0, whether the group opened its own flag wrapper]
        self.frames: list[list] = [[set(), (False, False), 0, 0, False]]

    # -- helpers
    def fail(self, why: str = "") -> None:
        raise _Unsupported(why)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    @property
    def flags(self) -> set[str]:
        return self.frames[-1][0]

    def py_state(self, flags: set[str]) -> tuple[bool, bool]:
        return ("i" in flags, "u" in flags or "U" in flags)

    @staticmethod
    def py_prefix(state: tuple[bool, bool]) -> str:
        on = ("i" if state[0] else "") + ("u" if state[1] else "a")
        return f"(?{on}:" if state[0] else f"(?{on}-i:"

    def skip_comments(self) -> None:
        if "x" not in self.flags:
            return
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\n\x0b\f\r":
                self.i += 1
            elif c == "#":
                term = "\n" if "d" in self.flags else "\n\r\x85\u2028\u2029"
                while self.i < len(self.s) and self.s[self.i] not in term:
                    self.i += 1
            else:
                return

    # -- main loop
    def run(self) -> tuple[str, int, dict[str, int]]:
        s = self.s
        can_repeat = False  # is there an atom before a quantifier (Java: "Dangling meta character")
        atom_at = 0  # where in self.out the last atom starts, to wrap zero-width atoms that get repeated
        zero_width = False
        while True:
            self.skip_comments()
            if self.i >= len(s):
                break
            c = s[self.i]
            if c in "*+?{":
                if not can_repeat:
                    self.fail("dangling quantifier")
                q = self.quantifier()
                if zero_width:
                    self.out.insert(atom_at, "(?:")
                    self.out.append(")")
                self.out.append(q)
                can_repeat = False
                continue
            if c == "\\" and self.peek(1) == "Q":
                # Java splices quoted text in as escaped characters before parsing: `\Qab\E*` is `ab*`.
                self.i += 2
                end = s.find("\\E", self.i)
                lit = s[self.i:] if end < 0 else s[self.i:end]
                self.i = len(s) if end < 0 else end + 2
                for ch in lit:
                    atom_at = len(self.out)
                    self.out.append(_cp(ord(ch)))
                    zero_width, can_repeat = False, True
                continue
            atom_at = len(self.out)
            zero_width = False
            can_repeat = True
            self.i += 1
            if c == "\\":
                zero_width = self.escape()
            elif c == "[":
                self.out.append(self.char_class())
            elif c == ".":
                f = self.flags
                self.out.append("(?s:.)" if "s" in f else ("[^\\n]" if "d" in f else _JDOT))
            elif c == "^":
                zero_width = True
                f = self.flags
                if "m" not in f:
                    self.out.append("\\A")
                elif "d" in f:
                    self.out.append("(?!\\Z)(?:\\A|(?<=\\n))")
                else:
                    self.out.append("(?!\\Z)(?:\\A|(?<=[\\n\\x85\\u2028\\u2029])|(?<=\\r)(?!\\n))")
            elif c == "$":
                zero_width = True
                self.out.append(self.dollar("m" in self.flags))
            elif c == "|":
                self.alternation()
                can_repeat = False
            elif c == "(":
                can_repeat = self.open_group()
            elif c == ")":
                if len(self.frames) == 1:
                    self.fail("unmatched )")
                self.close_group()
            else:
                self.out.append(re.escape(c) if not c.isalnum() else c)
        if len(self.frames) != 1:
            self.fail("unclosed group")
        self.out.append(")" * self.frames[0][2])
        return "".join(self.out), self.groups, self.names

    def dollar(self, multiline: bool) -> str:
        unix = "d" in self.flags
        if multiline:
            return "(?=\\n|\\Z)" if unix else f"(?!(?<=\\r)\\n)(?=[{_TERM}]|\\Z)"
        return "(?=\\n?\\Z)" if unix else _JAVA_DOLLAR

    def quantifier(self) -> str:
        s, c = self.s, self.s[self.i]
        if c == "{":
            m = re.compile(r"\{(\d+)(,(\d*))?\}", re.ASCII).match(s, self.i)
            if not m:
                self.fail("illegal repetition")  # Java refuses a `{` that does not open a valid bound
            lo, hi = int(m.group(1)), m.group(3)
            if hi and int(hi) < lo:
                self.fail("illegal repetition range")
            q = m.group(0)
            self.i = m.end()
        else:
            q = c
            self.i += 1
        if self.peek() in ("?", "+"):
            q += self.peek()
            self.i += 1
        return q

    def alternation(self) -> None:
        frame = self.frames[-1]
        self.out.append(")" * frame[2] + "|")
        frame[2] = 0
        state = self.py_state(frame[0])
        if state != frame[1]:
            self.out.append(self.py_prefix(state))
            frame[2] = 1

    def open_group(self) -> bool:
        s = self.s
        parent = self.flags
        number = 0
        if self.peek() != "?":
            self.groups += 1
            number = self.groups
            self.out.append("(")
        else:
            self.i += 1
            c = self.peek()
            if c in (":", "=", "!", ">"):
                self.out.append("(?" + c)
                self.i += 1
            elif c == "<" and self.peek(1) in ("=", "!"):
                self.out.append("(?<" + self.peek(1))
                self.i += 2
            elif c == "<":
                m = re.compile(r"<([a-zA-Z][a-zA-Z0-9]*)>").match(s, self.i)
                if not m or m.group(1) in self.names:
                    self.fail("bad group name")
                self.groups += 1
                number = self.groups
                self.names[m.group(1)] = number
                self.out.append(f"(?P<{m.group(1)}>")
                self.i = m.end()
            else:
                m = re.compile(r"([idmsuxU]*)(?:-([idmsuxU]*))?([:)])").match(s, self.i)
                if not m:
                    self.fail("unknown inline modifier")
                flags = (parent | set(m.group(1))) - set(m.group(2) or "")
                self.i = m.end()
                if m.group(3) == ")":
                    # Flags for the rest of the enclosing group.
                    frame = self.frames[-1]
                    old, new = self.py_state(frame[0]), self.py_state(flags)
                    frame[0] = flags
                    if old != new:
                        self.out.append(self.py_prefix(new))
                        frame[2] += 1
                    return False
                self.out.append("(?:")
                return self.push(flags, 0)
        return self.push(set(parent), number)

    def push(self, flags: set[str], number: int) -> bool:
        """Enter a group whose opening parenthesis is already written."""
        parent_state = self.py_state(self.frames[-1][0])
        state = self.py_state(flags)
        own = state != parent_state
        if own:
            # A Python flag group just inside the parenthesis, closed with it.
            self.out.append(self.py_prefix(state))
        self.frames.append([flags, state, 0, number, own])
        return False

    def close_group(self) -> None:
        frame = self.frames.pop()
        self.out.append(")" * frame[2] + (")" if frame[4] else "") + ")")
        if frame[3]:
            self.closed.add(frame[3])

    # -- escapes outside a class; returns True for zero-width atoms
    def escape(self) -> bool:
        s = self.s
        if self.i >= len(s):
            self.fail("trailing backslash")
        c = s[self.i]
        self.i += 1
        if c in "123456789":
            ref = int(c)
            while self.peek().isdigit() and self.peek() in "0123456789" and ref * 10 + int(self.peek()) <= self.groups:
                ref = ref * 10 + int(self.peek())
                self.i += 1
            if ref > self.groups:
                self.out.append("(?!)")  # Java compiles it; a group that does not exist never matches
            elif ref not in self.closed:
                self.fail("reference to an open group")
            else:
                self.out.append(f"(?:\\{ref})")
            return False
        if c == "k":
            m = re.compile(r"<([a-zA-Z][a-zA-Z0-9]*)>").match(s, self.i)
            if not m or m.group(1) not in self.names:
                self.fail("unknown group name")
            self.i = m.end()
            self.out.append(f"(?P={m.group(1)})")
            return False
        if c in "bBA":
            self.out.append("\\" + c)
            return True
        if c == "z":
            self.out.append("\\Z")
            return True
        if c == "Z":
            self.out.append(self.dollar(False))
            return True
        if c == "G":
            self.fail("\\G")
        if c == "R":
            self.out.append("(?>\\r\\n|[\\n\\x0b\\f\\r\\x85\\u2028\\u2029])")
            return False
        if c in "dDwWsS":
            self.out.append("\\" + c)
            return False
        if c in "hHvVpP":
            ranges = self.class_escape(c)
            self.out.append("[" + _ranges_text(ranges) + "]")
            return False
        self.out.append(_cp(self.char_escape(c)))
        return False

    def class_escape(self, c: str) -> list[tuple[int, int]]:
        if c in "hH":
            r = _RANGES["h"]
        elif c in "vV":
            r = _RANGES["v"]
        else:
            m = re.compile(r"\{\^?([A-Za-z]+)\}").match(self.s, self.i)
            if not m or m.group(1) not in _POSIX or "U" in self.flags or m.group(0)[1] == "^":
                self.fail("unsupported property class")
            r = _POSIX[m.group(1)]
            self.i = m.end()
        return _complement(r) if c in "HVP" else list(r)

    def char_escape(self, c: str) -> int:
        """The code point of a single-character escape (the char after the backslash already read)."""
        s = self.s
        simple = {"t": 9, "n": 10, "r": 13, "f": 12, "a": 7, "e": 27}
        if c in simple:
            return simple[c]
        if c == "0":
            m = re.compile("[0-3][0-7]{2}|[0-7]{1,2}").match(s, self.i)
            if not m:
                self.fail("illegal octal escape")
            self.i = m.end()
            return int(m.group(0), 8)
        if c == "x":
            m = re.compile(r"\{([0-9a-fA-F]+)\}|[0-9a-fA-F]{2}").match(s, self.i)
            if not m:
                self.fail("illegal hex escape")
            self.i = m.end()
            cp = int(m.group(1) or m.group(0), 16)
            if cp > _MAXCP:
                self.fail("hex escape out of range")
            return cp
        if c == "u":
            m = re.compile("[0-9a-fA-F]{4}").match(s, self.i)
            if not m:
                self.fail("illegal unicode escape")
            self.i = m.end()
            return int(m.group(0), 16)
        if c == "c":
            if self.i >= len(s):
                self.fail("illegal control escape")
            self.i += 1
            return ord(s[self.i - 1]) ^ 64
        if c == "N":
            import unicodedata

            m = re.compile(r"\{([^}]*)\}").match(s, self.i)
            try:
                cp = ord(unicodedata.lookup(m.group(1))) if m else -1
            except KeyError:
                cp = -1
            if cp < 0:
                self.fail("unknown character name")
            self.i = m.end()  # type: ignore[union-attr]
            return cp
        if c.isascii() and c.isalnum():
            self.fail("illegal escape")  # Java reserves every unassigned alphabetic escape
        return ord(c)

    def char_class(self) -> str:
        """`[...]` with the opening bracket consumed. Unions and intersections are refused."""
        s = self.s
        parts: list[str] = []
        negate = False
        if self.peek() == "^":
            negate = True
            self.i += 1
        first = True
        while True:
            if "x" in self.flags:
                while self.peek() and self.peek() in " \t\n\x0b\f\r":
                    self.i += 1
            if self.i >= len(s):
                self.fail("unclosed character class")
            c = s[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "[" or s.startswith("&&", self.i):
                self.fail("nested class, union or intersection")
            lo = self.class_char()
            if lo is None:
                continue
            if isinstance(lo, str):
                parts.append(lo)
                continue
            if self.peek() == "-" and self.peek(1) not in ("]", "[", ""):
                self.i += 1
                hi = self.class_char()
                if not isinstance(hi, int) or hi < lo:
                    self.fail("illegal character range")
                parts.append(f"{_cp(lo)}-{_cp(hi)}")
            else:
                parts.append(_cp(lo))
        if not parts:
            self.fail("empty class")
        return "[" + ("^" if negate else "") + "".join(parts) + "]"

    def class_char(self) -> int | str | None:
        """One member of a class: a code point, or ready-made class text for \\d, \\p{..}, \\Q..\\E."""
        s = self.s
        c = s[self.i]
        self.i += 1
        if c != "\\":
            return ord(c)
        if self.i >= len(s):
            self.fail("trailing backslash")
        c = s[self.i]
        self.i += 1
        if c in "dDwWsS":
            return "\\" + c
        if c in "hHvVpP":
            return _ranges_text(self.class_escape(c))
        if c == "Q":
            end = s.find("\\E", self.i)
            lit = s[self.i:] if end < 0 else s[self.i:end]
            self.i = len(s) if end < 0 else end + 2
            return "".join(_cp(ord(ch)) for ch in lit) or None
        if c in "bBAzZGRkX" or c in "123456789":
            self.fail("escape not allowed in a class")
        return self.char_escape(c)


def _can_match_empty(pattern: re.Pattern[str]) -> bool:
    try:
        return sre_parse.parse(pattern.pattern, pattern.flags).getwidth()[0] == 0
    except Exception:  # noqa: BLE001 - private module; assume the worst and take the exact, slower path
        return True


def _rewriter(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str]) -> Callable[[str], str]:
    """value -> value with every match replaced, as Java's Matcher.replaceAll does it.

    Java and Python differ only after an empty match: Java resumes the search one character later, Python
    tries a non-empty match at the same position (`\\s*?` on "a\\r" gives "\\r" kept in Java, replaced in
    Python). Patterns that cannot match empty, the usual case, go straight to ``Pattern.sub``.
    """
    if not _can_match_empty(pattern):
        return functools.partial(pattern.sub, repl)
    search = pattern.search
    expand = repl if callable(repl) else (lambda _m: repl)

    def java_replace_all(value: str) -> str:
        out: list[str] = []
        done = pos = 0
        end = len(value)
        while pos <= end:
            m = search(value, pos)
            if m is None:
                break
            start, stop = m.span()
            out.append(value[done:start])
            out.append(expand(m) or "")
            done = stop
            pos = stop + 1 if start == stop else stop
        out.append(value[done:])
        return "".join(out)

    return java_replace_all


def _compile_java(expr: str, *, whole: bool) -> re.Pattern[str]:
    """Compile a Java regex the way HttpRules' parseRegex (whole=True) or parseRegexFind does."""
    if whole:
        if expr in ("*", "+", "?"):
            raise _Unsupported("bare quantifier")
        if not expr.startswith("^"):
            expr = "^" + expr
        if not expr.endswith("$"):
            expr = expr + "$"
    text, _, _ = _Translator(expr).run()
    try:
        return re.compile(text, re.ASCII)
    except (re.error, OverflowError, RecursionError) as exc:
        raise _Unsupported(str(exc)) from None


def _compile_replacement(repl: str, pattern: re.Pattern[str]) -> str | Callable[[re.Match[str]], str]:
    """Java's Matcher.replaceAll syntax: `$n` (greedy while the group exists), `${name}`, `\\x` literal x.

    Returns what Python's ``Pattern.sub`` should be given: a plain string when the replacement is a
    backslash-free literal (``sub`` then copies it without a template), otherwise a callable.
    """
    parts: list[str | int] = []
    lit: list[str] = []
    i, n = 0, len(repl)
    while i < n:
        c = repl[i]
        if c == "\\":
            if i + 1 >= n:
                raise _Unsupported("character to be escaped is missing")
            lit.append(repl[i + 1])
            i += 2
        elif c == "$":
            i += 1
            if i >= n:
                raise _Unsupported("group index is missing")
            if repl[i] == "{":
                m = re.compile(r"\{([a-zA-Z0-9]*)").match(repl, i)
                name = m.group(1) if m else ""
                i = m.end() if m else i
                if not name or i >= n or repl[i] != "}" or name[0].isdigit() or name not in pattern.groupindex:
                    raise _Unsupported("bad named group reference")
                i += 1
                ref = pattern.groupindex[name]
            else:
                if repl[i] not in "0123456789":
                    raise _Unsupported("illegal group reference")
                ref = int(repl[i])
                i += 1
                while i < n and repl[i] in "0123456789" and ref * 10 + int(repl[i]) <= pattern.groups:
                    ref = ref * 10 + int(repl[i])
                    i += 1
            if ref > pattern.groups:
                raise _Unsupported(f"no group {ref}")
            if lit:
                parts.append("".join(lit))
                lit = []
            parts.append(ref)
        else:
            lit.append(c)
            i += 1
    if lit:
        parts.append("".join(lit))
    if not parts:
        return ""
    if len(parts) == 1:
        only = parts[0]
        if isinstance(only, int):
            # A group that did not take part gives None, which sub() treats as empty, like Java.
            return operator.methodcaller("group", only)
        if "\\" not in only:
            return only
        return lambda _m, text=only: text

    def expand(m: re.Match[str], parts: tuple = tuple(parts)) -> str:
        g = m.group
        return "".join([p if p.__class__ is str else (g(p) or "") for p in parts])

    return expand


# --------------------------------------------------------------------------------------------------------


# What the rules do to a detail, decided from its key alone (the codes are compress() selectors).
_DROP, _KEEP, _VALUE = 0, 1, 2
_KEY = operator.itemgetter(0)
_VALUE_OF = operator.itemgetter(1)


class _Memo(dict):
    """key -> decision, computed on first sight by ``make`` and bounded by MEMO_LIMIT.

    ``also`` holds data keyed like this memo (the value plans): it is emptied with it, never alone.
    """

    __slots__ = ("make", "also", "resets")

    def __init__(self, make: Callable[[str], object], also: dict | None = None) -> None:
        super().__init__()
        self.make = make
        self.also = also
        self.resets = 0

    def __missing__(self, key: str) -> object:
        if len(self) >= MEMO_LIMIT:
            self.clear()
            if self.also is not None:
                self.also.clear()
            self.resets += 1
        value = self[key] = self.make(key)
        return value


class _Rule:
    __slots__ = ("verb", "line", "scope", "regex", "repl")

    def __init__(self, verb: str, line: str, scope=None, regex=None, repl=None) -> None:
        self.verb = verb
        self.line = line
        self.scope: re.Pattern[str] | None = scope
        self.regex: re.Pattern[str] | int | None = regex
        self.repl = repl


def _parse_string(rule: str, expr: str) -> str:
    """A delimited expression: HttpRules.parseString, separators tried in the order ~ ! % | /."""
    for sep in _SEPARATORS:
        m = _SEP_WHOLE[sep].fullmatch(expr)
        if m:
            inner = m.group(1)
            if _SEP_BAD[sep].fullmatch(inner):
                raise RulesError(f"Unescaped separator ({sep}) in rule: {rule}")
            return inner.replace("\\" + sep, sep)
    raise RulesError(f"Invalid expression ({expr}) in rule: {rule}")


def _parse_regex(rule: str, expr: str, *, whole: bool) -> re.Pattern[str]:
    text = _parse_string(rule, expr)
    try:
        return _compile_java(text, whole=whole)
    except _Unsupported:
        raise RulesError(f"Invalid regex ({expr}) in rule: {rule}") from None


# strict's `/request_url/ replace /([^\?;]+).*/, /$1/`, here with the delimiters that HttpRules allows.
_STRICT_URL_EXPRS = {(f"{d}([^\\?;]+).*{d}", f"{d}$1{d}") for d in _SEPARATORS}


def _strict_url(rewrite: Callable[[str], str]) -> Callable[[str], str]:
    r"""strict's URL rewrite, skipped for URLs with neither `?` nor `;` (vxcap's URLs carry no query).

    Exact: without `?` and `;` the first match starts at 0 and `[^\?;]+` takes the whole value (the class
    includes line terminators), so `.*` is empty and `$1` puts the value back; no second match can start.
    """

    def strict_url(value: str) -> str:
        if "?" not in value and ";" not in value:
            return value
        return rewrite(value)

    return strict_url


def _parse_rule(line: str) -> _Rule | None:
    if _BLANK_OR_COMMENT.fullmatch(line):
        return None
    for verb, grammar in _VERBS:
        m = grammar.fullmatch(line)
        if not m:
            continue
        if verb == "sample":
            digits = m.group(1)
            percent = int(digits)
            if percent > _INT_MAX:
                # Java's Integer.valueOf throws its own message here; the number as written says more.
                raise RulesError(f"Invalid sample percent: {digits}")
            if not 1 <= percent <= 99:
                raise RulesError(f"Invalid sample percent: {percent}")
            return _Rule(verb, line, regex=percent)
        shape = _SHAPE.get(verb, "")
        rule = _Rule(verb, line)
        for kind, expr in zip(shape, m.groups()):
            if kind == "S":
                rule.scope = _parse_regex(line, expr, whole=True)
            elif kind == "F":
                rule.regex = _parse_regex(line, expr, whole=True)
            elif kind == "D":
                rule.regex = _parse_regex(line, expr, whole=False)
            else:
                try:
                    repl = _compile_replacement(_parse_string(line, expr), rule.regex)  # type: ignore[arg-type]
                except _Unsupported:
                    raise RulesError(f"Invalid replacement ({expr}) in rule: {line}") from None
                rule.repl = _rewriter(rule.regex, repl)  # type: ignore[arg-type]
                if (m.group(2), m.group(3)) in _STRICT_URL_EXPRS:
                    rule.repl = _strict_url(rule.repl)
        return rule
    raise RulesError(f"Invalid rule: {line}")


def _load_text(text: str | None) -> str:
    """The rules text after file loading and include expansion (HttpRules' constructor)."""
    if text is None:
        text = DEFAULT_RULES
    # The helm chart and the Resurface sniffer pass USAGE_LOGGERS_RULES with literal "\n" separators.
    text = text.replace("\\n", "\n")
    if text.startswith("file://"):
        path = text[7:].strip(_JAVA_TRIM)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError):
            raise RulesError(f"Failed to load rules: {path}") from None
    text = _INCLUDE_RES[0][0].sub(lambda _m: DEFAULT_RULES, text)
    if not text.strip(_JAVA_TRIM):
        text = DEFAULT_RULES
    for pattern, included in _INCLUDE_RES[1:]:
        text = pattern.sub(lambda _m, t=included: t, text)
    return text


class Rules:
    """A parsed rules text. Build with ``Rules.parse``; safe to share, not thread-safe (memos, counters)."""

    def __init__(self, parsed: list[_Rule], text: str, rng: random.Random | None) -> None:
        by: dict[str, list[_Rule]] = {}
        for r in parsed:
            by.setdefault(r.verb, []).append(r)
        if len(by.get("sample", ())) > 1:
            raise RulesError("Multiple sample rules")
        self.text = text
        self.size = len(parsed)
        self.allow_http_url = "allow_http_url" in by
        self.skip_compression = "skip_compression" in by
        self.skip_submission = "skip_submission" in by
        self.sample: int | None = by["sample"][0].regex if "sample" in by else None  # type: ignore[assignment]
        self._by = by
        self._rng = rng if rng is not None else random.Random()
        self._session = [r.regex for r in by.get("copy_session_field", ())]
        self._stop_verbs = [by.get(v, []) for v in ("stop", "stop_if_found", "stop_if", "stop_unless_found", "stop_unless")]
        self._has_stop = any(self._stop_verbs)
        self._n_unless_found = len(self._stop_verbs[3])
        self._n_unless = len(self._stop_verbs[4])
        self._stop_memo = _Memo(self._stop_plan)
        self._has_detail_rules = any(
            v in by for v in ("remove", "remove_if", "remove_if_found", "remove_unless", "remove_unless_found", "replace")
        )
        self._value_plans: dict[str, Callable[[str], str | None]] = {}
        self._codes = _Memo(self._detail_code, also=self._value_plans)
        self._codes_get = self._codes.__getitem__
        self._n_in = 0
        self._n_stop = 0
        self._n_sample = 0
        self._n_empty = 0

    @classmethod
    def parse(cls, text: str | None, *, rng: random.Random | None = None, pure: bool = False) -> "Rules":
        """Parse a rules text (None or blank: ``include default``); raises RulesError with Java's text.

        ``Rules.parse`` returns the native engine (``vxcap.rules_select.NativeRules``, same results) unless
        ``pure=True``, ``VXCAP_PURE_PYTHON=1`` or the extension is not built; subclasses get themselves.
        """
        expanded = _load_text(text)
        parsed: list[_Rule] = []
        for line in _LINE_SPLIT.split(expanded):
            rule = _parse_rule(line)
            if rule is not None:
                parsed.append(rule)
        shown = "\n".join(r.line.strip(_JAVA_TRIM) for r in parsed)
        if cls is Rules:
            from vxcap.rules_select import rules_class  # imports this module: deferred to the first parse

            cls = rules_class(pure)
        return cls(parsed, shown, rng)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, *, rng: random.Random | None = None,
                 pure: bool = False) -> "Rules":
        env = os.environ if environ is None else environ
        return cls.parse(env.get("USAGE_LOGGERS_RULES"), rng=rng, pure=pure)

    # -- per-key decisions
    def _stop_plan(self, key: str) -> tuple | None:
        stop, if_found, if_whole, unless_found, unless_whole = (
            [r for r in rules if r.scope.fullmatch(key)] for rules in self._stop_verbs  # type: ignore[union-attr]
        )
        if not (stop or if_found or if_whole or unless_found or unless_whole):
            return None
        return (
            bool(stop),
            tuple(r.regex.search for r in if_found),
            tuple(r.regex.fullmatch for r in if_whole),
            tuple(r.regex.search for r in unless_found),
            tuple(r.regex.fullmatch for r in unless_whole),
        )

    def _detail_code(self, key: str) -> int:
        """DROP: always removed; KEEP: kept as is; VALUE: ``self._value_plans[key]`` decides from the value."""
        by = self._by

        def scoped(verb: str) -> list[_Rule]:
            return [r for r in by.get(verb, ()) if r.scope.fullmatch(key)]  # type: ignore[union-attr]

        if scoped("remove"):
            return _DROP
        # Removal tests all look at the original value, so their order does not matter.
        tests: list[tuple[Callable, bool]] = (
            [(r.regex.search, False) for r in scoped("remove_unless_found")]
            + [(r.regex.search, True) for r in scoped("remove_if_found")]
            + [(r.regex.fullmatch, False) for r in scoped("remove_unless")]
            + [(r.regex.fullmatch, True) for r in scoped("remove_if")]
        )
        subs = [r.repl for r in scoped("replace")]
        if not tests and not subs:
            return _KEEP
        if not tests and len(subs) == 1:
            self._value_plans[key] = subs[0]
            return _VALUE

        def plan(v: str) -> str | None:
            for test, removes_on_match in tests:
                if (test(v) is not None) is removes_on_match:
                    return None
            for rewrite in subs:
                v = rewrite(v)
            return v

        self._value_plans[key] = plan
        return _VALUE

    # -- the pipeline
    def apply(self, details: list[list[str]]) -> list[list[str]] | None:
        """Apply the rules to one message's ``[key, value]`` pairs; None means drop the message.

        The argument is never modified (see the module docstring for what the result shares with it).
        """
        self._n_in += 1
        if self._has_stop:
            memo = self._stop_memo
            found = whole = 0
            for d in details:
                p = memo[d[0]]
                if p is None:
                    continue
                stop, if_found, if_whole, unless_found, unless_whole = p
                v = d[1]
                if stop or any(t(v) is not None for t in if_found) or any(t(v) is not None for t in if_whole):
                    self._n_stop += 1
                    return None
                # stop_unless counts (rule, detail) pairs, so two matching details satisfy two rules.
                for t in unless_found:
                    if t(v) is not None:
                        found += 1
                for t in unless_whole:
                    if t(v) is not None:
                        whole += 1
            if found != self._n_unless_found or whole != self._n_unless:
                self._n_stop += 1
                return None
        if self.sample is not None and self._rng.random() * 100.0 >= self.sample:
            self._n_sample += 1
            return None
        # One code per detail and the kept ones selected, both in C (map, compress); Python code only runs
        # for the few details whose fate depends on their value (request_url under strict).
        if not self._has_detail_rules:
            out = list(filter(_VALUE_OF, details))
            if not out:
                self._n_empty += 1
                return None
            return out
        codes = list(map(self._codes_get, map(_KEY, details)))
        out = list(compress(details, codes))
        if _VALUE in codes:
            plans = self._value_plans
            dead: list[int] = []
            i = -1
            for _ in range(codes.count(_VALUE)):
                i = codes.index(_VALUE, i + 1)
                j = i - codes[:i].count(_DROP)  # position of details[i] in out
                d = out[j]
                plan = plans.get(d[0])
                if plan is None:
                    # The memo was emptied (MEMO_LIMIT) after this key was coded, in this very message:
                    # work its plan out again rather than lose it.
                    self._detail_code(d[0])
                    plan = plans[d[0]]
                v = plan(d[1])
                if not v:
                    dead.append(j)
                elif v is not d[1]:
                    out[j] = [d[0], v]
            for j in reversed(dead):
                del out[j]
        if not all(map(_VALUE_OF, out)):
            out = list(filter(_VALUE_OF, out))
        if not out:
            self._n_empty += 1
            return None
        return out

    def session_fields(self, cookie_header_values: Iterable[str]) -> list[list[str]]:
        """``session_field:<name>`` details for the request cookies that copy_session_field selects.

        As in Resurface's Go logger: cookie names are lower-cased, each rule is tried on each cookie (so a
        cookie two rules select is copied twice), values lose surrounding double quotes, empty ones are
        skipped (they would be removed from the message anyway).
        """
        if not self._session:
            return []
        cookies: list[tuple[str, str]] = []
        for header in cookie_header_values:
            for part in header.split(";"):
                name, eq, value = part.partition("=")
                name = name.strip(" \t")
                value = value.strip(" \t")
                if not name or not eq:
                    continue
                if len(value) > 1 and value[0] == '"' and value[-1] == '"':
                    value = value[1:-1]
                if value:
                    cookies.append((name.lower(), value))
        return [
            ["session_field:" + name, value]
            for regex in self._session
            for name, value in cookies
            if regex.fullmatch(name)  # type: ignore[union-attr]
        ]

    def counters(self) -> dict[str, int]:
        dropped = self._n_stop + self._n_sample + self._n_empty
        return {
            "messages_in": self._n_in,
            "messages_out": self._n_in - dropped,
            "dropped_stop": self._n_stop,
            "dropped_sample": self._n_sample,
            "dropped_empty": self._n_empty,
            "key_memo_resets": self._codes.resets + self._stop_memo.resets,
        }

    def __repr__(self) -> str:
        return f"Rules({self.size} rules, sample={self.sample})"
