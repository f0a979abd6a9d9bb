"""Every HTTP client of the node, the ledgers and the CLI verifies with the process's one TLS
context (``dgpu._http``): httpx would otherwise load the CA bundle again for each client."""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dgpu._http import async_client, sync_client, tls_context


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dgpu test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on localhost with a self-signed certificate: its URL and the certificate."""
    cert_file, key_file = _self_signed(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}/", cert_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def fresh_tls_context() -> Iterator[None]:
    """The test may trust a certificate in the shared context: the next user gets a fresh one."""
    tls_context.cache_clear()
    yield
    tls_context.cache_clear()


def test_the_shared_context_verifies_servers_and_holds_the_ca_bundle(fresh_tls_context: None) -> None:
    ctx = tls_context()
    assert ctx is tls_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0


def test_an_unknown_certificate_is_refused(https_server: tuple[str, Path], fresh_tls_context: None) -> None:
    url, _ = https_server
    with sync_client(timeout=10) as http, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        http.get(url)


def test_what_the_shared_context_trusts_every_client_trusts(https_server: tuple[str, Path],
                                                             fresh_tls_context: None) -> None:
    url, cert_file = https_server
    with sync_client(timeout=10) as before:
        tls_context().load_verify_locations(cafile=str(cert_file))  # one context: no client has its own
        assert before.get(url).text == "hello"
    with sync_client(timeout=10) as later:
        assert later.get(url).text == "hello"


@pytest.mark.trio
async def test_async_clients_share_the_context_too(https_server: tuple[str, Path], fresh_tls_context: None) -> None:
    url, cert_file = https_server
    async with async_client(timeout=10) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url)
        tls_context().load_verify_locations(cafile=str(cert_file))
        assert (await http.get(url)).text == "hello"


def test_no_product_code_builds_its_own_httpx_client() -> None:
    """A direct ``httpx.AsyncClient(...)`` would load the CA bundle again (tests and benches may)."""
    root = Path(__file__).resolve().parents[2]
    direct = [f"{path.relative_to(root)}:{n}"
              for folder in ("node", "client", "contracts", "bootstrap", "protocol")
              for path in sorted((root / folder).rglob("*.py"))
              for n, line in enumerate(path.read_text().splitlines(), 1)
              if "httpx.AsyncClient(" in line or "httpx.Client(" in line]
    assert direct == []
