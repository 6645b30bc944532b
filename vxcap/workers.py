"""Worker processes: N captures in one PACKET_FANOUT group, supervised by the parent.

Why processes: reassembly, HTTP parsing and message building are Python, one core each. The kernel spreads
the mirrored frames over the workers' rings (packet(7) PACKET_FANOUT) with the classic BPF program of
``vxcap.bpf.fanout_program``, which hashes the *inner* flow symmetrically: both directions of an inner TCP
connection reach the same worker, whose reassembler therefore sees the whole conversation. (A plain
PACKET_FANOUT_HASH would hash the outer headers, whose UDP source port differs per direction: requests and
responses would land in different workers.) ``PACKET_FANOUT_FLAG_DEFRAG`` makes the kernel reassemble outer
IPv4 fragments before the program runs.

The UDP engine uses the same program as SO_ATTACH_REUSEPORT_CBPF on the SO_REUSEPORT group
(vxcap.udp_engine).

Supervision: each worker is ``python -m vxcap.capture ... --worker-index i --fanout-group G --status-fd FD``
and writes JSON lines on FD: ``{"worker": i, "ready": true}`` once its socket is in the group, then its
flat counters every stats interval, then ``{"final": true, ...}`` at exit. The parent

* restarts a worker that exits unexpectedly (after 0.5 s, doubling to 10 s while it keeps failing fast),
* forwards SIGTERM/SIGINT to every worker and waits for them to flush (then SIGKILL after a grace time),
* aggregates the workers' counters: ``counters()`` sums the latest report of each live worker and
  everything reported by workers that have exited (so sums never go back), plus its own ``workers.*``.

A restarted worker rejoins the same group. The kernel keeps group members in an array and takes the
program's result modulo the current member count, so while a worker is down (and after it rejoins, at
another position) some flows move to another worker; those connections restart their reassembly there.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
from typing import Callable, Sequence

WORKERS_MAX = 256
# Options of the parent's command line that only the parent interprets (each takes a value).
_PARENT_ONLY = ("--workers", "--counters", "--worker-index", "--fanout-group", "--status-fd")


def default_workers() -> int:
    """``VXCAP_WORKERS`` if set, else the CPUs this process may run on (sched_getaffinity, cgroup-aware
    enough for a pinned container)."""
    raw = os.environ.get("VXCAP_WORKERS", "").strip()
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= WORKERS_MAX:
            raise ValueError(f"invalid VXCAP_WORKERS {raw!r}: expected 1 to {WORKERS_MAX}")
        return int(raw)
    return max(1, min(WORKERS_MAX, len(os.sched_getaffinity(0))))


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The parent's arguments minus those the parent keeps for itself."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in _PARENT_ONLY:
            skip = "=" not in a
            continue
        out.append(a)
    return out


_GAUGE_WORDS = ("active", "buffered", "running", "configured", "saturated", "spool_bytes", "spool_files",
                "spool_messages", "peak_")


def _is_gauge(name: str) -> bool:
    return any(w in name for w in _GAUGE_WORDS)


class Supervisor:
    """Runs ``n`` workers of one fanout group; see the module doc."""

    def __init__(self, argv: Sequence[str], n: int, *, fanout_group: int | None = None,
                 restart_delay: float = 0.5, restart_delay_max: float = 10.0, grace: float = 15.0,
                 python: str = sys.executable, module: str = "vxcap.capture",
                 handle_signals: bool = True) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= WORKERS_MAX:
            raise ValueError(f"workers {n!r}: expected 1 to {WORKERS_MAX}")
        if fanout_group is None:
            fanout_group = os.getpid() & 0xFFFF
        if not 0 <= fanout_group <= 0xFFFF:
            raise ValueError(f"fanout_group {fanout_group}: expected 0 to 65535")
        for name, v in (("restart_delay", restart_delay), ("restart_delay_max", restart_delay_max),
                        ("grace", grace)):
            if not 0 < v <= 3600:
                raise ValueError(f"{name} {v}: expected more than 0 and at most 3600 seconds")
        self.argv = list(argv)
        self.n = n
        self.fanout_group = fanout_group
        self.restart_delay = restart_delay
        self.restart_delay_max = restart_delay_max
        self.grace = grace
        self.python = python
        self.module = module  # the worker entry: vxcap.capture standalone, vxcap.daemon under `vxcap run`
        self.handle_signals = handle_signals  # False when the owner (the daemon) handles them
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._latest: dict[int, dict[str, int]] = {}
        self._retired: collections.Counter = collections.Counter()
        self._ready: set[int] = set()
        self._final: dict[int, dict[str, int]] = {}  # last report of each worker index, kept after exit
        self._stopping = False
        self._stop = asyncio.Event()
        self._n = {"workers.started": 0, "workers.restarts": 0, "workers.exits_unexpected": 0,
                   "workers.killed": 0, "workers.status_errors": 0}

    # -- counters ---------------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        total = collections.Counter(self._retired)
        for c in self._latest.values():
            total.update(c)
        out = dict(total)
        out.update(self._n)
        out["workers.running"] = sum(1 for p in self._procs.values() if p.returncode is None)
        out["workers.configured"] = self.n
        return out

    def per_worker(self) -> dict[int, dict[str, int]]:
        """Latest report per worker index (a live worker's last one, else what it said before exiting)."""
        out = {i: dict(c) for i, c in self._final.items()}
        out.update({i: dict(c) for i, c in self._latest.items()})
        return out

    # -- running ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()

    def send_signal(self, sig: int) -> None:
        """Pass a signal (e.g. SIGHUP: reload) to every live worker."""
        for p in list(self._procs.values()):
            if p.returncode is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start the workers and supervise them until SIGTERM/SIGINT or ``stop()``; 0 when all exited
        cleanly at the end."""
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        self._on_ready = on_ready
        tasks = [asyncio.ensure_future(self._keep(i)) for i in range(self.n)]
        await self._stop.wait()
        for p in list(self._procs.values()):
            if p.returncode is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        done, pending = await asyncio.wait(tasks, timeout=self.grace)
        for p in list(self._procs.values()):
            if p.returncode is None:
                self._n["workers.killed"] += 1
                p.kill()
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        codes = [t.result() for t in tasks if t.done() and not t.cancelled() and t.exception() is None]
        return 0 if len(codes) == self.n and not any(codes) else 1

    async def _keep(self, i: int) -> int:
        """Run worker ``i``, restarting it while the supervisor is not stopping; its last exit code."""
        delay = self.restart_delay
        while True:
            started = asyncio.get_running_loop().time()
            code = await self._run_one(i)
            if self._stopping:
                return code
            self._n["workers.exits_unexpected"] += 1
            sys.stderr.write(f"vxcap workers: worker {i} exited with {code}; restarting in {delay:.1f}s\n")
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return code
            except asyncio.TimeoutError:
                pass
            ran = asyncio.get_running_loop().time() - started
            delay = self.restart_delay if ran > 30 else min(self.restart_delay_max, delay * 2)
            self._n["workers.restarts"] += 1

    async def _run_one(self, i: int) -> int:
        r, w = os.pipe()
        os.set_inheritable(w, True)
        argv = [self.python, "-m", self.module, *self.argv, "--workers", str(self.n),
                "--worker-index", str(i), "--fanout-group", str(self.fanout_group), "--status-fd", str(w)]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(w,), stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.DEVNULL)
        finally:
            os.close(w)
        self._procs[i] = proc
        self._n["workers.started"] += 1
        reader = asyncio.StreamReader(limit=1 << 22)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(r, "rb", 0))
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break  # the worker closed its end: it has exited
                try:
                    msg = json.loads(line)
                except ValueError:
                    self._n["workers.status_errors"] += 1
                    continue
                if "counters" in msg:
                    self._latest[i] = msg["counters"]
                if msg.get("ready"):
                    self._ready.add(i)
                    if len(self._ready) == self.n and self._on_ready is not None:
                        cb, self._on_ready = self._on_ready, None
                        cb()
        finally:
            transport.close()
        code = await proc.wait()
        self._ready.discard(i)
        # Keep what this worker counted: the next one starts from zero. Gauges (what it held at the end)
        # are not carried over: a dead worker holds no connections.
        last = self._latest.pop(i, {})
        self._final[i] = last
        self._retired.update({k: v for k, v in last.items() if not _is_gauge(k)})
        return code


__all__ = ["Supervisor", "default_workers", "worker_argv"]
