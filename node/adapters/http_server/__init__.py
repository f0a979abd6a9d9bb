"""The one HTTP layer of dGPU's servers (the bootstrap node's app and the node's local API).

Layout: ``_serve`` runs an ASGI app with uvicorn inside trio (``serve_http``), ``_guard`` bounds
slow and greedy clients inside uvicorn's protocol (``ConnectionLimits``); ``_errors`` holds
the error format (``{"error": {"code", "message"}}``), its body model and the exception handlers
that produce it; ``_middleware`` the body-size limit and route timing. This module re-exports
the public names; both apps import them from here.
"""

from ._errors import ApiError as ApiError
from ._errors import BadRequest as BadRequest
from ._errors import ErrorBody as ErrorBody
from ._errors import ErrorOut as ErrorOut
from ._errors import Forbidden as Forbidden
from ._errors import NotFound as NotFound
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import RateLimited as RateLimited
from ._errors import Unauthorized as Unauthorized
from ._errors import error_body as error_body
from ._errors import error_response as error_response
from ._errors import install_error_handlers as install_error_handlers
from ._guard import ConnectionLimits as ConnectionLimits
from ._middleware import BodyLimitMiddleware as BodyLimitMiddleware
from ._middleware import RouteObserver as RouteObserver
from ._middleware import RouteTimingMiddleware as RouteTimingMiddleware
from ._serve import HttpServerError as HttpServerError
from ._serve import serve_http as serve_http

__all__ = [
    "ApiError",
    "BadRequest",
    "BodyLimitMiddleware",
    "ConnectionLimits",
    "ErrorBody",
    "ErrorOut",
    "Forbidden",
    "HttpServerError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RouteObserver",
    "RouteTimingMiddleware",
    "Unauthorized",
    "error_body",
    "error_response",
    "install_error_handlers",
    "serve_http",
]
