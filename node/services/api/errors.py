"""The errors of the node's local API services; the HTTP adapter maps each class to a status."""

from __future__ import annotations

__all__ = ["ApiError", "Busy", "Conflict", "Forbidden", "JobRunError", "NotFound", "NotImplementedOnLedger",
           "Unavailable"]


class ApiError(Exception):
    """Anything the API refuses on purpose; the adapter maps the class to an HTTP status.

    ::

        ApiError
        ├── NotFound                 no such job / provider / key
        ├── Conflict                 the request contradicts the state (cancel a finished job)
        ├── Busy                     a bound is full (too many running API jobs)
        ├── Forbidden                allowed to nobody on this node (another wallet's account)
        ├── Unavailable              a dependency (bootstrap node, ledger) failed or is absent
        ├── NotImplementedOnLedger   the ledger has no instruction for this (withdraw on dev)
        └── JobRunError              a job could not run (reported on the job, not raised to HTTP)
    """

    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(ApiError):
    code = "not_found"


class Conflict(ApiError):
    code = "conflict"


class Busy(ApiError):
    code = "busy"


class Forbidden(ApiError):
    code = "forbidden"


class Unavailable(ApiError):
    code = "unavailable"


class NotImplementedOnLedger(ApiError):
    code = "not_implemented"


class JobRunError(ApiError):
    code = "job_failed"
