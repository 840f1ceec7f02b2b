"""Kubernetes label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`."""

from __future__ import annotations

import re
from collections.abc import Callable

from app.errors import BadRequest, FieldError
from app.schemas.common import LABEL_KEY, check_label_key

Predicate = Callable[[dict[str, str]], bool]
# What parse_selector accepts, as an ECMA-262 pattern for the OpenAPI document (clients, generated tests).
# Whitespace is spelled out: ECMA-262's \s and Python's differ (Python's takes \x1c-\x1f, ECMA's does not).
SPACES = " \t\n\r\f\v"  # for str.strip
_SPACE_CLASS = r" \t\n\r\f\v"  # the same, as regex escapes both engines read alike
_WS = f"[{_SPACE_CLASS}]"
_TOKEN = f"[^{_SPACE_CLASS}!=(),]"
_KEY = LABEL_KEY
_REQUIREMENT = (
    rf"{_WS}*(?:!?{_WS}*{_KEY}|{_KEY}{_WS}*(?:==|=|!=){_WS}*{_TOKEN}*"
    rf"|{_KEY}{_WS}+(?:in|notin){_WS}+\([^()]*\)){_WS}*"
)
SELECTOR_PATTERN = rf"^{_WS}*$|^{_REQUIREMENT}(?:,{_REQUIREMENT})*$"
_SET = re.compile(rf"^{_WS}*({_TOKEN}+){_WS}+(in|notin){_WS}+\(([^()]*)\){_WS}*$")
_EQ = re.compile(rf"^{_WS}*({_TOKEN}+){_WS}*(==|=|!=){_WS}*({_TOKEN}*){_WS}*$")
_EXISTS = re.compile(rf"^{_WS}*(!?){_WS}*({_TOKEN}+){_WS}*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _requirement(text: str) -> Predicate:
    if m := _SET.match(text):
        key, op, values = m[1], m[2], {v.strip(SPACES) for v in m[3].split(",") if v.strip(SPACES)}
        check_label_key(key)
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ.match(text):
        key, op, value = m[1], m[2], m[3]
        check_label_key(key)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS.match(text):
        negate, key = m[1] == "!", m[2]
        check_label_key(key)
        return (lambda labels: key not in labels) if negate else (lambda labels: key in labels)
    raise ValueError(f"cannot parse requirement {text.strip(SPACES)!r}")


def parse_selector(selector: str | None) -> Predicate | None:
    if not selector or not selector.strip(SPACES):
        return None
    try:
        predicates = [_requirement(part) for part in _split(selector)]
    except ValueError as exc:
        raise BadRequest(f"invalid labelSelector: {exc}", [FieldError("labelSelector", str(exc))]) from exc
    return lambda labels: all(p(labels) for p in predicates)
