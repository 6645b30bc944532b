"""The rules parser and engine: any text either parses or raises RulesError with a message; parsed rules
applied to a message return a list of [str, str] pairs or None, never raise."""
from __future__ import annotations

import random

from vxcap.rules import Rules, RulesError

MAX_LEN = 2048
HANG_SECONDS = 5.0
SEEDS = [s.encode() for s in (
    "include strict", "include debug\n/request_header:x-.*/ remove",
    "/request_url/ replace /([^\\?;]+).*/, /$1/\n/response_body/ remove_if /.*secret.*/",
    "sample 50\nallow_http_url\nskip_compression\n/request_body/ remove_unless_found /\\d{3}/",
    "copy_session_field /(?i)sess.*/\n/request_param:(a|b)/ stop_if_found /x{2,5}+/",
    "# comment\ninclude standard\n/response_header:(?!content-type).*/ remove",
    "/request_body/ replace /(?<user>\\w+)@(\\w+)/, /${user}@x/\n/request_url/ stop_unless /\\Qa.b\\E/",
    "/x/ replace /[\\p{Alpha}&&[^a]]/, /\\$/",
)]
MESSAGE = [["request_method", "POST"], ["request_url", "http://h/a?x=1;y"], ["request_param:a", "xxx"],
           ["request_header:cookie", "sess=1; other=2"], ["request_header:x-y", "v"],
           ["request_body", "bob@example.com 123-456-789 secret"], ["response_code", "200"],
           ["response_header:content-type", "text/plain"], ["response_body", "\u00e9\ufffd ok"],
           ["now", "1"], ["host", "h"]]


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        rules = Rules.parse(text, rng=random.Random(0))
    except RulesError as e:
        assert str(e), "RulesError without a message"
        return
    out = rules.apply([list(p) for p in MESSAGE])
    if out is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in out), out
    for k, v in rules.session_fields(["sess=1; a=b", "=;;x"]):
        assert isinstance(k, str) and isinstance(v, str)
