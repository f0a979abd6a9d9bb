"""The errors of ``dgpu.node``: one tree, library exceptions converted once in the adapters.

::

    NodeError                          anything the node raises on purpose
    ├── KeystoreError                  the identity file cannot be read, written or decrypted
    │   └── PassphraseError            encrypted key file, wrong or missing passphrase
    ├── ConfigError                    a setting that cannot work (bad multiaddr, port, path)
    ├── NetworkError                   a libp2p operation failed (converted in adapters.p2p)
    │   ├── DialError                  the peer could not be reached (dead, refused, no address)
    │   │   └── PeerIdMismatchError    the node at the address has another peer id than asked for
    │   ├── NoBootstrapReachable       no bootstrap node answered within the bounded tries
    │   ├── StreamError                an open stream broke
    │   │   ├── StreamClosedError      the remote closed or reset the stream mid-exchange
    │   │   ├── FrameTooLargeError     a frame's length prefix is over the limit (nothing read)
    │   │   └── ReadTimeoutError       no complete frame within the read deadline
    │   ├── PeerRefusedError           the remote does not speak the protocol, or refused us
    │   └── CapacityError              a local bound (streams, connections) is full
    (execution branch, appended by the execution layer)
    ├── ExecutionError                 running a job on this provider
    │   ├── ExecutorUnavailable        no engine / the executor is not enabled by the provider
    │   ├── JobSpecInvalid             the job spec cannot be run as given
    │   ├── ImageNotAllowed            the image is outside the provider's pull policy
    │   ├── ImageUnavailable           not present locally and could not be pulled
    │   └── ExecutorFailure            the engine failed while starting or running a job
    ├── StoreError                     the durable state (SQLite) failed
    │   ├── IllegalTransition          a job lifecycle move the table forbids (state unchanged)
    │   ├── UnknownJob                 no such job id
    │   └── SchemaError                the database's schema is newer than this code
    (negotiation and job-stream branch, network layer)
    ├── RejectedError                  the counterparty refused; ``.code`` is the RejectCode value
    └── JobLostError                   a job stream ended without a final status (peer died or hung)
        └── ProviderSilentError        no frame, not even a heartbeat, within the silence bound

No error message ever contains key material or a passphrase.
"""

from __future__ import annotations

__all__ = [
    "CapacityError",
    "ConfigError",
    "DialError",
    # execution branch
    "ExecutionError",
    "ExecutorFailure",
    "ExecutorUnavailable",
    "FrameTooLargeError",
    "IllegalTransition",
    "ImageNotAllowed",
    "ImageUnavailable",
    # negotiation and job-stream branch
    "JobLostError",
    "JobSpecInvalid",
    "KeystoreError",
    "NetworkError",
    "NoBootstrapReachable",
    "NodeError",
    "PassphraseError",
    "PeerIdMismatchError",
    "PeerRefusedError",
    "ProviderSilentError",
    "ReadTimeoutError",
    "RejectedError",
    "SchemaError",
    "StoreError",
    "StreamClosedError",
    "StreamError",
    "UnknownJob",
]


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class KeystoreError(NodeError):
    """The identity file cannot be read, written or decrypted."""


class PassphraseError(KeystoreError):
    """The key file is encrypted and the passphrase is missing or wrong."""


class ConfigError(NodeError):
    """A setting that cannot work."""


class NetworkError(NodeError):
    """A libp2p operation failed."""


class DialError(NetworkError):
    """The peer could not be reached."""


class PeerIdMismatchError(DialError):
    """The node listening at the dialled address has another identity than the one asked for."""

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class NoBootstrapReachable(NetworkError):
    """Joining failed: no bootstrap node answered within the bounded number of tries."""


class StreamError(NetworkError):
    """An open stream broke."""


class StreamClosedError(StreamError):
    """The remote closed or reset the stream in the middle of an exchange."""


class FrameTooLargeError(StreamError):
    """A frame's length prefix exceeds the limit; the frame was not read."""


class ReadTimeoutError(StreamError):
    """No complete frame arrived before the read deadline."""


class PeerRefusedError(NetworkError):
    """The remote does not support the protocol or refused the request."""


class CapacityError(NetworkError):
    """A local bound (inbound streams, connections) is full."""


# --- execution branch (jobs, executors, durable state) -------------------------------


class ExecutionError(NodeError):
    """Something went wrong running a job on this provider."""


class ExecutorUnavailable(ExecutionError):
    """No usable engine (Docker not reachable), or the executor is not enabled."""


class JobSpecInvalid(ExecutionError):
    """The job spec cannot be run as given (no command, bad paths, GPUs not ours...)."""


class ImageNotAllowed(ExecutionError):
    """The image is not present and the provider's policy forbids pulling it."""


class ImageUnavailable(ExecutionError):
    """The image is not present and could not be pulled."""


class ExecutorFailure(ExecutionError):
    """The engine (Docker daemon, process spawn) failed while starting or running a job."""


class StoreError(NodeError):
    """The durable state store (SQLite) failed."""


class IllegalTransition(StoreError):
    """A job lifecycle move not in the transition table; the stored state is unchanged."""


class UnknownJob(StoreError):
    """No job with that id in the store."""


class SchemaError(StoreError):
    """The database's schema version is newer than this code knows."""


# ---- negotiation and job-stream branch (network layer) ----
# NodeError
# ├── RejectedError                  the provider (or renter) refused; ``.code`` is the RejectCode
# └── JobLostError                   the job stream ended without a final status (peer died, hung,
#                                    or broke the session's rules)


class RejectedError(NodeError):
    """The counterparty refused with a reason code (a ``Reject`` message)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"rejected: {code}" + (f" ({message})" if message else ""))
        self.code = code
        self.detail = message


class JobLostError(NodeError):
    """The job stream ended before a final status: the provider died, hung or misbehaved."""


class ProviderSilentError(JobLostError):
    """No frame (not even a heartbeat) came from the provider within the silence bound.

    ``state`` is the job's last state heard (None: none), ``next_log_seq`` the first log chunk not
    received, ``minutes`` the usage receipts received: what the renter knew when it gave up."""

    def __init__(self, message: str, *, state: str | None, next_log_seq: int, minutes: int) -> None:
        super().__init__(message)
        self.state = state
        self.next_log_seq = next_log_seq
        self.minutes = minutes
