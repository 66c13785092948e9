"""The project PKI: a CA that certifies each party's role and site name, revocation, TLS contexts.

Identities live in a SAN URI (``mor://client/<site>``, ``mor://coordinator/<name>``) with the
matching extended key usage; keys are made where they are used (CSR workflow), files 0600;
certificates are short-lived and revoked through a short-lived CRL that TLS checks fail-closed.
"""

from mor_secure.pki.authority import ca_fingerprint, certificates, init_ca, issue, revoke, sign_request, write_crl
from mor_secure.pki.crl import check_crl, crl_number
from mor_secure.pki.identity import (
    ROLES,
    CRLError,
    Identity,
    PKIError,
    Role,
    fingerprint,
    identity_of,
    load_cert,
    load_crl,
)
from mor_secure.pki.keys import KEY_TYPES, make_request
from mor_secure.pki.renewal import Installed, install_certificate
from mor_secure.pki.report import describe
from mor_secure.pki.tls import peer_identity, ssl_context

__all__ = [
    "KEY_TYPES",
    "ROLES",
    "CRLError",
    "Identity",
    "Installed",
    "PKIError",
    "Role",
    "ca_fingerprint",
    "certificates",
    "check_crl",
    "crl_number",
    "describe",
    "fingerprint",
    "identity_of",
    "init_ca",
    "install_certificate",
    "issue",
    "load_cert",
    "load_crl",
    "make_request",
    "peer_identity",
    "revoke",
    "sign_request",
    "ssl_context",
    "write_crl",
]
