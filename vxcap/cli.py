"""The ``vxcap`` command: one sub-command per job, each in the module that owns it.

Sub-commands are imported lazily so that ``vxcap rules check`` never pays for the capture stack, and so
that a broken optional piece cannot stop the others from starting. Each owner module exposes
``main(argv: list[str]) -> int``; exit status 2 means bad arguments or configuration (one line on stderr).
"""
from __future__ import annotations

import importlib
import sys

from vxcap import __version__

COMMANDS = {
    "replay": ("vxcap.replay", "turn capture files (pcap, pcapng, .gz) into Resurface messages"),
    "run": ("vxcap.daemon", "the container entrypoint: live capture configured by the environment"),
    "rules": ("vxcap.rules_cli", "check logging rules, or apply them to NDJSON messages"),
    "config": ("vxcap.daemon", "print the effective configuration (secrets masked)"),
}

USAGE = "usage: vxcap {" + ",".join(COMMANDS) + "} ...\n\n" + "\n".join(
    f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"vxcap {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vxcap: unknown command {name!r} (expected one of: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry = getattr(module, "config_main" if name == "config" else "main")
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
