"""Client ID Metadata Documents fetched over real TLS from a loopback server (allowed here
only because the test configures it): good, huge, slow, redirected, mistyped, uncacheable."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tether.config_oauth import OAuthSettings
from tether.oauth.cimd import CimdFetcher
from tether.oauth.clients import Clients
from tether.oauth.errors import OAuthError


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class Site:
    def __init__(self, port: int) -> None:
        self.base = f"https://localhost:{port}"
        self.hits: dict[str, int] = {}

    def doc(self, path: str) -> dict[str, object]:
        return {
            "client_id": self.base + path,
            "client_name": "Editor",
            "redirect_uris": ["http://127.0.0.1/cb"],
        }

    def app(self) -> Starlette:
        async def good(request: Request) -> Response:
            self.hits[request.url.path] = self.hits.get(request.url.path, 0) + 1
            return JSONResponse(self.doc(request.url.path), headers={"cache-control": "max-age=60"})

        async def nostore(request: Request) -> Response:
            self.hits[request.url.path] = self.hits.get(request.url.path, 0) + 1
            return JSONResponse(self.doc(request.url.path), headers={"cache-control": "no-store"})

        async def huge(request: Request) -> Response:
            return JSONResponse({**self.doc(request.url.path), "pad": "x" * 20000})

        async def slow(request: Request) -> Response:
            await anyio.sleep(3)
            return JSONResponse(self.doc(request.url.path))

        async def redirect(request: Request) -> Response:
            return RedirectResponse(self.base + "/good.json", status_code=302)

        async def html(request: Request) -> Response:
            return Response("<html></html>", media_type="text/html")

        return Starlette(
            routes=[
                Route("/good.json", good),
                Route("/nostore.json", nostore),
                Route("/huge.json", huge),
                Route("/slow.json", slow),
                Route("/redirect.json", redirect),
                Route("/page.json", html),
            ]
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Path]]:
    tmp = tmp_path_factory.mktemp("cimd")
    cert, key = self_signed(tmp)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = Site(port)
    server = uvicorn.Server(
        uvicorn.Config(
            site.app(),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the TLS test site did not start"
        time.sleep(0.01)
    yield site, cert
    server.should_exit = True
    thread.join(timeout=10)


def loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]  # `localhost` as this site listens on it (IPv4 only)


def fetcher(cert: Path, **kw: object) -> CimdFetcher:
    options: dict[str, object] = {
        "max_bytes": 5120,
        "timeout": 1.0,
        "allow_private": True,
        "ca_file": str(cert),
    }
    options.update(kw)
    return CimdFetcher(resolver=loopback, **options)  # type: ignore[arg-type]


def test_document_is_fetched_over_tls_and_cached(site):
    """A good document gives the client; `max-age` keeps it for the next request."""
    s, cert = site
    f = fetcher(cert)
    clients = Clients(OAuthSettings(), f)
    client = clients.get(s.base + "/good.json")
    assert client.kind == "metadata-document" and client.name == "Editor"
    assert client.redirect_allowed("http://127.0.0.1:4321/cb")
    clients.get(s.base + "/good.json")
    assert s.hits["/good.json"] == 1 and f.fetches == 1


def test_no_store_document_is_fetched_each_time(site):
    """`Cache-Control: no-store` is honoured: nothing is kept."""
    s, cert = site
    f = fetcher(cert)
    f.get(s.base + "/nostore.json")
    f.get(s.base + "/nostore.json")
    assert f.fetches == 2


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/huge.json", "larger than"),
        ("/slow.json", "longer than"),
        ("/redirect.json", "HTTP 302"),
        ("/page.json", "application/json"),
    ],
)
def test_huge_slow_redirected_or_mistyped_documents_are_invalid_client(site, path, why):
    """Size and time limits, no redirects, JSON only: each refusal is invalid_client."""
    s, cert = site
    started = time.monotonic()
    with pytest.raises(OAuthError) as exc:
        fetcher(cert).get(s.base + path)
    assert exc.value.error == "invalid_client" and why in exc.value.description
    assert not exc.value.redirectable
    assert time.monotonic() - started < 2.9  # the slow site sleeps 3 s: we gave up first


def test_loopback_site_is_refused_without_the_test_switch(site):
    """SSRF: the same site is refused when private addresses are not allowed (the default)."""
    s, cert = site
    with pytest.raises(OAuthError) as exc:
        fetcher(cert, allow_private=False).get(s.base + "/good.json")
    assert "private, loopback or reserved" in exc.value.description


def test_dns_answer_with_any_private_address_is_refused(site):
    """A name resolving to one public and one private address is refused (no mixed answers)."""
    s, _ = site
    f = CimdFetcher(max_bytes=5120, timeout=1.0, resolver=lambda h, p: ["93.184.216.34", "10.0.0.1"])
    with pytest.raises(OAuthError):
        f.get(s.base + "/good.json")


def test_untrusted_certificate_is_refused(site):
    """TLS is verified: without the test CA the site's certificate fails."""
    s, _ = site
    f = CimdFetcher(max_bytes=5120, timeout=1.0, allow_private=True, resolver=loopback)
    with pytest.raises(OAuthError) as exc:
        f.get(s.base + "/good.json")
    assert "could not be fetched" in exc.value.description
