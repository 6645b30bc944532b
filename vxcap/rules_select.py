"""Rules engine selection: the native ``vxcap._rules.Engine`` or the pure-Python twin ``vxcap.rules.Rules``.

``Rules.parse`` (and ``Rules.from_env``) return a ``NativeRules`` unless ``VXCAP_PURE_PYTHON=1`` is set,
``pure=True`` is passed, or the extension is not built (as ``vxcap.decode`` selects its decoder). Parsing is
the twin's either way; a ``NativeRules`` is a ``Rules`` whose per-message methods (``apply``,
``session_fields``, ``counters``) run in ``vxcap._rules.Engine``, which is built from the parsed rules and
gives the same results (``tests/test_rules_twin.py``). Callers never need to know which one they have.
"""
from __future__ import annotations

import os
import random

from vxcap import rules as _twin

try:
    from vxcap import _rules
except ImportError:  # not built: the twin still works
    _rules = None  # type: ignore[assignment]

__all__ = ["NATIVE_AVAILABLE", "NativeRules", "pure_by_env", "rules_class"]

NATIVE_AVAILABLE = _rules is not None

# strict's URL rewrite is the closure that `vxcap.rules._strict_url` returns: recognised by its code object,
# so the engine's "no ? and no ;: unchanged" shortcut only ever replaces that very function.
_STRICT_URL_CODE = _twin._strict_url(str).__code__


def pure_by_env() -> bool:
    return os.environ.get("VXCAP_PURE_PYTHON", "") not in ("", "0")


class NativeRules(_twin.Rules):
    """A parsed rules text whose ``apply``, ``session_fields`` and ``counters`` are native.

    The engine's bound methods are set on the instance, so ``rules.apply(details)`` calls C directly (a
    Python-level forwarding method would cost a frame per message). The twin's memos are replaced by the
    engine's (``_codes``, ``_stop_memo``: same keys, same bound, for inspection).
    """

    def __init__(self, parsed: list, text: str, rng: random.Random | None) -> None:
        super().__init__(parsed, text, rng)
        # MEMO_LIMIT is read now, as the twin reads it on each miss: tests lower it before parsing.
        self._engine = _rules.Engine(self, _twin.MEMO_LIMIT, _STRICT_URL_CODE)
        self.apply = self._engine.apply  # type: ignore[method-assign]
        self.session_fields = self._engine.session_fields  # type: ignore[method-assign]
        self._codes = self._engine.key_codes  # type: ignore[assignment]
        self._stop_memo = self._engine.key_stops  # type: ignore[assignment]

    def counters(self) -> dict[str, int]:
        return self._engine.counters()

    def __repr__(self) -> str:
        return f"NativeRules({self.size} rules, sample={self.sample})"


def rules_class(pure: bool = False) -> type[_twin.Rules]:
    """The class ``Rules.parse`` instantiates: the twin when asked for, or when the native one is missing."""
    if not isinstance(pure, bool):
        raise TypeError(f"pure must be a bool, got {pure!r}")
    if pure or pure_by_env() or _rules is None:
        return _twin.Rules
    return NativeRules
