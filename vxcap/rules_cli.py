"""`vxcap rules`: check a rules text, or apply it to NDJSON messages.

    vxcap rules check [--rules TEXT]
    vxcap rules apply [--rules TEXT] [--seed N] [--counters]  < messages.ndjson

``--rules`` defaults to $USAGE_LOGGERS_RULES (unset or blank: ``include default``), so the command checks
exactly what the daemon would run. A rules error prints logger-java's text on stderr and exits 2.
``apply`` reads one message per line (a JSON array of ``[key, value]`` string pairs, SPEC section 2) and
writes one line per message: the resulting array, or ``null`` when the rules drop it. Blank lines are
skipped; a line that is not a message stops the run with exit status 1.
"""
from __future__ import annotations

import argparse
import os
import random
import sys

import orjson

from vxcap.rules import Rules, RulesError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vxcap rules", description="Resurface logging rules (SPEC section 3)")
    sub = ap.add_subparsers(dest="action", required=True)
    for name, text in (("check", "parse the rules and print them expanded, one per line"),
                       ("apply", "apply the rules to NDJSON messages from stdin")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--rules", default=os.environ.get("USAGE_LOGGERS_RULES"),
                       help="rules text, or file://PATH (default: $USAGE_LOGGERS_RULES, else include default)")
        if name == "apply":
            p.add_argument("--seed", type=int, default=None, help="seed the random choice of `sample N`")
            p.add_argument("--counters", action="store_true", help="print the rules' counters on stderr at the end")
    return ap


def _message(line: bytes, lineno: int) -> list[list[str]]:
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"line {lineno}: not JSON: {exc}") from None
    if not isinstance(msg, list) or not all(
        isinstance(d, list) and len(d) == 2 and isinstance(d[0], str) and isinstance(d[1], str) for d in msg
    ):
        raise ValueError(f"line {lineno}: expected a JSON array of [key, value] string pairs")
    return msg


def _apply(rules: Rules, stdin, stdout) -> int:
    write = stdout.write
    for lineno, line in enumerate(stdin, 1):
        if not line.strip():
            continue
        try:
            msg = _message(line, lineno)
        except ValueError as exc:
            stdout.flush()
            print(f"vxcap rules apply: {exc}", file=sys.stderr)
            return 1
        write(orjson.dumps(rules.apply(msg)) + b"\n")
    stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    rng = random.Random(args.seed) if getattr(args, "seed", None) is not None else None
    try:
        rules = Rules.parse(args.rules, rng=rng)
    except RulesError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.action == "check":
        if rules.text:
            print(rules.text)
        return 0
    status = _apply(rules, sys.stdin.buffer, sys.stdout.buffer)
    if args.counters:
        sys.stderr.write(orjson.dumps(rules.counters()).decode() + "\n")
    return status
