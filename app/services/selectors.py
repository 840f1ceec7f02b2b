"""Kubernetes label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`."""

from __future__ import annotations

import re
from collections.abc import Callable

from app.errors import BadRequest, FieldError
from app.schemas.common import LABEL_KEY, check_label_key

Predicate = Callable[[dict[str, str]], bool]
# What parse_selector accepts, as an ECMA-262 pattern for the OpenAPI document (clients, generated tests).
_KEY = LABEL_KEY
_REQUIREMENT = rf"\s*(?:!?\s*{_KEY}|{_KEY}\s*(?:==|=|!=)\s*[^\s!=(),]*|{_KEY}\s+(?:in|notin)\s+\([^()]*\))\s*"
SELECTOR_PATTERN = rf"^\s*$|^{_REQUIREMENT}(?:,{_REQUIREMENT})*$"
_SET = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^()]*)\)\s*$")
_EQ = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


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
        key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",") if v.strip()}
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
    raise ValueError(f"cannot parse requirement {text.strip()!r}")


def parse_selector(selector: str | None) -> Predicate | None:
    if not selector or not selector.strip():
        return None
    try:
        predicates = [_requirement(part) for part in _split(selector)]
    except ValueError as exc:
        raise BadRequest(f"invalid labelSelector: {exc}", [FieldError("labelSelector", str(exc))]) from exc
    return lambda labels: all(p(labels) for p in predicates)
