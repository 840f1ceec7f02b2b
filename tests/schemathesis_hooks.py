"""Schemathesis hooks for the run over Corral's OpenAPI document (see schemathesis.toml)."""

from __future__ import annotations

import ast
import threading
from typing import Any

import schemathesis
from pydantic import TypeAdapter, ValidationError
from schemathesis import Case
from schemathesis.engine import observations
from schemathesis.hooks import HookContext

from app.schemas.node import LibvirtUri

# CPython 3.11 (3.11.7 here) keeps one AST-constructor recursion counter per interpreter: when a thread
# switch lands inside one worker's ast.parse (a finalizer run by the garbage collector) and the other worker
# parses too, one of them fails with SystemError "AST constructor recursion depth mismatch", which
# schemathesis reports as a Runtime Error. Hypothesis parses in several places: a strategy's lambda
# description, filter rewriting, and the constants of every local module on a first run without its
# .hypothesis cache (a clean clone), so every parse in this process takes turns.
_parse = ast.parse
_parse_lock = threading.RLock()


def _parse_one_at_a_time(*args: Any, **kwargs: Any) -> ast.AST:
    with _parse_lock:
        return _parse(*args, **kwargs)


ast.parse = _parse_one_at_a_time  # type: ignore[assignment]
_LIBVIRT_URI = TypeAdapter(LibvirtUri)

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
    _keep_nodes_off_real_hypervisors(case)
    _name_put_objects_after_their_path(case)
    return case


def _keep_nodes_off_real_hypervisors(case: Case) -> None:
    """The served worker connects to every node it is given: a generated qemu:// URI (qemu:///system,
    qemu+unix://x/system) reaches this machine's libvirtd, and fuzzed instances would boot there as real
    guests. Every URI Corral would accept becomes the test driver's; invalid ones stay, to be refused."""
    spec = case.body.get("spec") if isinstance(case.body, dict) else None
    if not case.path.startswith("/v1/nodes") or not isinstance(spec, dict):
        return
    for field in ("uri", "migrationUri"):
        uri = spec.get(field)
        if isinstance(uri, str) and not uri.startswith("test:///"):
            try:
                _LIBVIRT_URI.validate_python(uri)
            except ValidationError:
                continue
            spec[field] = "test:///default"


def _name_put_objects_after_their_path(case: Case) -> None:
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
