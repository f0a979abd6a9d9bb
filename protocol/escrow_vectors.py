"""Replays escrow scenarios (``tests/vectors/escrow.json``) against the reference math.

A *world* is four balances (renter, provider, treasury, vault) and at most one escrow. Each
step names an actor (``renter``, ``provider`` or ``stranger``), an action and its arguments;
:func:`apply_step` returns the next world and the error code, if the step was refused (then the
world is unchanged). The Rust program's tests and the ledgers' tests replay the same file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import escrow as e
from .errors import EscrowError, EscrowErrorCode

__all__ = ["ACTIONS", "ACTORS", "World", "apply_step", "snapshot"]

ACTORS = ("renter", "provider", "stranger")
ACTIONS = ("open", "start", "claim", "top_up", "close", "settle_expired", "refund_unstarted")
MINT = "mint"


@dataclass(frozen=True)
class World:
    balances: Mapping[str, int]
    fee_bps: int
    escrow: e.Escrow | None = None
    history: tuple[str, ...] = field(default=())
    #: the renter's highest opened rental id (0 before the first open)
    last_rental_id: int = 0


def _move(balances: Mapping[str, int], transfers: tuple[e.Transfer, ...]) -> dict[str, int]:
    out = dict(balances)
    for t in transfers:
        if out[t.source.value] < t.amount:
            raise ValueError(f"{t.source.value} cannot pay {t.amount}")
        out[t.source.value] -= t.amount
        out[t.destination.value] += t.amount
    return out


def apply_step(world: World, step: Mapping[str, Any]) -> tuple[World, str | None]:
    """Apply one step; on refusal return the same world and the error's code name."""
    action, actor, now = step["action"], step["by"], step["at"]
    args: Mapping[str, Any] = step.get("args") or {}
    if action not in ACTIONS or actor not in ACTORS:
        raise ValueError(f"unknown action {action!r} or actor {actor!r}")
    try:
        if action == "open":
            if actor != "renter":
                raise EscrowError(EscrowErrorCode.UNAUTHORIZED, "the renter opens")
            outcome = e.open_escrow(
                renter="renter", provider="provider", mint=MINT, rental_id=args["rental_id"],
                rate_per_minute=args["rate_per_minute"], max_minutes=args["max_minutes"],
                start_deadline=args["start_deadline"], fee_bps=world.fee_bps, now=now,
                last_rental_id=world.last_rental_id,
            )
        else:
            if world.escrow is None:
                raise ValueError("no escrow has been opened in this scenario")
            if action == "top_up":
                outcome = e.top_up(world.escrow, actor, now, args["extra_minutes"])
            else:
                fn = {"start": e.start, "claim": e.claim, "close": e.close,
                      "settle_expired": e.settle_expired, "refund_unstarted": e.refund_unstarted}[action]
                outcome = fn(world.escrow, actor, now)
    except EscrowError as exc:
        return world, exc.code.value
    balances = _move(world.balances, outcome.transfers)
    balances = _move(balances, e.sweep_dust(outcome.escrow, balances["vault"]))
    return World(balances=balances, fee_bps=world.fee_bps, escrow=outcome.escrow,
                 history=(*world.history, action),
                 last_rental_id=outcome.escrow.rental_id if action == "open" else world.last_rental_id), None


def snapshot(world: World) -> dict[str, Any]:
    """The ``expect`` block for a step (without ``error``)."""
    esc = world.escrow
    return {
        "balances": {k: world.balances[k] for k in ("renter", "provider", "treasury", "vault")},
        "escrow": None if esc is None else {
            "status": esc.status.value, "max_minutes": esc.max_minutes, "deposited": esc.deposited,
            "claimed_minutes": esc.claimed_minutes, "started_at": esc.started_at, "paid": esc.paid,
            "fee_paid": esc.fee_paid, "refunded": esc.refunded,
        },
    }
