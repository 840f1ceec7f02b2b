"""Label selectors."""

from __future__ import annotations

import re

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import BadRequest
from app.services.selectors import SELECTOR_PATTERN, parse_selector


@pytest.mark.parametrize(
    ("selector", "labels", "match"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("env in (prod, staging),tier notin (db)", {"env": "prod", "tier": "web"}, True),
        ("env in (prod, staging),tier notin (db)", {"env": "prod", "tier": "db"}, False),
        ("corral.dev/pool=p1", {"corral.dev/pool": "p1"}, True),
    ],
)
def test_selectors(selector: str, labels: dict[str, str], match: bool) -> None:
    predicate = parse_selector(selector)
    assert predicate is not None and predicate(labels) is match


@pytest.mark.parametrize("selector", ["a in (b", "=x", "a=b=c", "bad key!=x", "a in b"])
def test_bad_selectors(selector: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_selector(selector)
    assert info.value.errors[0].field == "labelSelector"


# Pieces selectors are made of, good and bad, so random joins hit both sides of every rule.
_PIECES = [
    "a",
    "B.c_d-e",
    "x" * 63,
    "x" * 64,
    "example.com/",
    "Bad_/",
    "-a",
    "!",
    "=",
    "==",
    "!=",
    " in ",
    " notin ",
]
_PIECES += ["(", ")", "(v1,v2)", ",", " ", "\t", "v", "", "/", "é", "a/b/"]
# Characters one regex engine calls whitespace and another does not (Python: \x1c, \x85; ECMA: \ufeff).
_PIECES += ["\x1c", "\x85", "\ufeff", "\u00a0", "\x0b"]
ECMA = jsonschema_rs.validator_for({"type": "string", "pattern": SELECTOR_PATTERN})


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=8).map("".join))
def test_the_documented_pattern_accepts_what_the_server_accepts(selector: str) -> None:
    try:
        parse_selector(selector)
        accepted = True
    except BadRequest:
        accepted = False
    assert bool(re.match(SELECTOR_PATTERN, selector)) == accepted, selector
    assert ECMA.is_valid(selector) == accepted, selector  # as clients and schemathesis read the pattern
