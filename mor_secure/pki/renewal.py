"""Installing a renewed certificate at a site without downtime.

``mor certs request --renew`` leaves the live NAME.key/NAME.pem in place and writes NAME.next.key
beside them; ``install_certificate`` checks the signed certificate against that key (or the live
key, for a --reuse-key renewal) and the CA, then moves key and certificate into place with atomic
renames. A running agent keeps its session and presents the new certificate at its next reconnect.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from mor_secure.logs import get_logger
from mor_secure.pki.authority import CA_CERT
from mor_secure.pki.identity import PKIError, fingerprint, identity_of, load_cert
from mor_secure.pki.keys import load_private_key, write_public

log = get_logger("pki")


@dataclass
class Installed:
    """Where the renewed certificate went, its fingerprint and expiry, and whether the key changed."""

    cert: Path
    key: Path
    fingerprint: str
    not_after: dt.datetime
    new_key: bool


def install_certificate(cert_path: Path, out_dir: Path) -> Installed:
    """Put a renewed certificate for NAME into ``out_dir`` as NAME.pem, with NAME.next.key (if it is
    the certificate's key) moved to NAME.key; refuses a certificate that fits neither key, is not
    from ``out_dir/ca.pem`` (when present) or has expired. Nothing changes on refusal."""
    cert_path, out_dir = Path(cert_path), Path(out_dir)
    cert = load_cert(cert_path)
    ident = identity_of(cert)
    live_cert, live_key, next_key = (
        out_dir / f"{ident.name}.pem",
        out_dir / f"{ident.name}.key",
        out_dir / f"{ident.name}.next.key",
    )
    if (out_dir / CA_CERT).exists():
        try:
            cert.verify_directly_issued_by(load_cert(out_dir / CA_CERT))
        except (ValueError, TypeError):
            raise PKIError(
                f"{cert_path} was not issued by the CA in {out_dir / CA_CERT}: ask the CA operator "
                "for the certificate signed from your request"
            ) from None
    if cert.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc):
        raise PKIError(f"{cert_path} has already expired: ask the CA operator to sign the request again")
    public = cert.public_key()
    if next_key.exists() and load_private_key(next_key).public_key() == public:
        new_key = True
    elif live_key.exists() and load_private_key(live_key).public_key() == public:
        new_key = False
    else:
        raise PKIError(
            f"{cert_path} fits neither {next_key} nor {live_key}: install the certificate signed "
            f"from this site's latest request (`mor certs request --renew --name {ident.name}`)"
        )
    data = cert_path.read_bytes()
    if new_key:
        os.replace(next_key, live_key)  # a reconnect between the two renames retries (see transport.contexts)
    write_public(live_cert, data)
    log.info("certificate installed", extra={"site": ident.name, "new_key": new_key, "fingerprint": fingerprint(cert)})
    return Installed(live_cert, live_key, fingerprint(cert), cert.not_valid_after_utc, new_key)
