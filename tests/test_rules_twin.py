"""The native rules engine (vxcap._rules) and its pure-Python twin (vxcap.rules) agree.

Every test of test_rules.py runs here once per engine (an autouse fixture selects the engine through
VXCAP_PURE_PYTHON, which ``Rules.parse`` reads); then the two engines are run side by side on the reference
vectors, on the benchmark's realistic messages and on random rule sets and messages (hypothesis), comparing
results, which input pairs the results share, and counters.
"""
from __future__ import annotations

import copy
import json
import pathlib
import random
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_rules as spec
from vxcap import rules as rules_mod
from vxcap.rules import Rules
from vxcap.rules_select import NATIVE_AVAILABLE, NativeRules, rules_class

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_rules  # noqa: E402

ENGINES = ["native", "pure"]

# The whole behaviour suite, collected again in this module and run under the `engine` fixture below.
globals().update({name: getattr(spec, name) for name in dir(spec) if name.startswith("test_")})


@pytest.fixture(autouse=True, params=ENGINES)
def engine(request, monkeypatch):
    """Every test here runs once per engine; ``Rules.parse`` then returns that engine."""
    if request.param == "native" and not NATIVE_AVAILABLE:
        pytest.skip("vxcap._rules not built")
    monkeypatch.setenv("VXCAP_PURE_PYTHON", "1" if request.param == "pure" else "0")
    return request.param


def both(text, *, seed: int = 0) -> tuple[Rules, Rules]:
    """The same rules text parsed for each engine, with identically seeded generators (for `sample`)."""
    if not NATIVE_AVAILABLE:
        pytest.skip("vxcap._rules not built")
    # NativeRules.parse builds a NativeRules whatever VXCAP_PURE_PYTHON says (subclasses get themselves).
    native = NativeRules.parse(text, rng=random.Random(seed))
    pure = Rules.parse(text, rng=random.Random(seed), pure=True)
    assert type(native) is NativeRules and type(pure) is Rules
    return native, pure


def shape(result, message) -> object:
    """A result, plus which of its pairs are the very pair objects of the input (the twin shares them)."""
    if result is None:
        return None
    ids = {id(d): i for i, d in enumerate(message)}
    return [(list(d), ids.get(id(d))) for d in result]


def outcome(method, arg) -> tuple:
    try:
        return ("returned", method(arg))
    except Exception as exc:  # noqa: BLE001 - the point is that both raise the same thing
        return (type(exc), str(exc))


def run_both(text, messages, *, seed: int = 0) -> None:
    native, pure = both(text, seed=seed)
    original = copy.deepcopy(messages)
    for m in messages:
        assert shape(native.apply(m), m) == shape(pure.apply(m), m), (text, m)
    assert messages == original  # neither engine modified its input
    assert native.counters() == pure.counters()


# ---------------------------------------------------------------------------------------------------- selection
def test_selection(engine, monkeypatch):
    expected = Rules if engine == "pure" else NativeRules
    assert type(Rules.parse("include strict")) is expected
    assert type(Rules.from_env({})) is expected
    assert type(Rules.parse("include strict", pure=True)) is Rules
    assert type(Rules.from_env({}, pure=True)) is Rules
    monkeypatch.setenv("VXCAP_PURE_PYTHON", "1")
    assert type(Rules.parse("include strict")) is Rules
    assert rules_class(pure=True) is Rules
    with pytest.raises(TypeError):
        rules_class(pure="yes")  # type: ignore[arg-type]


def test_native_rules_is_a_rules(engine):
    native, pure = both("include debug\nsample 40\nskip_compression")
    assert isinstance(native, Rules)
    for attr in ("text", "size", "sample", "allow_http_url", "skip_compression", "skip_submission"):
        assert getattr(native, attr) == getattr(pure, attr)


# ---------------------------------------------------------------------------------------------------- side by side
@pytest.mark.parametrize("case", [c for c in spec.CASES if "error" not in c], ids=lambda c: c["name"])
def test_vector_side_by_side(case, engine):
    run_both(case["rules"], [case["in"], copy.deepcopy(case["in"])])


@pytest.mark.parametrize("name", list(bench_rules.RULE_SETS))
def test_benchmark_messages_side_by_side(name, engine):
    rng = random.Random(11)
    messages = [bench_rules.make_message(rng) for _ in range(1500)]
    run_both(bench_rules.RULE_SETS[name], messages)


def test_sample_side_by_side(engine):
    run_both("sample 37\n/k/ remove_if /x/", [[["k", "x"], ["j", "y"]] for _ in range(500)], seed=5)
    run_both("sample 50\n/k/ stop_unless /v/", [[["k", "v" if i % 3 else "w"]] for i in range(300)], seed=9)


def test_sequences_other_than_lists(engine):
    # Tuples as messages and as pairs: the twin indexes and iterates them, so does the engine.
    msg = (("request_url", "http://h/p?q=1"), ("request_header:cookie", "a=1"), ("k", ""), ("request_body", "b"))
    for text in ("include strict", "include debug", "/k/ stop_if /x*/", "/request_body/ replace /b/, /c/"):
        native, pure = both(text)
        assert native.apply(msg) == pure.apply(msg)


@pytest.mark.parametrize("message", [
    [["k"]],  # a pair without a value
    [["k", 1]],  # a value a regex cannot read
    [[1, "v"]],  # a key a regex cannot read
    [[["unhashable"], "v"]],
])
@pytest.mark.parametrize("text", ["include strict", "/k/ replace /v/, /w/", "/k/ stop_if_found /x/", "include debug"])
def test_malformed_details_raise_alike(text, message, engine):
    native, pure = both(text)
    assert outcome(native.apply, message) == outcome(pure.apply, message)


def test_memo_reset_in_the_middle_of_a_message(engine, monkeypatch):
    # A detail whose value decides (request_url under strict) followed by a key that empties the memo.
    monkeypatch.setattr(rules_mod, "MEMO_LIMIT", 4)
    r = Rules.parse("include strict")
    for i in range(20):
        out = r.apply([["request_url", "http://h/p?q"], ["request_param:p%d" % i, "x"], ["response_code", "200"]])
        assert out == [["request_url", "http://h/p"], ["response_code", "200"]]
    assert len(r._codes) <= 4 and r.counters()["key_memo_resets"] > 0


def test_memo_resets_count_alike(engine, monkeypatch):
    monkeypatch.setattr(rules_mod, "MEMO_LIMIT", 3)
    # Distinct keys first in each message (the order the twin survives), stop and detail memos both used.
    messages = [[["p%d" % i, "x"], ["k", "v"], ["request_url", "http://h/?a"]] for i in range(40)]
    run_both("include strict\n/k/ stop_if /stop/", messages)


def test_session_fields_side_by_side(engine):
    headers = ['SID=abc; theme=dark; User_Id="42"', "user_x=; junk; user_y = 7", '"=";  = 1;a="";b=""x"', "", ";;"]
    for text in ("copy_session_field /sid|user_.*/", "include debug", "copy_session_field /.*/\ncopy_session_field /sid/",
                 "include strict"):
        native, pure = both(text)
        for h in [headers, headers[:1], [], iter(headers)]:
            hs = list(h)
            assert native.session_fields(hs) == pure.session_fields(hs)
        for bad in ([b"a=1"], [None], ["a=1", 7]):  # not str: the same outcome (an exception) from both
            assert outcome(native.session_fields, bad) == outcome(pure.session_fields, bad)


# ---------------------------------------------------------------------------------------------------- hypothesis
KEYS = ["a", "b", "ab", "k", "request_url", "request_header:x", "request_header:user-agent", "request_body", "é"]
SCOPES = ["a", "a.*", "b|ab", "k", ".*", "request_.*", "request_header:(?!user-agent).*", "request_url", "(?i)K", "é"]
REGEXES = ["x", "x.*", ".*", "()", "[0-9]+", "\\d", "y?", "x*", "^$", "(x)(y)?", "\\?", ";.*", "(?s).+"]
REPLACEMENTS = ["", "Z", "$0", "<$1>", "\\$"]
VALUE_CHARS = "xy09?;\n é"
WITH_VALUE = ["remove_if", "remove_if_found", "remove_unless", "remove_unless_found", "stop_if", "stop_if_found",
              "stop_unless", "stop_unless_found"]


@st.composite
def rule_line(draw) -> str:
    kind = draw(st.sampled_from(["scope", "value", "value", "replace", "replace", "strict", "flag", "session"]))
    scope = draw(st.sampled_from(SCOPES))
    if kind == "scope":
        return f"/{scope}/ {draw(st.sampled_from(['remove', 'stop']))}"
    if kind == "value":
        return f"/{scope}/ {draw(st.sampled_from(WITH_VALUE))} /{draw(st.sampled_from(REGEXES))}/"
    if kind == "replace":
        regex = draw(st.sampled_from(REGEXES))
        repl = draw(st.sampled_from(REPLACEMENTS))  # `$1` without a group: both refuse the text alike
        return f"/{scope}/ replace /{regex}/, /{repl}/"
    if kind == "strict":
        return draw(st.sampled_from(["include strict", "include standard", "/request_url/ replace ~([^\\?;]+).*~, ~$1~"]))
    if kind == "session":
        return f"copy_session_field /{draw(st.sampled_from(['.*', 'a', 'b|x']))}/"
    return draw(st.sampled_from(["allow_http_url", "skip_compression", "sample 60", "# comment"]))


pairs = st.lists(st.tuples(st.sampled_from(KEYS), st.text(VALUE_CHARS, max_size=6)).map(list), max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(rule_line(), max_size=5), messages=st.lists(pairs, min_size=1, max_size=6),
       seed=st.integers(0, 2**16))
def test_random_rules_and_messages_side_by_side(lines, messages, seed, engine):
    if engine == "pure":
        return  # one engine-independent comparison is enough; the fixture's second run would repeat it
    text = "\n".join(lines)
    try:
        Rules.parse(text, pure=True)
    except rules_mod.RulesError as exc:
        with pytest.raises(rules_mod.RulesError) as native_exc:
            NativeRules.parse(text)
        assert str(native_exc.value) == str(exc)
        return
    run_both(text, messages, seed=seed)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(headers=st.lists(st.text("aAbx=; \t\"é1", max_size=20), max_size=4),
       regex=st.sampled_from([".*", "a", "b|x", "(?i)A.*", "é"]))
def test_random_cookies_side_by_side(headers, regex, engine):
    if engine == "pure":
        return
    native, pure = both(f"copy_session_field /{regex}/\ncopy_session_field /a.*/")
    assert native.session_fields(headers) == pure.session_fields(headers)


def test_vectors_file_is_the_shared_one():
    # The vectors above come from the file test_rules.py reads, not a copy.
    shared = pathlib.Path(spec.__file__).resolve().parents[2] / "shared/resurface/rule-vectors.json"
    assert json.loads(shared.read_text())["cases"] == spec.CASES
