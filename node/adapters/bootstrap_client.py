"""The client side of a bootstrap node's HTTP API, shared by the node's local API and the CLI.

- ``decode_error_body``: the ``{"error": {"code", "message"}}`` format of every dGPU HTTP API,
  read back (the CLI reads the node's errors with it, the node the bootstrap's).
- ``signed_challenge``: the one check before a login/register challenge is signed: the message
  is for this wallet and action, and the bytes to sign are exactly the action's domain plus that
  message (a key never signs whatever a server hands it). ``BadChallenge`` otherwise.
- ``BootstrapSession``, ``upstream_json``, ``decode_upstream``, ``fetch_verifier``: the node's
  own asyncio-side calls (its login for storage, the auth proxy, the JWKS).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from dgpu._http import async_client
from dgpu.node.services.api.errors import Unavailable
from dgpu.protocol.auth import DOMAINS
from dgpu.protocol.keys import SigningKey, b58encode

if TYPE_CHECKING:  # FastAPI, uvicorn and PyJWT load only in a node that serves its API (idle RSS)
    from dgpu.node.adapters.tokens import TokenVerifier

__all__ = [
    "UPSTREAM_TIMEOUT_S",
    "BadChallenge",
    "BootstrapSession",
    "UpstreamError",
    "decode_error_body",
    "decode_upstream",
    "fetch_verifier",
    "signed_challenge",
    "unreachable",
    "upload_link",
    "upstream_json",
]

#: the bootstrap's answers to auth calls are small JSON documents
MAX_UPSTREAM_JSON = 64 * 1024
#: timeout of one call to the bootstrap node (auth, JWKS); storage streams use read timeouts
UPSTREAM_TIMEOUT_S = 15.0


def decode_error_body(body: Any, status: int, default_message: str) -> tuple[str, str]:
    """(code, message) of an error answer; ``http_<status>`` and ``default_message`` when the
    body does not say."""
    raw = body.get("error") if isinstance(body, dict) else None
    err: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return str(err.get("code", f"http_{status}")), str(err.get("message", default_message))


class BadChallenge(ValueError):
    """A challenge that is malformed, or for another wallet or action: never signed."""


def signed_challenge(key: SigningKey, challenge: Any, action: str) -> dict[str, str]:
    """The signed answer (``SignedIn``'s fields) to a challenge for ``key``'s wallet and ``action``."""
    wallet = key.public_key.wallet
    try:
        text = str(challenge["message"])
        message = json.loads(text)
        to_sign = bytes.fromhex(str(challenge["signing_bytes_hex"]))
        nonce = str(challenge["nonce"])
        expected = DOMAINS[action] + text.encode("ascii")
    except (KeyError, TypeError, ValueError) as exc:
        raise BadChallenge("a malformed challenge") from exc
    if (not isinstance(message, dict) or message.get("wallet") != wallet or message.get("action") != action
            or to_sign != expected):
        raise BadChallenge("a challenge for something else")
    return {"wallet": wallet, "nonce": nonce, "signature": b58encode(key.sign(to_sign))}


class UpstreamError(Exception):
    """The bootstrap node answered an error: passed through with its status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def decode_upstream(status: int, content: bytes) -> dict[str, Any]:
    """The bootstrap's JSON answer; raises UpstreamError for its errors, Unavailable for nonsense."""
    if len(content) > MAX_UPSTREAM_JSON:
        raise Unavailable("the bootstrap node's answer is too large", "upstream_invalid")
    try:
        body = json.loads(content) if content else {}
    except ValueError:
        raise Unavailable(f"the bootstrap node answered {status} without JSON", "upstream_invalid") from None
    if not isinstance(body, dict):
        raise Unavailable("the bootstrap node's answer is not a JSON object", "upstream_invalid")
    if status >= 400:
        code, message = decode_error_body(body, status, "the bootstrap node refused")
        raise UpstreamError(status, code[:64], message[:500])
    return body


def unreachable(exc: httpx.HTTPError) -> Unavailable:
    """The service error for a bootstrap node that could not be reached at all."""
    return Unavailable(f"the bootstrap node is unreachable ({type(exc).__name__})", "upstream_unavailable")


async def upstream_json(http: httpx.AsyncClient, method: str, path: str,
                        body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        response = await http.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise unreachable(exc) from exc
    return decode_upstream(response.status_code, response.content)


class BootstrapSession:
    """The node's own login at the bootstrap node (for storage): signs challenges with the node
    key, caches the access token until shortly before it expires. Asyncio side only."""

    def __init__(self, key: SigningKey, clock: Callable[[], float]) -> None:
        self.key = key
        self.clock = clock
        self._token: str | None = None
        self._expires_at = 0

    async def token(self, http: httpx.AsyncClient) -> str:
        if self._token is not None and self.clock() < self._expires_at - 60:
            return self._token
        challenge = await upstream_json(http, "POST", "/api/v1/auth/challenge",
                                        {"wallet": self.key.public_key.wallet, "action": "login"})
        try:
            signed = signed_challenge(self.key, challenge, "login")
        except BadChallenge as exc:
            raise Unavailable(f"the bootstrap node sent {exc}", "upstream_invalid") from exc
        pair = await upstream_json(http, "POST", "/api/v1/auth/login", signed)
        self._token, self._expires_at = str(pair["access_token"]), int(pair["expires_at"])
        return self._token

    async def register(self, http: httpx.AsyncClient, role: str) -> None:
        """Register the wallet with ``role`` (once per wallet: a login needs a role)."""
        challenge = await upstream_json(http, "POST", "/api/v1/auth/challenge",
                                        {"wallet": self.key.public_key.wallet, "action": "register", "role": role})
        try:
            signed = signed_challenge(self.key, challenge, "register")
        except BadChallenge as exc:
            raise Unavailable(f"the bootstrap node sent {exc}", "upstream_invalid") from exc
        await upstream_json(http, "POST", "/api/v1/auth/register", signed)


async def upload_link(bootstrap_url: str, key: SigningKey, bucket: str, object_key: str, *, max_bytes: int,
                      ttl_s: int, clock: Callable[[], float]) -> str:
    """A signed link (from the bootstrap node at ``bootstrap_url``) through which anyone holding it may
    store one object ``bucket/object_key`` of ``key``'s wallet, up to ``max_bytes``, for ``ttl_s``."""
    from urllib.parse import quote

    base = bootstrap_url.rstrip("/")
    async with async_client(base_url=base, timeout=UPSTREAM_TIMEOUT_S) as http:
        session = BootstrapSession(key, clock)
        try:
            token = await session.token(http)
        except UpstreamError as exc:
            if exc.code != "not_registered":
                raise
            await session.register(http, "renter")  # a renter's first use of its storage
            token = await session.token(http)
        try:
            response = await http.post(f"/api/v1/storage-links/{quote(bucket, safe='')}/{quote(object_key, safe='/')}",
                                       json={"max_bytes": max_bytes, "ttl_s": ttl_s},
                                       headers={"authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise unreachable(exc) from exc
        return base + str(decode_upstream(response.status_code, response.content)["path"])


async def fetch_verifier(bootstrap_url: str, *, leeway_s: int = 30,
                         client: httpx.AsyncClient | None = None) -> TokenVerifier:
    """Fetch the bootstrap node's JWKS (with its issuer and audience) once; raises
    HttpServerError when it cannot be had (the API would not be able to check any token)."""
    from dgpu.node.adapters.http_server import HttpServerError
    from dgpu.node.adapters.tokens import TokenVerifier

    url = bootstrap_url.rstrip("/") + "/api/v1/auth/jwks"
    async with contextlib.AsyncExitStack() as stack:
        http: httpx.AsyncClient = client if client is not None else await stack.enter_async_context(
            async_client(timeout=UPSTREAM_TIMEOUT_S))
        try:
            response = await http.get(url)
            doc = response.json()
            if response.status_code != 200 or not isinstance(doc, dict):
                raise ValueError(f"status {response.status_code}")
            return TokenVerifier.from_jwks(doc, str(doc["issuer"]), str(doc["audience"]), leeway_s)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise HttpServerError(f"cannot read the bootstrap node's JWKS at {url}: "
                                  f"{type(exc).__name__}") from exc
    raise AssertionError("unreachable")  # pragma: no cover
