"""Objects as the API shows them, validated against their model and serialized (camelCase, no nulls,
defaults filled, exactly as FastAPI does for a response model) once per resourceVersion and reused until
the object changes: a list of 100 unchanged objects costs 100 lookups, not 100 decodes and validations."""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import cache
from typing import Any, get_args

import orjson
from pydantic import TypeAdapter

from app.kinds import Kind
from app.schemas.common import JsonObject

CAPACITY = 20_000  # objects; a few KiB each


@cache
def _item_adapter(kind: Kind[Any]) -> TypeAdapter[Any]:
    (item,) = get_args(kind.list_model.model_fields["items"].annotation)
    return TypeAdapter(item)


class ShownObjects:
    def __init__(self) -> None:
        self._encoded: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, kind: Kind[Any], keys: list[tuple[str, str]]) -> dict[str, bytes]:
        """The encodings held for these (uid, resourceVersion) keys, by uid."""
        found: dict[str, bytes] = {}
        with self._lock:
            for uid, version in keys:
                encoded = self._encoded.get((kind.kind, uid, version))
                if encoded is not None:
                    self._encoded.move_to_end((kind.kind, uid, version))
                    found[uid] = encoded
        return found

    def encoded(self, kind: Kind[Any], obj: JsonObject) -> bytes:
        """The object's encoding: the one held for its resourceVersion, or a new one."""
        meta = obj["metadata"]
        found = self.known(kind, [(str(meta["uid"]), str(meta["resourceVersion"]))])
        return next(iter(found.values())) if found else self.encode(kind, obj)

    def encode(self, kind: Kind[Any], obj: JsonObject) -> bytes:
        adapter = _item_adapter(kind)
        encoded = adapter.dump_json(adapter.validate_python(obj), by_alias=True, exclude_none=True)
        if kind.present is None:  # values derived from secrets are not kept in memory
            meta = obj["metadata"]
            with self._lock:
                self._encoded[(kind.kind, str(meta["uid"]), str(meta["resourceVersion"]))] = encoded
                if len(self._encoded) > CAPACITY:
                    self._encoded.popitem(last=False)
        return encoded


def list_json(envelope: JsonObject, items: list[bytes]) -> bytes:
    """A list answer: the envelope (apiVersion, kind, metadata without nulls), then the encoded items."""
    shown = {**envelope, "metadata": {k: v for k, v in envelope["metadata"].items() if v is not None}}
    return orjson.dumps(shown)[:-1] + b',"items":[' + b",".join(items) + b"]}"
