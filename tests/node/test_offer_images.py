"""Offers list the Docker images their provider runs, so a renter hears "image not allowed"
before it submits anything, and its offer search passes such providers over."""

from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError

from dgpu.node.ports.gpu import simulated_gpus
from dgpu.node.services.api.job_backend import no_match_message
from dgpu.node.services.inventory import Inventory
from dgpu.node.services.offers import OfferBook, OfferQuery, OfferValidator
from dgpu.node.services.publisher import OfferPublisher, OfferTerms
from dgpu.protocol.envelope import seal
from dgpu.protocol.keys import SigningKey
from dgpu.protocol.messages import Executor, Offer
from tests.node.conftest import make_offer
from tests.node.test_offer_withdrawal import _msg

NOW = 1_000


def _with_images(key: SigningKey, images: tuple[str, ...] | None, *, price: int = 100) -> Offer:
    return make_offer(key, price=price).model_copy(update={"images": images})


def test_the_query_passes_over_offers_that_do_not_allow_the_image() -> None:
    book = OfferBook()
    exact, prefix, silent, other = (SigningKey(secrets.token_bytes(32)) for _ in range(4))
    for i, (key, images) in enumerate([(exact, ("pytorch/pytorch:2.4",)), (prefix, ("pytorch/*",)),
                                       (silent, None), (other, ("busybox", "alpine:3", "redis", "nginx"))]):
        book.put(Offer.model_validate(_with_images(key, images, price=100 + i).model_dump()), "p", now=NOW)
    q = OfferQuery(image="pytorch/pytorch:2.4", executor=Executor.DOCKER)
    assert [e.offer.provider for e in book.query(q, now=NOW)] == [
        exact.public_key.wallet, prefix.public_key.wallet, silent.public_key.wallet]
    (entry, reason), = book.closest(q, now=NOW)
    assert entry.offer.provider == other.public_key.wallet
    assert reason == "image pytorch/pytorch:2.4 not allowed (it runs busybox, alpine:3, redis, ...)"
    message = no_match_message(book, OfferQuery(image="tensorflow/tensorflow"), NOW)
    assert "image tensorflow/tensorflow not allowed (it runs pytorch/pytorch:2.4)" in message


def test_images_are_signed_in_the_offer_and_bounded() -> None:
    key = SigningKey(secrets.token_bytes(32))
    offer = Offer.model_validate(_with_images(key, ("busybox",)).model_dump())
    v = OfferValidator(OfferBook(), clock=lambda: NOW, accept_simulated=False)
    data = seal(offer, key, nonce=secrets.token_bytes(16), issued_at=NOW, expires_at=NOW + 300)
    assert v(_msg(data, key)) is True and v.book.get(key.public_key.wallet).offer.images == ("busybox",)
    assert "images" not in make_offer(key).model_dump()  # unset: older nodes' signatures still verify
    for bad in [tuple(f"img{i}" for i in range(17)), ("Not An/Image!",), ("x" * 300,)]:
        with pytest.raises(ValidationError):
            Offer.model_validate({**offer.model_dump(), "images": bad})


@pytest.mark.parametrize(("executors", "listed"), [((Executor.DOCKER,), ("busybox", "pytorch/*")),
                                                   ((Executor.SCRIPT,), None)])
def test_the_publisher_lists_the_allowed_images_with_the_docker_executor(
        executors: tuple[Executor, ...], listed: tuple[str, ...] | None) -> None:
    key = SigningKey(secrets.token_bytes(32))
    template = make_offer(key, simulated=True)
    inventory = Inventory(simulated_gpus(template.gpus, owner=key.public_key.wallet), owner=key.public_key.wallet,
                          price_per_gpu_minute=100, max_jobs=1, clock=lambda: NOW)

    async def publish(data: bytes) -> None:
        del data

    terms = OfferTerms(mint=template.mint, ledger="dev", executors=executors, images=("busybox", "pytorch/*"))
    pub = OfferPublisher(key, inventory, terms, publish, clock=lambda: NOW, clock_ms=lambda: NOW * 1000)
    assert pub.make()[0].images == listed
