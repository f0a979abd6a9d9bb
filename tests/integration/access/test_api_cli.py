"""The node's API and the CLI over forwarded ports and shells: a bootstrap and a provider process
(allowing both) on 127.0.0.1, a renter node serving the local API in this process, and the
``dgpu`` command as real child processes.

``dgpu rent --interactive --forward 0:8080`` prints ``forwarding 127.0.0.1:LOCAL -> job:8080``; the
page the job serves comes back through it; the job outlives its command (interactive);
``dgpu jobs shell ID -- CMD`` runs CMD in the job over the API's WebSocket and exits with its code;
Ctrl-C on ``dgpu rent`` ends the job and its forward.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import trio
from api.test_api_e2e import login  # tests/integration is on sys.path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dgpu.bootstrap.config import BootstrapHttpConfig
from dgpu.bootstrap.http_app import create_app
from dgpu.client.demo import DemoNetwork
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.adapters.http_api import serve_node_api
from dgpu.node.adapters.http_server import serve_http
from dgpu.node.app import NodeRuntime, api_node, run_node
from dgpu.node.config import NodeConfig
from dgpu.node.services.api import ApiSettings

pytestmark = pytest.mark.integration

PAGE = "served-through-the-cli"
#: busybox httpd without -f goes to the background; the script ends, the interactive job stays
SCRIPT = f"mkdir -p www && echo {PAGE} > www/index.html\nbusybox httpd -p 127.0.0.1:8080 -h www\necho serving\n"


async def read_until(stream: trio.abc.ReceiveStream, pattern: str, seen: bytearray) -> re.Match[str]:
    with trio.fail_after(90):
        while (match := re.search(pattern, seen.decode(errors="replace"))) is None:
            chunk = await stream.receive_some(4096)
            assert chunk, f"the command ended before printing {pattern!r}: {seen.decode(errors='replace')}"
            seen += chunk
    return match


async def test_rent_forward_and_jobs_shell_through_the_cli(tmp_path: Path) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-access-cli-"))
    os.chmod(workdir, 0o711)
    net = DemoNetwork(workdir)
    try:
        deadline = time.monotonic() + 60
        boot_addr = await trio.to_thread.run_sync(lambda: net.start_bootstrap(deadline, ledger_speed=1))
        await trio.to_thread.run_sync(lambda: net.start_provider(
            "provider", "RTX 4090:24576:1", 1_000, deadline,
            extra=["--executor", "script", "--allow-forward", "--allow-shell"]))
        boot_http = create_app(BootstrapHttpConfig(data_dir=workdir / "bootstrap-http"),
                               node_key=Ed25519PrivateKey.generate())
        config = NodeConfig(role="renter", bootstrap=(boot_addr,), data_dir=workdir / "renter", accept_simulated=True)
        script = tmp_path / "serve.sh"
        script.write_text(SCRIPT)
        async with trio.open_nursery() as nursery:
            boot_port = await nursery.start(serve_http, boot_http, "127.0.0.1", 0)
            rt: NodeRuntime = await nursery.start(run_node, config)
            settings = ApiSettings(port=0, bootstrap_url=f"http://127.0.0.1:{boot_port}", development=True,
                                   ledger_url=net.ledger_url)
            port = await nursery.start(serve_node_api, api_node(rt), settings)
            api_url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=api_url, timeout=30) as api:
                token = await login(api, rt)
                h = {"authorization": f"Bearer {token}"}
                wallet = rt.key.public_key.wallet
                r = await api.post(f"/api/v1/billing/wallet/{wallet}/deposit", json={"amount": 1_000_000}, headers=h)
                assert r.status_code == 200, r.text
                with trio.fail_after(30):
                    while (await api.get("/api/v1/billing/marketplace", params={"include_simulated": True},
                                         headers=h)).json()["total"] < 1:
                        await trio.sleep(0.2)
                env = {**os.environ, "DGPU_API_URL": api_url, "DGPU_TOKEN": token}
                dgpu = [sys.executable, "-m", "dgpu.client.main"]
                rent = await trio.lowlevel.open_process(
                    [*dgpu, "rent", "--script", str(script), "--max-minutes", "10", "--interactive",
                     "--forward", "0:8080", "--input-root", str(tmp_path)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
                try:
                    assert rent.stdout is not None
                    seen = bytearray()
                    line = await read_until(rent.stdout, r"forwarding 127\.0\.0\.1:(\d+) -> job:8080", seen)
                    local = int(line.group(1))
                    await read_until(rent.stdout, r"serving", seen)  # the script ran to its end
                    with trio.fail_after(60):
                        while True:
                            try:
                                page = (await httpx.AsyncClient(timeout=20).get(f"http://127.0.0.1:{local}/")).text
                                break
                            except httpx.TransportError:
                                await trio.sleep(0.3)
                    assert page.strip() == PAGE
                    job = (await api.get("/api/v1/jobs", params={"limit": 1}, headers=h)).json()["jobs"][0]
                    assert job["state"] == "running" and job["interactive"]  # its command is done, it runs on
                    assert job["forwards"] == [{"job_port": 8080, "local_port": local, "error": None}]

                    shell = await trio.run_process(
                        [*dgpu, "jobs", "shell", job["id"], "--", "sh", "-c", "cat www/index.html; exit 5"],
                        env=env, capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL)
                    assert shell.returncode == 5, (shell.stderr, (await api.get(f"/api/v1/jobs/{job['id']}",
                                                                                   headers=h)).json())
                    assert PAGE.encode() in shell.stdout

                    rent.send_signal(signal.SIGINT)  # Ctrl-C: the job is cancelled, the escrow settled
                    with trio.fail_after(90):
                        code = await rent.wait()
                    assert code == 130
                    with pytest.raises(OSError):
                        await trio.open_tcp_stream("127.0.0.1", local)
                    job = (await api.get(f"/api/v1/jobs/{job['id']}", headers=h)).json()
                    assert job["state"] == "cancelled"
                finally:
                    if rent.returncode is None:
                        rent.kill()
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(net.stop)
    await trio.to_thread.run_sync(remove_tree, workdir)
