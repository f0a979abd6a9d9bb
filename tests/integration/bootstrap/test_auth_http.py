"""Wallet-signed login, tokens, refresh rotation, roles and rate limits against a real server."""

from __future__ import annotations

from pathlib import Path

import base58
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dgpu.node.adapters.tokens import TokenVerifier

from .harness import bootstrap_server, error_code, login, new_user, register, signed, wallet


async def test_login_flow_and_jwks_verification(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        key = Ed25519PrivateKey.generate()
        await register(h.client, key, "provider")
        tokens = await login(h.client, key)
        assert tokens["role"] == "provider"
        assert tokens["wallet"] == wallet(key)
        me = await h.client.get(
            "/api/v1/auth/me", headers={"authorization": f"Bearer {tokens['access_token']}"}
        )
        assert me.status_code == 200
        assert me.json()["wallet"] == wallet(key)
        # Any node can verify the token offline with the published key.
        jwks = (await h.client.get("/api/v1/auth/jwks")).json()
        verifier = TokenVerifier.from_jwks(jwks, jwks["issuer"], jwks["audience"])
        claims = verifier.verify(tokens["access_token"], h.clock())
        assert claims.wallet == wallet(key)
        assert claims.role.value == "provider"


async def test_unregistered_wallet_cannot_log_in(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        key = Ed25519PrivateKey.generate()
        r = await h.client.post("/api/v1/auth/login", json=await signed(h.client, key, "login"))
        assert r.status_code == 403
        assert error_code(r) == "not_registered"


async def test_forged_signature_refused(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        key = Ed25519PrivateKey.generate()
        await register(h.client, key, "renter")
        body = await signed(h.client, key, "login")
        # signed by another key
        other = Ed25519PrivateKey.generate()
        ch = await h.client.post(
            "/api/v1/auth/challenge", json={"wallet": wallet(key), "action": "login"}
        )
        forged = other.sign(bytes.fromhex(ch.json()["signing_bytes_hex"]))
        r = await h.client.post(
            "/api/v1/auth/login",
            json={**body, "nonce": ch.json()["nonce"], "signature": base58.b58encode(forged).decode()},
        )
        assert r.status_code == 401
        assert error_code(r) == "bad_signature"
        # the signature never echoes back
        assert base58.b58encode(forged).decode() not in r.text
        # a signature over the message without the domain separator is refused too
        ch2 = (await h.client.post(
            "/api/v1/auth/challenge", json={"wallet": wallet(key), "action": "login"}
        )).json()
        no_domain = key.sign(ch2["message"].encode())
        r = await h.client.post(
            "/api/v1/auth/login",
            json={"wallet": wallet(key), "nonce": ch2["nonce"],
                  "signature": base58.b58encode(no_domain).decode()},
        )
        assert r.status_code == 401
        # a login challenge signature cannot register (and vice versa)
        login_body = await signed(h.client, key, "login")
        r = await h.client.post("/api/v1/auth/register", json=login_body)
        assert r.status_code == 401
        assert error_code(r) == "bad_challenge"


async def test_replayed_and_expired_challenges_refused(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path, challenge_ttl_s=60) as h:
        key = Ed25519PrivateKey.generate()
        await register(h.client, key, "renter")
        body = await signed(h.client, key, "login")
        assert (await h.client.post("/api/v1/auth/login", json=body)).status_code == 200
        replay = await h.client.post("/api/v1/auth/login", json=body)
        assert replay.status_code == 401
        assert error_code(replay) == "challenge_unknown"
        late = await signed(h.client, key, "login")
        h.clock.advance(61)
        r = await h.client.post("/api/v1/auth/login", json=late)
        assert r.status_code == 401
        assert error_code(r) == "challenge_expired"


async def test_tokens_checked_for_expiry_signature_issuer_audience(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path, access_ttl_s=300) as h:
        _key, auth = await new_user(h.client)
        token = auth["authorization"].split()[1]
        assert (await h.client.get("/api/v1/auth/me", headers=auth)).status_code == 200
        claims = jwt.decode(token, options={"verify_signature": False})
        foreign = Ed25519PrivateKey.generate()
        header = {"kid": jwt.get_unverified_header(token)["kid"]}
        cases = {
            "forged signature": jwt.encode(claims, foreign, algorithm="EdDSA", headers=header),
            "wrong issuer": jwt.encode({**claims, "iss": "evil"}, foreign, "EdDSA", header),
            "alg none": jwt.encode(claims, None, algorithm="none", headers=header),
            "garbage": "not.a.token",
        }
        for name, bad in cases.items():
            r = await h.client.get("/api/v1/auth/me", headers={"authorization": f"Bearer {bad}"})
            assert r.status_code == 401, name
            assert error_code(r) == "invalid_token", name
        # tampered payload (role escalation) with the original signature
        head, _, sig = token.split(".")
        body = jwt.utils.base64url_encode(
            jwt.api_jws.json.dumps({**claims, "role": "admin"}).encode()
        ).decode()
        r = await h.client.get(
            "/api/v1/auth/me", headers={"authorization": f"Bearer {head}.{body}.{sig}"}
        )
        assert r.status_code == 401
        # no token at all
        r = await h.client.get("/api/v1/auth/me")
        assert r.status_code == 401
        assert error_code(r) == "missing_token"
        # expiry
        h.clock.advance(301)
        r = await h.client.get("/api/v1/auth/me", headers=auth)
        assert r.status_code == 401
        assert error_code(r) == "token_expired"


async def test_token_for_another_audience_refused(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path / "a", audience="other-net") as other:
        _, auth = await new_user(other.client)
        async with bootstrap_server(tmp_path / "b") as h:
            r = await h.client.get("/api/v1/auth/me", headers=auth)
            assert r.status_code == 401
            assert error_code(r) == "invalid_token"


async def test_refresh_rotation_and_reuse_detection(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        key = Ed25519PrivateKey.generate()
        await register(h.client, key, "renter")
        first = await login(h.client, key)
        r = await h.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.status_code == 200
        second = r.json()
        assert second["refresh_token"] != first["refresh_token"]
        r = await h.client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
        assert r.status_code == 200
        third = r.json()
        auth3 = {"authorization": f"Bearer {third['access_token']}"}
        assert (await h.client.get("/api/v1/auth/me", headers=auth3)).status_code == 200
        # an attacker replays the first (rotated) token: refused, and the family is revoked
        r = await h.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.status_code == 401
        assert error_code(r) == "refresh_reused"
        r = await h.client.post("/api/v1/auth/refresh", json={"refresh_token": third["refresh_token"]})
        assert r.status_code == 401
        assert error_code(r) == "refresh_revoked"
        r = await h.client.get("/api/v1/auth/me", headers=auth3)
        assert r.status_code == 401
        assert error_code(r) == "token_revoked"
        # another session of the same wallet is unaffected
        other = await login(h.client, key)
        r = await h.client.post("/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
        assert r.status_code == 200


async def test_refresh_expiry_and_logout(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path, refresh_ttl_s=1000) as h:
        key = Ed25519PrivateKey.generate()
        await register(h.client, key, "renter")
        tokens = await login(h.client, key)
        h.clock.advance(1001)
        r = await h.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 401
        assert error_code(r) == "refresh_expired"
        tokens = await login(h.client, key)
        auth = {"authorization": f"Bearer {tokens['access_token']}"}
        r = await h.client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 204
        r = await h.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 401
        assert error_code(r) == "refresh_revoked"
        assert (await h.client.get("/api/v1/auth/me", headers=auth)).status_code == 401
        r = await h.client.post("/api/v1/auth/refresh", json={"refresh_token": "rt_unknown"})
        assert r.status_code == 401
        assert error_code(r) == "refresh_invalid"


async def test_roles_renter_cannot_call_admin_routes(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        renter, renter_auth = await new_user(h.client, "renter")
        _, provider_auth = await new_user(h.client, "provider")
        for auth in (renter_auth, provider_auth):
            r = await h.client.get("/api/v1/admin/wallets", headers=auth)
            assert r.status_code == 403
            assert error_code(r) == "wrong_role"
        # admin comes from config, logs in without registering, cannot self-register
        admin_tokens = await login(h.client, h.admin)
        assert admin_tokens["role"] == "admin"
        admin_auth = {"authorization": f"Bearer {admin_tokens['access_token']}"}
        r = await h.client.get("/api/v1/admin/wallets", headers=admin_auth)
        assert r.status_code == 200
        assert {"wallet": wallet(renter), "role": "renter"} in r.json()
        r = await h.client.post(
            "/api/v1/auth/register", json=await signed(h.client, h.admin, "register", "renter")
        )
        assert r.status_code == 403
        # nobody can register as admin
        r = await h.client.post(
            "/api/v1/auth/challenge",
            json={"wallet": wallet(renter), "action": "register", "role": "admin"},
        )
        assert r.status_code == 422
        assert error_code(r) == "invalid_request"
        # admin revokes the renter's sessions
        r = await h.client.post(f"/api/v1/admin/wallets/{wallet(renter)}/revoke", headers=admin_auth)
        assert r.status_code == 200
        assert r.json()["revoked_sessions"] == 1
        assert (await h.client.get("/api/v1/auth/me", headers=renter_auth)).status_code == 401


async def test_rate_limit_per_wallet_answers_429_with_retry_after(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path, wallet_burst=3, wallet_rate_per_s=0.5) as h:
        key = Ed25519PrivateKey.generate()
        body = {"wallet": wallet(key), "action": "login"}
        for _ in range(3):
            assert (await h.client.post("/api/v1/auth/challenge", json=body)).status_code == 200
        r = await h.client.post("/api/v1/auth/challenge", json=body)
        assert r.status_code == 429
        assert error_code(r) == "rate_limited_wallet"
        assert r.headers["retry-after"] == "2"  # one token at 0.5/s
        # another wallet is not affected
        other = {"wallet": wallet(Ed25519PrivateKey.generate()), "action": "login"}
        assert (await h.client.post("/api/v1/auth/challenge", json=other)).status_code == 200
        h.clock.advance(2)
        assert (await h.client.post("/api/v1/auth/challenge", json=body)).status_code == 200
        metrics = (await h.client.get("/metrics")).text
        assert 'dgpu_rejections_total{reason="rate_limited_wallet"} 1.0' in metrics


async def test_rate_limit_per_ip(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path, ip_burst=5, ip_rate_per_s=1.0) as h:
        statuses = [
            (await h.client.get("/api/v1/auth/jwks")).status_code for _ in range(6)
        ]
        assert statuses == [200] * 5 + [429]
        r = await h.client.get("/api/v1/auth/jwks")
        assert int(r.headers["retry-after"]) >= 1
        assert error_code(r) == "rate_limited_ip"


async def test_errors_are_structured_json_and_openapi_is_served(tmp_path: Path) -> None:
    async with bootstrap_server(tmp_path) as h:
        r = await h.client.get("/nope")
        assert r.status_code == 404
        assert error_code(r) == "not_found"
        r = await h.client.post("/api/v1/auth/challenge", json={"wallet": "not base58 0OIl"})
        assert r.status_code == 400
        assert error_code(r) == "bad_wallet"
        r = await h.client.post("/api/v1/auth/challenge", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert error_code(r) == "invalid_request"
        r = await h.client.post("/api/v1/auth/challenge", content=b"x" * 100_000,
                                headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert error_code(r) == "too_large"
        r = await h.client.delete("/api/v1/auth/jwks")
        assert r.status_code == 405
        assert error_code(r) == "method_not_allowed"
        schema = (await h.client.get("/openapi.json")).json()
        assert "/api/v1/auth/login" in schema["paths"]
        assert "/api/v1/blobs/{cid}" in schema["paths"]
        metrics = (await h.client.get("/metrics")).text
        assert 'route="/api/v1/auth/challenge"' in metrics
        assert "dgpu_http_request_duration_seconds_bucket" in metrics
