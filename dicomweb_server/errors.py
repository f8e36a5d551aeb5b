"""Request-level errors, mapped to HTTP responses in exactly one handler (app.py).

Per-instance STOW problems are *data* (a failed entry with a PS3.18 FailureReason),
never exceptions; see ``dicom.Failure``.
"""

from __future__ import annotations

# The request-state key under which the connection layer (connections.py) leaves the status it
# answered when it cut a request short (408 for a stalled body): the application's log line and
# audit row then say what the client was told.
CONNECTION_STATUS = "connection_status"
# The status recorded for a request whose client went away before any answer (nginx's 499).
CLIENT_CLOSED = 499


class DicomWebError(Exception):
    """A request-level failure with an HTTP status and a readable message."""

    status = 500

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        fields: dict[str, object] | None = None,
    ):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}
        # Extension members of an RFC 9457 problem (the /api routes' errors), e.g. what is missing.
        self.fields = fields or {}


class BadRequest(DicomWebError):
    status = 400


class NotFound(DicomWebError):
    status = 404


class Conflict(DicomWebError):
    """409: the resource is not in a state that allows the request (a lifecycle move refused)."""

    status = 409


class Gone(DicomWebError):
    status = 410


class Unprocessable(DicomWebError):
    """422: well-formed but unusable (an Idempotency-Key reused with another body)."""

    status = 422


class NotAcceptable(DicomWebError):
    status = 406


class PayloadTooLarge(DicomWebError):
    """413: a configured limit was exceeded; the rest of the body is not read."""

    status = 413


class UnsupportedMediaType(DicomWebError):
    status = 415


class ServiceUnavailable(DicomWebError):
    """503: the index or the object store cannot be reached; the client may retry."""

    status = 503

    def __init__(self, message: str, *, retry_after: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class StorageError(Exception):
    """Raised by storage adapters, wrapping the backend's own exceptions."""
