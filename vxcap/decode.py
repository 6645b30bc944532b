"""Packet decoder selection: the native ``vxcap._decode`` or its pure-Python twin ``vxcap.decode_py``.

Both take the same options and produce the same segments and counters (``vxcap.decode_py`` documents the
rules). The twin is used when ``VXCAP_PURE_PYTHON=1`` is set, when ``pure=True`` is passed, or when the
extension is not built (aiohttp selects its accelerated parser the same way).
"""
from __future__ import annotations

import os
from typing import Union

from vxcap import decode_py
from vxcap.decode_py import COUNTER_NAMES, DecodeConfigError, VniFilter, parse_vnis

try:
    from vxcap import _decode
except ImportError:  # not built: the twin still works
    _decode = None  # type: ignore[assignment]

__all__ = ["COUNTER_NAMES", "DecodeConfigError", "Decoder", "NATIVE_AVAILABLE", "VniFilter", "parse_vnis"]

NATIVE_AVAILABLE = _decode is not None

AnyDecoder = Union["decode_py.Decoder", "_decode.Decoder"]


def _pure_by_env() -> bool:
    return os.environ.get("VXCAP_PURE_PYTHON", "") not in ("", "0")


def Decoder(  # noqa: N802 - a factory that stands in for the class it picks
    vxlan_port: int = 4789,
    geneve_port: int = 6081,
    encap: str = "auto",
    vnis: VniFilter = VniFilter(),
    ports: frozenset[int] = frozenset(),
    max_depth: int = 4,
    pure: bool = False,
) -> AnyDecoder:
    """Return a decoder; every option is validated (``DecodeConfigError`` names the one that is wrong)."""
    if not isinstance(pure, bool):
        raise DecodeConfigError(f"pure must be a bool, got {pure!r}")
    cls = decode_py.Decoder if (pure or _pure_by_env() or _decode is None) else _decode.Decoder
    return cls(vxlan_port=vxlan_port, geneve_port=geneve_port, encap=encap, vnis=vnis, ports=ports,
               max_depth=max_depth)
