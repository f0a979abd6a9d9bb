"""A minimal JSON-RPC face for an in-process LiteSVM, as an httpx transport (tests only).

Answers the calls ``SolanaEscrow`` makes: getAccountInfo, getLatestBlockhash, sendTransaction
(with preflight errors shaped like a validator's), getSignatureStatuses. ``hold_confirmations``
makes every status stay unknown (to exercise the confirmation timeout).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from solana.rpc.async_api import AsyncClient
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata


class LiteSvmRpc:
    def __init__(self, svm: LiteSVM) -> None:
        self.svm = svm
        self.landed: set[str] = set()
        self.hold_confirmations = False
        self.calls: list[str] = []

    def client(self) -> AsyncClient:
        client = AsyncClient("http://litesvm.invalid")
        client._provider.session = httpx.AsyncClient(transport=httpx.MockTransport(self.handle))
        return client

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        method, params = body["method"], body.get("params") or []
        self.calls.append(method)
        try:
            result = getattr(self, "_" + method)(*params)
        except _RpcError as exc:
            return httpx.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "error": exc.error})
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": body["id"], "result": result})

    def _context(self) -> dict[str, Any]:
        return {"slot": self.svm.get_clock().slot}

    def _getAccountInfo(self, key: str, _opts: Any = None) -> dict[str, Any]:
        account = self.svm.get_account(Pubkey.from_string(key))
        if account is None:
            return {"context": self._context(), "value": None}
        return {"context": self._context(), "value": {
            "data": [base64.b64encode(bytes(account.data)).decode(), "base64"],
            "executable": account.executable, "lamports": account.lamports, "owner": str(account.owner),
            "rentEpoch": 0, "space": len(account.data)}}

    def _getBalance(self, key: str, _opts: Any = None) -> dict[str, Any]:
        return {"context": self._context(), "value": self.svm.get_balance(Pubkey.from_string(key)) or 0}

    def _getLatestBlockhash(self, _opts: Any = None) -> dict[str, Any]:
        return {"context": self._context(),
                "value": {"blockhash": str(self.svm.latest_blockhash()), "lastValidBlockHeight": 10**6}}

    def _sendTransaction(self, raw: str, _opts: Any = None) -> str:
        tx = Transaction.from_bytes(base64.b64decode(raw))
        result = self.svm.send_transaction(tx)
        if isinstance(result, FailedTransactionMetadata):
            err = result.err()
            err_json = json.loads(err.to_json()) if hasattr(err, "to_json") else str(err).rsplit(".", 1)[-1]
            raise _RpcError({"code": -32002, "message": f"Transaction simulation failed: {err}", "data": {
                "err": err_json, "logs": list(result.meta().logs()), "accounts": None,
                "unitsConsumed": 0, "returnData": None}})
        signature = str(tx.signatures[0])
        self.landed.add(signature)
        return signature

    def _getSignatureStatuses(self, sigs: list[str], _opts: Any = None) -> dict[str, Any]:
        statuses = [
            {"slot": 1, "confirmations": None, "err": None, "status": {"Ok": None},
             "confirmationStatus": "confirmed"}
            if sig in self.landed and not self.hold_confirmations else None
            for sig in sigs
        ]
        return {"context": self._context(), "value": statuses}


class _RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error
