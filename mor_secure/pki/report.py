"""A readable summary of one certificate for operators (`mor certs show`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from mor_secure.pki.authority import CA_CERT, CRL_FILE
from mor_secure.pki.identity import CRLError, PKIError, fingerprint, identity_of, load_cert, load_crl
from mor_secure.pki.keys import issuer_key


def describe(cert_path: Path, *, ca_dir: Path | None = None, crl: Path | None = None) -> dict[str, Any]:
    """Subject, role, site name, validity, fingerprint and issuer of a certificate.

    With ``ca_dir``, also whether that CA signed it; with a CRL (given, or the CA folder's), whether
    it is revoked and when the CRL goes stale. Unknown answers are None.
    """
    cert = load_cert(cert_path)
    try:
        ident = identity_of(cert)
        role, name = ident.role, ident.name
    except PKIError:
        role, name = None, None
    now = dt.datetime.now(dt.timezone.utc)
    info: dict[str, Any] = {
        "file": str(cert_path),
        "subject": cert.subject.rfc4514_string(),
        "role": role,
        "name": name,
        "serial": f"{cert.serial_number:x}",
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "expires_in_days": round((cert.not_valid_after_utc - now).total_seconds() / 86400, 1),
        "fingerprint": fingerprint(cert),
        "issued_by_ca": None,
        "revoked": None,
    }
    ca_cert = None
    if ca_dir is not None:
        ca_cert = load_cert(Path(ca_dir) / CA_CERT)
        try:
            cert.verify_directly_issued_by(ca_cert)
            info["issued_by_ca"] = True
        except (ValueError, TypeError):
            info["issued_by_ca"] = False
        crl = crl if crl is not None else Path(ca_dir) / CRL_FILE
    if crl is not None:
        revocations = load_crl(crl)
        if ca_cert is not None and not revocations.is_signature_valid(issuer_key(ca_cert)):
            raise CRLError(f"CRL {crl} is not signed by the CA in {ca_dir}")
        info["revoked"] = revocations.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
        next_update = revocations.next_update_utc
        info["crl_next_update"] = next_update.isoformat() if next_update else None
        info["crl_stale"] = next_update is None or next_update <= now
    return info
