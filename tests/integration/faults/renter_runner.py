"""A renter process for the renter kill-and-restart fault (one JSON line per event on stdout).

``renter_runner.py BOOTSTRAP LEDGER_URL DATA_DIR rent GPU_MODEL SECONDS MARKER``: rent a script job
of SECONDS seconds (its argument MARKER names its processes) and follow it.
``... resume``: start the renter's node again on DATA_DIR and wait until the settlements its last
run left are done.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from dgpu.client import Client
from dgpu.protocol.messages import LogChunk


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


async def main(argv: list[str]) -> None:
    bootstrap, ledger_url, data_dir, mode = argv[:4]
    async with Client.connect([bootstrap], ledger_url=ledger_url, data_dir=Path(data_dir),
                              accept_simulated=True) as client:
        settlements = client.runtime.settlements
        assert settlements is not None
        if mode == "resume":
            emit(event="resumed", pending=len(settlements))
            with trio.fail_after(60):
                while len(settlements):
                    await trio.sleep(0.1)
            emit(event="settled")
            return
        gpu_model, seconds, marker = argv[4], int(argv[5]), argv[6]
        assert client.ledger is not None
        await client.ledger.faucet(1_000_000)  # type: ignore[attr-defined]
        offers = await client.find_offers(gpu_model=gpu_model, wait_s=30)
        assert offers, "no offer arrived"
        script = f'echo started\nfor i in $(seq 1 {seconds}); do sleep 1; echo "tick $i"; done\necho done\n'
        rental = await client.rent(offers[0], script=script, command=[marker], max_minutes=30)
        assert rental.escrow is not None
        emit(event="rented", escrow=rental.escrow.address)

        def show(chunk: LogChunk) -> None:
            emit(event="log", data=chunk.data)

        result = await rental.run(on_log=show)
        emit(event="ended", state=result.state.value)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
