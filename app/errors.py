"""Domain errors that carry their HTTP status; rendered as RFC 9457 problem+json by the API."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


@dataclass
class CorralError(Exception):
    detail: str
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    status = 500
    title = "Internal Server Error"
    reason = "InternalError"

    def __str__(self) -> str:
        return self.detail


class BadRequest(CorralError):
    status = 400
    title = "Bad Request"
    reason = "BadRequest"


class Unauthorized(CorralError):
    status = 401
    title = "Unauthorized"
    reason = "Unauthorized"


class Forbidden(CorralError):
    status = 403
    title = "Forbidden"
    reason = "Forbidden"


class NotFound(CorralError):
    status = 404
    title = "Not Found"
    reason = "NotFound"


class Conflict(CorralError):
    status = 409
    title = "Conflict"
    reason = "Conflict"


class AlreadyExists(Conflict):
    reason = "AlreadyExists"


class StaleResourceVersion(Conflict):
    reason = "StaleResourceVersion"


class Gone(CorralError):
    status = 410
    title = "Gone"
    reason = "Expired"


class UnsupportedMediaType(CorralError):
    status = 415
    title = "Unsupported Media Type"
    reason = "UnsupportedMediaType"


class Invalid(CorralError):
    status = 422
    title = "Unprocessable Content"
    reason = "Invalid"


class Unavailable(CorralError):
    status = 503
    title = "Service Unavailable"
    reason = "ServiceUnavailable"


class ContentTooLarge(CorralError):
    status = 413
    title = "Content Too Large"
    reason = "ContentTooLarge"


class BadGateway(CorralError):
    """Something behind Corral (libvirt, the guest agent) failed or answered nonsense."""

    status = 502
    title = "Bad Gateway"
    reason = "UpstreamFailed"


class GatewayTimeout(CorralError):
    status = 504
    title = "Gateway Timeout"
    reason = "UpstreamTimeout"


BY_STATUS: dict[int, type[CorralError]] = {
    e.status: e for e in (BadRequest, Conflict, ContentTooLarge, Invalid, BadGateway, GatewayTimeout)
}
