"""Merge patch (RFC 7386) and field paths in problem answers."""

from __future__ import annotations

from app.services.validation import field_path, merge_patch


def test_merge_patch_rfc7386_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_field_paths() -> None:
    assert (
        field_path(("spec", "domain", "devices", "gpus", 0, "deviceName"))
        == "spec.domain.devices.gpus[0].deviceName"
    )
    assert field_path(()) == ""
