"""What the client raises: one class per status a caller may want to catch, all ControlPlaneError."""

from __future__ import annotations


class ControlPlaneError(Exception):
    """A call the sidecar refused, or could not be reached for; `code` is the status name (schema.StatusName)."""

    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ScorerNotFoundError(ControlPlaneError, LookupError):
    code = "NOT_FOUND"


class ScorerExistsError(ControlPlaneError):
    code = "ALREADY_EXISTS"


class TooManyActiveError(ControlPlaneError):
    code = "FAILED_PRECONDITION"


class InvalidScorerError(ControlPlaneError, ValueError):
    code = "INVALID_ARGUMENT"


class PermissionDeniedError(ControlPlaneError):
    code = "PERMISSION_DENIED"


class UnauthenticatedError(ControlPlaneError):
    code = "UNAUTHENTICATED"


class UnavailableError(ControlPlaneError, ConnectionError):
    code = "UNAVAILABLE"


_BY_CODE: dict[str, type[ControlPlaneError]] = {
    cls.code: cls
    for cls in (
        ScorerNotFoundError,
        ScorerExistsError,
        TooManyActiveError,
        InvalidScorerError,
        PermissionDeniedError,
        UnauthenticatedError,
        UnavailableError,
    )
}


def error_for(code: str, message: str) -> ControlPlaneError:
    """The most specific error class for a status name; ControlPlaneError for the others."""
    return _BY_CODE.get(code, ControlPlaneError)(message, code)
