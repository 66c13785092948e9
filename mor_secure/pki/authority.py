"""The project CA: create it, sign site requests, record what it issued, revoke and publish the CRL.

A CA folder holds ``ca.pem`` (public, pinned by sites), ``ca.key`` (0600, keep it offline),
``crl.pem`` (signed, short-lived, copied to every site) and ``index.json`` (every certificate
issued: name, role, serial, expiry, fingerprint, revocation time).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from mor_secure.logs import get_logger
from mor_secure.pki.identity import (
    ROLE_EKU,
    PKIError,
    check_identity,
    fingerprint,
    identity_from_uris,
    load_cert,
    san_uris,
)
from mor_secure.pki.keys import (
    RENEWAL_PROOF_OID,
    check_public_key,
    load_private_key,
    make_request,
    new_key,
    read_renewal_proof,
    renewal_payload,
    signing_hash,
    verify_signature,
    write_private,
    write_public,
)

CA_CERT, CA_KEY, CRL_FILE, INDEX_FILE = "ca.pem", "ca.key", "crl.pem", "index.json"
BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between the CA and the sites

log = get_logger("pki")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_days(days: int, what: str) -> None:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500:
        raise PKIError(f"{what} must be a whole number of days from 1 to 36500, got {days!r}")


def _ski(public_key: Any) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_id(public_key: Any) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def ca_fingerprint(ca: Path) -> str:
    """``sha256:HEX`` of the CA certificate, given the CA folder or its ``ca.pem``."""
    ca = Path(ca)
    return fingerprint(load_cert(ca / CA_CERT if ca.is_dir() else ca))


def init_ca(ca_dir: Path, *, common_name: str = "MoR-Secure CA", days: int = 3650, crl_days: int = 7) -> Path:
    """Create a CA (EC P-256) in ``ca_dir`` with an empty signed CRL and index; returns ca.pem's path.

    Refuses to overwrite an existing CA: a new CA would invalidate the certificate of every site.
    """
    _check_days(days, "CA validity")
    _check_days(crl_days, "CRL validity")
    if not 1 <= len(common_name) <= 64:
        raise PKIError(f"the CA common name must have 1 to 64 characters, got {len(common_name)}")
    ca_dir = Path(ca_dir)
    if any((ca_dir / f).exists() for f in (CA_CERT, CA_KEY)):
        raise PKIError(
            f"{ca_dir} already holds a CA; refusing to overwrite it: a new CA invalidates "
            "every site's certificate and pin. Use another --ca-dir for a separate CA."
        )
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = new_key("p256")
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MoR-Secure"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key.public_key()), critical=False)
        .sign(key, signing_hash(key))
    )
    write_private(ca_dir / CA_KEY, key)
    write_public(ca_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _save_index(ca_dir, {"version": 1, "crl_number": 0, "certificates": []})
    write_crl(ca_dir, days=crl_days)
    log.info("CA created", extra={"fingerprint": fingerprint(cert)})
    return ca_dir / CA_CERT


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, Any]:
    ca_dir = Path(ca_dir)
    if not (ca_dir / CA_CERT).exists():
        raise PKIError(
            f"{ca_dir} holds no CA ({CA_CERT} missing): create one with "
            f"`mor certs init --ca-dir {ca_dir}`, or point --ca-dir at the CA folder"
        )
    return load_cert(ca_dir / CA_CERT), load_private_key(ca_dir / CA_KEY)


def _load_index(ca_dir: Path) -> dict[str, Any]:
    path = Path(ca_dir) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise PKIError(f"{path} is missing: this CA folder is incomplete (restore it from backup)") from None
    except (OSError, ValueError) as exc:
        raise PKIError(f"{path} is unreadable ({exc}): restore it from backup") from None
    if not isinstance(index, dict) or not isinstance(index.get("certificates"), list):
        raise PKIError(f"{path} is not a MoR-Secure CA index: restore it from backup")
    return index


def _save_index(ca_dir: Path, index: dict[str, Any]) -> None:
    write_public(Path(ca_dir) / INDEX_FILE, (json.dumps(index, indent=2) + "\n").encode())


@contextmanager
def _locked(ca_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the index between concurrent `mor certs` runs."""
    with open(Path(ca_dir) / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_live(entry: dict[str, Any], now: dt.datetime) -> bool:
    return entry.get("revoked_at") is None and entry["not_after"] > _iso(now)


def certificates(ca_dir: Path) -> list[dict[str, Any]]:
    """Every certificate the CA issued (index.json rows, oldest first), each with a ``status``."""
    now = _now()
    rows = []
    for entry in _load_index(ca_dir)["certificates"]:
        status = "revoked" if entry.get("revoked_at") else "live" if _is_live(entry, now) else "expired"
        rows.append({**entry, "status": status})
    return rows


def _renewal_fingerprint(csr: x509.CertificateSigningRequest, ca_cert: x509.Certificate, name: str) -> str | None:
    """The fingerprint of the live certificate whose key signed this request's renewal proof, or None when
    the request carries no proof (PKIError when it carries a bad one)."""
    try:
        value = csr.extensions.get_extension_for_oid(RENEWAL_PROOF_OID).value.value  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        return None
    cert, signature = read_renewal_proof(value)
    try:
        cert.verify_directly_issued_by(ca_cert)
        verify_signature(cert.public_key(), signature, renewal_payload(name, csr.public_key()))
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(
            "the request's renewal proof does not verify (not signed by the live key of a certificate "
            "of this CA): make a new request at the site with `mor certs request --renew`"
        ) from None
    return fingerprint(cert)


def sign_request(
    ca_dir: Path, csr_path: Path, *, days: int = 30, out: Path | None = None, replace: bool = False
) -> Path:
    """Verify a CSR and issue the certificate its SAN URI asks for; returns the certificate's path.

    The role and name come from the CSR's ``mor://ROLE/NAME`` URI; everything else (EKU, key usage,
    validity) is set here, never taken from the request. A name that already has a live certificate
    gets a second one only for the same key (renewal with --reuse-key), for a request whose renewal
    proof is signed by a live certificate's key (`mor certs request --renew`), or with ``replace``,
    which revokes the live ones (and publishes a new CRL). Refused are a name live under the other
    role and a key that was ever revoked.
    """
    _check_days(days, "certificate validity")
    ca_dir, csr_path = Path(ca_dir), Path(csr_path)
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except FileNotFoundError:
        raise PKIError(f"CSR {csr_path} does not exist") from None
    except ValueError:
        raise PKIError(f"{csr_path} is not a PEM certificate request (make one with `mor certs request`)") from None
    if not csr.is_signature_valid:
        raise PKIError(
            f"CSR {csr_path} has an invalid signature (tampered with, or not signed by its "
            "own key): make a new request at the site with `mor certs request`"
        )
    check_public_key(csr.public_key(), f"CSR {csr_path}")
    ident = identity_from_uris(san_uris(csr.extensions), f"CSR {csr_path}")
    ca_cert, ca_key = _load_ca(ca_dir)
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise PKIError(f"the CA certificate in {ca_dir} has expired: make a new CA and re-enrol every site")
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(ident.uri)]
    if ident.role == "coordinator":
        san.append(x509.DNSName(ident.name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, ident.name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ident.role),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ROLE_EKU[ident.role]]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(_ski(csr.public_key()), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
        .sign(ca_key, signing_hash(ca_key))
    )
    with _locked(ca_dir):
        index = _load_index(ca_dir)
        key_id = _key_id(csr.public_key())
        if any(e.get("key_id") == key_id and e.get("revoked_at") for e in index["certificates"]):
            raise PKIError(
                f"the key of CSR {csr_path} belongs to a revoked certificate and may be "
                "compromised: make a new key at the site (`mor certs request` without --reuse-key)"
            )
        same_name = [e for e in index["certificates"] if e["name"] == ident.name and _is_live(e, now)]
        other_role = [e for e in same_name if e["role"] != ident.role]
        if other_role:
            raise PKIError(
                f"name {ident.name!r} already has a live {other_role[0]['role']} certificate: "
                f"revoke it first (`mor certs revoke --name {ident.name}`) or choose another name"
            )
        other_keys = [e for e in same_name if e.get("key_id") != key_id]
        proven = _renewal_fingerprint(csr, ca_cert, ident.name) if other_keys else None
        if other_keys and not replace and proven not in {e["fingerprint"] for e in other_keys}:
            live = other_keys[0]
            raise PKIError(
                f"{ident.uri} already has a live certificate on another key (serial "
                f"{int(live['serial']):x}, {live['fingerprint'][:23]}...): a second one would be issued "
                f"silently. Revoke it first (`mor certs revoke --name {ident.name}`), sign with --replace "
                "(revokes it), or have the site renew with `mor certs request --renew` (proves the old key)"
            )
        replaced = []
        if replace:
            for entry in other_keys:
                entry["revoked_at"] = _iso(now)
                replaced.append(int(entry["serial"]))
        index["certificates"].append(
            {
                "name": ident.name,
                "role": ident.role,
                "serial": cert.serial_number,
                "not_after": _iso(cert.not_valid_after_utc),
                "fingerprint": fingerprint(cert),
                "key_id": key_id,
                "issued_at": _iso(now),
                "revoked_at": None,
            }
        )
        _save_index(ca_dir, index)
    out = Path(out) if out is not None else csr_path.with_name(f"{ident.name}.pem")
    write_public(out, cert.public_bytes(serialization.Encoding.PEM))
    log.info(
        "certificate issued",
        extra={
            "role": ident.role,
            "site": ident.name,
            "serial": f"{cert.serial_number:x}",
            "renewal": bool(same_name),
            "replaced": len(replaced),
        },
    )
    if replaced:
        write_crl(ca_dir)
        log.warning(
            "replaced certificates revoked", extra={"site": ident.name, "serials": ",".join(f"{s:x}" for s in replaced)}
        )
    return out


def issue(
    ca_dir: Path,
    *,
    role: str,
    name: str,
    days: int = 30,
    out_dir: Path | None = None,
    key_type: str = "p256",
    replace: bool = False,
) -> tuple[Path, Path]:
    """Development shortcut: make a key and sign it here; writes NAME.pem and NAME.key, returns both.

    In production the key is made at the site (`make_request`) and only the CSR travels.
    """
    check_identity(role, name)
    _check_days(days, "certificate validity")
    out_dir = Path(out_dir) if out_dir is not None else Path(ca_dir)
    key_path, csr_path = make_request(role, name, out_dir, key_type=key_type)
    try:
        cert_path = sign_request(ca_dir, csr_path, days=days, out=out_dir / f"{name}.pem", replace=replace)
    except PKIError:
        key_path.unlink()
        raise
    finally:
        csr_path.unlink()
    return cert_path, key_path


def write_crl(ca_dir: Path, *, days: int = 7) -> Path:
    """Sign and publish a fresh ``crl.pem`` (next update in ``days``); sites need it before it goes stale."""
    _check_days(days, "CRL validity")
    ca_dir = Path(ca_dir)
    ca_cert, ca_key = _load_ca(ca_dir)
    now = _now()
    with _locked(ca_dir):
        index = _load_index(ca_dir)
        index["crl_number"] = int(index.get("crl_number", 0)) + 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - BACKDATE)
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
            .add_extension(_aki(ca_cert), critical=False)
        )
        for entry in index["certificates"]:
            if entry.get("revoked_at"):
                revoked_at = dt.datetime.strptime(entry["revoked_at"], "%Y-%m-%dT%H:%M:%SZ")
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(entry["serial"]))
                    .revocation_date(revoked_at.replace(tzinfo=dt.timezone.utc))
                    .build()
                )
        crl = builder.sign(ca_key, signing_hash(ca_key))
        write_public(ca_dir / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM))
        _save_index(ca_dir, index)
    log.info("CRL published", extra={"number": index["crl_number"], "days": days})
    return ca_dir / CRL_FILE


def revoke(ca_dir: Path, name: str, *, crl_days: int = 7, serial: int | None = None) -> list[int]:
    """Revoke every live certificate of ``name`` (or only the one with ``serial``, e.g. the certificate a
    renewal replaced) and publish a new CRL; returns the revoked serials."""
    ca_dir = Path(ca_dir)
    _load_ca(ca_dir)
    now = _now()
    with _locked(ca_dir):
        index = _load_index(ca_dir)
        known = {e["name"] for e in index["certificates"]}
        if name not in known:
            raise PKIError(
                f"this CA never issued a certificate for {name!r}; known names: {', '.join(sorted(known)) or 'none'}"
            )
        serials = []
        for entry in index["certificates"]:
            if entry["name"] == name and _is_live(entry, now) and serial in (None, int(entry["serial"])):
                entry["revoked_at"] = _iso(now)
                serials.append(int(entry["serial"]))
        _save_index(ca_dir, index)
    write_crl(ca_dir, days=crl_days)
    log.info("revoked", extra={"site": name, "count": len(serials)})
    return serials
