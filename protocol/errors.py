"""The errors of ``dgpu.protocol``: one small tree, converted once at each boundary.

::

    ProtocolError                      anything this package raises on purpose
    ├── LocalProtocolError             *we* tried an illegal move; our state is unchanged
    ├── RemoteProtocolError            the *peer* sent something we refuse; ``.reject`` says what to answer
    │   ├── MessageError               bytes that are not a valid message
    │   │   ├── OversizeError          longer than the limit (checked before decoding)
    │   │   └── MalformedError         not canonical JSON / fails the schema
    │   ├── SignatureError             bad signature, wrong signer or wrong domain
    │   ├── ExpiredError               outside its validity window at ``now``
    │   ├── ReplayError                (signer, nonce) already seen, or the replay cache is full
    │   └── TimeoutError_              a negotiation deadline passed (fed in as an event)
    ├── PricingError                   an impossible price input (negative VRAM, unknown decimals, ...)
    └── EscrowError                    an escrow instruction refused; ``.code`` is shared with the Rust program

A ``RemoteProtocolError`` carries the :class:`~dgpu.protocol.messages.RejectCode` to send back, so the
network adapter never has to invent one.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "EscrowError",
    "EscrowErrorCode",
    "ExpiredError",
    "LocalProtocolError",
    "MalformedError",
    "MessageError",
    "OversizeError",
    "PricingError",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplayError",
    "SignatureError",
    "TimeoutError_",
]


class ProtocolError(Exception):
    """Base of every error this package raises on purpose."""


class LocalProtocolError(ProtocolError):
    """We tried a move the state machine does not allow; its state is unchanged."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something we refuse. ``reject_code`` is the reason code to answer with."""

    def __init__(self, message: str, *, reject_code: str = "protocol_error") -> None:
        super().__init__(message)
        self.reject_code = reject_code


class MessageError(RemoteProtocolError):
    """Bytes that do not form a valid message."""


class OversizeError(MessageError):
    """The message is longer than the limit; nothing was decoded."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the {limit}-byte limit",
                         reject_code="invalid_request")
        self.size = size
        self.limit = limit


class MalformedError(MessageError):
    """Not canonical JSON, or the schema refuses it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reject_code="invalid_request")


class SignatureError(RemoteProtocolError):
    """The signature does not verify for the claimed signer and domain."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reject_code="bad_signature")


class ExpiredError(RemoteProtocolError):
    """The message is not valid at the given time (expired, or issued in the future)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reject_code="expired")


class ReplayError(RemoteProtocolError):
    """The (signer, nonce) pair was seen before, or the cache cannot vouch for it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reject_code="replay")


class TimeoutError_(RemoteProtocolError):  # trailing underscore: not the builtin
    """A negotiation deadline passed before the peer's next message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reject_code="timeout")


class PricingError(ProtocolError, ValueError):
    """An input the pricing engine cannot price."""


class EscrowErrorCode(StrEnum):
    """Reasons an escrow instruction is refused; the Rust program's ``#[error_code]`` uses the same names."""

    UNAUTHORIZED = "Unauthorized"
    ESCROW_CLOSED = "EscrowClosed"
    INVALID_AMOUNT = "InvalidAmount"
    INVALID_DEADLINE = "InvalidDeadline"
    OVERFLOW = "Overflow"
    PAUSED = "Paused"
    ALREADY_STARTED = "AlreadyStarted"
    START_DEADLINE_PASSED = "StartDeadlinePassed"
    NOT_STARTED = "NotStarted"
    NOTHING_TO_CLAIM = "NothingToClaim"
    EXPIRED = "Expired"
    NOT_EXPIRED = "NotExpired"
    START_DEADLINE_NOT_REACHED = "StartDeadlineNotReached"
    FEE_TOO_HIGH = "FeeTooHigh"
    RENTAL_ID_USED = "RentalIdUsed"


class EscrowError(ProtocolError):
    """An escrow instruction was refused; the escrow is unchanged."""

    def __init__(self, code: EscrowErrorCode, detail: str = "") -> None:
        super().__init__(f"{code.value}: {detail}" if detail else code.value)
        self.code = code
