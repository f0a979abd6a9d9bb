"""One deterministic encoding: canonical JSON.

Rules: UTF-8; object keys sorted; no insignificant whitespace; integers only (a float, NaN or
Infinity is refused: money and times are integers); duplicate keys are refused. Signatures are
always computed over bytes *re-encoded* from the parsed value, so a peer's spacing or key order
can never change what was signed.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import MalformedError, OversizeError

__all__ = ["JsonValue", "canonical_bytes", "canonical_bytes_of_checked", "parse_json"]

JsonValue = Any
_MAX_DEPTH = 32
_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(value: JsonValue) -> bytes:
    """Encode ``value`` canonically; ``TypeError``/``ValueError`` for floats or non-JSON types."""
    _reject_floats(value, 0)
    return canonical_bytes_of_checked(value)


def canonical_bytes_of_checked(value: JsonValue) -> bytes:
    """:func:`canonical_bytes` without the walk that refuses floats, for values that cannot hold
    one: the output of :func:`parse_json`, or the JSON dump of a protocol model (whose fields are
    integers, strings and booleans only; ``tests/protocol`` checks every model's schema). The walk
    was a third of a negotiation's CPU."""
    return _encoder.encode(value).encode("utf-8")


def parse_json(data: bytes, *, max_bytes: int) -> JsonValue:
    """Parse bytes from a peer: size checked first, then strict JSON with integers only."""
    if len(data) > max_bytes:
        raise OversizeError(len(data), max_bytes)
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_float=_refuse_float, parse_constant=_refuse_constant,
                           object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise MalformedError(f"not valid JSON: {exc}") from None
    try:
        _reject_floats(value, 0)
    except (TypeError, ValueError) as exc:
        raise MalformedError(str(exc)) from None
    return value


def _refuse_float(text: str) -> float:
    raise ValueError("floats are not allowed on the wire")


def _refuse_constant(text: str) -> float:
    raise ValueError(f"{text} is not allowed on the wire")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = val
    return out


#: values that need no recursive call (most of a message): checking their type inline is the speed-up
_SCALARS = (str, int, bool, type(None))


def _reject_floats(value: JsonValue, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("nesting too deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("object keys must be strings")
            if type(item) not in _SCALARS:
                _reject_floats(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            if type(item) not in _SCALARS:
                _reject_floats(item, depth + 1)
    elif isinstance(value, float):
        raise TypeError("floats are not allowed on the wire")
    elif value is not None and not isinstance(value, str | int | bool):
        raise TypeError(f"{type(value).__name__} is not a JSON value")
