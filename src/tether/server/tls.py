"""Native TLS for the broker's API port: one ``ssl.SSLContext``, reloaded in place.

The context is built at start from ``[tls]`` (certificate chain, key, and optionally a
CA bundle that enforcers' client certificates must chain to). On SIGHUP the files are
read again into a *scratch* context first — a bad or mismatched pair is refused with a
logged error and the old certificate stays in force — and only then loaded into the
live context. Connections already established keep their session; every handshake
after the reload presents the new certificate, so rotating a certificate drops nothing.

TLS 1.2 is the floor; Python's defaults choose the cipher suites.
"""

from __future__ import annotations

import logging
import ssl

from tether.config import Settings
from tether.errors import ConfigError

log = logging.getLogger("tether")

_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TlsFiles:
    def __init__(self, settings: Settings) -> None:
        tls = settings.tls
        self.cert = settings.resolve(tls.cert_file)
        self.key = settings.resolve(tls.key_file)
        self.client_ca = settings.resolve(tls.client_ca_file) if tls.client_ca_file else None
        self.verify = _VERIFY[tls.client_cert]

    def _load(self, ctx: ssl.SSLContext) -> None:
        named = (
            ("tls.cert_file", self.cert),
            ("tls.key_file", self.key),
            ("tls.client_ca_file", self.client_ca),
        )
        for name, path in named:
            if path is not None and not path.is_file():
                raise ConfigError(f"`{name}`: no file `{path}`", code="config_invalid", field=name)
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                f"`tls.cert_file`/`tls.key_file`: cannot use `{self.cert}` with `{self.key}` ({exc}); "
                "give a PEM certificate chain and its unencrypted private key",
                code="config_invalid",
                field="tls.cert_file",
            ) from exc
        if self.client_ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.client_ca))
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ConfigError(
                    f"`tls.client_ca_file`: cannot read CA certificates from `{self.client_ca}` ({exc})",
                    code="config_invalid",
                    field="tls.client_ca_file",
                ) from exc

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


def files(settings: Settings) -> TlsFiles | None:
    return TlsFiles(settings) if settings.tls.enabled else None
