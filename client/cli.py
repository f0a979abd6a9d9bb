"""The renter commands of ``dgpu``: offers, rent, jobs, wallet, login — clients of the node's API.

``add_commands(subparsers)`` registers them on the ``dgpu`` parser (``node/cli.py``); each sets
``handler`` (``args.handler(args) -> int``). ``python -m dgpu.client.cli`` runs them alone.

Every command talks to the node's local HTTP API (``api_url``) with the token ``dgpu login``
stored in the data dir; see ``client/settings.py`` for the configuration scheme. Amounts are
integers of the mint's base unit on the wire; they are shown as dGPU with the mint's decimals
(read from the ledger through the node), using ``Decimal``, never floats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

import httpx

from dgpu.client.settings import HELP, ClientSettings, SettingsError, load_settings

__all__ = ["add_commands", "main"]

#: how often ``rent`` and ``jobs logs --follow`` poll the node (a local call)
POLL_S = 0.5
#: the most log lines fetched per poll (the API's own bound is 1000)
LOG_BATCH = 500
_TERMINAL = {"finished", "failed", "cancelled", "expired"}
MAX_SCRIPT_BYTES = 64 * 1024
#: a downloaded result archive at most (the provider's blob limit); bounds the temp file
MAX_RESULT_BYTES = 1024**3


class CliError(Exception):
    """A message for the user; the command exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- the API client ------------------------------------------------------------------------------


class Api:
    """A small blocking client of the node's API; errors become CliError with the API's message."""

    def __init__(self, settings: ClientSettings, *, auth: bool = True) -> None:
        self.settings = settings
        headers = {}
        if auth:
            token = settings.token()
            if token is None:
                raise CliError(f"no token: run `dgpu login` first (it writes {settings.token_file})", 3)
            headers["authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=settings.api_url, timeout=settings.timeout_s, headers=headers)
        #: a stored login may be refreshed (rotating refresh token); a DGPU_TOKEN cannot
        self._can_refresh = auth and not settings.env_token

    def close(self) -> None:
        self.http.close()

    def _refresh(self) -> bool:
        """Swap the stored refresh token for a new pair (rotation); False when there is none."""
        try:
            stored = json.loads(self.settings.token_file.read_text())
        except (OSError, ValueError):
            return False
        refresh = stored.get("refresh_token") if isinstance(stored, dict) else None
        if not refresh:
            return False
        try:
            r = self.http.post("/api/v1/auth/refresh", json={"refresh_token": refresh},
                               headers={"authorization": ""})
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        pair = r.json()
        store_tokens(self.settings.token_file, {**stored, **{k: pair[k] for k in (
            "access_token", "expires_at", "refresh_token", "refresh_expires_at") if k in pair}})
        self.http.headers["authorization"] = f"Bearer {pair['access_token']}"
        return True

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """One API call; an expired access token is refreshed once, transparently."""
        r = self._request(method, path, **kw)
        if r.status_code == 401 and self._can_refresh and self._refresh():
            r = self._request(method, path, **kw)
        return self._body(r)

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the node's API at {self.http.base_url} ({type(exc).__name__}); "
                           "is the node running with its API enabled?", 4) from None

    @staticmethod
    def _body(r: httpx.Response) -> Any:
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            code, message = err.get("code", f"http_{r.status_code}"), err.get("message", r.reason_phrase)
            if r.status_code == 401:
                message += " (run `dgpu login` again)"
            raise ApiCallError(r.status_code, str(code), str(message))
        return body


def store_tokens(path: Path, tokens: dict[str, Any]) -> None:
    """Write the token file atomically, mode 0600 from its creation (it holds bearer tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f)
    os.replace(tmp, path)


class ApiCallError(CliError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]", 1)
        self.status, self.api_code = status, code


# -- formatting ----------------------------------------------------------------------------------


def fmt_amount(base_units: int, decimals: int | None) -> str:
    """``8334`` with 6 decimals -> ``"0.008334"``; unknown decimals -> base units."""
    if decimals is None:
        return f"{base_units} units"
    return f"{Decimal(base_units).scaleb(-decimals):.{decimals}f}"


def parse_amount(text: str, decimals: int) -> int:
    """``"1.5"`` dGPU -> base units; refuses more precision than the mint has."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CliError(f"not an amount: {text!r}", 2) from None
    units = value.scaleb(decimals)
    if not value.is_finite() or units != units.to_integral_value() or units <= 0:
        raise CliError(f"{text} is not a positive amount with at most {decimals} decimals", 2)
    return int(units)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    """A one-line text progress bar: ``label [#####-----]  45%  1.2 MiB/2.7 MiB  3.4 MiB/s``.

    ``update(done, total)`` redraws (at most every ``min_interval_s``, and always at the end);
    ``close()`` ends the line. Usable as a ``progress(bytes_done, total)`` callback."""

    def __init__(self, out: IO[str], label: str = "", *, width: int = 30, min_interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.label, self.width, self.min_interval_s, self.clock = out, label, width, min_interval_s, clock
        self.started = clock()
        self._drawn_at: float | None = None
        self._last = ""

    def render(self, done: int, total: int | None) -> str:
        elapsed = max(self.clock() - self.started, 1e-6)
        rate = f"{fmt_bytes(done / elapsed)}/s"
        if not total:
            return f"{self.label} {fmt_bytes(done)}  {rate}".strip()
        frac = min(max(done / total, 0.0), 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        return (f"{self.label} [{bar}] {frac * 100:3.0f}%  {fmt_bytes(done)}/{fmt_bytes(total)}  "
                f"{rate}").strip()

    def update(self, done: int, total: int | None) -> None:
        now = self.clock()
        final = total is not None and done >= total
        if not final and self._drawn_at is not None and now - self._drawn_at < self.min_interval_s:
            return
        self._drawn_at = now
        line = self.render(done, total)
        self.out.write("\r" + line + " " * max(len(self._last) - len(line), 0))
        self.out.flush()
        self._last = line

    __call__ = update

    def close(self) -> None:
        if self._last:
            self.out.write("\n")
            self.out.flush()


def table(rows: list[list[str]], headers: list[str], out: IO[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip(), file=out)


def _decimals(api: Api) -> int | None:
    try:
        return int(api.call("GET", "/api/v1/billing/wallet")["decimals"])
    except ApiCallError:
        return None  # no ledger on this node: amounts are shown in base units


# -- commands ------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> ClientSettings:
    try:
        return load_settings({"config": args.config, "api_url": args.api_url, "data_dir": args.data_dir,
                              "timeout": args.timeout})
    except SettingsError as exc:
        raise CliError(str(exc), 2) from None


def cmd_offers(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    api = Api(_settings(args))
    params: dict[str, Any] = {"limit": args.limit, "sort": args.sort, "gpu_count": args.count,
                              "min_vram_mib": args.min_vram, "include_simulated": args.include_simulated}
    for name in ("gpu_model", "region", "max_price", "executor"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    body = api.call("GET", "/api/v1/billing/marketplace", params=params)
    decimals = _decimals(api)
    api.close()
    if args.json:
        json.dump({"decimals": decimals, **body}, out, indent=2)
        print(file=out)
        return 0
    rows = []
    for o in body["offers"]:
        g = o["gpus"][0]
        price = int(o["price_per_gpu_minute"])
        rows.append([o["provider"][:12] + "…", g["model"], f"{g['vram_mib']} MiB", str(o["gpu_count"]),
                     fmt_amount(price, decimals), fmt_amount(price * 60, decimals), o["region"],
                     "yes" if o["simulated"] else "no"])
    table(rows, ["PROVIDER", "GPU", "VRAM", "COUNT", "dGPU/GPU-MIN", "dGPU/GPU-HOUR", "REGION", "SIMULATED"], out)
    print(f"{len(rows)} of {body['total']} matching offer(s)", file=out)
    return 0


def _job_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"max_minutes": args.max_minutes}
    if args.script is not None:
        path = Path(args.script)
        try:
            if path.stat().st_size > MAX_SCRIPT_BYTES:
                raise CliError(f"{path} is larger than {MAX_SCRIPT_BYTES} bytes", 2)
            body["script"] = path.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}", 2) from None
    elif args.image is not None:
        body["image"] = args.image
        body["command"] = list(args.command or [])
    else:
        raise CliError("give --script FILE or --image IMAGE [--command ...]", 2)
    if args.gpu:
        model, _, vram = args.gpu.partition(":")
        body["gpu_model"] = model
        if vram:
            if not vram.isdigit():
                raise CliError("--gpu is MODEL[:MIN_VRAM_MIB]", 2)
            body["min_vram_mib"] = int(vram)
    if args.max_price is not None:
        body["max_price_per_minute"] = args.max_price
    if args.provider:
        body["provider"] = args.provider
    if args.count != 1:
        body["gpu_count"] = args.count
    inputs: dict[str, str] = {}
    for item in args.input or []:
        job_path, sep, local = item.partition("=")
        if not sep or not job_path or not local:
            raise CliError(f"--input is JOB_PATH=LOCAL_FILE, got {item!r}", 2)
        if not Path(local).is_file():
            raise CliError(f"--input {job_path}: {local} is not a readable file", 2)
        inputs[job_path] = str(Path(local).resolve())
    if inputs:
        body["inputs"] = inputs
    return body


def _status_line(job: dict[str, Any], decimals: int | None) -> str:
    spent = fmt_amount(int(job["spent"]), decimals)
    return f"[{job['state']}] {job['minutes']} min, spent {spent} dGPU"


def _follow(api: Api, job_id: str, out: IO[str], err: IO[str], decimals: int | None) -> dict[str, Any]:
    """Print new log lines and a status line until the job ends; returns the final status."""
    seq = 0
    last_status = ""
    while True:
        logs = api.call("GET", f"/api/v1/jobs/{job_id}/logs", params={"since": seq, "limit": LOG_BATCH})
        for line in logs["lines"]:
            print(line["line"], file=out if line["stream"] == "stdout" else err, flush=True)
        seq = max(seq, logs["next_seq"] if not logs["lines"] else logs["lines"][-1]["seq"] + 1)
        job = api.call("GET", f"/api/v1/jobs/{job_id}")
        status = _status_line(job, decimals)
        if status != last_status:
            print(status, file=err, flush=True)
            last_status = status
        if job["state"] in _TERMINAL and seq >= job["next_log_seq"]:
            return dict(job)
        time.sleep(POLL_S)


def _summary(job: dict[str, Any], decimals: int | None, err: IO[str]) -> int:
    paid = fmt_amount(int(job["paid"]), decimals)
    fee = fmt_amount(int(job["fee"]), decimals)
    refunded = fmt_amount(int(job["refunded"]), decimals)
    print(f"job {job['id']} {job['state']} (exit code {job['exit_code']}): {job['minutes']} min, "
          f"paid {paid} + fee {fee}, refunded {refunded} dGPU"
          + (f" — {job['reason']}" if job["reason"] else ""), file=err, flush=True)
    return 0 if job["state"] == "finished" and job["exit_code"] == 0 else 1


def cmd_rent(args: argparse.Namespace, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    body = _job_body(args)
    api = Api(_settings(args))
    decimals = _decimals(api)
    job = api.call("POST", "/api/v1/jobs", json=body)
    job_id = job["id"]
    print(f"job {job_id} submitted (Ctrl-C cancels it and settles the escrow)", file=err, flush=True)
    try:
        final = _follow(api, job_id, out, err, decimals)
    except KeyboardInterrupt:
        print(f"cancelling job {job_id}…", file=err, flush=True)
        try:
            api.call("DELETE", f"/api/v1/jobs/{job_id}")
        except ApiCallError as exc:
            if exc.api_code != "job_ended":
                raise
        try:
            final = _follow(api, job_id, out, err, decimals)
        except KeyboardInterrupt:
            print(f"not waiting; the node is cancelling job {job_id} (`dgpu jobs show {job_id}`)", file=err)
            return 130
        _summary(final, decimals, err)
        return 130
    finally:
        api.close()
    return _summary(final, decimals, err)


def cmd_jobs(args: argparse.Namespace, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    api = Api(_settings(args))
    try:
        action = args.action or "list"
        if action == "list":
            params: dict[str, Any] = {"limit": args.limit}
            if args.state:
                params["state"] = args.state
            body = api.call("GET", "/api/v1/jobs", params=params)
            if args.json:
                json.dump(body, out, indent=2)
                print(file=out)
                return 0
            decimals = _decimals(api)
            table([[j["id"], j["state"], (j["provider"] or "-")[:12], str(j["minutes"]),
                    fmt_amount(int(j["spent"]), decimals), str(j["exit_code"])] for j in body["jobs"]],
                  ["ID", "STATE", "PROVIDER", "MINUTES", "SPENT", "EXIT"], out)
            return 0
        if args.job_id is None:
            raise CliError(f"dgpu jobs {action} needs a job id", 2)
        if action == "show":
            json.dump(api.call("GET", f"/api/v1/jobs/{args.job_id}"), out, indent=2)
            print(file=out)
            return 0
        if action == "logs":
            if args.follow:
                final = _follow(api, args.job_id, out, err, _decimals(api))
                return _summary(final, _decimals(api), err)
            body = api.call("GET", f"/api/v1/jobs/{args.job_id}/logs", params={"limit": args.limit})
            for line in body["lines"]:
                print(line["line"], file=out if line["stream"] == "stdout" else err)
            return 0
        if action == "cancel":
            job = api.call("DELETE", f"/api/v1/jobs/{args.job_id}")
            print(f"job {job['id']}: cancel requested (state {job['state']})", file=out)
            return 0
        if action == "result":
            dest = Path(args.out or f"result-{args.job_id}")
            files = download_result(api, args.job_id, dest, ProgressBar(err, "result"))
            print(f"{len(files)} file(s) in {dest}", file=out)
            return 0
        raise CliError(f"unknown action {action}", 2)
    finally:
        api.close()


def download_result(api: Api, job_id: str, dest: Path, bar: ProgressBar) -> list[Path]:
    """Stream ``GET /api/v1/jobs/{id}/result`` to a temp file with a progress bar, then unpack it
    safely (no absolute paths, ``..``, links or special files; size-bounded) into ``dest``."""
    from dgpu.node.services.blobs import BlobError, safe_unpack

    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".dgpu-result-", suffix=".tar", dir=dest)
    tmp = Path(tmp_name)
    total: int | None = None
    done = 0
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with api.http.stream("GET", f"/api/v1/jobs/{job_id}/result", timeout=None) as r:
                    if r.status_code >= 400:
                        r.read()
                        _raise_api_error(r)
                    total = int(r.headers.get("content-length", 0)) or None
                    bar.update(0, total)
                    for chunk in r.iter_bytes(64 * 1024):
                        f.write(chunk)
                        done += len(chunk)
                        if done > MAX_RESULT_BYTES:
                            raise CliError(f"the result is larger than {fmt_bytes(MAX_RESULT_BYTES)}; refused")
                        bar.update(done, total)
            except httpx.HTTPError as exc:
                raise CliError(f"the result download failed ({type(exc).__name__})", 4) from None
            finally:
                bar.close()
        if total is not None and done != total:
            raise CliError(f"the result download ended after {done} of {total} bytes", 4)
        try:
            return safe_unpack(tmp, dest, max_total_bytes=MAX_RESULT_BYTES * 4)
        except BlobError as exc:
            raise CliError(f"refusing the result archive: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _raise_api_error(r: httpx.Response) -> None:
    try:
        body = r.json()
    except ValueError:
        body = None
    err = body.get("error", {}) if isinstance(body, dict) else {}
    raise ApiCallError(r.status_code, str(err.get("code", f"http_{r.status_code}")),
                       str(err.get("message", r.reason_phrase)))


def cmd_wallet(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    if args.solana_rpc is not None:
        return _solana_wallet(args, out)
    api = Api(_settings(args))
    try:
        w = api.call("GET", "/api/v1/billing/wallet")
        decimals = int(w["decimals"])
        if args.faucet is not None:
            if w["real_value"]:
                raise CliError("the faucet exists only on development networks; this ledger holds real value", 2)
            amount = parse_amount(args.faucet, decimals)
            api.call("POST", f"/api/v1/billing/wallet/{w['address']}/deposit", json={"amount": amount})
            w = api.call("GET", "/api/v1/billing/wallet")
        if args.json:
            json.dump(w, out, indent=2)
            print(file=out)
            return 0
        label = "" if w["real_value"] else "  (development ledger: NO REAL VALUE)"
        print(f"address   {w['address']}", file=out)
        print(f"ledger    {w['ledger']}{label}", file=out)
        print(f"mint      {w['mint']} ({decimals} decimals)", file=out)
        print(f"balance   {fmt_amount(int(w['balance']), decimals)} dGPU", file=out)
        return 0
    finally:
        api.close()


def _solana_wallet(args: argparse.Namespace, out: IO[str]) -> int:
    """The node key's wallet on Solana, read over RPC (no node needed)."""
    import trio
    from solders.keypair import Keypair

    from dgpu.client.wallet import solana_wallet_report
    from dgpu.contracts.errors import ContractsError
    from dgpu.contracts.solana_escrow import SolanaEscrow
    from dgpu.node.adapters.keystore import load_keystore
    from dgpu.node.errors import KeystoreError

    if args.program_id is None:
        raise CliError("--solana-rpc needs --program-id (the dGPU escrow program)", 2)
    settings = _settings(args)
    try:
        key = load_keystore(settings.key_file, passphrase=os.environ.get("DGPU_KEY_PASSPHRASE"))
    except KeystoreError as exc:
        raise CliError(f"cannot load the node key: {exc}", 2) from None
    keypair = Keypair.from_bytes(bytes(key.to_solana_keypair()))

    async def report() -> dict[str, Any]:
        escrow = SolanaEscrow(args.solana_rpc, args.program_id, keypair)
        try:
            return await solana_wallet_report(escrow, create_token_account=args.create_token_account)
        finally:
            await escrow.aclose()

    try:
        w = trio.run(report)
    except ContractsError as exc:
        raise CliError(f"Solana: {exc}", 1) from None
    if args.json:
        json.dump(w, out, indent=2)
        print(file=out)
        return 0
    print(f"address   {w['address']}", file=out)
    print(f"SOL       {w['sol']}", file=out)
    print(f"mint      {w['mint']} ({w['decimals']} decimals)", file=out)
    print(f"balance   {w['dgpu']} dGPU", file=out)
    if w["token_account"]:
        print(f"token acc {w['token_account']}", file=out)
    return 0


def cmd_login(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    """Sign the bootstrap's challenge with the node key (through the node's auth proxy); store
    the tokens in the data dir, mode 0600. Registers the wallet's role only with ``--register``."""
    from dgpu.node.adapters.keystore import load_keystore
    from dgpu.node.errors import KeystoreError
    from dgpu.protocol.keys import b58encode

    settings = _settings(args)
    if not settings.key_file.exists():
        raise CliError(f"no node key at {settings.key_file} (start the node once, or give --data-dir)", 2)
    try:
        key = load_keystore(settings.key_file, passphrase=os.environ.get("DGPU_KEY_PASSPHRASE"))
    except KeystoreError as exc:
        raise CliError(f"cannot load the node key: {exc}", 2) from None
    wallet = key.public_key.wallet
    api = Api(settings, auth=False)

    def signed(action: str, role: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"wallet": wallet, "action": action}
        if role is not None:
            body["role"] = role
        ch = api.call("POST", "/api/v1/auth/challenge", json=body)
        message = json.loads(ch["message"])
        to_sign = bytes.fromhex(ch["signing_bytes_hex"])
        # sign only a challenge for this wallet and action, nothing else a server might send
        if message.get("wallet") != wallet or message.get("action") != action or \
                not to_sign.endswith(ch["message"].encode("ascii")):
            raise CliError("the node returned a challenge for something else; not signing it", 1)
        return {"wallet": wallet, "nonce": ch["nonce"], "signature": b58encode(key.sign(to_sign))}

    try:
        if args.register:
            api.call("POST", "/api/v1/auth/register", json=signed("register", args.register))
        try:
            pair = api.call("POST", "/api/v1/auth/login", json=signed("login"))
        except ApiCallError as exc:
            if exc.api_code == "not_registered":
                raise CliError(f"wallet {wallet} has no role at the bootstrap node yet: run "
                               "`dgpu login --register renter` (or provider) once", 3) from None
            raise
    finally:
        api.close()
    path = settings.token_file
    store_tokens(path, {"access_token": pair["access_token"], "expires_at": pair["expires_at"],
                        "refresh_token": pair["refresh_token"], "refresh_expires_at": pair["refresh_expires_at"],
                        "wallet": wallet, "role": pair["role"]})
    print(f"logged in as {wallet} ({pair['role']}); token stored in {path} (expires at {pair['expires_at']})",
          file=out)
    return 0


# -- parser --------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (file < DGPU_* environment < flags)")
    g.add_argument("--config", default=None, help="TOML config file (default ~/.config/dgpu/config.toml)")
    g.add_argument("--api-url", default=None, help="the node's local API (default http://127.0.0.1:8700)")
    g.add_argument("--data-dir", default=None, help="the node's data dir (identity.json, api-token.json)")
    g.add_argument("--timeout", type=float, default=None, help="seconds per API request (default 30)")


def _wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CliError as exc:
            print(f"dgpu {args.cmd}: {exc}", file=sys.stderr)
            return exc.code

    return handler


def add_commands(subparsers: Any) -> None:
    """Register offers, rent, jobs, wallet and login on ``dgpu``'s subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser("offers", help="list GPU offers (the node's offer book)", formatter_class=fmt,
                              description="List offers the node knows, cheapest first.\n\n" + HELP)
    _common(p)
    p.add_argument("--gpu-model", default=None, help='e.g. "RTX 4090" (case-insensitive)')
    p.add_argument("--min-vram", type=int, default=0, metavar="MIB")
    p.add_argument("--count", type=int, default=1, help="GPUs of one kind")
    p.add_argument("--region", default=None)
    p.add_argument("--max-price", type=int, default=None, metavar="UNITS", help="base units per GPU-minute")
    p.add_argument("--executor", choices=["docker", "script"], default=None)
    p.add_argument("--include-simulated", action="store_true", help="show simulated GPUs (development)")
    p.add_argument("--sort", choices=["price", "-price", "vram", "-vram"], default="price")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_wrap(cmd_offers))

    p = subparsers.add_parser("rent", help="rent a GPU and run a job, with live logs", formatter_class=fmt,
                              description="Submit a job through the node, stream its logs and a status line "
                                          "(state, minutes, spent). Ctrl-C cancels the job; the escrow is "
                                          "settled and unused minutes come back.\n\n" + HELP)
    _common(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--script", default=None, metavar="FILE", help="a shell script (script executor)")
    what.add_argument("--image", default=None, help="a Docker image (docker executor)")
    p.add_argument("--command", nargs=argparse.REMAINDER, default=None,
                   help="with --image: the command and its arguments (put it last)")
    p.add_argument("--max-minutes", type=int, default=10, help="the deposit covers this many minutes")
    p.add_argument("--max-price", type=int, default=None, metavar="UNITS",
                   help="most base units per minute for the whole job")
    p.add_argument("--gpu", default=None, metavar="MODEL[:MIN_VRAM_MIB]")
    p.add_argument("--count", type=int, default=1, help="GPUs")
    p.add_argument("--provider", default=None, metavar="WALLET", help="rent from this provider")
    p.add_argument("--input", action="append", default=[], metavar="JOB_PATH=LOCAL_FILE",
                   help="ship a file to the job (read-only under /inputs, or $HOME/inputs for scripts); repeatable")
    p.set_defaults(handler=_wrap(cmd_rent))

    p = subparsers.add_parser("jobs", help="list, show, follow, cancel API jobs or download their results",
                              formatter_class=fmt,
                              description="Jobs submitted through the node's API.\n\n" + HELP)
    _common(p)
    p.add_argument("action", nargs="?", choices=["list", "show", "logs", "cancel", "result"], default="list")
    p.add_argument("job_id", nargs="?", default=None)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="result: unpack the job's outputs here (default ./result-ID)")
    p.add_argument("--state", default=None, choices=["pending", "running", "finished", "failed", "cancelled",
                                                     "expired"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--follow", "-f", action="store_true", help="logs: follow until the job ends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_wrap(cmd_jobs))

    p = subparsers.add_parser("wallet", help="the node's wallet: address and balances", formatter_class=fmt,
                              description="Show the node's wallet (its key is the wallet); --faucet mints worthless "
                                          "development tokens (development ledger only). With --solana-rpc the "
                                          "wallet is read on Solana directly (SOL and dGPU balances), and "
                                          "--create-token-account creates its dGPU token account; nothing is "
                                          "created otherwise.\n\n" + HELP)
    _common(p)
    p.add_argument("--faucet", default=None, metavar="AMOUNT", help="dGPU to mint, e.g. 10 or 0.5")
    p.add_argument("--solana-rpc", default=None, metavar="URL", help="read the wallet on Solana (any RPC URL)")
    p.add_argument("--program-id", default=None, help="the dGPU escrow program (with --solana-rpc)")
    p.add_argument("--create-token-account", action="store_true",
                   help="with --solana-rpc: create the wallet's dGPU token account if missing (costs SOL rent)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_wrap(cmd_wallet))

    p = subparsers.add_parser("login", help="get an API token by signing with the node key", formatter_class=fmt,
                              description="Sign the bootstrap node's challenge with the node key (via the "
                                          "node's API) and store the token in the data dir (0600). The key's "
                                          "passphrase, if any, comes from $DGPU_KEY_PASSPHRASE.\n\n" + HELP)
    _common(p)
    p.add_argument("--register", choices=["renter", "provider"], default=None,
                   help="first register the wallet with this role at the bootstrap node")
    p.set_defaults(handler=_wrap(cmd_login))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dgpu", description="dGPU renter commands (clients of the node's API)")
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
