"""``dgpu bootstrap``'s services in one process: libp2p host, auth, pinning and the dev ledger."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import trio

from dgpu.bootstrap.service import LedgerSettings, run_bootstrap_services
from dgpu.node.adapters.keystore import public_key_of
from dgpu.node.config import BootstrapConfig


async def test_one_identity_serves_discovery_auth_and_the_dev_ledger(tmp_path: Path) -> None:
    config = BootstrapConfig(data_dir=tmp_path)
    async with trio.open_nursery() as nursery:
        endpoints = await nursery.start(partial(run_bootstrap_services, config, http_port=0,
                                                ledger=LedgerSettings(clock_speed=60),
                                                url_file=tmp_path / "http.url"))
        wallet = public_key_of(config.key_file).wallet
        assert "/p2p/12D3KooW" in endpoints.multiaddr
        assert (tmp_path / "http.url").read_text().strip() == endpoints.http_url
        async with httpx.AsyncClient(base_url=endpoints.http_url) as http:
            jwks = (await http.get("/api/v1/auth/jwks")).json()
            assert wallet in str(jwks)  # the JWT issuer key is the node's identity
            info = (await http.get("/api/v1/ledger/info")).json()
            assert info["real_value"] is False and info["network"] == "development"
            assert info["decimals"] == 6
            missing = await http.get("/api/v1/ledger/escrows/" + "1" * 32)
            assert missing.status_code == 404 and "error" in missing.json()
        nursery.cancel_scope.cancel()
