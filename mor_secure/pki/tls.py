"""TLS 1.3 contexts for the transport, and the identity of the peer once a handshake is done.

The coordinator is the TLS server and requires a client certificate; agents are TLS clients that
identify the coordinator by the SAN URI of its certificate, not by hostname. Trust is the project
CA only (never the system store), and the leaf certificate is checked against the CA's CRL.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509

from mor_secure.pki.crl import check_crl
from mor_secure.pki.identity import ROLES, Identity, PKIError, fingerprint, has_role_eku, identity_of, load_cert
from mor_secure.pki.keys import load_private_key


def _check_own_certificate(
    role: str, cert: x509.Certificate, cert_path: Path, ca_cert: x509.Certificate, crl: x509.CertificateRevocationList
) -> None:
    """Fail early, with the fix, on what the peer would otherwise refuse with a terse TLS alert."""
    ident = identity_of(cert)
    if ident.role != role or not has_role_eku(cert, role):
        raise PKIError(
            f"{cert_path}: certificate of role {ident.role} cannot act as {role}; "
            f"use a {role} certificate (`mor certs request --role {role}`)"
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError):
        raise PKIError(
            f"{cert_path} was not issued by the CA {ca_cert.subject.rfc4514_string()!r}: "
            "check the ca/cert paths, or have this CA sign a new request"
        ) from None
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc <= now:
        raise PKIError(
            f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: renew it with "
            f"`mor certs request --reuse-key` and `mor certs sign` on the CA"
        )
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise PKIError(f"{cert_path} ({ident.uri}) is revoked by the CA: ask the CA operator for a new one")


def ssl_context(role: str, *, ca: Path, cert: Path, key: Path, crl: Path, ca_fingerprint: str = "") -> ssl.SSLContext:
    """A mutual-TLS 1.3 context for ``role``: server side for the coordinator, client side for a site.

    Checks first (raising PKIError/CRLError with the fix): the CA pin when ``ca_fingerprint`` is set,
    the CRL's signature and freshness, and that this party's own certificate fits the role, comes
    from the CA, is unexpired, unrevoked and matches ``key``.
    """
    if role not in ROLES:
        raise PKIError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    ca, cert, key, crl = Path(ca), Path(cert), Path(key), Path(crl)
    ca_cert = load_cert(ca)
    if ca_fingerprint and fingerprint(ca_cert) != ca_fingerprint.lower():
        raise PKIError(
            f"CA certificate {ca} has fingerprint {fingerprint(ca_cert)}, not the pinned "
            f"{ca_fingerprint}: get ca.pem from the CA operator again and compare fingerprints"
        )
    revocations = check_crl(crl, ca_cert)
    own = load_cert(cert)
    _check_own_certificate(role, own, cert, ca_cert, revocations)
    if load_private_key(key).public_key() != own.public_key():
        raise PKIError(f"key {key} does not belong to certificate {cert}: use the key the request was made with")

    server = role == "coordinator"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server:
        ctx.num_tickets = 0  # no resumption: every connection presents (and is checked on) its certificate
    else:
        ctx.check_hostname = False  # peers are identified by SAN URI (peer_identity), not hostname
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_verify_locations(cafile=str(crl))
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return ctx


def peer_identity(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, expected_role: str, *, expected_name: str | None = None
) -> Identity:
    """The verified peer's identity after the handshake; PKIError unless it may act as ``expected_role``
    (and, when ``expected_name`` is given, carries that name: a site checks which coordinator it reached)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PKIError("the peer presented no certificate (is the handshake complete?)")
    cert = x509.load_der_x509_certificate(der)
    ident = identity_of(cert)
    if ident.role != expected_role:
        raise PKIError(f"certificate of role {ident.role} cannot act as {expected_role} ({ident.uri})")
    if not has_role_eku(cert, expected_role):
        raise PKIError(
            f"certificate {ident.uri} lacks the extended key usage of a {expected_role}: "
            "reissue it with `mor certs sign`"
        )
    if expected_name is not None and ident.name != expected_name:
        raise PKIError(
            f"expected {expected_role} {expected_name!r} but the peer is {ident.uri}: "
            "check the address and the expected name in the configuration"
        )
    return ident
