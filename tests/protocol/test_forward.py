"""Access messages and frames (forwarded ports, shells), and the request/offer fields they add."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dgpu.protocol.errors import MalformedError
from dgpu.protocol.forward import (
    ForwardOpen,
    ShellFrame,
    ShellOpen,
    exit_frame,
    parse_exit,
    parse_resize,
    parse_shell_frame,
    resize_frame,
    shell_frame,
    signal_frame,
)
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import MAX_FORWARD_PORTS, GpuSpec, JobRequest, Offer

RENTER = SigningKey(b"\x01" * 32).public_key.wallet
PROVIDER = SigningKey(b"\x02" * 32).public_key.wallet


def request(**extra: object) -> JobRequest:
    return JobRequest(request_id="ab" * 8, renter=RENTER, provider=PROVIDER, offer_seq=1, image="busybox",
                      command=("sh",), max_minutes=5, max_price_per_minute=10, **extra)  # type: ignore[arg-type]


def test_new_request_fields_stay_off_the_wire_at_their_defaults() -> None:
    plain = request().model_dump(mode="json")
    assert "forward_ports" not in plain and "interactive" not in plain  # older providers still read it
    asked = request(forward_ports=(8888, 22), interactive=True)
    wire = asked.model_dump(mode="json")
    assert wire["forward_ports"] == [8888, 22] and wire["interactive"] is True
    assert JobRequest.model_validate(wire) == asked


@pytest.mark.parametrize("ports", [(0,), (65536,), (80, 80), tuple(range(1, MAX_FORWARD_PORTS + 2))])
def test_forward_ports_are_bounded(ports: tuple[int, ...]) -> None:
    with pytest.raises(ValidationError):
        request(forward_ports=ports)


def test_offers_say_whether_access_is_allowed_and_stay_compatible() -> None:
    common = {"provider": PROVIDER, "gpus": (GpuSpec(model="RTX 4090", vram_mib=24_576),), "price_per_minute": 1,
              "mint": RENTER, "ledger": "dev", "seq": 1, "issued_at": 1, "expires_at": 2}
    plain = Offer(**common).model_dump(mode="json")  # type: ignore[arg-type]
    assert "forward" not in plain and "shell" not in plain
    allowed = Offer(**common, forward=True, shell=True)  # type: ignore[arg-type]
    assert Offer.model_validate(allowed.model_dump(mode="json")) == allowed
    with pytest.raises(ValidationError):
        Offer(**common, forward=False)  # type: ignore[arg-type]  # absent means no


def test_openings_are_bounded() -> None:
    assert ForwardOpen(job_id="ab" * 8, port=8888).port == 8888
    with pytest.raises(ValidationError):
        ForwardOpen(job_id="ab" * 8, port=0)
    with pytest.raises(ValidationError):
        ShellOpen(job_id="ab" * 8, rows=0)
    with pytest.raises(ValidationError):
        ShellOpen(job_id="ab" * 8, argv=tuple("x" for _ in range(65)))


def test_shell_frames_round_trip() -> None:
    assert parse_shell_frame(shell_frame(ShellFrame.DATA, b"ls\n")) == (ShellFrame.DATA, b"ls\n")
    kind, payload = parse_shell_frame(resize_frame(50, 132))
    assert kind is ShellFrame.RESIZE and parse_resize(payload) == (50, 132)
    assert parse_shell_frame(signal_frame(2)) == (ShellFrame.SIGNAL, b"\x02")
    kind, payload = parse_shell_frame(exit_frame(-3))
    assert kind is ShellFrame.EXIT and parse_exit(payload) == -3
    assert parse_exit(parse_shell_frame(exit_frame(1000))[1]) == 255  # clamped like job exit codes


@pytest.mark.parametrize("frame", [b"", b"\x09", bytes((ShellFrame.RESIZE,)) + b"\x00", signal_frame(11),
                                   bytes((ShellFrame.EOF,)) + b"x", bytes((ShellFrame.DATA,)) + b"x" * 40_000])
def test_bad_shell_frames_are_refused(frame: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_shell_frame(frame)
