"""Native TLS for the broker's API port and the gateways: one ``ssl.SSLContext``,
reloaded in place.

The context is built at start from the certificate chain, its key and optionally a CA
bundle that clients' certificates must chain to — for the broker from ``[tls]``
(:func:`files`), for ``tether gateway http|mcp`` from their ``--tls-*`` options
(:func:`from_options`). On SIGHUP the files are read again into a *scratch* context
first — a bad or mismatched pair is refused with a logged error and the old certificate
stays in force — and only then loaded into the live context. Connections already
established keep their session; every handshake after the reload presents the new
certificate, so rotating a certificate drops nothing.

TLS 1.2 is the floor; Python's defaults choose the cipher suites.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import ConfigError

if TYPE_CHECKING:
    from tether.config import Settings

log = logging.getLogger("tether")

CLIENT_CERT_MODES = ("none", "optional", "required")
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: How errors name the three files: the broker's settings keys.
SETTINGS_FIELDS = ("tls.cert_file", "tls.key_file", "tls.client_ca_file")
#: ... and the gateways' options.
OPTION_FIELDS = ("--tls-cert", "--tls-key", "--tls-client-ca")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None
    verify: ssl.VerifyMode = ssl.CERT_NONE
    #: The names of (cert, key, client CA) in error messages: settings keys or options.
    fields: tuple[str, str, str] = SETTINGS_FIELDS

    def _bad(self, index: int, message: str) -> ConfigError:
        name = self.fields[index]
        return ConfigError(f"`{name}`: {message}", code="config_invalid", field=name)

    def _load(self, ctx: ssl.SSLContext) -> None:
        for index, path in enumerate((self.cert, self.key, self.client_ca)):
            if path is not None and not path.is_file():
                raise self._bad(index, f"no file `{path}`")
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                f"`{self.fields[0]}`/`{self.fields[1]}`: cannot use `{self.cert}` with `{self.key}` "
                f"({exc}); give a PEM certificate chain and its unencrypted private key",
                code="config_invalid",
                field=self.fields[0],
            ) from exc
        if self.client_ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.client_ca))
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise self._bad(2, f"cannot read CA certificates from `{self.client_ca}` ({exc})") from exc

    def _fresh(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = self.verify
        return ctx

    def context(self) -> ssl.SSLContext:
        """The live context; raises ``ConfigError`` naming the field when a file is wrong."""
        ctx = self._fresh()
        self._load(ctx)
        return ctx

    def reload(self, ctx: ssl.SSLContext) -> bool:
        """Re-read the files into ``ctx`` when they are valid; keep the old ones otherwise."""
        try:
            self._load(self._fresh())  # a bad pair never touches the live context
            self._load(ctx)
        except ConfigError as exc:
            log.error("TLS reload refused, keeping the current certificate: %s", exc.message)
            return False
        log.warning("TLS certificate reloaded from %s", self.cert)
        return True

    def uvicorn_options(self) -> dict[str, Any]:
        """``uvicorn.Config`` arguments naming the files, so uvicorn marks requests
        ``https``; the context it builds from them is replaced by :meth:`install`."""
        return {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}

    def install(self, config: Any) -> ssl.SSLContext:
        """Put a fresh live context into a loaded ``uvicorn.Config``; returns it (for
        :meth:`reload`)."""
        ctx = self.context()
        config.ssl = ctx
        return ctx


def files(settings: Settings) -> TlsFiles | None:
    """The broker's ``[tls]`` files, or ``None`` without TLS."""
    tls = settings.tls
    if not tls.enabled:
        return None
    return TlsFiles(
        cert=settings.resolve(tls.cert_file),
        key=settings.resolve(tls.key_file),
        client_ca=settings.resolve(tls.client_ca_file) if tls.client_ca_file else None,
        verify=_VERIFY[tls.client_cert],
    )


def from_options(
    cert: Path | None, key: Path | None, client_ca: Path | None, client_cert: str
) -> TlsFiles | None:
    """A gateway's ``--tls-cert/--tls-key/--tls-client-ca/--tls-client-cert``, checked as
    the broker checks ``[tls]``: both files or neither; client checking needs a CA, and a
    CA needs TLS. ``None`` without TLS."""

    def bad(name: str, message: str) -> ConfigError:
        return ConfigError(f"`{name}` {message}", code="config_invalid", field=name)

    if (cert is None) != (key is None):
        raise bad("--tls-key" if cert is not None else "--tls-cert", "is needed with the other TLS file")
    if client_cert not in _VERIFY:
        raise bad("--tls-client-cert", f"must be one of {', '.join(CLIENT_CERT_MODES)}, got `{client_cert}`")
    if client_cert != "none" and client_ca is None:
        raise bad("--tls-client-ca", "is needed to check client certificates")
    if cert is None or key is None:
        if client_ca is not None:
            raise bad("--tls-cert", "is needed: client certificates are checked over TLS only")
        return None
    return TlsFiles(cert, key, client_ca, _VERIFY[client_cert], OPTION_FIELDS)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How a gateway reaches a broker that serves TLS: the CA bundle its certificate must
    chain to (else the default bundle) and, for a broker with ``tls.client_cert`` set, this
    gateway's client certificate. The client certificate is re-read on SIGHUP like the
    server's; connections already open keep theirs."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def _load(self, ctx: ssl.SSLContext) -> None:
        for name, path in (("--broker-ca", self.ca), ("--broker-client-cert", self.cert),
                           ("--broker-client-key", self.key)):  # fmt: skip
            if path is not None and not path.is_file():
                raise ConfigError(f"`{name}`: no file `{path}`", code="config_invalid", field=name)
        if self.cert is not None and self.key is not None:
            try:
                ctx.load_cert_chain(self.cert, self.key)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ConfigError(
                    f"`--broker-client-cert`/`--broker-client-key`: cannot use `{self.cert}` with "
                    f"`{self.key}` ({exc})",
                    code="config_invalid",
                    field="--broker-client-cert",
                ) from exc

    def context(self) -> ssl.SSLContext:
        if (self.cert is None) != (self.key is None):
            name = "--broker-client-key" if self.cert is not None else "--broker-client-cert"
            raise ConfigError(f"`{name}` is needed with the other client certificate file",
                              code="config_invalid", field=name)  # fmt: skip
        try:
            if self.ca is not None:
                ctx = ssl.create_default_context(cafile=str(self.ca))
            else:
                ctx = ssl.create_default_context()
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"`--broker-ca`: cannot read CA certificates from `{self.ca}` ({exc})",
                              code="config_invalid", field="--broker-ca") from exc  # fmt: skip
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(ctx)
        return ctx

    def reload(self, ctx: ssl.SSLContext) -> bool:
        if self.cert is None:
            return True
        try:
            self._load(ssl.create_default_context())
            self._load(ctx)
        except ConfigError as exc:
            log.error("client certificate reload refused, keeping the current one: %s", exc.message)
            return False
        log.warning("client certificate reloaded from %s", self.cert)
        return True
