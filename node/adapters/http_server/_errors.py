"""The error format of every dGPU HTTP server: ``{"error": {"code": ..., "message": ...}}``.

An ``ApiError`` is a request the client can fix; it carries the HTTP status, a stable
machine-readable ``code`` and a message safe to show (never a key, token, signature or secret).
``install_error_handlers`` converts it, FastAPI's validation errors, Starlette's HTTP errors and
any other exception into that body, once, at the app's boundary.

    ApiError                    a request the client can fix; status + code
    ├── BadRequest              400 malformed input (bad cid, bad key, bad wallet)
    ├── Unauthorized            401 no, malformed, forged, expired or revoked credentials
    ├── Forbidden               403 authenticated but not allowed (role, not the owner)
    ├── NotFound                404
    ├── PayloadTooLarge         413 a body over its size limit
    └── RateLimited             429 token bucket empty; carries retry_after seconds
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

__all__ = [
    "ApiError",
    "BadRequest",
    "ErrorBody",
    "ErrorOut",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Unauthorized",
    "error_body",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered to the client as ``{"error": {"code", "message"}}``."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ApiError):
    status = 413
    code = "too_large"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class ErrorOut(BaseModel):
    """The body of every error answer (for OpenAPI ``responses=``)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorBody


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def install_error_handlers(app: FastAPI, *, on_reject: Callable[[str], None] | None = None) -> None:
    """Answer ``ApiError``, validation errors, Starlette's HTTP errors and anything unexpected in
    the error format. ``on_reject(code)`` is told every refusal (for a metric). An app adds its
    own handlers for its other error types after this call."""

    def rejected(code: str) -> None:
        if on_reject is not None:
            on_reject(code)

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        rejected(exc.code)
        headers = None
        if isinstance(exc, RateLimited):
            headers = {"retry-after": str(exc.retry_after)}
        elif exc.status == 401:
            headers = {"www-authenticate": "Bearer"}
        return error_response(exc.status, exc.code, exc.message, headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        rejected("invalid_request")
        # Only locations and messages: the offending input may hold a signature or token.
        parts = [
            ".".join(str(p) for p in err.get("loc", ())) + ": " + str(err.get("msg", "invalid"))
            for err in exc.errors()[:10]
        ]
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        rejected(code)
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    async def on_disconnect(request: Request, exc: Exception) -> JSONResponse:
        # The client went away (or was cut off as too slow) mid-body: nobody reads this answer.
        rejected("client_disconnected")
        log.info("client left during %s %s", request.method, request.url.path)
        return error_response(400, "client_disconnected", "the client disconnected")

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The one catch-all, at the outermost boundary: the client gets a generic 500, the
        # log gets the type (uvicorn logs the traceback; messages here carry no secrets).
        rejected("internal")
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(500, "internal", "internal error")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
