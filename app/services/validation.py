"""Turning pydantic validation errors into field-named API errors, and RFC 7386 merge patches."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from app.errors import FieldError, Invalid


def field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a bad mapping key: the key itself names the field
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def field_errors(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        out.append(FieldError(field_path(loc) or "body", message))
    return out


def invalid(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> Invalid:
    errors = field_errors(exc, prefix)
    summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    return Invalid(f"the request is invalid: {summary}", errors)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
