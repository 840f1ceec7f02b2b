"""Guest agent operations: requests (bounded, validated) and results."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from app.schemas.common import BASE64_PATTERN, ApiModel, at_most_one_of

MAX_ARGS = 64
MAX_ARG = 4096
MAX_STDIN = 1 << 20
MAX_OUTPUT = 1 << 20  # per stream; more is cut and flagged
MAX_FILE = 4 << 20
OperationKind = Literal["exec", "file-read", "file-write", "freeze", "thaw"]


NO_NUL = "^[^\\u0000]*$"
ABSOLUTE_PATH = "^/[^\\u0000]*$"


def _no_nul(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL")
    return value


def _path(value: str) -> str:
    _no_nul(value, "path")
    if not value.startswith("/"):
        raise ValueError("path must be absolute")
    return value


def decode_base64(value: str, limit: int, what: str) -> bytes:
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64") from exc
    if len(data) > limit:
        raise ValueError(f"{what} is larger than {limit} bytes")
    return data


class ExecRequest(ApiModel):
    model_config = at_most_one_of("stdin", "stdinBase64")

    command: list[str] = Field(
        min_length=1,
        max_length=MAX_ARGS,
        description="argv; argv[0] is the program.",
        json_schema_extra={
            "items": {"type": "string", "maxLength": MAX_ARG, "pattern": NO_NUL},
            "prefixItems": [{"type": "string", "minLength": 1}],
        },
    )
    stdin: str | None = Field(default=None, max_length=MAX_STDIN, description="Text for standard input.")
    stdin_base64: str | None = Field(
        default=None,
        max_length=MAX_STDIN * 2,
        description="Binary stdin.",
        json_schema_extra={"pattern": BASE64_PATTERN},
    )
    timeout_seconds: int = Field(default=30, ge=1, le=300)

    @field_validator("command")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        for arg in value:
            if len(arg) > MAX_ARG:
                raise ValueError(f"each argument is at most {MAX_ARG} characters")
            _no_nul(arg, "arguments")
        if not value[0]:
            raise ValueError("argv[0] must name a program")
        return value

    @model_validator(mode="after")
    def _one_stdin(self) -> ExecRequest:
        if self.stdin is not None and self.stdin_base64 is not None:
            raise ValueError("give stdin or stdinBase64, not both")
        if self.stdin_base64 is not None:
            decode_base64(self.stdin_base64, MAX_STDIN, "stdinBase64")
        return self

    def stdin_bytes(self) -> bytes | None:
        if self.stdin_base64 is not None:
            return decode_base64(self.stdin_base64, MAX_STDIN, "stdinBase64")
        return self.stdin.encode() if self.stdin is not None else None


class FileReadRequest(ApiModel):
    path: str = Field(min_length=1, max_length=4096, json_schema_extra={"pattern": ABSOLUTE_PATH})
    max_bytes: int = Field(default=MAX_FILE, ge=1, le=MAX_FILE)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _path(value)


class FileWriteRequest(ApiModel):
    path: str = Field(min_length=1, max_length=4096, json_schema_extra={"pattern": ABSOLUTE_PATH})
    content_base64: str = Field(
        max_length=MAX_FILE * 2,
        description="The file's bytes in base64.",
        json_schema_extra={"pattern": BASE64_PATTERN},
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _path(value)

    @field_validator("content_base64")
    @classmethod
    def _content(cls, value: str) -> str:
        decode_base64(value, MAX_FILE, "contentBase64")
        return value


def audit_view(request: dict[str, Any]) -> dict[str, Any]:
    """What the record keeps of a request: the command and paths, not stdin or file contents."""
    kept = {k: v for k, v in request.items() if k not in ("stdin", "stdinBase64", "contentBase64")}
    for key in ("stdin", "stdinBase64", "contentBase64"):
        if request.get(key) is not None:
            kept[f"{key}Length"] = len(request[key])
    return kept


class Operation(ApiModel):
    """A guest operation and its outcome; also the audit record of who ran what, when."""

    id: str
    kind: OperationKind
    requested_by: str
    state: Literal["Pending", "Succeeded", "Failed"]
    request: dict[str, Any]
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


class OperationResult(ApiModel):
    id: str = Field(description="The operation's id, as listed in the instance's guest operations.")


class ExecResult(OperationResult):
    exit_code: int | None = Field(description="None when the program was killed by a signal or timed out.")
    signal: int | None = None
    timed_out: bool
    killed: bool | None = Field(default=None, description="After a timeout: whether the program was killed.")
    stdout: str = Field(description="Standard output as UTF-8 text (undecodable bytes replaced).")
    stdout_base64: str = Field(description="Standard output's exact bytes.")
    stdout_truncated: bool = Field(description=f"Cut at {MAX_OUTPUT} bytes.")
    stderr: str
    stderr_base64: str
    stderr_truncated: bool


class FileReadResult(OperationResult):
    path: str
    size: int
    content_base64: str


class FileWriteResult(OperationResult):
    path: str
    size: int = Field(description="Bytes written.")


class FreezeResult(OperationResult):
    filesystems: int | None = Field(description="Filesystems frozen or thawed, as the agent counts them.")
    fs_freeze_status: Literal["frozen", "thawed", "unknown"]


OPERATION_RESULTS: dict[OperationKind, type[OperationResult]] = {
    "exec": ExecResult,
    "file-read": FileReadResult,
    "file-write": FileWriteResult,
    "freeze": FreezeResult,
    "thaw": FreezeResult,
}


class OperationList(ApiModel):
    items: list[Operation]
