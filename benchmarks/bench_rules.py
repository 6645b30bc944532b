"""Throughput of the logging rules: one iteration is ``Rules.apply`` on one message.

    python benchmarks/bench_rules.py [--n 100000] [--repeat 3] [--seed 7] [--engine both|native|pure]

Messages look like real calls (SPEC section 2): method, URL with query and path parameters, 6 to 10
request and response headers drawn from a pool of common and custom names, query parameters, JSON request
and response bodies carrying e-mail addresses, phone numbers and ids, cookies, `now`, `interval`, `host`
(about 15 details each). Each rule set is timed over all messages (best of --repeat runs, one core), and
printed with a correctness check beside the figure: the number of details that survive over all messages
and the number of messages dropped, compared with a reference computed once by a plain, unmemoized,
line-by-line transcription of logger-java's HttpRules.apply (``reference_apply`` below). A "floor" figure
(the cheapest possible per-message pass) is printed first, and each figure's ratio to it. The last line is
the results as JSON.

Each set runs on both engines in the same run (``--engine both``, the default): the native one
(``vxcap._rules``, what ``Rules.parse`` returns) and the pure-Python twin (``pure=True``), their runs
alternated so that a busy machine slows both alike, and the native/pure ratio printed. Both the wall-clock
and the CPU-time figure (``time.process_time``: this process's one core, whatever else the machine runs)
are kept; each is the best of --repeat runs. The check also requires both engines' outputs to be equal.
"""
from __future__ import annotations

import argparse
import gc
import json
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from vxcap.rules import Rules  # noqa: E402
from vxcap.rules_select import NativeRules  # noqa: E402

CUSTOM = r"""
# a realistic custom set: strict-ish, but keep ids and auth scheme, mask tokens, drop health checks
include standard
/request_url/ stop_if_found /\/healthz|\/metrics/
/request_header:authorization/ replace /(Bearer|Basic) .*/, /$1 ***/
/request_header:(x-api-key|x-amz-security-token)/ remove
/response_header:(date|server|x-amz-[a-z-]+)/ remove
/response_body/ replace /"(?<field>password|secret|token)"\s*:\s*"[^"]*"/, /"${field}":"***"/
/request_param:(page|limit|sort)/ remove_unless /\d{1,4}|asc|desc|[a-z_]+/
/request_body|response_body/ remove_if_found /^\s*$/
"""

RULE_SETS = {
    "strict": "include strict",
    "standard": "include standard",
    "debug": "include debug",
    "custom": CUSTOM,
}

HEADERS_REQ = ["user-agent", "accept", "accept-encoding", "content-type", "authorization", "x-request-id",
               "x-forwarded-for", "x-amzn-trace-id", "cookie", "x-api-key", "accept-language", "origin",
               "x-tenant-id", "x-client-version", "if-none-match", "referer"]
HEADERS_RESP = ["content-type", "content-length", "date", "server", "x-request-id", "cache-control", "etag",
                "set-cookie", "x-amz-apigw-id", "vary", "x-ratelimit-remaining", "strict-transport-security"]
HOSTS = ["api.shop.example.com", "auth.example.com:8443", "10.0.3.17:8080", "orders.internal"]
PATHS = ["/v1/users/{id}", "/v1/orders/{id}/items", "/api/cart;jsessionid={id}", "/healthz", "/v2/search",
         "/v1/payments/{id}/refunds", "/graphql", "/metrics"]
NAMES = ["ada", "grace", "linus", "ken", "barbara", "dennis"]


def make_message(rng: random.Random) -> list[list[str]]:
    ident = str(rng.randrange(10**5, 10**9))
    path = rng.choice(PATHS).replace("{id}", ident)
    query = "&".join(f"{k}={rng.choice(['2', 'asc', 'x y', ident])}" for k in rng.sample(["page", "limit", "sort", "q"], rng.randint(0, 3)))
    # As vxcap builds it (SPEC section 2): no query string in the URL, its parameters as request_param:*.
    url = f"http://{rng.choice(HOSTS)}{path}"
    name = rng.choice(NAMES)
    email = f"{name}.{rng.randrange(1000)}@{rng.choice(['example.com', 'mail.co.uk', 'corp.io'])}"
    msg = [["request_method", rng.choice(["GET", "GET", "POST", "PUT", "DELETE"])], ["request_url", url],
           ["response_code", rng.choice(["200", "200", "201", "204", "404", "500"])]]
    for h in rng.sample(HEADERS_REQ, rng.randint(3, 6)):
        value = {"authorization": f"Bearer {ident}abc.def", "cookie": f"sid={ident}; theme=dark",
                 "user-agent": "Mozilla/5.0 (X11; Linux x86_64) curl/8.5.0"}.get(h, f"v-{rng.randrange(1000)}")
        msg.append([f"request_header:{h}", value])
    if query:
        for part in query.split("&"):
            k, _, v = part.partition("=")
            msg.append([f"request_param:{k}", v])
    if rng.random() < 0.5:
        body = json.dumps({"email": email, "name": name, "phone": f"555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}",
                           "password": "hunter2", "amount": rng.randrange(10**6)})
        msg.append(["request_body", body])
    for h in rng.sample(HEADERS_RESP, rng.randint(3, 5)):
        msg.append([f"response_header:{h}", "application/json" if h == "content-type" else f"r-{rng.randrange(10**4)}"])
    items = [{"id": rng.randrange(10**9), "owner": email, "token": ident, "card": "4111 1111 1111 1111"}
             for _ in range(rng.randint(0, 3))]
    msg.append(["response_body", json.dumps({"items": items, "total": len(items)})])
    msg += [["now", str(1764500000000 + rng.randrange(10**7))], ["interval", str(rng.randint(1, 900))],
            ["host", "ip-10-0-1-7"]]
    return msg


def reference_apply(rules: Rules, details: list[list[str]]) -> list[list[str]] | None:
    """logger-java's HttpRules.apply line by line, with no memo and no fused passes (stop rules aside:
    the custom set's only stop rule is a stop_if_found)."""
    by = rules._by  # noqa: SLF001 - the benchmark checks the fast path against the parsed rules themselves
    details = [list(d) for d in details]
    for r in by.get("stop", []):
        if any(r.scope.fullmatch(d[0]) for d in details):
            return None
    for r in by.get("stop_if_found", []):
        if any(r.scope.fullmatch(d[0]) and r.regex.search(d[1]) for d in details):
            return None
    for verb, keep in (("remove", None), ("remove_unless_found", "search"), ("remove_if_found", "search"),
                       ("remove_unless", "fullmatch"), ("remove_if", "fullmatch")):
        for r in by.get(verb, []):
            if keep is None:
                details = [d for d in details if not r.scope.fullmatch(d[0])]
                continue
            hit = getattr(r.regex, keep)
            unless = "unless" in verb
            details = [d for d in details if not (r.scope.fullmatch(d[0]) and ((hit(d[1]) is None) if unless else (hit(d[1]) is not None)))]
    if not details:
        return None
    for r in by.get("replace", []):
        for d in details:
            if r.scope.fullmatch(d[0]):
                d[1] = r.repl(d[1])
    details = [d for d in details if d[1] != ""]
    return details or None


def summary(results: list[list[list[str]] | None]) -> tuple[int, int]:
    return sum(len(r) for r in results if r is not None), sum(r is None for r in results)


def _time(rules_text: str, pure: bool, messages: list[list[list[str]]]) -> tuple[float, float, list]:
    """One timed pass over every message on a freshly parsed engine (a fresh memo: the figure includes
    warming it up): wall seconds, CPU seconds, the results."""
    rules = Rules.parse(rules_text, pure=pure)
    apply = rules.apply
    gc.collect()  # the previous run's garbage is not this run's to collect
    w0, c0 = time.perf_counter(), time.process_time()
    results = [apply(m) for m in messages]
    return time.perf_counter() - w0, time.process_time() - c0, results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--engine", choices=["both", "native", "pure"], default="both")
    args = ap.parse_args(argv)
    engines = {"both": ["native", "pure"], "native": ["native"], "pure": ["pure"]}[args.engine]
    if "native" in engines and not isinstance(Rules.parse("", pure=False), NativeRules):
        print("the native engine is not built (python setup.py build_ext --inplace) or VXCAP_PURE_PYTHON is set",
              file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    messages = [make_message(rng) for _ in range(args.n)]
    details = sum(map(len, messages))
    print(f"{args.n} messages, {details / args.n:.1f} details each on average")
    # The floor: the least any pure-Python engine must do per message (visit it, drop empty values).
    # Shared or slow machines move every figure; the ratio to the floor is what carries across machines.
    floor = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        [[d for d in m if d[1]] for m in messages]
        floor = min(floor, time.perf_counter() - t0)
    print(f"{'floor':<9} {args.n / floor:>12,.0f} messages/s   (a list comprehension dropping empty values)")
    out: dict[str, dict] = {"floor": {"messages_per_s": round(args.n / floor)}}
    ok_all = True
    for name, text in RULE_SETS.items():
        expected = summary([reference_apply(Rules.parse(text, pure=True), m) for m in messages])
        wall = {e: float("inf") for e in engines}
        cpu = dict(wall)
        results: dict[str, list] = {}
        for _ in range(args.repeat):
            for engine in engines:  # alternated: a burst of load elsewhere hits both engines alike
                w, c, results[engine] = _time(text, engine == "pure", messages)
                wall[engine], cpu[engine] = min(wall[engine], w), min(cpu[engine], c)
        got = {e: summary(r) for e, r in results.items()}
        same = len(engines) == 1 or results["native"] == results["pure"]
        ok = same and all(g == expected for g in got.values())
        ok_all &= ok
        del results
        row: dict[str, float | int | bool] = {}
        wall_col, cpu_col = [], []
        for engine in engines:
            rate, rate_cpu = args.n / wall[engine], args.n / cpu[engine]
            wall_col.append(f"{engine} {rate:>9,.0f}")
            cpu_col.append(f"{rate_cpu:>9,.0f}")
            row[f"{engine}_messages_per_s"] = round(rate)
            row[f"{engine}_cpu_messages_per_s"] = round(rate_cpu)
            row[f"{engine}_of_floor"] = round(floor / wall[engine], 3)
        if len(engines) == 2:
            ratio, ratio_cpu = wall["pure"] / wall["native"], cpu["pure"] / cpu["native"]
            wall_col.append(f"x{ratio:.2f}")
            cpu_col.append(f"x{ratio_cpu:.2f}")
            row["native_over_pure"] = round(ratio, 2)
            row["native_over_pure_cpu"] = round(ratio_cpu, 2)
        g = got[engines[0]]
        print(f"{name:<9} {'  '.join(wall_col)} messages/s  (cpu {' '.join(cpu_col)}; "
              f"{floor / wall[engines[0]]:4.0%} of floor)  out {g[0]:,}/{g[1]:,} ref {expected[0]:,}/{expected[1]:,}"
              f"{'' if len(engines) == 1 else ' native==pure'} {'OK' if ok else 'MISMATCH'}")
        row["messages_per_s"] = row[f"{engines[0]}_messages_per_s"]  # what Rules.parse gives (earlier runs' key)
        row.update({"details_out": g[0], "dropped": g[1], "correct": ok})
        out[name] = row
    print(json.dumps({"bench": "rules", "n": args.n, "details_per_message": round(details / args.n, 2),
                      "engines": engines, "results": out}))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
