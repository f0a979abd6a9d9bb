"""Upload links: the signature covers every field of the grant; expired, forged and oversize refused."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlsplit

import pytest

from dgpu.bootstrap.errors import Forbidden, PayloadTooLarge
from dgpu.bootstrap.upload_links import UploadGrant, UploadLinkSigner

SIGNER = UploadLinkSigner(b"k" * 32)
GRANT = UploadGrant("W" * 44, "results", "jobs/abc/result.tar", 1000, 2_000)


def test_a_signed_grant_checks() -> None:
    SIGNER.check(GRANT, SIGNER.sign(GRANT), now=1_999, declared_size=1000)
    SIGNER.check(GRANT, SIGNER.sign(GRANT), now=1_000, declared_size=None)


@pytest.mark.parametrize("change", [
    {"wallet": "V" * 44}, {"bucket": "other"}, {"key": "jobs/abc/other.tar"}, {"max_bytes": 10**9},
    {"expires_at": 10**9},
])
def test_any_changed_field_is_refused(change: dict[str, object]) -> None:
    forged = dataclasses.replace(GRANT, **change)  # type: ignore[arg-type]
    with pytest.raises(Forbidden) as exc:
        SIGNER.check(forged, SIGNER.sign(GRANT), now=1_000, declared_size=None)
    assert exc.value.code == "link_invalid"


def test_another_secret_and_a_download_link_signature_are_refused() -> None:
    other = UploadLinkSigner(b"x" * 32)
    with pytest.raises(Forbidden):
        SIGNER.check(GRANT, other.sign(GRANT), now=1_000, declared_size=None)
    with pytest.raises(Forbidden):
        SIGNER.check(GRANT, "0" * 64, now=1_000, declared_size=None)


def test_expired_and_oversize_are_refused() -> None:
    sig = SIGNER.sign(GRANT)
    with pytest.raises(Forbidden) as exc:
        SIGNER.check(GRANT, sig, now=2_000, declared_size=None)
    assert exc.value.code == "link_expired"
    with pytest.raises(PayloadTooLarge):
        SIGNER.check(GRANT, sig, now=1_000, declared_size=1001)


def test_the_link_carries_every_field() -> None:
    url = urlsplit(GRANT.path_and_query("s1g"))
    assert url.path == "/api/v1/push/results/jobs/abc/result.tar"
    assert parse_qs(url.query) == {"wallet": ["W" * 44], "max": ["1000"], "exp": ["2000"], "sig": ["s1g"]}


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        UploadLinkSigner(b"short")
