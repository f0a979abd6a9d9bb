"""The node's identity file: one Ed25519 key in the Solana CLI keypair format.

Plain file: a JSON array of 64 integers (32-byte seed + 32-byte public key), exactly what
``solana-keygen`` writes, so the same file is the node's libp2p identity and its wallet.
Encrypted file (optional): a small JSON object that wraps the same 64 bytes::

    {"dgpu_keystore": 1, "kdf": "scrypt", "n": 32768, "r": 8, "p": 1,
     "salt": "<b64>", "cipher": "chacha20poly1305", "nonce": "<b64>", "ciphertext": "<b64>",
     "pubkey": "<base58 wallet>"}

The public key is stored in clear so a locked key's wallet can be shown without the passphrase.
Files are created with mode 0600 (never widened afterwards). Neither the seed nor the
passphrase appears in any log line or error message.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from dgpu.node.errors import KeystoreError, PassphraseError
from dgpu.protocol.keys import PublicKey, SigningKey

__all__ = ["create_keystore", "libp2p_key_pair", "load_keystore", "load_or_create"]

_SCRYPT_N = 2**15  # ~30 ms and 32 MiB on these machines: slow enough for offline guessing
_SCRYPT_R = 8
_SCRYPT_P = 1
_MAX_FILE_BYTES = 4096  # a keystore is < 1 KiB; refuse to parse anything larger


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _encode(key: SigningKey, passphrase: str | None) -> bytes:
    keypair = bytes(key.to_solana_keypair())
    if passphrase is None:
        return json.dumps(list(keypair)).encode("ascii")
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    aead = ChaCha20Poly1305(_derive(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P))
    pubkey = key.public_key.wallet
    wrapper = {
        "dgpu_keystore": 1,
        "kdf": "scrypt",
        "n": _SCRYPT_N,
        "r": _SCRYPT_R,
        "p": _SCRYPT_P,
        "salt": base64.b64encode(salt).decode(),
        "cipher": "chacha20poly1305",
        "nonce": base64.b64encode(nonce).decode(),
        # the wallet is authenticated as associated data: swapping it breaks decryption
        "ciphertext": base64.b64encode(aead.encrypt(nonce, keypair, pubkey.encode())).decode(),
        "pubkey": pubkey,
    }
    return json.dumps(wrapper, indent=1).encode("ascii")


def _decode(raw: bytes, passphrase: str | None, path: Path) -> SigningKey:
    try:
        doc: Any = json.loads(raw)
    except ValueError:
        raise KeystoreError(f"{path}: not a JSON keystore") from None
    if isinstance(doc, list):
        try:
            return SigningKey.from_solana_keypair(bytes(doc))
        except (ValueError, TypeError):
            raise KeystoreError(f"{path}: not a 64-byte Solana keypair") from None
    if not isinstance(doc, dict) or doc.get("dgpu_keystore") != 1:
        raise KeystoreError(f"{path}: unknown keystore format")
    if passphrase is None:
        raise PassphraseError(f"{path}: the key is encrypted; a passphrase is needed")
    try:
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
        if not (2**10 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
            raise KeystoreError(f"{path}: scrypt parameters out of range")
        salt = base64.b64decode(doc["salt"])
        nonce = base64.b64decode(doc["nonce"])
        ciphertext = base64.b64decode(doc["ciphertext"])
        pubkey = str(doc["pubkey"])
    except (KeyError, ValueError, TypeError):
        raise KeystoreError(f"{path}: damaged encrypted keystore") from None
    try:
        plain = ChaCha20Poly1305(_derive(passphrase, salt, n, r, p)).decrypt(
            nonce, ciphertext, pubkey.encode()
        )
    except (InvalidTag, ValueError):
        raise PassphraseError(f"{path}: wrong passphrase or damaged file") from None
    try:
        return SigningKey.from_solana_keypair(plain)
    except ValueError:
        raise KeystoreError(f"{path}: decrypted data is not a keypair") from None


def create_keystore(path: Path, *, passphrase: str | None = None,
                    seed: bytes | None = None) -> SigningKey:
    """Write a new key to ``path`` (mode 0600, refusing to overwrite) and return it."""
    key = SigningKey(seed if seed is not None else secrets.token_bytes(32))
    data = _encode(key, passphrase)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the data dir: owner only
    try:
        # O_EXCL: never clobber an existing identity; mode 0600 from the first byte on disk
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{path}: a key file already exists") from None
    except OSError as exc:
        raise KeystoreError(f"{path}: cannot create key file ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return key


def load_keystore(path: Path, *, passphrase: str | None = None) -> SigningKey:
    """Read the key at ``path``; ``KeystoreError``/``PassphraseError`` if it cannot be used."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeystoreError(f"{path}: cannot read key file ({exc.strerror})") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise KeystoreError(f"{path}: too large to be a keystore")
    return _decode(raw, passphrase, path)


def load_or_create(path: Path, *, passphrase: str | None = None) -> SigningKey:
    """The node's identity: loaded if ``path`` exists, else created there (first run)."""
    if path.exists():
        return load_keystore(path, passphrase=passphrase)
    return create_keystore(path, passphrase=passphrase)


def public_key_of(path: Path) -> PublicKey:
    """The wallet of a key file without decrypting it (encrypted files store it in clear)."""
    raw = path.read_bytes()[:_MAX_FILE_BYTES]
    doc = json.loads(raw)
    if isinstance(doc, list):
        return SigningKey.from_solana_keypair(bytes(doc)).public_key
    return PublicKey.from_wallet(str(doc["pubkey"]))


def libp2p_key_pair(key: SigningKey) -> Any:
    """The same key as a libp2p ``KeyPair`` (so the peer ID is derived from the wallet key)."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    return create_new_key_pair(key.seed)
