"""Sink throughput: N realistic messages (~600-byte NDJSON lines) through ResurfaceSink to the test collector.

One iteration = one message handed to ``submit_many`` (in chunks, as the capture side does) and counted by
the collector. Compression is on (zlib, ``--level``). The collector runs in a subprocess by default so that
its decompression does not compete with the sink for the event loop; ``--in-process`` puts it on the same
loop (a pessimistic figure). The producer waits with ``wait_for_room()`` instead of letting the sink drop,
so the correctness check is exact: the collector must have received N messages.

Reported: messages/s and MB/s (from the first submit to the end of close()), compression ratio, and the
event loop's blocking as seen by a ticker task that sleeps 1 ms and measures how late it wakes (max, p99).

    python benchmarks/bench_sink.py [--n 1000000] [--level 1] [--in-process] [--uvloop]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.request

import orjson

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vxcap.sink import SinkConfig, make_sink  # noqa: E402
from vxcap.testing.collector import Collector  # noqa: E402


def realistic_messages(count: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    hosts = ["shop.example.com", "api.example.com", "auth.internal.example.net"]
    paths = ["/api/items", "/api/cart", "/v2/users/me", "/orders/search", "/api/items/related"]
    agents = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
              "okhttp/4.12.0", "python-requests/2.31"]
    out = []
    for i in range(count):
        body = json.dumps({"items": [{"id": rnd.randrange(10**6), "name": f"item-{rnd.randrange(999)}",
                                      "price": round(rnd.random() * 100, 2)} for _ in range(rnd.randrange(1, 4))]})
        msg = [
            ["request_method", rnd.choice(["GET", "GET", "POST"])],
            ["request_url", f"http://{rnd.choice(hosts)}{rnd.choice(paths)}"],
            ["request_param:page", str(rnd.randrange(1, 50))],
            ["request_header:user-agent", rnd.choice(agents)],
            ["request_header:x-forwarded-for", f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}"],
            ["request_header:accept", "application/json"],
            ["response_code", rnd.choice(["200", "200", "200", "201", "404"])],
            ["response_header:content-type", "application/json; charset=utf-8"],
            ["response_header:content-length", str(len(body))],
            ["response_body", body],
            ["now", str(1764500000000 + i * 3)],
            ["interval", str(rnd.randrange(1, 900))],
            ["host", "ip-10-0-1-7"],
        ]
        out.append(orjson.dumps(msg))
    return out


async def ticker(lags: list[float], busy: list[float], stop: asyncio.Event, period: float = 0.001) -> None:
    """Record how late a 1 ms sleep wakes up (wall clock), and how much CPU the loop's thread used meanwhile.

    Wall lateness includes the OS running other processes (2 shared cores here) and GIL waits; the CPU time
    of the loop's thread over the same tick is the part our own callbacks spent without yielding.
    perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
    """
    while not stop.is_set():
        t, c = time.perf_counter(), time.thread_time()
        await asyncio.sleep(period)
        lags.append(time.perf_counter() - t - period)
        busy.append(time.thread_time() - c)


def start_collector_process() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "vxcap.testing.collector", "--port", "0", "--no-validate",
                             "--uvloop"], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    first = proc.stdout.readline().strip()
    if not first.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"collector did not start: {first!r}")
    return proc, first.split()[-1]


async def run(args) -> dict:
    pool = realistic_messages(4096)
    avg = sum(map(len, pool)) / len(pool)
    collector = proc = None
    if args.in_process:
        collector = Collector(validate=False, record=False)
        await collector.start()
        url = collector.url
    else:
        proc, url = start_collector_process()
    cfg = SinkConfig(url, allow_http_url=True, compression_level=args.level, bundle_size=args.bundle_size,
                     max_inflight=args.inflight)
    sink = make_sink(cfg)
    await sink.start()
    lags: list[float] = []
    busy: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.get_running_loop().create_task(ticker(lags, busy, stop))
    n, chunk = args.n, args.chunk
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        if not sink._room.is_set():
            await sink.wait_for_room()
        k = min(chunk, n - sent)
        start = sent % len(pool)
        lines = pool[start:start + k]
        if len(lines) < k:
            lines = lines + pool[: k - len(lines)]
        accepted = sink.submit_many(lines)
        sent += accepted
        await asyncio.sleep(0)  # the capture side is one task among others
    t_submitted = time.perf_counter()
    await sink.close(120)
    elapsed = time.perf_counter() - t0
    stop.set()
    await tick
    k = sink.counters()
    if collector is not None:
        received = collector.message_count
        await collector.stop()
    else:
        stats = json.loads(urllib.request.urlopen(url.rsplit("/", 1)[0] + "/stats", timeout=10).read())
        received = stats["messages"]
        proc.terminate()
        proc.wait(10)
    lags.sort()
    busy.sort()
    return {
        "n": n,
        "avg_line_bytes": round(avg),
        "seconds": round(elapsed, 3),
        "submit_seconds": round(t_submitted - t0, 3),
        "messages_per_s": round(n / elapsed),
        "raw_MB_per_s": round(k["bytes_raw"] / elapsed / 1e6, 1),
        "compression_ratio": round(k["bytes_raw"] / max(1, k["bytes_sent"]), 2),
        "batches": k["batches_sent"],
        "loop_lag_max_ms": round(lags[-1] * 1000, 2) if lags else None,
        "loop_lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 2) if lags else None,
        "loop_lag_p999_ms": round(lags[int(len(lags) * 0.999)] * 1000, 2) if lags else None,
        "loop_thread_cpu_per_tick_max_ms": round(busy[-1] * 1000, 2) if busy else None,
        "ticks": len(lags),
        "dropped": sum(v for name, v in k.items() if name.startswith("dropped_")),
        "received": received,
        "correct": received == n and k["messages_delivered"] == n,
        "collector": "in-process" if args.in_process else "subprocess",
        "compression_level": args.level,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=256, help="lines per submit_many call")
    ap.add_argument("--level", type=int, default=1, help="zlib compression level")
    ap.add_argument("--bundle-size", type=int, default=5 * 1024 * 1024)
    ap.add_argument("--inflight", type=int, default=2)
    ap.add_argument("--in-process", action="store_true", help="collector on the same event loop")
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop

        result = uvloop.run(run(args))
    else:
        result = asyncio.run(run(args))
    result["loop"] = "uvloop" if args.uvloop else "asyncio"
    print(json.dumps(result, indent=1))
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
