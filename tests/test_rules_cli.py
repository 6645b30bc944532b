"""`vxcap rules check|apply` as a user runs it: `python -m vxcap rules ...` in a subprocess."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
CASES = json.loads((REPO.parent / "shared/resurface/rule-vectors.json").read_text())["cases"]


def vxcap(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "USAGE_LOGGERS_RULES"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "vxcap", "rules", *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, env=full_env, timeout=60)


def test_every_reference_vector_through_the_command():
    # One `apply` run per distinct rules text, all of that text's messages on its stdin.
    by_rules: dict[str, list[dict]] = {}
    for case in CASES:
        by_rules.setdefault(case["rules"], []).append(case)
    failures = []
    for text, cases in by_rules.items():
        stdin = "".join(json.dumps(c["in"]) + "\n" for c in cases if "error" not in c)
        p = vxcap("apply", "--rules", text, stdin=stdin)
        errors = [c for c in cases if "error" in c]
        if errors:
            if (p.returncode, p.stderr, p.stdout) != (2, errors[0]["error"] + "\n", ""):
                failures.append((text, p.returncode, p.stderr))
            continue
        got = [json.loads(line) for line in p.stdout.splitlines()]
        if p.returncode != 0 or got != [c["out"] for c in cases]:
            failures.append((text, p.returncode, p.stderr, got))
    assert not failures
    assert len(CASES) == 36


def test_check_prints_the_expanded_rules():
    p = vxcap("check", "--rules", "include debug\\n/request_body/ remove  # no bodies")
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout == "allow_http_url\ncopy_session_field /.*/\n/request_body/ remove  # no bodies\n"


def test_check_defaults_to_the_environment_then_to_strict():
    p = vxcap("check", env={"USAGE_LOGGERS_RULES": "sample 25"})
    assert (p.returncode, p.stdout) == (0, "sample 25\n")
    p = vxcap("check")
    assert p.returncode == 0 and p.stdout.splitlines()[0] == "/request_url/ replace /([^\\?;]+).*/, /$1/"


@pytest.mark.parametrize("text,message", [
    ("/*/ stop", "Invalid regex (/*/) in rule: /*/ stop"),
    ("sample 10\nsample 20", "Multiple sample rules"),
    ("what", "Invalid rule: what"),
])
def test_check_errors_exit_2_with_the_exact_text(text, message):
    p = vxcap("check", "--rules", text)
    assert (p.returncode, p.stdout, p.stderr) == (2, "", message + "\n")


def test_apply_writes_null_for_dropped_messages_and_counts():
    stdin = '[["request_header:x","1"]]\n\n[["k","v"]]\n'
    p = vxcap("apply", "--rules", "/request_header:x/ stop", "--counters", stdin=stdin)
    assert p.returncode == 0
    assert p.stdout == 'null\n[["k","v"]]\n'
    assert json.loads(p.stderr)["dropped_stop"] == 1


def test_apply_sample_with_seed_is_reproducible():
    stdin = '[["k","v"]]\n' * 400
    a = vxcap("apply", "--rules", "sample 40", "--seed", "9", stdin=stdin).stdout.splitlines()
    b = vxcap("apply", "--rules", "sample 40", "--seed", "9", stdin=stdin).stdout.splitlines()
    assert a == b and len(a) == 400
    assert 100 < sum(line != "null" for line in a) < 220  # Binomial(400, 0.4): mean 160, sd ~10


def test_apply_refuses_input_that_is_not_a_message():
    p = vxcap("apply", "--rules", "include debug", stdin='[["k","v"]]\n{"k": "v"}\n')
    assert p.returncode == 1
    assert p.stdout == '[["k","v"]]\n'
    assert p.stderr == "vxcap rules apply: line 2: expected a JSON array of [key, value] string pairs\n"
