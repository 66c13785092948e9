"""SSL contexts for the transport, built from a party's ``[tls]`` config section by the PKI.

The server calls the factory again whenever the CRL changes, and an agent after each lost connection
(picking up a renewed certificate), so a factory, not a context, is passed.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

from mor_secure import pki
from mor_secure.config import TLSConfig

RENEWAL_RETRY_S = 0.2


def context_factory(tls: TLSConfig, role: str) -> Callable[[], ssl.SSLContext]:
    """A callable that builds a fresh mutual-TLS 1.3 context for ``role`` from ``tls`` (PKIError if unusable)."""

    def build() -> ssl.SSLContext:
        try:
            return pki.ssl_context(
                role, ca=tls.ca, cert=tls.cert, key=tls.key, crl=tls.crl, ca_fingerprint=tls.ca_fingerprint
            )
        except pki.PKIError:
            time.sleep(RENEWAL_RETRY_S)  # `mor certs install` may be between renaming the key and the cert
            return pki.ssl_context(
                role, ca=tls.ca, cert=tls.cert, key=tls.key, crl=tls.crl, ca_fingerprint=tls.ca_fingerprint
            )

    return build


def own_identity(tls: TLSConfig) -> pki.Identity:
    """The identity this party's certificate speaks for (to check it against the config)."""
    return pki.identity_of(pki.load_cert(tls.cert))
