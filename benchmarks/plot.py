"""calls_per_second.png: HTTP calls per second against capture size, vxcap beside its pure path and peers.

    python benchmarks/plot.py [benchmarks/results/latest.json] [OUT.png]

Left: calls per CPU second (one core; what carries across machines and load). Right: calls per wall-clock
second of the same runs. Both axes logarithmic; the small-api mix at every size of the run. Agg backend:
no display needed.
"""
from __future__ import annotations

import json
import pathlib
import sys

TOOLS = (("vxcap", "vxcap", "o-"), ("vxcap_pure", "vxcap, pure-Python path (VXCAP_PURE_PYTHON=1)", "s--"),
         ("tshark", "tshark", "^-"), ("tcpflow", "tcpflow (decapsulated copy)", "v-"))


def series(results: dict, tool: str, field: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for entry in results["e2e"]["small_api"]:
        t = entry["tools"].get(tool) or {}
        if t.get(field):
            xs.append(entry["frames"])
            ys.append(t[field])
    return xs, ys


def plot(results: dict, out: str | pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, field, title in ((axes[0], "calls_per_cpu_s", "calls per CPU second (one core)"),
                             (axes[1], "calls_per_wall_s", "calls per wall-clock second")):
        for tool, label, style in TOOLS:
            xs, ys = series(results, tool, field)
            if xs:
                ax.plot(xs, ys, style, label=label)
                ax.annotate(f"{ys[-1]:,.0f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("capture size (frames, small-api mix)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    target = next((t for t in results.get("targets", []) if t["name"] == "e2e_small_api_calls_per_core"), None)
    if target:
        axes[0].axhline(target["target"], color="grey", linestyle=":", label=f"target {target['target']:,}/s")
    axes[0].set_ylabel("HTTP calls / s")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    m = results.get("machine", {})
    fig.suptitle(f"vxcap replay --rules 'include debug' vs peers; {m.get('cpu_model', '?')}, "
                 f"load {m.get('load_average_start', ['?'])[0]} at start", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    here = pathlib.Path(__file__).resolve().parent / "results"
    src = pathlib.Path(argv[0]) if argv else here / "latest.json"
    out = pathlib.Path(argv[1]) if len(argv) > 1 else src.with_name("calls_per_second.png")
    plot(json.loads(src.read_text()), out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
