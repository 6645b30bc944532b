"""Every benchmark in one command: per-stage, end to end with peers, impairments, the issue's targets.

    python benchmarks/run_all.py            # default sizes: at most ~10 minutes on a 2-core machine
    python benchmarks/run_all.py --quick    # 20k-frame captures: a ~1-minute smoke run
    python benchmarks/run_all.py --full     # adds 10M frames of small-api and larger mixes (long)

Writes to ``--results`` (default ``benchmarks/results/``):
- ``latest.json``: every figure with its correctness check, the machine (CPU model, cores, memory, kernel,
  Python and package versions, tool versions, load average at start and end, the git commit);
- ``latest.md``: the same as tables;
- ``calls_per_second.png``: calls/s against capture size for vxcap, its pure path, tshark and tcpflow.

Captures are generated into ``--workdir`` (default: a temporary directory, removed at the end; pass one to
keep the captures and reuse them in the next run: the generator is deterministic). The exit status is 0 when
every correctness check passed, 1 otherwise (targets missed do not fail the run: they are what the issue
tracks).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import bench_e2e  # noqa: E402

STAGE_SIZES = {  # frames of the stage capture (one of the e2e small-api captures), repeat, sink lines, idle conns
    "quick": dict(frames=20_000, repeat=1, sink_n=10_000, idle_conns=20_000),
    "default": dict(frames=50_000, repeat=3, sink_n=100_000, idle_conns=200_000),
    "full": dict(frames=300_000, repeat=3, sink_n=1_000_000, idle_conns=200_000),
}
BUDGET_S = {"quick": 90, "default": 600, "full": None}


def _cmd(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout or r.stderr).strip()
    return text.splitlines()[0] if text else None


def machine() -> dict:
    from importlib import metadata

    import vxcap

    cpu_model = None
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = None
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    packages = {}
    for name in ("orjson", "httptools", "aiohttp", "uvloop", "brotli", "Cython", "matplotlib"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    # Read-only git: the commit measured and whether the working tree differs from it.
    head = _cmd(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = None
    try:
        r = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "-uno"],
                           capture_output=True, text=True, timeout=20)
        dirty = [line[3:] for line in r.stdout.splitlines()] if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "vxcap": vxcap.__version__,
        "packages": packages,
        "tshark": _cmd(["tshark", "--version"]),
        "tcpflow": _cmd(["tcpflow", "-V"]),
        "git_commit": head,
        "git_modified_files": dirty,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_stages(stats: dict, size: str, results_dir: pathlib.Path) -> dict:
    """bench_stages.py in its own process (its peak-RSS figures must not include this one's memory)."""
    p = STAGE_SIZES[size]
    out = results_dir / ".stages.json"
    argv = [sys.executable, str(HERE / "bench_stages.py"), "--pcap", stats["pcap"], "--truth", stats["truth"],
            "--repeat", str(p["repeat"]), "--sink-n", str(p["sink_n"]), "--idle-conns", str(p["idle_conns"]),
            "--json", str(out)]
    r = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in r.stdout.splitlines()[:-1]:
        print(line, file=sys.stderr, flush=True)
    if not out.exists():
        return {"ok": False, "error": f"bench_stages.py exited with {r.returncode}: {r.stderr[-1500:]}",
                "stages": []}
    data = json.loads(out.read_text())
    out.unlink()
    return data


# ---- targets of the issue ----------------------------------------------------------------------------
def _stage(stages: dict, name: str) -> dict:
    return next((s for s in stages.get("stages", []) if s["stage"] == name), {})


def target(name: str, what: str, value, goal, unit: str, higher_is_better: bool = True,
           measured_on: str = "") -> dict:
    if value is None:
        return {"name": name, "what": what, "target": goal, "unit": unit, "value": None, "met": False,
                "status": "not measured", "measured_on": measured_on}
    met = value >= goal if higher_is_better else value <= goal
    if met:
        status = "met"
    elif higher_is_better:
        status = f"missed by {_n(goal - value, 2)} {unit} ({goal / value:.1f}x short, {value / goal:.1%} of target)"
    else:
        status = f"missed by {_n(value - goal, 2)} {unit} ({value / goal:.2f}x the limit)"
    return {"name": name, "what": what, "target": goal, "unit": unit, "value": value, "met": met,
            "status": status, "measured_on": measured_on,
            "ratio_to_target": round(value / goal, 3) if goal else None}


def targets(stages: dict, e2e: dict) -> list[dict]:
    small = e2e["small_api"][-1] if e2e.get("small_api") else None
    vx = small["tools"]["vxcap"] if small else {}
    ratio = (small or {}).get("ratios", {}).get("tshark", {}).get("per_call_cpu")
    dec = _stage(stages, "decode").get("per_core", {}).get("frames_per_s")
    large = e2e.get("large_body", {}).get("tools", {}).get("vxcap", {})
    idle = _stage(stages, "idle_connections").get("bytes_per_connection")
    on_small = f"small-api {small['frames']:,} frames, vxcap replay, CPU time" if small else ""
    return [
        target("e2e_small_api_calls_per_core", "end to end, small-api, calls per second on one core",
               vx.get("calls_per_cpu_s"), 150_000, "calls/s", measured_on=on_small),
        target("tshark_per_call_cpu_ratio", "tshark CPU per call / vxcap CPU per call", ratio, 20, "x",
               measured_on=on_small),
        target("decode_frames_per_core", "native decoding, frames per second on one core", dec, 10_000_000,
               "frames/s", measured_on=f"stage 'decode', {stages.get('frames', 0):,} frames"),
        target("large_body_gbit_per_core", "end to end, large-body, captured Gbit/s on one core",
               large.get("gbit_per_cpu_s"), 2.0, "Gbit/s",
               measured_on=f"large-body {e2e.get('large_body', {}).get('frames', 0):,} frames"),
        target("idle_connection_bytes", "memory per idle tracked connection (RSS growth / N, SYN only)",
               idle, 1024, "bytes", higher_is_better=False,
               measured_on=f"{_stage(stages, 'idle_connections').get('iterations', 0):,} connections in the "
                           "Reassembler"),
    ]


def checks(results: dict) -> list[dict]:
    """Every correctness check of the run, flattened: where, ok, and the figures it is about."""
    out = []
    for s in results["stages"].get("stages", []):
        out.append({"where": f"stage {s['stage']}", "ok": s["check"]["ok"]})
    if not results["stages"].get("stages"):
        out.append({"where": "stages", "ok": False, "error": results["stages"].get("error")})
    e2e = results["e2e"]
    for entry in e2e["small_api"] + [e2e["large_body"], e2e["many_conns"]]:
        for tool, t in entry["tools"].items():
            out.append({"where": f"e2e {entry['name']} {tool}", "ok": t["check"]["ok"]})
    for name, v in e2e["impaired"]["variants"].items():
        out.append({"where": f"impaired {name} vxcap", "ok": v["check"]["ok"]})
    return out


# ---- report ------------------------------------------------------------------------------------------
def _n(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and digits and abs(v) < 100:
        return f"{v:,.{digits}f}"
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def next_limit(st: dict) -> list[str]:
    """Where one call's CPU goes, from the stages: what a faster end to end must shrink next."""
    us = {s["stage"]: s["per_core"].get("us_per_call") for s in st.get("stages", [])}
    parts = [("TCP reassembly + HTTP/1.x framing and pairing (Reassembler.process)", us.get("reassembly_http")),
             ("message building (MessageBuilder.details)", us.get("messages")),
             ("rules, strict (Rules.apply, native)", None if us.get("messages_rules_strict") is None
              or us.get("messages") is None else max(0.0, us["messages_rules_strict"] - us["messages"])),
             ("serialisation (orjson)", us.get("serialise")),
             ("sink (batching, deflate, POST)", us.get("sink"))]
    parts = [(k, v) for k, v in parts if v is not None]
    if not parts:
        return []
    total = sum(v for _, v in parts)
    out = ["", "## Where the time goes (the next limit)", "",
           "CPU microseconds per call by stage (the stages above; decoding and reading add well under 1 µs per "
           "frame). The largest share is the next limit: the per-call path runs as Cython compiled from the "
           "Python source with C types (src_c/vxcap/*.pxd), but it still makes Python-level calls per segment "
           "and per header (httptools' callbacks, one Message object and one list per header).", "",
           "| stage | µs/call | share |", "|---|---|---|"]
    for k, v in sorted(parts, key=lambda kv: -kv[1]):
        out.append(f"| {k} | {v:.2f} | {100 * v / total:.0f}% |")
    return out


def live_section(path: pathlib.Path) -> list[str]:
    """The live-capture figures of benchmarks/bench_live.py, when its output was saved beside the results."""
    if not path.exists():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    summary = [x for x in rows if "highest_rate_without_drops" in x]
    out = ["", "## Live capture (`python benchmarks/bench_live.py`, saved in live.jsonl)", "",
           "tcpreplay pushes `samples/mirror-sample.pcap` over a veth into the TPACKET_V3 ring at increasing "
           "rates. The sample repeats its TCP sequence numbers on every loop, so after the first loop most of it "
           "is discarded as retransmissions: the CPU figure is capture, decoding and duplicate detection.", "",
           "| workers | engine | highest rate without kernel drops (packets/s) | CPU s per s per 100k packets/s |",
           "|---|---|---|---|"]
    for x in summary:
        out.append(f"| {x['workers']} | {x['engine']} | {x['highest_rate_without_drops']:,} | "
                   f"{x['cpu_per_100k_pps_there']} |")
    return out


def sink_rules_section(path: pathlib.Path) -> list[str]:
    """bench_sink.py (1M messages to the test collector) and bench_rules.py figures, when saved."""
    if not path.exists():
        return []
    d = json.loads(path.read_text())
    out = ["", "## Sink and rules (`bench_sink.py --n 1000000`, `bench_rules.py --n 100000`; sink_and_rules.json)",
           "", "| benchmark | figure | check |", "|---|---|---|"]
    for name in ("sink_asyncio", "sink_uvloop"):
        x = d.get(name)
        if x:
            out.append(f"| {name}: 1M ~{x['avg_line_bytes']}-byte messages, deflate level {x['compression_level']} (ISA-L) | "
                       f"{x['messages_per_s']:,} messages/s; event loop lag max {x['loop_lag_max_ms']} ms, "
                       f"longest loop-thread stretch {x['loop_thread_cpu_per_tick_max_ms']} ms | received "
                       f"{x['received']:,}, dropped {x['dropped']}, {'OK' if x['correct'] else 'FAILED'} |")
    rules = (d.get("rules") or {}).get("results", {})
    for k in ("strict", "standard", "debug", "custom"):
        x = rules.get(k)
        if x:
            out.append(f"| rules `{k}` on ~17-detail messages | {x['native_messages_per_s']:,} messages/s native, "
                       f"{x['pure_messages_per_s']:,} pure ({x['native_over_pure']}x) | "
                       f"{'OK' if x['correct'] else 'FAILED'} |")
    return out


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# vxcap benchmarks: latest run", "",
        f"`{r['command']}` on {r['started']}, {r['seconds']:.0f} s ({r['size']} sizes). "
        f"All correctness checks passed: **{'yes' if r['ok'] else 'NO'}**.", "",
        f"Machine: {m['cpu_model']}, {m['cpus_available']} of {m['logical_cpus']} CPUs, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, vxcap {m['vxcap']} (commit {(m['git_commit'] or '?')[:12]}"
        f"{', working tree modified' if m.get('git_modified_files') else ''}); load average "
        f"{m['load_average_start']} at start, {r['load_average_end']} at end (the machine is shared: rates are "
        "per CPU second of the process measured).", "",
        "## Targets of the issue", "",
        "| target | goal | measured | status | on |", "|---|---|---|---|---|",
    ]
    for t in r["targets"]:
        goal = ("<= " if t["name"] == "idle_connection_bytes" else ">= ") + f"{_n(t['target'])} {t['unit']}"
        val = _n(t["value"], 3 if isinstance(t["value"], float) and t["value"] < 100 else 0)
        lines.append(f"| {t['what']} | {goal} | {val} {t['unit']} | {'**met**' if t['met'] else t['status']} | "
                     f"{t['measured_on']} |")
    lines += ["", "## End to end (`vxcap replay FILE --rules 'include debug' --out FILE`)", "",
              "One iteration = one HTTP call from capture file to NDJSON line. calls/CPU-s = calls found / CPU "
              "seconds (user + system) of the tool's process: a per-core rate. vxcap x = the other tool's CPU "
              "per call / vxcap's (above 1: vxcap uses less). Check: vxcap's output against the truth (every "
              "complete call exact, nothing unexpected); peers: calls found = truth calls.", "",
              "| capture | tool | calls | calls/CPU-s | µs CPU/call | Gbit/CPU-s | wall s | peak RSS MB | recall | "
              "check | vxcap x (CPU/call) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    e2e = r["e2e"]
    for entry in e2e["small_api"] + [e2e["large_body"], e2e["many_conns"]]:
        for tool, t in entry["tools"].items():
            cap = f"{entry['name']} ({entry['frames']:,} frames, {entry['frame_bytes'] / 1e6:,.0f} MB)"
            if "calls_per_cpu_s" not in t:
                lines.append(f"| {cap} | {tool} | - | - | - | - | - | - | - | {t.get('skipped') or t.get('error')} "
                             "| - |")
                continue
            c = t["check"]
            recall = c.get("recall_complete", c.get("recall"))
            ratio = entry["ratios"].get(tool, {}).get("per_call_cpu")
            lines.append(
                f"| {cap} | {t['tool']} | {t['calls']:,} | {t['calls_per_cpu_s']:,} | {_n(t['us_cpu_per_call'], 1)} | "
                f"{t['gbit_per_cpu_s']:.3f} | {t['wall_s']:.1f} | {t['peak_rss_mb']:,.0f} | {recall:.4g} | "
                f"{'OK' if c['ok'] else 'FAILED'} | {'' if tool == 'vxcap' else _n(ratio, 2) + 'x'} |")
    imp = e2e["impaired"]
    lines += ["", f"## Impaired captures (small-api, {imp['frames']:,} frames, same traffic as the clean one)", "",
              "recall complete = complete calls out exactly / complete calls; recall all = (exact + damaged "
              "calls recovered) / all calls; vs clean = frames per CPU second relative to the clean capture in "
              "the same run.", "",
              "| variant | calls out | exact / complete calls | recall complete | damaged recovered | recall all | "
              "unexpected | frames/CPU-s vs clean | check |", "|---|---|---|---|---|---|---|---|---|"]
    for name, v in imp["variants"].items():
        c = v["check"]
        lines.append(f"| {name} | {v['vxcap']['calls']:,} | {c['exact']:,} / {c['complete_calls']:,} | "
                     f"{c['recall_complete']:.5f} | "
                     f"{c['damaged_recovered']:,} / {c['damaged_calls']:,} | {c['recall_all']:.4f} | "
                     f"{c['unexpected_calls']} | {v['frames_per_cpu_s_vs_clean']:.2f} | "
                     f"{'OK' if c['ok'] else 'FAILED'} |")
    st = r["stages"]
    lines += ["", f"## Stages ({st.get('frames', 0):,}-frame small-api capture, {st.get('truth_calls', 0):,} calls, "
              f"best of {st.get('repeat')})", "",
              "Rates per core (iterations / CPU seconds of the stage). Peak RSS: the process's high-water mark "
              "during the stage, its input in memory included.", "",
              "| stage | one iteration | per core | µs/call | peak RSS MB | check |", "|---|---|---|---|---|---|"]
    for s in st.get("stages", []):
        rate = s["per_core"]
        shown = ", ".join(f"{_n(v, 3) if k == 'gbit_per_s' else _n(v)} {k.replace('_per_s', '/s')}"
                          for k, v in rate.items() if k not in ("iterations_per_s", "us_per_call"))
        if "bytes_per_connection" in s:
            shown = f"{s['bytes_per_connection']:,} bytes/connection; {shown}"
        if not shown:
            shown = f"{_n(rate.get('iterations_per_s'))} iterations/s"
        check = {k: v for k, v in s["check"].items() if k != "ok"}
        lines.append(f"| {s['stage']} | {s['iteration']} | {shown} | {_n(rate.get('us_per_call'), 2)} | "
                     f"{s['peak_rss_mb']:,.0f} | {'OK' if s['check']['ok'] else 'FAILED'} "
                     f"{json.dumps(check)[:160]} |")
    lines += next_limit(st)
    lines += live_section(pathlib.Path(__file__).resolve().parent / "results" / "live.jsonl")
    lines += sink_rules_section(pathlib.Path(__file__).resolve().parent / "results" / "sink_and_rules.json")
    failed = [c["where"] for c in r["checks"] if not c["ok"]]
    lines += ["", "## Correctness checks", "",
              f"{sum(c['ok'] for c in r['checks'])} of {len(r['checks'])} passed."
              + (f" Failed: {', '.join(failed)}." if failed else ""), "",
              "![calls per second](calls_per_second.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="20k-frame captures: a ~1-minute smoke run")
    g.add_argument("--full", action="store_true", help="adds 10M frames of small-api (long)")
    ap.add_argument("--results", default=str(HERE / "results"), help="output directory (default "
                    "benchmarks/results)")
    ap.add_argument("--workdir", help="keep generated captures here and reuse them (default: temporary)")
    ap.add_argument("--no-peers", action="store_true", help="skip tshark and tcpflow")
    a = ap.parse_args(argv)
    size = "quick" if a.quick else "full" if a.full else "default"
    results_dir = pathlib.Path(a.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    mach = machine()
    tmp = None
    workdir = a.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="vxcap-bench-", dir=os.environ.get("TMPDIR"))
        workdir = tmp.name
    os.makedirs(workdir, exist_ok=True)
    try:
        frames = STAGE_SIZES[size]["frames"]
        print(f"stages: small-api {frames:,} frames", file=sys.stderr, flush=True)
        stats = bench_e2e.workload(workdir, "small-api", frames)
        stages = run_stages(stats, size, results_dir)
        print("end to end", file=sys.stderr, flush=True)
        e2e = bench_e2e.run_all(workdir, size, peers_on=not a.no_peers)
    finally:
        if tmp is not None:
            tmp.cleanup()
    cmd = "python benchmarks/run_all.py" + (" --quick" if a.quick else " --full" if a.full else "") + \
        (" --no-peers" if a.no_peers else "")
    results = {"command": cmd, "started": started, "size": size, "machine": mach, "stages": stages, "e2e": e2e}
    results["targets"] = targets(stages, e2e)
    results["checks"] = checks(results)
    results["ok"] = all(c["ok"] for c in results["checks"])
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["budget_seconds"] = BUDGET_S[size]
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    (results_dir / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    (results_dir / "latest.md").write_text(markdown(results))
    try:
        import plot

        plot.plot(results, results_dir / "calls_per_second.png")
    except ImportError as e:  # matplotlib is optional (the 'bench' extra)
        print(f"no plot: {e}", file=sys.stderr)
    print(f"\n{results_dir / 'latest.md'} ({results['seconds']:.0f} s)", file=sys.stderr)
    for t in results["targets"]:
        print(f"  {t['name']:<32} {_n(t['value'], 3 if isinstance(t['value'], float) and t['value'] < 100 else 0):>14}"
              f" {t['unit']:<9} target {'<=' if t['name'] == 'idle_connection_bytes' else '>='} "
              f"{_n(t['target'])}: {t['status']}", file=sys.stderr)
    failed = [c["where"] for c in results["checks"] if not c["ok"]]
    print(f"  correctness checks: {len(results['checks']) - len(failed)}/{len(results['checks'])} passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    if BUDGET_S[size] and results["seconds"] > BUDGET_S[size]:
        print(f"  note: took {results['seconds']:.0f} s, over the {BUDGET_S[size]} s budget (load average "
              f"{mach['load_average_start']} at start)", file=sys.stderr)
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
