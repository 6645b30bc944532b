"""Run one fuzz target: ``python fuzz/run.py TARGET [--seconds N] [--seed S] [--engine E] [--debug-lib DIR]``.

Targets (one per surface, ``fuzz/target_*.py``): ``capfile`` (pcap/pcapng readers), ``decode`` (native decoder
against its pure-Python twin), ``http`` (reassembler + HTTP layer + messages), ``rules`` (rules parser and
engine), ``sink`` (the sink against a collector answering garbage). Each module has ``SEEDS`` (bytes) and
``one_input(data)``, which raises on a broken rule (any exception is a finding; ``Hang`` when one input runs
longer than ``HANG_SECONDS``).

Engines: ``atheris`` (libFuzzer, coverage-guided over the Python code; the default when installed) and
``mutate`` (deterministic: seeds mutated by ``random.Random(seed)``; what ``tests/test_fuzz_short.py`` runs).
A failing input is written to ``tests/regressions/TARGET-<sha1>.bin`` (``--save-dir`` to change).
``--debug-lib DIR`` loads the extensions from a ``VXCAP_DEBUG_BUILD=1`` build (see fuzz/README.md), building
it there first when DIR has none.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

FUZZ = pathlib.Path(__file__).resolve().parent
REPO = FUZZ.parent
TARGETS = ("capfile", "decode", "http", "rules", "sink")
HANG_SECONDS = 10.0


class Hang(Exception):
    """One input ran longer than HANG_SECONDS (an infinite loop is a denial of service on a mirror)."""


def use_debug_build(lib: str) -> None:
    """Make ``vxcap._*`` load from ``lib/vxcap`` (build it there with bounds checks if missing)."""
    lib_dir = pathlib.Path(lib).resolve()
    if not list((lib_dir / "vxcap").glob("_decode*.so")):
        # Build in a copy: setup.py writes build/cython under the current directory, and the checkout's
        # in-place modules are in use by everyone else.
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(REPO / "src_c", pathlib.Path(tmp) / "src_c")
            shutil.copy(REPO / "setup.py", tmp)
            env = dict(os.environ, VXCAP_DEBUG_BUILD="1")
            subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(lib_dir)],
                           cwd=tmp, env=env, check=True)
    import vxcap

    vxcap.__path__.insert(0, str(lib_dir / "vxcap"))  # before the checkout's own modules


def load(name: str):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    return importlib.import_module(f"target_{name}")


def _on_alarm(signum, frame):
    raise Hang(f"one input ran longer than {HANG_SECONDS:g}s")


def guarded(one_input, hang_seconds: float = HANG_SECONDS):
    def run(data: bytes) -> None:
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, hang_seconds)
        try:
            one_input(data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    return run


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                0xFFFFFFFF]


def mutate(rng: random.Random, data: bytes, seeds: list[bytes], max_len: int) -> bytes:
    """A few stacked mutations of the kinds libFuzzer uses (bytes, ints at offsets, splices, dictionary)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(9)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # random byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:  # insert bytes
            i = rng.randint(0, len(b))
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and b:  # delete a run
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 16)]
        elif op == 4 and len(b) >= 4:  # interesting integer, either byte order, 1/2/4 bytes
            width = rng.choice((1, 2, 4))
            i = rng.randrange(max(1, len(b) - width + 1))
            v = rng.choice(_INTERESTING) & ((1 << 8 * width) - 1)
            b[i:i + width] = v.to_bytes(width, rng.choice(("big", "little")))
        elif op == 5 and b:  # duplicate a run
            i = rng.randrange(len(b))
            j = min(len(b), i + rng.randint(1, 64))
            b[i:i] = b[i:j] * rng.randint(1, 4)
        elif op == 6:  # splice with another seed
            other = rng.choice(seeds)
            cut = rng.randint(0, len(other))
            keep = rng.randint(0, len(b))
            b = b[:keep] + other[cut:]
        elif op == 7 and b:  # truncate
            del b[rng.randint(0, len(b)):]
        elif op == 8 and len(b) > 1:  # swap two bytes
            i, j = rng.randrange(len(b)), rng.randrange(len(b))
            b[i], b[j] = b[j], b[i]
    return bytes(b[:max_len])


def save(name: str, data: bytes, save_dir: pathlib.Path) -> pathlib.Path:
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / f"{name}-{hashlib.sha1(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def run_mutate(name: str, seconds: float, seed: int, max_iterations: int | None = None,
               save_dir: pathlib.Path | None = None) -> dict:
    """Deterministic mutational fuzzing; returns {"iterations", "failures": [(path or None, traceback)]}."""
    target = load(name)
    one = guarded(target.one_input, getattr(target, "HANG_SECONDS", HANG_SECONDS))
    seeds = [bytes(s) for s in target.SEEDS]
    max_len = getattr(target, "MAX_LEN", 1 << 16)
    rng = random.Random(seed)
    corpus = list(seeds)
    failures = []
    n = 0
    deadline = time.monotonic() + seconds
    for s in seeds:  # every seed runs as is first
        n += 1
        try:
            one(s)
        except Exception:
            failures.append((save(name, s, save_dir) if save_dir else None, traceback.format_exc()))
    while time.monotonic() < deadline and (max_iterations is None or n < max_iterations) and not failures:
        data = mutate(rng, rng.choice(corpus), seeds, max_len)
        n += 1
        try:
            one(data)
        except Exception:
            failures.append((save(name, data, save_dir) if save_dir else None, traceback.format_exc()))
            break
        if len(corpus) < 512 and rng.random() < 0.05:
            corpus.append(data)  # no coverage signal here: keep a sample so mutations can stack
    return {"iterations": n, "failures": failures}


def run_atheris(name: str, seconds: float, seed: int, save_dir: pathlib.Path, extra: list[str]) -> None:
    import atheris

    target = load(name)
    one = guarded(target.one_input, getattr(target, "HANG_SECONDS", HANG_SECONDS))
    corpus = pathlib.Path(tempfile.mkdtemp(prefix=f"vxcap-fuzz-{name}-"))
    for i, s in enumerate(target.SEEDS):
        (corpus / f"seed{i}").write_bytes(bytes(s))
    save_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-max_total_time={int(seconds)}", f"-seed={seed}",
            f"-max_len={getattr(target, 'MAX_LEN', 1 << 16)}", f"-artifact_prefix={save_dir}/{name}-",
            "-timeout=30", *extra, str(corpus)]
    atheris.Setup(argv, one)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fuzz/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("target", choices=TARGETS + ("all",))
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--engine", choices=("atheris", "mutate"), default=None)
    p.add_argument("--debug-lib", default=None, help="directory of a VXCAP_DEBUG_BUILD=1 build (made if empty)")
    p.add_argument("--save-dir", default=str(REPO / "tests" / "regressions"))
    p.add_argument("--replay", nargs="*", default=None, help="run these saved inputs once each and stop")
    args, extra = p.parse_known_args(argv)
    if args.debug_lib:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        use_debug_build(args.debug_lib)
    if args.replay is not None:
        one = guarded(load(args.target).one_input)
        for path in args.replay:
            one(pathlib.Path(path).read_bytes())
            print(f"{path}: ok")
        return 0
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "mutate"
    names = TARGETS if args.target == "all" else (args.target,)
    if engine == "atheris":
        if len(names) != 1:
            p.error("atheris runs one target per process")
        run_atheris(names[0], args.seconds, args.seed, pathlib.Path(args.save_dir), extra)
        return 0
    status = 0
    for name in names:
        res = run_mutate(name, args.seconds, args.seed, save_dir=pathlib.Path(args.save_dir))
        print(f"{name}: {res['iterations']} inputs, {len(res['failures'])} failures")
        for path, tb in res["failures"]:
            print(f"  saved {path}\n{tb}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
