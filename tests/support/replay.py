"""Run capture files through vxcap's replay pipeline in-process and return the calls as dicts."""
from __future__ import annotations

import orjson

from vxcap.replay import Progress, build_parser, replay


def replay_calls(*paths, rules: str = "include debug", extra: tuple[str, ...] = ()):
    """(list of messages as lists of pairs, counters, errors) for ``vxcap replay PATHS --rules RULES``."""
    args = build_parser().parse_args([str(p) for p in paths] + ["--rules", rules, *extra])
    lines: list[bytes] = []
    calls, counters, errors, _ = replay(args, lines.extend, Progress(False))
    assert calls == len(lines)
    return [orjson.loads(line) for line in lines], counters, errors


def first(details, key, default=None):
    for k, v in details:
        if k == key:
            return v
    return default
