"""Native TLS on the broker's port: a real TLS client against `tether serve` with a test
CA made in the test (tests/_tls.py); certificate reload on SIGHUP keeps open connections;
optional mTLS."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from _tls import Ca, trusting
from tether.errors import ConfigError
from tether.testing import make_settings, prepare_state


def _serve(state: Path, port: int) -> subprocess.Popen[bytes]:
    tether = str(Path(sys.executable).parent / "tether")
    return subprocess.Popen(
        [tether, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, ctx: ssl.SSLContext, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", verify=ctx, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError((proc.stdout.read() if proc.stdout else b"").decode())
        assert time.monotonic() < deadline, "the broker did not answer over TLS"
        time.sleep(0.05)  # bounded poll for the process to bind


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout:
        proc.stdout.close()


def _state(tmp_path: Path, ca: Ca, extra: str = "") -> Path:
    state = tmp_path / "state"
    cert, key = ca.issue("127.0.0.1", server=True)
    state.mkdir(parents=True, exist_ok=True)
    (state / "tls.crt").write_bytes(cert)
    (state / "tls.key").write_bytes(key)
    prepare_state(state, None, f'\n[tls]\ncert_file = "tls.crt"\nkey_file = "tls.key"\n{extra}')
    return state


def test_sighup_reloads_the_certificate_and_keeps_open_connections(tmp_path):
    """Over TLS only (plain HTTP is refused); after the certificate files are replaced and
    SIGHUP is sent, an open keep-alive connection goes on working and new handshakes get
    the new certificate."""
    ca1, ca2 = Ca("test CA one"), Ca("test CA two")
    state = _state(tmp_path, ca1)
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    proc = _serve(state, port)
    try:
        _wait(url, trusting(ca1), proc)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        kept = httpx.Client(verify=trusting(ca1), timeout=10)
        assert kept.get(url + "/healthz").status_code == 200
        cert, key = ca2.issue("127.0.0.1", server=True)
        (state / "tls.crt").write_bytes(cert)
        (state / "tls.key").write_bytes(key)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:  # until a new handshake presents the CA-two certificate
            try:
                if httpx.get(url + "/healthz", verify=trusting(ca2), timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the certificate was not reloaded"
            time.sleep(0.05)  # bounded poll for the reload thread
        assert kept.get(url + "/healthz").status_code == 200  # the old connection was not dropped
        with pytest.raises(httpx.TransportError):  # a new connection: CA one no longer fits
            httpx.get(url + "/healthz", verify=trusting(ca1), timeout=5)
        kept.close()
    finally:
        _stop(proc)


def test_a_client_without_a_certificate_is_refused_when_client_certs_are_required(tmp_path):
    """`tls.client_cert = "required"`: no certificate or one from another CA, no
    connection; a certificate from `tls.client_ca_file` gets through."""
    server_ca, client_ca, rogue_ca = Ca("server CA"), Ca("enforcers CA"), Ca("rogue CA")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "clients.pem").write_bytes(client_ca.pem())
    state = _state(tmp_path, server_ca, 'client_ca_file = "clients.pem"\nclient_cert = "required"\n')
    paths = {}
    for name, ca in (("good", client_ca), ("rogue", rogue_ca)):
        cert, key = ca.issue(f"spiffe-gateway-{name}", server=False)
        (tmp_path / f"{name}.crt").write_bytes(cert)
        (tmp_path / f"{name}.key").write_bytes(key)
        paths[name] = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    proc = _serve(state, port)
    try:
        _wait(url, trusting(server_ca, paths["good"]), proc)
        for ctx in (trusting(server_ca), trusting(server_ca, paths["rogue"])):
            with pytest.raises(httpx.TransportError):
                httpx.get(url + "/healthz", verify=ctx, timeout=5)
        assert httpx.get(url + "/healthz", verify=trusting(server_ca, paths["good"])).status_code == 200
    finally:
        _stop(proc)


def test_a_key_that_does_not_match_the_certificate_refuses_to_start(tmp_path):
    """`tether serve` with a key of another certificate exits 1 naming `tls.cert_file`."""
    ca = Ca("test CA")
    state = _state(tmp_path, ca)
    (state / "tls.key").write_bytes(ca.issue("other", server=True)[1])
    proc = _serve(state, _free_port())
    out = (proc.communicate(timeout=60)[0] or b"").decode()
    assert proc.returncode == 1, out
    assert "tls.cert_file" in " ".join(out.split())


def test_half_a_tls_configuration_is_a_config_error(tmp_path):
    """A certificate without a key, or client checking without a CA, names the missing field."""
    with pytest.raises(ConfigError) as err:
        make_settings(tmp_path / "a", overrides={"tls": {"cert_file": "x.crt"}})
    assert err.value.details["field"] == "tls.key_file"
    with pytest.raises(ConfigError) as err:
        make_settings(
            tmp_path / "b", overrides={"tls": {"cert_file": "x", "key_file": "y", "client_cert": "required"}}
        )
    assert err.value.details["field"] == "tls.client_ca_file"
