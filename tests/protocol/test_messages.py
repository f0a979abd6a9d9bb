from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dgpu.protocol.messages import (
    GOSSIP_ADAPTER,
    MESSAGE_TYPES,
    TO_PROVIDER_JOB,
    TO_PROVIDER_NEGOTIATION,
    TO_RENTER_JOB,
    TO_RENTER_NEGOTIATION,
    Executor,
    InputRef,
    JobCancel,
    JobState,
    LogChunk,
    Reject,
    RejectCode,
    digest,
)

from .conftest import make_offer, make_quote, make_request


def test_every_message_type_is_registered_and_frozen() -> None:
    assert set(MESSAGE_TYPES) == {
        "offer", "offer_withdrawal", "job_request", "quote", "reject", "accept", "agreement", "agreement_terms",
        "job_submit", "job_cancel", "job_status", "log_chunk", "usage_receipt", "result_ref",
    }
    offer = make_offer()
    with pytest.raises(ValidationError):
        offer.seq = 2  # type: ignore[misc]


@pytest.mark.parametrize(("builder", "change"), [
    (make_offer, {"price_per_minute": 1.5}),      # a float price
    (make_offer, {"price_per_minute": True}),     # a bool is not an amount
    (make_offer, {"price_per_minute": 0}),
    (make_offer, {"price_per_minute": 2**64}),    # beyond u64
    (make_offer, {"gpus": ()}),
    (make_offer, {"expires_at": 1}),              # before issued_at
    (make_offer, {"min_minutes": 10, "max_minutes": 5}),
    (make_offer, {"executors": ("docker", "docker")}),
    (make_offer, {"provider": "not-base58-0OIl" * 3}),
    (make_offer, {"region": "x" * 65}),
    (make_offer, {"unexpected": 1}),              # extra fields are forbidden
    (make_request, {"env": {"1BAD": "x"}}),
    (make_request, {"env": {"OK": "x" * 5000}}),
    (make_request, {"env": {f"K{i}": "v" for i in range(65)}}),
    (make_request, {"image": None}),              # docker without an image
    (make_request, {"executor": Executor.SCRIPT}),  # script job still carrying an image
    (make_request, {"request_id": "XYZ"}),
    (make_request, {"command": ("x",) * 65}),
])
def test_schema_refuses_bad_fields(builder: Any, change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        builder(**change)


@pytest.mark.parametrize("path", ["../etc/passwd", "/abs", "a/../../b", "a b", "", "x" * 300])
def test_input_paths_cannot_escape(path: str) -> None:
    with pytest.raises(ValidationError):
        InputRef(path=path, cid="sha256-" + "0" * 64)


def test_quote_deposit_must_equal_rate_times_minutes() -> None:
    request = make_request()
    with pytest.raises(ValidationError, match="deposit"):
        make_quote(request, deposit=1)


def test_adapters_accept_only_their_direction() -> None:
    request = make_request()
    quote = make_quote(request)
    as_json = {m.type: m.model_dump(mode="json") for m in (request, quote)}
    assert TO_PROVIDER_NEGOTIATION.validate_python(as_json["job_request"]) == request
    assert TO_RENTER_NEGOTIATION.validate_python(as_json["quote"]) == quote
    for adapter, data in [(TO_PROVIDER_NEGOTIATION, as_json["quote"]), (TO_RENTER_NEGOTIATION, as_json["job_request"]),
                          (GOSSIP_ADAPTER, as_json["quote"])]:
        with pytest.raises(ValidationError):
            adapter.validate_python(data)
    cancel = JobCancel(job_id="ab" * 8)
    assert TO_PROVIDER_JOB.validate_python(cancel.model_dump(mode="json")) == cancel
    chunk = LogChunk(job_id="ab" * 8, seq=0, stream="stdout", data="hi\n")
    assert TO_RENTER_JOB.validate_python(chunk.model_dump(mode="json")) == chunk
    reject = Reject(request_id="ab" * 8, code=RejectCode.BUSY)
    assert TO_RENTER_JOB.validate_python(reject.model_dump(mode="json")) == reject


def test_digest_is_stable_and_sensitive() -> None:
    assert digest(make_request()) == digest(make_request())
    assert digest(make_request()) != digest(make_request(command=("echo", "bye")))


def test_offer_helpers_and_job_states() -> None:
    offer = make_offer()
    assert offer.gpu_count == 1 and not offer.simulated
    assert JobState.FINISHED.terminal and not JobState.RUNNING.terminal


def _all_models(cls: type) -> list[type]:
    return [cls, *(m for sub in cls.__subclasses__() for m in _all_models(sub))]


def _schema_types(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["type"]} if isinstance(node.get("type"), str) else set()
        return found.union(*(_schema_types(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_schema_types(v) for v in node))
    return set()


def test_no_protocol_model_can_hold_a_float() -> None:
    """Signing skips the float walk for model dumps (canonical_bytes_of_checked): that holds
    only while every field of every protocol model is an integer, string, boolean or null."""
    from dgpu.protocol.messages import _Model

    models = _all_models(_Model)[1:]
    assert len(models) >= 20
    for model in models:
        kinds = _schema_types(model.model_json_schema())
        assert kinds <= {"object", "array", "string", "integer", "boolean", "null"}, (model, kinds)
