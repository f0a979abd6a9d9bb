"""Forwarded ports and shells end to end: a bootstrap node (development ledger) and a provider
process on 127.0.0.1 that runs Docker and script jobs and allows both; renters (``dgpu.client``)
in the test process.

A job serves HTTP with busybox ``httpd`` on 127.0.0.1:8080 inside itself (a Docker job has no
network, a script job its own empty network namespace); the renter reaches it through the
forwarded local port with real HTTP requests.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from docker_fixtures import docker_client, ensure_test_image  # tests/integration is on sys.path

from dgpu.client import Client
from dgpu.client.client import Rental, RentalResult
from dgpu.client.demo import DemoNetwork
from dgpu.node.adapters.disk_cap import remove_tree
from dgpu.node.errors import RejectedError
from dgpu.node.services.forward_client import AccessTarget, ForwardInfo, open_access, open_shell, run_shell
from dgpu.protocol.forward import ForwardOpen
from dgpu.protocol.ids import FORWARD_PROTOCOL
from dgpu.protocol.keys import PublicKey
from dgpu.protocol.messages import JobState

pytestmark = pytest.mark.integration

PRICE = 1_000
PAGE = "hello-from-the-job"
DOCKER_SERVE = ["sh", "-c", f"mkdir -p /tmp/www && echo {PAGE} > /tmp/www/index.html && "
                "exec busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www"]
SCRIPT_SERVE = f"mkdir -p www && echo {PAGE} > www/index.html\nexec busybox httpd -f -p 127.0.0.1:8080 -h www\n"


@pytest.fixture(scope="module")
def image() -> str:
    client = docker_client()
    try:
        return ensure_test_image(client)
    finally:
        client.close()


@pytest.fixture(scope="module")
def network(image: str) -> Iterator[DemoNetwork]:
    workdir = Path(tempfile.mkdtemp(prefix="dgpu-access-"))
    workdir.chmod(0o711)  # script jobs run as their own uid below it
    net = DemoNetwork(workdir, log_level="INFO")
    deadline = time.monotonic() + 60
    try:
        net.start_bootstrap(deadline, ledger_speed=1)
        net.start_provider("provider", "RTX 4090:24576:2", PRICE, deadline, extra=[
            "--executor", "docker", "--executor", "script", "--allow-image", image, "--max-jobs", "2",
            "--allow-forward", "--allow-shell"])
        yield net
    finally:
        net.stop()
        remove_tree(workdir)


@asynccontextmanager
async def renter(net: DemoNetwork, data_dir: Path) -> AsyncIterator[Client]:
    async with Client.connect([net.addrs["bootstrap"]], ledger_url=net.ledger_url, data_dir=data_dir,
                              accept_simulated=True) as client:
        assert client.ledger is not None
        await client.ledger.faucet(1_000_000)  # type: ignore[attr-defined]
        assert await client.find_offers(gpu_model="RTX 4090", wait_s=30), "the provider's offer never arrived"
        yield client


async def http_get(port: int) -> str:
    """GET / through the forward, retried while the job's server is not up yet (the provider then
    refuses the connection and the local one closes without a response)."""
    with trio.fail_after(60):
        while True:
            try:
                async with httpx.AsyncClient(timeout=20) as http:
                    response = await http.get(f"http://127.0.0.1:{port}/")
                response.raise_for_status()
                return response.text
            except (httpx.TransportError, httpx.HTTPStatusError):
                await trio.sleep(0.3)


async def raw_request(port: int, *, hold: trio.Event | None = None) -> bytes:
    """An HTTP/1.0 GET over a plain socket; with ``hold``, the request is finished only once it is set
    (so the connection is open while another one runs)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.0\r\n")
        if hold is not None:
            await hold.wait()
        await stream.send_all(b"Host: job\r\n\r\n")
        out = b""
        while chunk := await stream.receive_some(65536):
            out += chunk
        return out


class Running:
    """A rental's ``run`` in the background: its forwards, its result."""

    def __init__(self, rental: Rental) -> None:
        self.rental = rental
        self.forwards: list[ForwardInfo] = []
        self.ready = trio.Event()
        self.result: RentalResult | None = None
        self.ended = trio.Event()

    def on_forward(self, info: ForwardInfo) -> None:
        self.forwards.append(info)
        if len(self.forwards) == len(self.rental.forwards):
            self.ready.set()

    async def run(self) -> None:
        try:
            self.result = await self.rental.run(on_forward=self.on_forward)
        finally:
            self.ended.set()


@asynccontextmanager
async def running(rental: Rental) -> AsyncIterator[Running]:
    job = Running(rental)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(job.run)
        try:
            yield job
        finally:
            rental.cancel()
            with trio.fail_after(60):
                await job.ended.wait()


@pytest.mark.parametrize("executor", ["docker", "script"])
async def test_a_forwarded_port_serves_http_from_inside_the_job(network: DemoNetwork, image: str, executor: str,
                                                                tmp_path: Path) -> None:
    job: dict[str, Any] = ({"image": image, "command": DOCKER_SERVE} if executor == "docker"
                           else {"script": SCRIPT_SERVE})
    async with renter(network, tmp_path / "renter") as client:
        rental = await client.rent(**job, max_minutes=10, gpu_model="RTX 4090", forward=["0:8080"])
        assert rental.forwards[0].job_port == 8080
        async with running(rental) as live:
            with trio.fail_after(60):
                await live.ready.wait()
            info = live.forwards[0]
            assert info.error is None and info.local_port > 0
            assert info.line == f"forwarding 127.0.0.1:{info.local_port} -> job:8080"
            assert (await http_get(info.local_port)).strip() == PAGE

            # two connections at once: the first stays open, unfinished, while the second is served
            hold = trio.Event()
            answers: dict[str, bytes] = {}
            async with trio.open_nursery() as nursery:
                async def first() -> None:
                    answers["first"] = await raw_request(info.local_port, hold=hold)

                nursery.start_soon(first)
                answers["second"] = await raw_request(info.local_port)
                assert "first" not in answers
                hold.set()
            assert all(a.startswith(b"HTTP/1.") and PAGE.encode() in a for a in answers.values())

            # a connection still open when the rental ends is closed with it
            idle = await trio.open_tcp_stream("127.0.0.1", info.local_port)
            await idle.send_all(b"GET / HTTP/1.0\r\n")
            rental.cancel()
            with trio.fail_after(60):
                await live.ended.wait()
            with trio.fail_after(30):  # closed: end of data, or a reset (our request was unread)
                try:
                    while await idle.receive_some(65536):
                        pass
                except trio.BrokenResourceError:
                    pass
            await idle.aclose()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", info.local_port)
        assert live.result is not None and live.result.state is JobState.CANCELLED


async def test_strangers_and_unasked_ports_are_refused_and_the_shell_works(network: DemoNetwork, image: str,
                                                                           tmp_path: Path) -> None:
    async with renter(network, tmp_path / "renter") as client, renter(network, tmp_path / "stranger") as other:
        rental = await client.rent(image=image, command=DOCKER_SERVE, max_minutes=10, gpu_model="RTX 4090",
                                   forward=[8082 + secrets.randbelow(1000), "0:8080"])  # never 8081 (asked below)
        async with running(rental) as live:
            with trio.fail_after(60):
                await live.ready.wait()
            port = next(f.local_port for f in live.forwards if f.job_port == 8080)
            assert (await http_get(port)).strip() == PAGE
            mine = rental.access_target()
            with pytest.raises(RejectedError, match="not asked for"):
                await open_access(mine, FORWARD_PROTOCOL, ForwardOpen(job_id=rental.id, port=8081))
            stranger = AccessTarget(other.network, other.key, rental.provider_peer,
                                    PublicKey.from_wallet(rental.agreement.terms.provider), rental.id,
                                    other.clock, other.nonce)
            with pytest.raises(RejectedError, match="only the renter"):
                await open_access(stranger, FORWARD_PROTOCOL, ForwardOpen(job_id=rental.id, port=8080))
            with pytest.raises(RejectedError, match="only the renter"):
                await open_shell(stranger, ["true"])

            # the shell: a command's output and exit code, on pipes and on a terminal
            out = bytearray()
            session = await rental.shell(["sh", "-c", "echo shell-says-hi; cat /tmp/www/index.html; exit 7"],
                                         tty=False)
            assert await run_shell(session, out.extend) == 7
            assert b"shell-says-hi" in out and PAGE.encode() in out
            out.clear()
            session = await rental.shell(tty=True, rows=40, cols=100)
            await session.send(b"stty size; exit 3\n")
            assert await run_shell(session, out.extend) == 3
            assert b"40 100" in out


async def test_an_interactive_script_job_outlives_its_command_and_takes_a_shell(network: DemoNetwork,
                                                                               tmp_path: Path) -> None:
    async with renter(network, tmp_path / "renter") as client:
        rental = await client.rent(script="echo ready > marker\necho ready\n", max_minutes=10, gpu_model="RTX 4090",
                                   interactive=True)
        lines: list[str] = []
        exited = trio.Event()

        def on_log(chunk: Any) -> None:
            lines.append(chunk.data)
            if "command exited with 0" in chunk.data:
                exited.set()

        results: list[RentalResult] = []
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                results.append(await rental.run(on_log=on_log))

            nursery.start_soon(run)
            with trio.fail_after(60):
                await exited.wait()  # the script is done; the job is not
            out = bytearray()
            session = await rental.shell(tty=True, rows=33, cols=77)
            await session.send(b"cat marker; id -u; stty size; exit 4\n")
            assert await run_shell(session, out.extend) == 4, bytes(out)
            text = out.decode(errors="replace")
            assert "ready" in text and "33 77" in text
            uid = next(int(w) for w in text.split() if w.isdigit() and int(w) >= 1000)
            assert uid != 0  # the job's own uid, not the daemon's root
            assert not results  # still running after the shell
            rental.cancel()
        assert results[0].state is JobState.CANCELLED
