"""Type stubs for the native rules engine (src_c/rules.pyx); behaviour is specified by vxcap.rules.Rules."""
from collections.abc import Iterable, Sequence
from types import CodeType
from typing import Any

from vxcap.rules import Rules

class Engine:
    key_codes: dict[Any, Any]  # the detail memo (the twin's Rules._codes)
    key_stops: dict[Any, Any]  # the stop memo (the twin's Rules._stop_memo)
    def __init__(self, rules: Rules, memo_limit: int, strict_url_code: CodeType) -> None: ...
    def apply(self, details: Sequence[Sequence[str]]) -> list[list[str]] | None: ...
    def session_fields(self, cookie_header_values: Iterable[str]) -> list[list[str]]: ...
    def counters(self) -> dict[str, int]: ...
