"""vxcap.rules against logger-java 2.2.1's HttpRules: the shared reference vectors, then each part of the
language (SPEC section 3), the Java-regex translation, and the engine's own guarantees (no mutation,
bounded memo, counters)."""
from __future__ import annotations

import copy
import json
import pathlib
import random
import re

import pytest

from vxcap import rules as rules_mod
from vxcap.rules import DEBUG_RULES, STANDARD_RULES, STRICT_RULES, Rules, RulesError

VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[2] / "shared/resurface/rule-vectors.json").read_text())
CASES = VECTORS["cases"]

MSG = [
    ["request_method", "POST"],
    ["request_url", "http://api.example.com/v1/users;jsessionid=1?email=rob@resurface.io"],
    ["response_code", "200"],
    ["request_header:user-agent", "curl/8.0"],
    ["request_header:cookie", "sid=abc"],
    ["request_header:authorization", "Bearer t0k3n"],
    ["request_param:email", "rob@resurface.io"],
    ["request_body", '{"email":"rob@resurface.io","ssn":"123-45-6789"}'],
    ["response_header:content-type", "application/json"],
    ["response_body", '{"phone":"555-123-4567"}'],
    ["now", "1455908640173"],
]


def run(text: str, msg=None):
    return Rules.parse(text).apply(copy.deepcopy(MSG if msg is None else msg))


def keys(result) -> list[str]:
    return [k for k, _ in result]


def error(text: str) -> str:
    with pytest.raises(RulesError) as info:
        Rules.parse(text)
    return str(info.value)


# ---------------------------------------------------------------------------------------------------- vectors
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_vector(case):
    if "error" in case:
        assert error(case["rules"]) == case["error"]
    else:
        assert Rules.parse(case["rules"]).apply(case["in"]) == case["out"]


def test_vectors_cover_errors_and_outputs():
    assert len(CASES) == 36
    assert sum("error" in c for c in CASES) == 8


# ---------------------------------------------------------------------------------------------------- verbs
def test_remove_scope_must_match_whole_key():
    assert "request_header:cookie" not in keys(run("/request_header:cookie/ remove"))
    assert keys(run("/request_header/ remove")) == keys(MSG)  # a prefix is not a match
    assert keys(run("/request_header:.*/ remove")) == [k for k in keys(MSG) if not k.startswith("request_header:")]


def test_remove_if_and_unless_match_whole_value():
    assert keys(run("/request_header:authorization/ remove_if /t0k3n/")) == keys(MSG)
    assert "request_header:authorization" not in keys(run("/request_header:authorization/ remove_if /Bearer .*/"))
    assert "request_header:authorization" not in keys(run("/request_header:authorization/ remove_unless /t0k3n/"))
    assert keys(run("/request_header:authorization/ remove_unless /Bearer t0k3n/")) == keys(MSG)


def test_remove_found_variants_search():
    assert "request_header:authorization" not in keys(run("/request_header:authorization/ remove_if_found /t0k/"))
    assert keys(run("/request_header:authorization/ remove_unless_found /t0k/")) == keys(MSG)
    assert "request_header:authorization" not in keys(run("/request_header:authorization/ remove_unless_found /xyz/"))


def test_stop_verbs():
    assert run("/request_header:cookie/ stop") is None
    assert run("/request_header:nope/ stop") is not None
    assert run("/request_method/ stop_if /POS/") is not None  # whole value
    assert run("/request_method/ stop_if /POST/") is None
    assert run("/request_method/ stop_if_found /OS/") is None
    assert run("/request_method/ stop_unless /POST/") is not None
    assert run("/request_method/ stop_unless /GET/") is None
    assert run("/request_method/ stop_unless_found /OS/") is not None
    assert run("/request_method/ stop_unless_found /GE/") is None


def test_stop_unless_counts_rule_detail_pairs():
    msg = [["request_header:a", "1"], ["request_header:b", "1"], ["response_code", "200"]]
    # One rule, two matching details: 2 passes != 1 rule, dropped (logger-java's counting).
    assert run("/request_header:.*/ stop_unless /1/", msg) is None
    # Two rules each matched once: kept.
    assert run("/request_header:a/ stop_unless /1/\n/request_header:b/ stop_unless /1/", msg) == msg
    # Two rules, one satisfied twice and the other not at all: 2 == 2, kept, as in logger-java.
    assert run("/request_header:.*/ stop_unless /1/\n/response_code/ stop_unless /404/", msg) == msg
    # The two families are counted apart: the _found count cannot make up for the whole-value one.
    text = "/request_header:.*/ stop_unless_found /1/\n/response_code/ stop_unless /404/"
    assert run(text, msg) is None


def test_replace_searches_and_rewrites_every_match():
    out = dict(run("/request_body/ replace /[0-9]/, /#/"))
    assert out["request_body"] == '{"email":"rob@resurface.io","ssn":"###-##-####"}'


def test_replace_chain_runs_in_rule_order_on_the_rewritten_value():
    msg = [["k", "abc"]]
    assert run("/k/ replace /a/, /b/\n/k/ replace /b/, /c/", msg) == [["k", "ccc"]]
    assert run("/k/ replace /b/, /c/\n/k/ replace /a/, /b/", msg) == [["k", "bcc"]]


def test_order_of_application_is_by_verb_not_by_line():
    msg = [["k", "secret"], ["j", "x"]]
    # replace comes after remove_if, whatever the line order: the remove sees the original value.
    assert run("/k/ replace /secret/, /public/\n/k/ remove_if /secret/", msg) == [["j", "x"]]
    # stop sees the original value too.
    assert run("/k/ replace /secret/, /public/\n/k/ stop_if /secret/", msg) is None


def test_empty_values_removed_and_message_dropped_when_nothing_left():
    assert run("/j/ remove", [["k", ""], ["j", "x"]]) is None
    assert run("/k/ replace /.*/, //", [["k", "abc"]]) is None
    assert run("/k/ replace /^$/, /filled/", [["k", ""]]) == [["k", "filled"]]
    assert Rules.parse("!.*! remove").counters()["dropped_empty"] == 0
    r = Rules.parse("!.*! remove")
    assert r.apply([["a", "b"]]) is None and r.counters()["dropped_empty"] == 1


def test_flag_rules_do_not_touch_details():
    r = Rules.parse("allow_http_url\nskip_compression\nskip_submission")
    assert (r.allow_http_url, r.skip_compression, r.skip_submission, r.sample) == (True, True, True, None)
    assert r.apply(copy.deepcopy(MSG)) == MSG
    d = Rules.parse("include strict")
    assert (d.allow_http_url, d.skip_compression, d.skip_submission) == (False, False, False)


# ---------------------------------------------------------------------------------------------------- sample
def test_sample_keeps_about_n_percent_with_seeded_rng():
    r = Rules.parse("sample 30", rng=random.Random(1234))
    kept = sum(r.apply([["k", "v"]]) is not None for _ in range(20000))
    # Binomial(20000, 0.3): sd ~ 65; 5 sd either way.
    assert abs(kept - 6000) < 325
    c = r.counters()
    assert c["dropped_sample"] == 20000 - kept and c["messages_out"] == kept and c["messages_in"] == 20000


def test_sample_is_reproducible_with_the_same_seed_and_runs_after_stop():
    a = Rules.parse("sample 50", rng=random.Random(7))
    b = Rules.parse("sample 50", rng=random.Random(7))
    assert [a.apply([["k", "v"]]) for _ in range(200)] == [b.apply([["k", "v"]]) for _ in range(200)]
    r = Rules.parse("sample 99\n/k/ stop")
    assert r.apply([["k", "v"]]) is None and r.counters()["dropped_stop"] == 1 and r.counters()["dropped_sample"] == 0


@pytest.mark.parametrize("text,message", [
    ("sample 0", "Invalid sample percent: 0"),
    ("sample 100", "Invalid sample percent: 100"),
    ("sample 007", None),
    ("sample 10\nsample 10", "Multiple sample rules"),
    ("sample -1", "Invalid rule: sample -1"),
    ("sample 1 # one percent", None),
])
def test_sample_bounds(text, message):
    if message is None:
        assert Rules.parse(text).sample in (7, 1)
    else:
        assert error(text) == message


# ---------------------------------------------------------------------------------------------------- syntax
@pytest.mark.parametrize("d", list("~!%/"))
def test_every_delimiter_and_its_escape(d):
    msg = [["a" + d + "b", "x" + d + "y"], ["k", "v"]]
    assert run(f"{d}a\\{d}b{d} remove", msg) == [["k", "v"]]
    assert run(f"{d}.*{d} replace {d}x\\{d}{d}, {d}\\{d}z{d}", msg)[0] == ["a" + d + "b", d + "zy"]


def test_pipe_delimiter_escaped_becomes_alternation():
    # HttpRules unescapes \| to |, which the regex then reads as alternation, not as a literal bar.
    msg = [["a", "1"], ["b", "2"], ["a|b", "3"]]
    assert run("|a\\|b| remove", msg) == [["a|b", "3"]]
    assert run("|a\\\\|b| remove", msg) == [["a", "1"], ["b", "2"]]


def test_unescaped_separator_and_bad_expressions():
    assert error("/a/b/ remove") == "Unescaped separator (/) in rule: /a/b/ remove"
    assert error("|a|b| remove") == "Unescaped separator (|) in rule: |a|b| remove"
    assert error("~~~ remove") == "Unescaped separator (~) in rule: ~~~ remove"
    assert error("/a! remove") == "Invalid expression (/a!) in rule: /a! remove"
    assert error("/x/ replace /a/, /b!") == "Invalid expression (/b!) in rule: /x/ replace /a/, /b!"


def test_error_texts():
    assert error("bogus") == "Invalid rule: bogus"
    assert error("/x/ replace /a/ /b/") == "Invalid rule: /x/ replace /a/ /b/"  # `, ` is required
    assert error("/x/ remove\n/(/ remove") == "Invalid regex (/(/) in rule: /(/ remove"
    assert error("/x/ stop_if_found /+/") == "Invalid regex (/+/) in rule: /x/ stop_if_found /+/"
    assert error("/?/ stop") == "Invalid regex (/?/) in rule: /?/ stop"
    assert error("copy_session_field /[/") == "Invalid regex (/[/) in rule: copy_session_field /[/"
    # The first broken line is reported, then Multiple sample rules only once every line parses.
    assert error("sample 5\nsample 6\nbad") == "Invalid rule: bad"


def test_invalid_replacement_is_refused_at_parse_time():
    # logger-java accepts these and then throws on every message that matches; vxcap refuses them upfront.
    assert error("/k/ replace /(a)/, /$2/") == "Invalid replacement (/$2/) in rule: /k/ replace /(a)/, /$2/"
    assert error("/k/ replace /a/, /$/") == "Invalid replacement (/$/) in rule: /k/ replace /a/, /$/"
    assert error("/k/ replace /a/, /${nope}/").startswith("Invalid replacement (/${nope}/)")
    assert error("/k/ replace /a/, /\\/") == "Invalid replacement (/\\/) in rule: /k/ replace /a/, /\\/"
    assert run("/k/ replace /a/, /x\\\\/", [["k", "a"]]) == [["k", "x\\"]]  # an escaped backslash is fine


def test_comments_blank_lines_whitespace():
    text = "# heading\n\n   \n\t/request_header:cookie/   remove   # why\n  # indented comment\n"
    r = Rules.parse(text)
    assert r.size == 1 and r.text == "/request_header:cookie/   remove   # why"
    assert r.apply(copy.deepcopy(MSG)) == [d for d in MSG if d[0] != "request_header:cookie"]
    assert Rules.parse("# only a comment").size == 0  # not blank, so not the default rules either
    assert Rules.parse("# only a comment").apply([["request_body", "b"]]) == [["request_body", "b"]]


def test_crlf_lines():
    assert Rules.parse("/a/ remove\r\n/b/ remove\r\n").size == 2


def test_includes_whole_line_only():
    assert Rules.parse("include debug").text == DEBUG_RULES.strip()
    assert Rules.parse("include standard").text == STANDARD_RULES.strip()
    assert Rules.parse("include strict").text == STRICT_RULES.strip()
    assert Rules.parse("  include default  ").text == STRICT_RULES.strip()
    assert Rules.parse("include strict\ninclude debug").size == 4
    assert error("include debug # c") == "Invalid rule: include debug # c"
    assert error("include nothing") == "Invalid rule: include nothing"
    assert error("x include debug") == "Invalid rule: x include debug"


@pytest.mark.parametrize("text", [None, "", "  \n\t\n"])
def test_blank_or_none_is_include_default(text):
    assert Rules.parse(text).text == STRICT_RULES.strip()


def test_literal_backslash_n_separates_rules_like_a_newline():
    r = Rules.parse("include debug\\n/request_body/ remove\\nsample 50")
    assert r.size == 4 and r.allow_http_url and r.sample == 50


def test_file_rules(tmp_path):
    f = tmp_path / "rules.txt"
    f.write_text("# from a file\ninclude debug\n/request_body/ remove\n")
    r = Rules.parse(f"file://{f}")
    assert r.allow_http_url and r.size == 3
    assert "request_body" not in keys(r.apply(copy.deepcopy(MSG)))
    assert Rules.parse(f"file://  {f}  ").size == 3  # the path is trimmed, as in Java
    # The literal \n convention belongs to the environment variable, not to files.
    f.write_text("/a\\nb/ remove")
    assert Rules.parse(f"file://{f}").apply([["a\nb", "1"], ["k", "v"]]) == [["k", "v"]]
    missing = tmp_path / "nope"
    assert error(f"file://{missing}") == f"Failed to load rules: {missing}"


def test_from_env():
    assert Rules.from_env({"USAGE_LOGGERS_RULES": "sample 5"}).sample == 5
    assert Rules.from_env({}).text == STRICT_RULES.strip()


# ---------------------------------------------------------------------------------------------------- regex
def test_dot_does_not_match_any_java_line_terminator():
    for term in ["\n", "\r", "\x85", "\u2028", "\u2029"]:
        assert run("/k/ stop_if /a.b/", [["k", f"a{term}b"]]) is not None
    assert run("/k/ stop_if /(?s)a.b/", [["k", "a\rb"]]) is None
    assert run("/k/ replace /a.*/, /X/", [["k", "a1\r\na2"]]) == [["k", "X\r\nX"]]


def test_dollar_and_anchors_follow_java():
    assert run("/k/ stop_if_found /b$/", [["k", "ab\r\n"]]) is None  # before a final \r\n
    assert run("/k/ stop_if_found /b\\z/", [["k", "ab\n"]]) is not None
    assert run("/k/ replace /(?m)^/, />/", [["k", "a\r\nb\n"]]) == [["k", ">a\r\n>b\n"]]


def test_java_replacement_syntax():
    m = [["k", "John Smith"]]
    assert run("/k/ replace /(\\w+) (\\w+)/, /$2, $1/", m) == [["k", "Smith, John"]]
    assert run("/k/ replace /(?<first>\\w+) (?<last>\\w+)/, /${last} ${first}/", m) == [["k", "Smith John"]]
    assert run("/k/ replace /o/, /<$0>/", m) == [["k", "J<o>hn Smith"]]
    assert run("/k/ replace /John/, /\\$1 \\\\ x/", m) == [["k", "$1 \\ x Smith"]]
    # $12 means group 12 only if it exists, else group 1 then "2" (Matcher.appendReplacement).
    assert run("/k/ replace /(J)ohn/, /$12/", m) == [["k", "J2 Smith"]]
    # A group that did not take part gives nothing.
    assert run("/k/ replace /(x)?John/, /[$1]/", m) == [["k", "[] Smith"]]


def test_named_groups_backreferences_and_modern_constructs():
    assert run("/k/ stop_if /(?<w>a+)-\\k<w>/", [["k", "aa-aa"]]) is None
    assert run("/k/ stop_if /(a)-\\1/", [["k", "a-a"]]) is None
    assert run("/k/ stop_if /(?>a+)a/", [["k", "aaa"]]) is not None  # atomic group gives nothing back
    assert run("/k/ stop_if /a++a/", [["k", "aaa"]]) is not None  # possessive
    assert run("/k/ stop_if /(?<=x)a|xa/", [["k", "xa"]]) is None
    assert run("/k/ stop_if /\\Qa.b\\E/", [["k", "a.b"]]) is None
    assert run("/k/ stop_if /\\Qa.b\\E/", [["k", "axb"]]) is not None
    assert run("/k/ stop_if /\\p{Upper}\\p{Digit}+/", [["k", "A12"]]) is None


def test_inline_flags_mid_pattern_and_case_is_ascii_only():
    assert run("/k/ stop_if /a(?i)b|c/", [["k", "C"]]) is None  # the flag reaches later alternatives
    assert run("/k/ stop_if /(a(?i)b|c)d/", [["k", "cD"]]) is not None  # ...but not past its group
    assert run("/k/ stop_if /(?i)é/", [["k", "É"]]) is not None  # Java: ASCII-only without (?u)
    assert run("/k/ stop_if /(?iu)é/", [["k", "É"]]) is None
    assert run("/k/ stop_if /(?x) a b # comment/", [["k", "ab"]]) is None
    assert run("/k/ stop_if /\\d+/", [["k", "\u0661\u0662"]]) is not None  # \d is ASCII in Java


def test_empty_matches_advance_like_java():
    # Java resumes one character after an empty match; Python would match "\r" at the same spot.
    assert run("/k/ replace /\\s*?/, /-/", [["k", "ab\r"]]) == [["k", "-a-b-\r-"]]
    assert run("/k/ replace /x*/, /-/", [["k", "abxd"]]) == [["k", "-a-b--d-"]]


@pytest.mark.parametrize("regex", [
    "\\p{L}+",  # Unicode categories
    "\\p{IsLatin}",
    "[a-z&&[^e]]",  # intersection
    "[a[b]]",  # union
    "\\Gx",
    "(?<=a+)b",  # variable-width lookbehind
    "a{",  # Java: illegal repetition
    "a{,3}",
    "(?#comment)a",  # Python-only syntax
    "(?P<n>a)",
    "(a)\\1(?U)\\p{Alpha}",
])
def test_unsupported_or_invalid_java_regex_is_refused(regex):
    assert error(f"/k/ stop_if_found /{regex}/") == f"Invalid regex (/{regex}/) in rule: /k/ stop_if_found /{regex}/"


def test_strict_url_fast_path_matches_the_general_rewrite():
    rule = Rules.parse("include strict")._by["replace"][0]
    general = rules_mod._rewriter(rule.regex, rules_mod._compile_replacement("$1", rule.regex))
    rng = random.Random(3)
    for _ in range(3000):
        value = "".join(rng.choice("ab?;/\n\r") for _ in range(rng.randint(0, 8)))
        assert rule.repl(value) == general(value), repr(value)


# ---------------------------------------------------------------------------------------------------- engine
def test_apply_never_modifies_its_input():
    original = copy.deepcopy(MSG)
    msg = copy.deepcopy(MSG)
    for text in ("include strict", "include standard", "!.*! remove", "/request_body/ replace /.*/, //"):
        Rules.parse(text).apply(msg)
        assert msg == original


def test_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(rules_mod, "MEMO_LIMIT", 4)
    r = Rules.parse("include strict")
    for i in range(50):
        out = r.apply([["request_param:p%d" % i, "x"], ["request_url", "http://h/p?q"], ["response_code", "200"]])
        assert out == [["request_url", "http://h/p"], ["response_code", "200"]]
    assert len(r._codes) <= 4 and r.counters()["key_memo_resets"] > 0


def test_counters():
    r = Rules.parse("/k/ stop_if /stop/\n/j/ remove")
    r.apply([["k", "stop"]])
    r.apply([["j", "x"]])
    r.apply([["k", "go"], ["j", "x"]])
    assert r.counters() == {"messages_in": 3, "messages_out": 1, "dropped_stop": 1, "dropped_sample": 0,
                            "dropped_empty": 1, "key_memo_resets": 0}


def test_strict_keeps_only_the_allowed_headers():
    msg = [["request_header:user-agent", "a"], ["request_header:user-agentx", "b"], ["request_header:accept", "c"],
           ["response_header:content-type", "d"], ["response_header:content-length", "e"],
           ["response_header:content-typed", "f"], ["response_header:etag", "g"], ["request_param:q", "h"],
           ["session_field:sid", "i"], ["response_code", "200"]]
    # request_header:(?!user-agent).* spares every name that merely starts with user-agent, and
    # response_header:(?!(content-length)|(content-type)).* every name starting with those: logger-java's
    # behaviour, kept as is.
    assert run("include strict", msg) == [["request_header:user-agent", "a"], ["request_header:user-agentx", "b"],
                                          ["response_header:content-type", "d"], ["response_header:content-length", "e"],
                                          ["response_header:content-typed", "f"], ["session_field:sid", "i"],
                                          ["response_code", "200"]]


# ---------------------------------------------------------------------------------------------------- session
def test_session_fields():
    r = Rules.parse("copy_session_field /sid|user_.*/")
    got = r.session_fields(['SID=abc; theme=dark; User_Id="42"', "user_x=; junk; user_y = 7"])
    assert got == [["session_field:sid", "abc"], ["session_field:user_id", "42"], ["session_field:user_y", "7"]]
    assert Rules.parse("copy_session_field /si/").session_fields(["sid=1"]) == []  # whole name
    assert Rules.parse("include strict").session_fields(["sid=1"]) == []
    # Each rule is tried on each cookie, as in Resurface's loggers.
    two = Rules.parse("copy_session_field /.*/\ncopy_session_field /sid/")
    assert two.session_fields(["sid=1"]) == [["session_field:sid", "1"], ["session_field:sid", "1"]]
    assert Rules.parse("include debug").session_fields(["a=1; b=2"]) == [["session_field:a", "1"], ["session_field:b", "2"]]


def test_regex_translation_is_anchored_like_java_parse_regex():
    # parseRegex adds ^ and $ unless present; a lone quantifier is refused before compiling.
    assert rules_mod._compile_java("a|b", whole=True).fullmatch("b")
    assert re.compile(rules_mod._Translator("(?i)x").run()[0], re.ASCII).fullmatch("X")
