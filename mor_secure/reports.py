"""Signed privacy reports: a site's DP accounting, signed with its certificate's key.

The coordinator verifies who reported which epsilon: the certificate must chain to the project
CA with a client role, and the signature (ECDSA-SHA256 for the project's P-256 keys, or Ed25519)
must cover the report's canonical JSON.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mor_secure import pki
from mor_secure.errors import MorError
from mor_secure.pki.identity import has_role_eku
from mor_secure.pki.keys import load_private_key, verify_signature

INF = "inf"
"""The explicit JSON form of an infinite epsilon (training without DP)."""

MAX_REPORT_BYTES = 64 * 1024
MAX_CERT_BYTES = 16 * 1024
MAX_SIGNATURE_BYTES = 512

_NUMBER = (int, float)
_NONE = type(None)
REPORT_FIELDS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "epsilon": (*_NUMBER, str, _NONE),
        "epsilon_rdp": (*_NUMBER, str, _NONE),
        "delta": (*_NUMBER, _NONE),
        "accountant": (str, _NONE),
        "noise_multiplier": (*_NUMBER, _NONE),
        "sample_rate": (*_NUMBER, _NONE),
        "steps": (int,),
        "n_pairs": (int,),
        "data_fingerprint": (str,),
        "model_sha256": (str,),
        "family": (str,),
        "base": (str,),
    }
)
"""Required keys of a privacy report and their JSON types; any other key is allowed and signed too."""

OPTIONAL_FIELDS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "dp": (bool,),
        "private": (bool,),
        "baseline": (bool,),
        "created": (str, *_NUMBER),
        "time": (str, *_NUMBER),
    }
)
"""Optional keys checked when present: ``dp: false``, ``private: false`` or ``baseline: true`` mark a
run without DP (epsilon ``"inf"`` or null); ``created``/``time`` say when the site wrote it."""

_NO_DP = '"dp": false or "private": false'
# Without DP these carry no guarantee and may be null; with DP they must be given.
_DP_PARAMETERS = ("delta", "accountant", "noise_multiplier", "sample_rate")


class CanonicalError(ValueError):
    """A value cannot be encoded as canonical JSON (NaN, infinity, a non-JSON type)."""


class ReportError(MorError, ValueError):
    """A privacy report is malformed or its signature or certificate does not verify."""


def _check_json(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalError(
                f"{where or 'value'} is {value!r}: NaN and infinity are not "
                f"canonical JSON; write an infinite epsilon as {INF!r}"
            )
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"{where or 'object'} has a non-string key {key!r}")
            _check_json(item, f"{where}.{key}" if where else key)
        return
    raise CanonicalError(f"{where or 'value'} has type {type(value).__name__}, not a JSON type")


def canonical_json(value: Any) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, no whitespace, floats as repr, NaN and infinity refused."""
    _check_json(value, "")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def encode_epsilon(epsilon: float) -> float | str:
    """JSON form of an epsilon: the float itself, or ``"inf"`` when it is infinite (no DP)."""
    if math.isnan(epsilon) or epsilon < 0:
        raise ReportError(f"epsilon must be a number >= 0 or infinite, got {epsilon!r}")
    return INF if math.isinf(epsilon) else float(epsilon)


def report_epsilon(report: Mapping[str, Any]) -> float:
    """The report's epsilon as a float; ``math.inf`` for a run without DP."""
    value = report.get("epsilon")
    return math.inf if value is None or value == INF else float(value)


def is_private(report: Mapping[str, Any]) -> bool:
    """False when the report marks a run without DP (``dp``/``private`` false or ``baseline`` true)."""
    return not (report.get("dp") is False or report.get("private") is False or report.get("baseline") is True)


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def check_report(report: Any) -> None:
    """Check ``report`` against ``REPORT_FIELDS`` and the DP rules; raise ``ReportError`` naming the key."""
    if not isinstance(report, dict):
        raise ReportError(f"a privacy report must be a JSON object, got {type(report).__name__}")
    for key, types in {**REPORT_FIELDS, **OPTIONAL_FIELDS}.items():
        if key not in report:
            if key in REPORT_FIELDS:
                raise ReportError(f"privacy report lacks required key {key!r} (required: {', '.join(REPORT_FIELDS)})")
            continue
        value = report[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is _NONE else t.__name__ for t in types)
            raise ReportError(f"privacy report key {key!r} must be {names}, got {type(value).__name__} ({value!r:.60})")
    no_dp = not is_private(report)
    for key in ("epsilon", "epsilon_rdp"):
        value = report[key]
        if isinstance(value, str) and value != INF:
            raise ReportError(
                f"privacy report key {key!r} is the string {value!r:.40}; only {INF!r} (no DP) is allowed as a string"
            )
        if _is_number(value) and not (math.isfinite(value) and value >= 0):
            raise ReportError(
                f"privacy report key {key!r} must be finite and >= 0, got {value!r}; "
                f"write an infinite epsilon as {INF!r} with {_NO_DP}"
            )
    if no_dp and _is_number(report["epsilon"]):
        raise ReportError(
            f"privacy report is marked as a run without DP ({_NO_DP}) but gives a finite epsilon; "
            f"a run without DP has epsilon {INF!r} (or null)"
        )
    if not no_dp:
        if not _is_number(report["epsilon"]):
            raise ReportError(
                f"privacy report epsilon is {report['epsilon']!r}; an infinite or missing epsilon needs {_NO_DP}"
            )
        for key in _DP_PARAMETERS:
            if report[key] is None:
                raise ReportError(
                    f"privacy report key {key!r} is null; only a run marked {_NO_DP} may leave DP parameters null"
                )
    if report["delta"] is not None and not 0 <= report["delta"] < 1:
        raise ReportError(f"privacy report delta must be in [0, 1), got {report['delta']!r}")
    if report["sample_rate"] is not None and not 0 <= report["sample_rate"] <= 1:
        raise ReportError(f"privacy report sample_rate must be in [0, 1], got {report['sample_rate']!r}")
    if report["noise_multiplier"] is not None and not report["noise_multiplier"] >= 0:
        raise ReportError(f"privacy report noise_multiplier must be >= 0, got {report['noise_multiplier']!r}")
    for key in ("steps", "n_pairs"):
        if report[key] < 0:
            raise ReportError(f"privacy report key {key!r} must be >= 0, got {report[key]!r}")
    try:
        size = len(canonical_json(report))
    except CanonicalError as exc:
        raise ReportError(f"privacy report is not canonical JSON: {exc}") from exc
    if size > MAX_REPORT_BYTES:
        raise ReportError(f"privacy report is {size} bytes; at most {MAX_REPORT_BYTES} are accepted")


@dataclass(frozen=True)
class SignedReport:
    """A privacy report, the ECDSA-SHA256 signature over its canonical JSON, and the signer's certificate."""

    report: dict[str, Any]
    signature: bytes
    cert_pem: bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and msgpack-safe form: bytes fields as base64 text."""
        return {
            "report": self.report,
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "cert_pem": base64.b64encode(self.cert_pem).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Any) -> SignedReport:
        """Inverse of ``to_dict``; refuses anything malformed with a ``ReportError`` (checks no signature)."""
        if not isinstance(data, dict) or set(data) != {"report", "signature", "cert_pem"}:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ReportError(f"a signed report needs exactly the keys cert_pem, report, signature; got {got}")
        fields = {}
        for key, limit in (("signature", MAX_SIGNATURE_BYTES), ("cert_pem", MAX_CERT_BYTES)):
            text = data[key]
            if not isinstance(text, str) or len(text) > limit * 4 // 3 + 4:
                raise ReportError(f"signed report {key!r} must be base64 text of at most {limit} bytes")
            try:
                fields[key] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ReportError(f"signed report {key!r} is not valid base64: {exc}") from exc
        check_report(data["report"])
        return cls(report=data["report"], **fields)


def load_ca(ca_cert: x509.Certificate | str | Path) -> x509.Certificate:
    """The CA certificate, given itself or its PEM file (``ReportError`` naming the file if unusable)."""
    if isinstance(ca_cert, x509.Certificate):
        return ca_cert
    try:
        return pki.load_cert(Path(ca_cert))
    except pki.PKIError as exc:
        raise ReportError(f"CA certificate: {exc}") from exc


def _signature_args(key: Any) -> tuple[Any, ...]:
    """Extra arguments of ``sign``/``verify`` for the key types the PKI issues (P-256, Ed25519)."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return (ec.ECDSA(hashes.SHA256()),)
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ()
    raise ReportError(
        f"unsupported key type {type(key).__name__}: reports are signed with a site key "
        "issued by the project CA (EC P-256 or Ed25519)"
    )


def sign_report(report: dict[str, Any], key_path: str | Path, cert_path: str | Path | None = None) -> SignedReport:
    """Sign ``report`` with the site's private key (ECDSA-SHA256 for P-256).

    The certificate defaults to the key's sibling ``NAME.pem``; it must hold the key's public half.
    """
    check_report(report)
    key_path = Path(key_path)
    cert_path = Path(cert_path) if cert_path is not None else key_path.with_suffix(".pem")
    try:
        key = load_private_key(key_path)
        cert = pki.load_cert(cert_path)
    except pki.PKIError as exc:
        raise ReportError(f"cannot sign the privacy report: {exc}") from exc
    if cert.public_key() != key.public_key():
        raise ReportError(
            f"the certificate {cert_path} does not belong to the key {key_path}; "
            "pass the certificate issued for this key"
        )
    signature = key.sign(canonical_json(report), *_signature_args(key))
    return SignedReport(report=report, signature=signature, cert_pem=cert.public_bytes(serialization.Encoding.PEM))


def _check_certificate(
    cert: x509.Certificate, ca: x509.Certificate, at: dt.datetime, crl: str | Path | None
) -> pki.Identity:
    """The signer's identity, once its certificate is the CA's, valid at ``at``, a client's, not revoked."""
    subject = cert.subject.rfc4514_string()
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ReportError(
            f"the signer's certificate {subject!r} was not issued by the project CA "
            f"{ca.subject.rfc4514_string()!r}: {exc or 'bad CA signature'}"
        ) from exc
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise ReportError(
            f"the signer's certificate {subject!r} is not valid at {at:%Y-%m-%d %H:%M} UTC "
            f"(valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}): renew it with `mor certs`"
        )
    try:
        identity = pki.identity_of(cert)
    except pki.PKIError as exc:
        raise ReportError(f"the signer's certificate names no MoR identity: {exc}") from exc
    if identity.role != "client" or not has_role_eku(cert, "client"):
        raise ReportError(
            f"the report is signed by the {identity.role} certificate of {identity.name!r}; "
            "only a site's client certificate may sign a privacy report"
        )
    if crl is not None:
        try:
            revocations = pki.check_crl(Path(crl), ca)
        except pki.PKIError as exc:
            raise ReportError(str(exc)) from exc
        if revocations.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise ReportError(
                f"the signer's certificate ({identity.uri}, serial {cert.serial_number:x}) is revoked by the CA's CRL"
            )
    return identity


def verify_report(
    signed: SignedReport,
    ca_cert: x509.Certificate | str | Path,
    *,
    crl: str | Path | None = None,
    at: dt.datetime | None = None,
) -> pki.Identity:
    """Check the signer's certificate (issued by the CA, valid at ``at`` or now, client role, not
    revoked when a CRL path is given) and the signature over the canonical report.

    Returns the signer's identity; raises ``ReportError`` naming what failed.
    """
    ca = load_ca(ca_cert)
    check_report(signed.report)
    try:
        cert = x509.load_pem_x509_certificate(signed.cert_pem)
    except ValueError as exc:
        raise ReportError(f"the signed report carries no valid PEM certificate: {exc}") from exc
    identity = _check_certificate(cert, ca, at or dt.datetime.now(dt.timezone.utc), crl)
    try:
        verify_signature(cert.public_key(), signed.signature, canonical_json(signed.report))
    except InvalidSignature as exc:
        raise ReportError(
            f"the signature on {identity.name!r}'s report does not match its content "
            "(altered after signing, or signed with another key)"
        ) from exc
    return identity
