"""Native TLS on the gateways: a real TLS client (httpx over ssl) against `tether gateway
http` and `tether gateway mcp --transport http` running in a subprocess, with a test CA
made in the test (tests/_tls.py). Plain HTTP and a client trusting another CA are refused;
required client certificates refuse a client without one; SIGHUP rotates the certificate
while an open keep-alive connection goes on working; `--workers` serves on one socket."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from _tls import Ca, trusting
from tether.cli import main
from tether.config import load_settings
from tether.testing import TestTrustDomain, prepare_state

from .conftest import HERE, free_port, wait_http

ROUTES = """
[[routes]]
prefix = "/tickets"
upstream = "http://127.0.0.1:9"
service = "tickets"
  [[routes.rules]]
  method = "GET"
  path = "/queue"
  action = "http:read"
  resource = "tickets.queue"
"""
# The gateways answer these requests themselves (no route / no token), so no broker runs.
IDENTITY = ["--svid-file", "svid.jwt", "--audience", "spiffe://t.example/broker", "--workload-socket", "none"]


def _files(tmp_path: Path, ca: Ca, name: str = "gw", *, server: bool = True) -> tuple[Path, Path]:
    cert, key = ca.issue("127.0.0.1", server=server)
    paths = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    paths[0].write_bytes(cert)
    paths[1].write_bytes(key)
    return paths


def _start(tmp_path: Path, args: list[str]) -> subprocess.Popen[bytes]:
    tether = str(Path(sys.executable).parent / "tether")
    return subprocess.Popen(
        [tether, "gateway", *args, *IDENTITY],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _http_gateway(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    (tmp_path / "routes.toml").write_text(ROUTES)
    return _start(tmp_path, ["http", "--config", "routes.toml", "--listen", f"127.0.0.1:{port}", *extra])


def _get(url: str, ctx: ssl.SSLContext) -> httpx.Response:
    return httpx.get(url, verify=ctx, timeout=5)


def _wait(url: str, ctx: ssl.SSLContext, proc: subprocess.Popen[bytes]) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        try:
            return _get(url, ctx)
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError((proc.stdout.read() if proc.stdout else b"").decode())
        assert time.monotonic() < deadline, "the gateway did not answer over TLS"
        time.sleep(0.05)  # bounded poll for the process to bind


def _stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """SIGTERM; the exit status and what the gateway printed."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        raise
    return proc.returncode, (out or b"").decode()


def _rotate(tmp_path: Path, ca: Ca, proc: subprocess.Popen[bytes], url: str, streak: int) -> None:
    """Replace the files with ``ca``'s pair, SIGHUP, and wait until ``streak`` new
    connections in a row get the new certificate (each worker has reloaded)."""
    _files(tmp_path, ca)
    proc.send_signal(signal.SIGHUP)
    deadline, good = time.monotonic() + 30, 0
    while good < streak:
        try:
            assert _get(url, trusting(ca)).status_code == 404
            good += 1
        except httpx.TransportError:
            good = 0
            assert time.monotonic() < deadline, "the certificate was not reloaded"
            time.sleep(0.05)  # bounded poll for the reload thread
    assert proc.poll() is None


def test_http_gateway_over_tls_refuses_plain_http_and_rotates_on_sighup(tmp_path):
    """The gateway answers over TLS with the configured certificate; plain HTTP and a client
    trusting another CA get no answer; after the files are replaced and SIGHUP is sent, new
    handshakes get the new certificate while an open keep-alive connection goes on working."""
    ca1, ca2 = Ca("gateway CA one"), Ca("gateway CA two")
    cert, key = _files(tmp_path, ca1)
    port = free_port()
    url = f"https://127.0.0.1:{port}/nothing"
    proc = _http_gateway(tmp_path, port, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        r = _wait(url, trusting(ca1), proc)
        assert (r.status_code, r.json()["code"]) == (404, "no_route")  # the gateway itself answered
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/nothing", timeout=5)
        with pytest.raises(httpx.TransportError):
            _get(url, trusting(ca2))
        # This client trusts CA one only: if it had to reconnect after the rotation its
        # handshake would fail, so an answer below is the old connection's.
        with httpx.Client(verify=trusting(ca1), timeout=10) as kept:
            assert kept.get(url).status_code == 404
            _rotate(tmp_path, ca2, proc, url, streak=1)
            assert kept.get(url).status_code == 404
        with pytest.raises(httpx.TransportError):
            _get(url, trusting(ca1))
    finally:
        code, out = _stop(proc)
    assert code == 0, out


def test_a_bad_pair_on_sighup_keeps_the_old_certificate(tmp_path):
    """A key that does not match the new certificate is refused at reload: the gateway stays
    up and goes on presenting the old certificate."""
    ca1, ca2 = Ca("gateway CA one"), Ca("gateway CA two")
    cert, key = _files(tmp_path, ca1)
    port = free_port()
    url = f"https://127.0.0.1:{port}/nothing"
    proc = _http_gateway(tmp_path, port, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        _wait(url, trusting(ca1), proc)
        cert.write_bytes(ca2.issue("127.0.0.1", server=True)[0])  # the key stays CA one's
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # over a bounded window, never the new certificate
            assert _get(url, trusting(ca1)).status_code == 404
            with pytest.raises(httpx.TransportError):
                _get(url, trusting(ca2))
            time.sleep(0.2)  # bounded: sample the window
        assert proc.poll() is None
    finally:
        _, out = _stop(proc)
    assert "TLS reload refused" in out


def test_sighup_does_not_stop_a_gateway_without_tls(tmp_path):
    """`systemctl reload` on a plain-HTTP gateway: nothing to re-read, and it goes on serving."""
    port = free_port()
    proc = _http_gateway(tmp_path, port)
    try:
        wait_http(f"http://127.0.0.1:{port}/nothing", timeout=60)
        proc.send_signal(signal.SIGHUP)
        for _ in range(10):  # a bounded window after the signal
            assert httpx.get(f"http://127.0.0.1:{port}/nothing", timeout=5).status_code == 404
            time.sleep(0.1)
        assert proc.poll() is None
    finally:
        code, out = _stop(proc)
    assert code == 0 and "no certificate files to reload" in out, out


def test_http_gateway_requiring_client_certificates_refuses_a_client_without_one(tmp_path):
    """`--tls-client-cert required`: no client certificate, or one from another CA, gets no
    connection; a certificate from `--tls-client-ca` gets through."""
    server_ca, client_ca, rogue_ca = Ca("server CA"), Ca("agents CA"), Ca("rogue CA")
    cert, key = _files(tmp_path, server_ca)
    (tmp_path / "clients.pem").write_bytes(client_ca.pem())
    good = _files(tmp_path, client_ca, "good", server=False)
    rogue = _files(tmp_path, rogue_ca, "rogue", server=False)
    port = free_port()
    url = f"https://127.0.0.1:{port}/nothing"
    proc = _http_gateway(
        tmp_path, port, "--tls-cert", str(cert), "--tls-key", str(key),
        "--tls-client-ca", "clients.pem", "--tls-client-cert", "required",
    )  # fmt: skip
    try:
        assert _wait(url, trusting(server_ca, good), proc).status_code == 404
        for ctx in (trusting(server_ca), trusting(server_ca, rogue)):
            with pytest.raises(httpx.TransportError):
                _get(url, ctx).raise_for_status()
    finally:
        _stop(proc)


def test_http_gateway_workers_share_the_port_and_all_rotate_on_sighup(tmp_path):
    """`--workers 2`: two processes answer on one TLS port; SIGHUP to the parent reaches
    both (twenty new connections in a row see the new certificate); SIGTERM stops all."""
    ca1, ca2 = Ca("gateway CA one"), Ca("gateway CA two")
    cert, key = _files(tmp_path, ca1)
    port = free_port()
    url = f"https://127.0.0.1:{port}/nothing"
    proc = _http_gateway(tmp_path, port, "--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        _wait(url, trusting(ca1), proc)

        assert len(_children(proc.pid)) == 2
        _rotate(tmp_path, ca2, proc, url, streak=20)
    finally:
        code, out = _stop(proc)
    assert code == 0, out


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_mcp_gateway_over_tls(tmp_path, workers):
    """`tether gateway mcp --transport http` with `--tls-cert`, in front of a stdio server
    and enrolled with a real broker: HTTPS with the configured certificate (the gateway's
    own 401 for a request without a token), no plain HTTP. With `--workers 2`: two
    processes on the port, each with its own upstream server."""
    domain = TestTrustDomain("support.example")
    state = tmp_path / "state"
    prepare_state(state, domain, f'\n[gateway]\nenforcers = ["{domain.spiffe_id("gateways/mcp")}"]\n')
    audience = load_settings(state, environ={}).broker_audience
    (tmp_path / "gw.svid").write_text(domain.svid("gateways/mcp", audience, ttl=600))
    broker_port, port = free_port(), free_port()
    tether = str(Path(sys.executable).parent / "tether")
    broker = subprocess.Popen(
        [tether, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{broker_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    ca = Ca("mcp gateway CA")
    cert, key = _files(tmp_path, ca)
    upstream = f"{sys.executable} {HERE / 'crashy_mcp_server.py'} {tmp_path / 'starts'}"
    proc = None
    try:
        wait_http(f"http://127.0.0.1:{broker_port}/healthz", timeout=60)
        proc = subprocess.Popen(
            [tether, "gateway", "mcp", "--server", "crashy", "--upstream-cmd", upstream,
             "--transport", "http", "--listen", f"127.0.0.1:{port}",
             "--tls-cert", str(cert), "--tls-key", str(key),
             "--broker", f"http://127.0.0.1:{broker_port}", "--svid-file", str(tmp_path / "gw.svid"),
             "--audience", audience, "--workload-socket", "none", "--workers", str(workers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"https://127.0.0.1:{port}/mcp"
        r = _wait(url, trusting(ca), proc)
        assert (r.status_code, r.json()["code"]) == (401, "missing_token")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=5)
        if workers > 1:
            assert len(_children(proc.pid)) == workers
            deadline = time.monotonic() + 60
            while len((tmp_path / "starts").read_text().splitlines()) < workers:
                assert time.monotonic() < deadline, "each worker starts its upstream"
                time.sleep(0.1)  # bounded poll on the workers' upstream start
    finally:
        if proc is not None:
            code, out = _stop(proc)
            assert code == 0, out
        _stop(broker)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--tls-cert", "x.crt"], "--tls-key"),
        (["--tls-cert", "x.crt", "--tls-key", "x.key", "--tls-client-cert", "required"], "--tls-client-ca"),
        (["--tls-cert", "missing.crt", "--tls-key", "missing.key"], "--tls-cert"),
    ],
)
def test_half_a_tls_configuration_stops_the_gateway_before_it_listens(tmp_path, args, field):
    """A certificate without a key, client checking without a CA, or a file that is not
    there: exit 1 with `config_invalid` naming the option."""
    (tmp_path / "routes.toml").write_text(ROUTES)
    r = CliRunner().invoke(
        main,
        ["gateway", "http", "--config", str(tmp_path / "routes.toml"), *args, *IDENTITY],
        catch_exceptions=False,
    )
    assert r.exit_code == 1, r.output
    assert "config_invalid" in r.output and field in r.output


def test_a_key_of_another_certificate_stops_the_gateway(tmp_path):
    """A mismatched pair is a configuration error naming `--tls-cert`; nothing listens."""
    ca = Ca("test CA")
    cert, _ = _files(tmp_path, ca)
    _, other_key = _files(tmp_path, ca, "other")
    (tmp_path / "routes.toml").write_text(ROUTES)
    r = CliRunner().invoke(
        main,
        ["gateway", "http", "--config", str(tmp_path / "routes.toml"),
         "--tls-cert", str(cert), "--tls-key", str(other_key), *IDENTITY],
    )  # fmt: skip
    assert r.exit_code == 1 and "--tls-cert" in r.output, r.output


def test_gateway_reaches_a_broker_requiring_client_certificates_with_its_own(tmp_path):
    """A broker with `tls.client_cert = "required"`: the gateway given `--broker-ca` and a
    client certificate from the broker's client CA gets the broker's answer (a bad token is
    refused by the broker, `401`); without the certificate it reaches no broker and denies
    (`503 broker_unavailable`), as it does for a broker it cannot verify."""
    domain = TestTrustDomain("support.example")
    server_ca, client_ca = Ca("broker CA"), Ca("enforcers CA")
    state = tmp_path / "state"
    state.mkdir()
    _files(state, server_ca, "tls")
    (state / "enforcers.pem").write_bytes(client_ca.pem())
    gw_cert, gw_key = _files(tmp_path, client_ca, "enforcer", server=False)
    prepare_state(
        state,
        domain,
        f'\n[gateway]\nenforcers = ["{domain.spiffe_id("gateways/edge")}"]\n'
        '\n[tls]\ncert_file = "tls.crt"\nkey_file = "tls.key"\n'
        'client_ca_file = "enforcers.pem"\nclient_cert = "required"\n',
    )
    audience = load_settings(state, environ={}).broker_audience
    (tmp_path / "svid.jwt").write_text(domain.svid("gateways/edge", audience, ttl=600))
    (tmp_path / "server-ca.pem").write_bytes(server_ca.pem())
    broker_port = free_port()
    tether = str(Path(sys.executable).parent / "tether")
    broker = subprocess.Popen(
        [tether, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{broker_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    gateways: list[subprocess.Popen[bytes]] = []
    try:
        _wait(f"https://127.0.0.1:{broker_port}/healthz", trusting(server_ca, (gw_cert, gw_key)), broker)
        (tmp_path / "routes.toml").write_text(ROUTES)
        answers = []
        for with_cert in (True, False):
            port = free_port()
            extra = (
                ["--broker-client-cert", str(gw_cert), "--broker-client-key", str(gw_key)]
                if with_cert
                else []
            )
            proc = _start(
                tmp_path,
                ["http", "--config", "routes.toml", "--listen", f"127.0.0.1:{port}",
                 "--broker", f"https://127.0.0.1:{broker_port}", "--broker-ca", "server-ca.pem", *extra],
            )  # fmt: skip
            gateways.append(proc)
            wait_http(f"http://127.0.0.1:{port}/nothing", timeout=60)
            r = httpx.get(
                f"http://127.0.0.1:{port}/tickets/queue",
                headers={"authorization": "Bearer not-a-token"},
                timeout=10,
            )
            answers.append((r.status_code, r.json()["code"]))
        assert answers[0][0] == 401 and answers[0][1] != "broker_unavailable", answers
        assert answers[1] == (503, "broker_unavailable"), answers
    finally:
        for proc in gateways:
            _stop(proc)
        _stop(broker)


def test_mcp_gateway_workers_need_the_http_transport():
    """Over stdio one client launches one gateway: `--workers 2` is refused, naming it."""
    r = CliRunner().invoke(
        main,
        ["gateway", "mcp", "--server", "crashy", "--upstream-cmd", "true", "--task-token", "t",
         "--workers", "2", *IDENTITY],
    )  # fmt: skip
    assert r.exit_code == 1 and "--workers" in r.output, r.output


CRASHY_POLICY = (
    '@id("crashy-echo")\npermit (principal, action == Tether::Action::"tool:call", '
    'resource == Tether::Tool::"crashy.echo");\n'
)


def test_stdio_session_task_reaches_a_broker_requiring_client_certificates_with_them(tmp_path):
    """`tether gateway mcp --intent` over stdio in front of a broker with `tls.client_cert =
    "required"`: given `--broker-ca` and a client certificate, the gateway opens its session
    task, forwards an allowed call and closes the task when the client leaves; without the
    certificate the broker does not answer the session's open and the gateway exits 1."""
    import anyio
    import mcp_types as types
    from mcp import ClientSession, StdioServerParameters, stdio_client

    gateway_id = "spiffe://support.example/gateways/crashy"
    server_ca, client_ca = Ca("broker CA"), Ca("enforcers CA")
    state = tmp_path / "state"
    state.mkdir()
    _files(state, server_ca, "tls")
    (state / "enforcers.pem").write_bytes(client_ca.pem())
    gw_cert, gw_key = _files(tmp_path, client_ca, "enforcer", server=False)
    prepare_state(
        state,
        None,
        f'\n[gateway]\nenforcers = ["{gateway_id}"]\n'
        '\n[tls]\ncert_file = "tls.crt"\nkey_file = "tls.key"\n'
        'client_ca_file = "enforcers.pem"\nclient_cert = "required"\n',
    )
    catalog = state / "catalog.yaml"
    catalog.write_text(
        catalog.read_text().replace(
            "\ntools:\n",
            "\n  - {id: crashy, sensitivity: public, environment: prod, egress: internal}\n"
            "\ntools:\n  - {id: crashy.echo, service: crashy}\n",
            1,
        )
    )
    (state / "policies" / "50-crashy.cedar").write_text(CRASHY_POLICY)
    (tmp_path / "server-ca.pem").write_bytes(server_ca.pem())
    broker_port = free_port()
    base = f"https://127.0.0.1:{broker_port}"
    tether = str(Path(sys.executable).parent / "tether")
    broker = subprocess.Popen(
        [tether, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{broker_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(f"{base}/healthz", trusting(server_ca, (gw_cert, gw_key)), broker)
        python = os.path.realpath(sys.executable)  # what the kernel shows for `tether …`
        reg = subprocess.run(
            [tether, "workload", "register", gateway_id, "--state-dir", str(state),
             "--selector", f"unix:uid:{os.getuid()}", "--selector", f"unix:path:{python}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert reg.returncode == 0, reg.stderr
        upstream = f"{sys.executable} {HERE / 'crashy_mcp_server.py'} {tmp_path / 'starts'}"
        args = [
            "gateway", "mcp", "--state-dir", str(state), "--server", "crashy", "--upstream-cmd", upstream,
            "--intent", "support.triage", "--scope", "tool:call=crashy",
            "--broker", base, "--broker-ca", str(tmp_path / "server-ca.pem"),
        ]  # fmt: skip
        certs = ["--broker-client-cert", str(gw_cert), "--broker-client-key", str(gw_key)]
        params = StdioServerParameters(command=tether, args=[*args, *certs], env={**os.environ})

        async def go() -> types.CallToolResult:
            with anyio.fail_after(60):
                async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                    await session.initialize()
                    return await session.call_tool("echo", {"text": "through mTLS"})

        echoed = anyio.run(go)
        assert not echoed.is_error, echoed
        assert "through mTLS" in "".join(c.text for c in echoed.content if isinstance(c, types.TextContent))
        listed = subprocess.run(
            [tether, "task", "list", "--state-dir", str(state), "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        mine = [t for t in json.loads(listed.stdout) if t.get("agent") == gateway_id]
        assert [t["state"] for t in mine] == ["closed"]  # closed when the client went away

        refused = subprocess.run(
            [tether, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 1, refused.stderr
    finally:
        _stop(broker)
