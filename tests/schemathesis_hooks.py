"""Schemathesis hooks for the run over Corral's OpenAPI document (see schemathesis.toml)."""

from __future__ import annotations

import threading
from typing import Any

import schemathesis
from hypothesis.internal import lambda_sources
from schemathesis import Case
from schemathesis.engine import observations
from schemathesis.hooks import HookContext

# CPython 3.11's AST constructor keeps one recursion counter per interpreter, so two workers describing a
# strategy's lambda at once (ast.parse in both) fail with "AST constructor recursion depth mismatch".
_describe = lambda_sources._lambda_description
_describe_lock = threading.Lock()


def _described_one_at_a_time(*args: Any, **kwargs: Any) -> str:
    with _describe_lock:
        return str(_describe(*args, **kwargs))


lambda_sources._lambda_description = _described_one_at_a_time

# Schemathesis reads every answer's strings that start with http(s):// as links and stops the whole run when
# one does not parse (urlsplit's ValueError), as an echoed annotation value like "https://[x" does.
_link_path = observations._same_origin_path


def _link_path_or_none(value: str, origin: tuple[str, str]) -> str | None:
    try:
        return _link_path(value, origin)
    except ValueError:
        return None


observations._same_origin_path = _link_path_or_none


@schemathesis.hook
def map_case(context: HookContext, case: Case) -> Case:
    """A PUT names its object twice, in the path and in metadata.name, and the two must agree: a rule
    between a parameter and the body that JSON Schema cannot state. Positive cases get the path's name."""
    if (
        case.method == "PUT"
        and case.meta is not None
        and case.meta.generation.mode.is_positive
        and isinstance(case.body, dict)
        and isinstance(case.body.get("metadata"), dict)
        and "name" in (case.path_parameters or {})
    ):
        case.body["metadata"]["name"] = case.path_parameters["name"]
        case.body["metadata"].pop("generateName", None)
    return case
