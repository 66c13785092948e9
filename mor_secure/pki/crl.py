"""Checking a CRL before TLS uses it, so a stale or foreign CRL fails with the fix, not "unknown ca".

OpenSSL fails closed on CRLs: a missing, foreign or expired one makes every handshake fail with a
misleading error. ``check_crl`` finds those cases first and says which command repairs them.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from mor_secure.pki.identity import CRLError, load_cert, load_crl
from mor_secure.pki.keys import issuer_key

CLOCK_SKEW = dt.timedelta(minutes=5)


def _fix(crl_path: Path) -> str:
    return (
        f"run `mor certs crl --ca-dir DIR` on the CA and copy its crl.pem to {crl_path} "
        "(the service picks it up on reload)"
    )


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """The CRL's number (the CA increments it with every CRL it publishes), or None if it has none."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def check_crl(crl_path: Path, ca_cert: x509.Certificate | Path) -> x509.CertificateRevocationList:
    """Load ``crl_path`` and make sure it is signed by the CA and current; raise CRLError otherwise."""
    crl_path = Path(crl_path)
    if not isinstance(ca_cert, x509.Certificate):
        ca_cert = load_cert(ca_cert)
    try:
        crl = load_crl(crl_path)
    except CRLError as exc:
        raise CRLError(f"{exc}: every TLS handshake would fail closed; {_fix(crl_path)}") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(issuer_key(ca_cert)):
        raise CRLError(
            f"CRL {crl_path} is not signed by the CA {ca_cert.subject.rfc4514_string()!r} "
            f"(a CRL from another CA?): {_fix(crl_path)}"
        )
    now = dt.datetime.now(dt.timezone.utc)
    if crl.last_update_utc > now + CLOCK_SKEW:
        raise CRLError(
            f"CRL {crl_path} is not valid until {crl.last_update_utc:%Y-%m-%d %H:%M} UTC: check this machine's clock"
        )
    next_update = crl.next_update_utc
    if next_update is None or next_update <= now:
        when = "has no next update" if next_update is None else f"went stale at {next_update:%Y-%m-%d %H:%M} UTC"
        raise CRLError(f"CRL {crl_path} {when}: every TLS handshake would fail closed; {_fix(crl_path)}")
    return crl
