"""``dgpu jobs shell ID [-- CMD...]``: an interactive terminal in a running job, over the node's WebSocket.

The terminal is put in raw mode (when stdin is one), so every key, Ctrl-C included, goes to the
job's terminal; window size changes are sent as they happen; the command's exit code becomes
ours. Without a terminal (a pipe), stdin is sent as it is and its end closes the job's input.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import termios
import threading
import tty
from typing import IO, Any
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from dgpu.client.api_client import CliError, settings_of

__all__ = ["cmd_shell", "shell_url"]


def shell_url(api_url: str, job_id: str, argv: list[str], *, rows: int, cols: int, tty_mode: bool) -> str:
    base = api_url.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    query = urlencode([*(("cmd", a) for a in argv), ("rows", rows), ("cols", cols),
                       ("tty", "true" if tty_mode else "false")])
    return f"{base}/api/v1/jobs/{job_id}/shell?{query}"


def _pump_stdin(ws: ClientConnection, stdin: IO[bytes], *, tty_mode: bool) -> None:
    """Keys to the job until stdin ends (a thread: stdin reads block)."""
    fd = stdin.fileno()
    with contextlib.suppress(ConnectionClosed, OSError):
        while data := os.read(fd, 4096):
            ws.send(data)
        if not tty_mode:
            ws.send(json.dumps({"eof": True}))


def cmd_shell(job_id: str, argv: list[str], args: Any, out: IO[bytes] | None = None,
              err: IO[str] = sys.stderr) -> int:
    settings = settings_of(args)
    token = settings.token()
    if token is None:
        raise CliError(f"no token: run `dgpu login` first (it writes {settings.token_file})", 3)
    stdin, stdout = sys.stdin.buffer, out or sys.stdout.buffer
    tty_mode = os.isatty(stdin.fileno())
    size = shutil.get_terminal_size()
    url = shell_url(settings.api_url, job_id, argv, rows=size.lines, cols=size.columns, tty_mode=tty_mode)
    try:
        ws = connect(url, additional_headers={"authorization": f"Bearer {token}"}, open_timeout=settings.timeout_s,
                     max_size=1024 * 1024)
    except InvalidStatus as exc:
        raise CliError(f"the node refused the shell (HTTP {exc.response.status_code})", 1) from None
    except OSError as exc:
        raise CliError(f"cannot reach the node's API at {settings.api_url}: {exc}", 1) from None
    saved = termios.tcgetattr(stdin.fileno()) if tty_mode else None
    old_winch: Any = None
    try:
        if tty_mode:
            tty.setraw(stdin.fileno())

            def resized(*_: object) -> None:
                s = shutil.get_terminal_size()
                with contextlib.suppress(ConnectionClosed):
                    ws.send(json.dumps({"resize": [s.lines, s.columns]}))

            old_winch = signal.signal(signal.SIGWINCH, resized)
        threading.Thread(target=_pump_stdin, args=(ws, stdin), kwargs={"tty_mode": tty_mode}, daemon=True).start()
        return _read_until_exit(ws, stdout, err)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin.fileno(), termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        ws.close()


def _read_until_exit(ws: ClientConnection, stdout: IO[bytes], err: IO[str]) -> int:
    while True:
        try:
            message = ws.recv()
        except ConnectionClosed:
            print("\r\nthe shell's connection closed", file=err)
            return 1
        if isinstance(message, bytes):
            stdout.write(message)
            stdout.flush()
            continue
        control = json.loads(message)
        if "exit" in control:
            return int(control["exit"])
        print(f"\r\ndgpu jobs shell: {control.get('error', 'failed')}", file=err)
        return 1
