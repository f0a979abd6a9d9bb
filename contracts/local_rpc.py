"""The local development Solana endpoint (``dgpu-local-rpc``): build it, start it, stop it, fund wallets.

The endpoint is the contracts crate's cargo example ``dgpu-local-rpc``
(``contracts/programs/dgpu_escrow/examples/dgpu-local-rpc``): the escrow program running natively
in solana-program-test, next to the real SPL Token and ATA programs, behind a JSON-RPC server
(SOLANA-NOTES.md 4d). It is a development tool, not a validator: its tokens are worth nothing.

:func:`build` runs cargo (blocking; :class:`LocalRpcUnavailable` without cargo). :class:`LocalRpc`
starts one endpoint process (stdout, where the native program's ``msg!`` goes, to /dev/null;
stderr to a log file), waits for its info file and stops it by its PID; both block, so call them
from a thread under trio. The async helpers fund wallets with real transactions: SOL by
``requestAirdrop``, tokens by ``mint_to`` signed with the mint authority whose keypair file the
info names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import spl.token.instructions as ti
import trio
from solana.rpc.async_api import AsyncClient
from solana.rpc.types import TxOpts
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction
from spl.token.constants import TOKEN_PROGRAM_ID

from dgpu._http import async_client

CONTRACTS = Path(__file__).resolve().parent
EXAMPLE = "dgpu-local-rpc"
#: a cold build of the Solana crates takes tens of minutes on two cores
BUILD_TIMEOUT_S = 3600
READY_TIMEOUT_S = 60


__all__ = ["LocalRpc", "LocalRpcInfo", "LocalRpcUnavailable", "advance_clock", "build", "confirmed", "fund",
           "rpc_call", "send", "target_dir"]


class LocalRpcUnavailable(RuntimeError):
    """The endpoint cannot be built here (no cargo)."""


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache" / "dgpu" / "cargo-target")


def build() -> Path:
    """``cargo build --locked --example dgpu-local-rpc`` (a no-op after ``cargo test``); the binary."""
    cargo = shutil.which("cargo")
    if cargo is None:
        raise LocalRpcUnavailable("cargo is not installed: the local Solana endpoint (a Rust example of "
                                  "contracts/) cannot be built")
    env = {**os.environ, "CARGO_TARGET_DIR": str(target_dir())}
    done = subprocess.run([cargo, "build", "--locked", "--example", EXAMPLE], cwd=CONTRACTS, env=env,
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cargo build --example {EXAMPLE} failed:\n{done.stderr[-4000:]}")
    return target_dir() / "debug" / "examples" / EXAMPLE


@dataclass(frozen=True)
class LocalRpcInfo:
    """What a running endpoint wrote to its info file."""

    url: str
    pid: int
    program_id: Pubkey
    mint: Pubkey
    decimals: int
    treasury: Pubkey
    fee_bps: int
    admin: Keypair
    raw: dict[str, Any]


class LocalRpc:
    """One ``dgpu-local-rpc`` process in ``workdir``; a context manager that stops it by PID."""

    def __init__(self, binary: Path, workdir: Path, *, clock_speed: int = 1, fee_bps: int = 500,
                 start_time: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.info_path = workdir / "local-rpc.json"
        self.log_path = workdir / "local-rpc.log"
        self.args = ["--info", str(self.info_path), "--clock-speed", str(clock_speed), "--fee-bps", str(fee_bps)]
        if start_time is not None:
            self.args += ["--start-time", str(start_time)]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalRpcInfo:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen([str(self.binary), *self.args], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.info_path.exists():  # written atomically once the endpoint listens
            if self._proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"{EXAMPLE} exited with {self._proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{EXAMPLE} not ready after {READY_TIMEOUT_S} s")
            time.sleep(0.02)
        raw = json.loads(self.info_path.read_text())
        if raw["pid"] != self._proc.pid:
            raise RuntimeError(f"{self.info_path} was written by another process ({raw['pid']})")
        admin = Keypair.from_bytes(bytes(json.loads(Path(raw["admin_keypair"]).read_text())))
        return LocalRpcInfo(url=raw["url"], pid=raw["pid"], program_id=Pubkey.from_string(raw["program_id"]),
                            mint=Pubkey.from_string(raw["mint"]), decimals=raw["decimals"],
                            treasury=Pubkey.from_string(raw["treasury"]), fee_bps=raw["fee_bps"], admin=admin,
                            raw=raw)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> LocalRpcInfo:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def rpc_call(url: str, method: str, *params: Any) -> dict[str, Any]:
    """One raw JSON-RPC call; the whole answer (``result`` or ``error``)."""
    async with async_client(timeout=30.0) as http:
        resp = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        resp.raise_for_status()
        answer: dict[str, Any] = resp.json()
        return answer


async def advance_clock(url: str, seconds: int) -> int:
    """Moves the endpoint's ledger clock forward (its development-only method); the new time."""
    answer = await rpc_call(url, "dgpu_advanceClock", seconds)
    return int(answer["result"]["unixTimestamp"])


async def send(client: AsyncClient, instructions: list[Instruction], *signers: Keypair) -> Signature:
    """Sign (first signer pays), send with preflight, and wait until the status is known."""
    blockhash = (await client.get_latest_blockhash()).value.blockhash
    tx = Transaction(list(signers), Message.new_with_blockhash(instructions, signers[0].pubkey(), blockhash),
                     blockhash)
    signature = (await client.send_raw_transaction(bytes(tx), opts=TxOpts(skip_confirmation=True))).value
    await confirmed(client, signature)
    return signature


async def confirmed(client: AsyncClient, signature: Signature) -> None:
    with trio.fail_after(30):
        while True:
            status = (await client.get_signature_statuses([signature])).value[0]
            if status is not None:
                if status.err is not None:
                    raise RuntimeError(f"{signature} failed: {status.err}")
                return
            await trio.sleep(0.05)


async def fund(client: AsyncClient, info: LocalRpcInfo, owner: Keypair, *, lamports: int, tokens: int) -> Pubkey:
    """Airdrop ``lamports`` to ``owner`` and mint ``tokens`` base units to its token account."""
    await confirmed(client, (await client.request_airdrop(owner.pubkey(), lamports)).value)
    ata = ti.get_associated_token_address(owner.pubkey(), info.mint)
    ixs = [ti.create_idempotent_associated_token_account(info.admin.pubkey(), owner.pubkey(), info.mint)]
    if tokens:
        ixs.append(ti.mint_to(ti.MintToParams(program_id=TOKEN_PROGRAM_ID, mint=info.mint, dest=ata,
                                              mint_authority=info.admin.pubkey(), amount=tokens)))
    await send(client, ixs, info.admin)
    return ata
