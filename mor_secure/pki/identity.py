"""Who a certificate speaks for: the role and site name in its SAN URI, plus loading and fingerprints.

Every certificate of the project CA names exactly one identity, ``mor://client/<site>`` or
``mor://coordinator/<name>``, and carries the extended key usage that matches the role.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from mor_secure.errors import MorError

Role = Literal["client", "coordinator"]
ROLES: tuple[str, ...] = get_args(Role)

# What each role is allowed to do in TLS: a client dials (clientAuth), a coordinator serves.
ROLE_EKU = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "coordinator": ExtendedKeyUsageOID.SERVER_AUTH}

NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?")
_URI_RE = re.compile(r"mor://(client|coordinator)/([^/]+)")


class PKIError(MorError):
    """A certificate, key, CSR or CA operation is invalid; the message names the cause and the fix."""


class CRLError(PKIError):
    """The revocation list is missing, unreadable, not from the CA or stale (TLS would fail closed)."""


@dataclass(frozen=True)
class Identity:
    """A party of the federation as certified by the CA: its role and its site (or coordinator) name."""

    role: str
    name: str

    @property
    def uri(self) -> str:
        """The SAN URI that carries this identity, e.g. ``mor://client/site-a``."""
        return f"mor://{self.role}/{self.name}"


def check_identity(role: str, name: str) -> Identity:
    """Validate a role and a name (DNS-label-like, used in file names) and return the identity."""
    if role not in ROLES:
        raise PKIError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise PKIError(
            f"invalid name {name!r}: use 1-63 characters of a-z, 0-9, '-' and '.', "
            "starting and ending with a letter or digit (for example 'site-a')"
        )
    return Identity(role, name)


def identity_from_uris(uris: list[str], what: str) -> Identity:
    """The one ``mor://`` identity among SAN URIs; ``what`` names the object in errors."""
    ours = [u for u in uris if u.startswith("mor://")]
    if len(ours) != 1:
        raise PKIError(
            f"{what} must carry exactly one SAN URI mor://client/NAME or "
            f"mor://coordinator/NAME, found {len(ours)}: issue it with `mor certs`"
        )
    match = _URI_RE.fullmatch(ours[0])
    if match is None:
        raise PKIError(
            f"{what} has a malformed identity URI {ours[0]!r}: expected mor://client/NAME or mor://coordinator/NAME"
        )
    return check_identity(match.group(1), match.group(2))


def san_uris(extensions: x509.Extensions) -> list[str]:
    """The URIs in a SubjectAlternativeName extension (empty when there is none)."""
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def identity_of(cert: x509.Certificate) -> Identity:
    """The identity a certificate speaks for, from its SAN URI (PKIError if missing or malformed)."""
    return identity_from_uris(san_uris(cert.extensions), f"certificate {cert.subject.rfc4514_string()!r}")


def has_role_eku(cert: x509.Certificate, role: str) -> bool:
    """Whether the certificate's extended key usage allows acting as ``role``."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ROLE_EKU[role] in eku


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:HEX`` of the certificate's DER encoding (what sites pin and operators compare)."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _read(path: Path, what: str, error: type[PKIError]) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None


def load_cert(path: Path) -> x509.Certificate:
    """Read a PEM certificate (PKIError naming the file when missing or not a certificate)."""
    data = _read(path, "certificate", PKIError)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise PKIError(f"{path} is not a PEM certificate (expected '-----BEGIN CERTIFICATE-----')") from None


def load_crl(path: Path) -> x509.CertificateRevocationList:
    """Read a PEM revocation list (CRLError naming the file when missing or not a CRL)."""
    data = _read(path, "CRL", CRLError)
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError:
        raise CRLError(f"{path} is not a PEM CRL (expected '-----BEGIN X509 CRL-----')") from None
