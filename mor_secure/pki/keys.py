"""Private keys and certificate signing requests, made where the key is used (it never leaves).

Key files are created with ``O_CREAT | O_EXCL`` and mode 0600 from the first byte, so they are
never readable by others, not even briefly; public files are replaced atomically.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import NameOID, ObjectIdentifier

from mor_secure.logs import get_logger
from mor_secure.pki.identity import PKIError, check_identity

KeyType = Literal["p256", "ed25519"]
KEY_TYPES: tuple[str, ...] = get_args(KeyType)
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

RENEWAL_PROOF_OID = ObjectIdentifier("1.3.6.1.4.1.57264.77.1")
"""CSR extension of a renewal with a new key: the live certificate, and the live key's signature over the
new public key, so the CA may issue a second live certificate for the name (nobody else can)."""

log = get_logger("pki")


def new_key(key_type: str = "p256") -> PrivateKey:
    """A fresh private key: EC P-256 (default, what every TLS stack speaks) or Ed25519."""
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise PKIError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def signing_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """The hash to sign with this key (Ed25519 hashes internally and takes none)."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def check_public_key(key: object, what: str) -> None:
    """Accept only the key types the project issues (EC P-256, Ed25519)."""
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise PKIError(
        f"{what} has an unsupported public key ({type(key).__name__}): "
        "make the request with `mor certs request` (EC P-256 or Ed25519)"
    )


def write_private(path: Path, key: PrivateKey) -> Path:
    """Write an unencrypted PEM key to a new file that is 0600 from creation; never overwrites."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise PKIError(
            f"{path} already exists and a key is never overwritten: move it away first, "
            "or renew with the existing key (`mor certs request --reuse-key`)"
        ) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def write_public(path: Path, data: bytes) -> Path:
    """Replace ``path`` atomically (readers see the old or the new file, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def load_private_key(path: Path) -> PrivateKey:
    """Read a PEM private key; refuse one that group or others can read (like ssh does)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"private key {path} does not exist") from None
    except OSError as exc:
        raise PKIError(f"cannot read private key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PKIError(
            f"private key {path} is readable by others (mode {stat.S_IMODE(mode):04o}): run `chmod 600 {path}`"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PKIError(f"{path} is not an unencrypted PEM private key") from None
    check_public_key(key.public_key(), f"key {path}")
    return key  # type: ignore[return-value]


def _sign(key: PrivateKey, data: bytes) -> bytes:
    return key.sign(data) if isinstance(key, ed25519.Ed25519PrivateKey) else key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_signature(public_key: object, signature: bytes, data: bytes) -> None:
    """Check a signature made by one of the key types the project issues (EC P-256 with SHA-256, Ed25519);
    ``InvalidSignature`` when it does not match or the key is of another type."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
    else:
        raise InvalidSignature(f"a {type(public_key).__name__} is not a key type this project issues")


def issuer_key(cert: x509.Certificate) -> CertificateIssuerPublicKeyTypes:
    """The public key of a CA certificate, as the issuer key type cryptography's checks expect (the project's CA
    keys are EC P-256 or Ed25519, both issuer types)."""
    key = cert.public_key()
    if not isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise PKIError(f"the CA certificate carries a {type(key).__name__}: this project's CAs use EC P-256 or Ed25519")
    return key


def renewal_payload(name: str, new_public_key: Any) -> bytes:
    """What a renewal proof signs: the name and the new key (so the proof fits this request only)."""
    der = new_public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"mor-renewal\0" + name.encode("ascii") + b"\0" + der


def renewal_proof(live_cert_der: bytes, live_key: PrivateKey, name: str, new_public_key: object) -> bytes:
    """The extension value: 2-byte length, the live certificate (DER), the live key's signature."""
    signature = _sign(live_key, renewal_payload(name, new_public_key))
    return len(live_cert_der).to_bytes(2, "big") + live_cert_der + signature


def read_renewal_proof(value: bytes) -> tuple[x509.Certificate, bytes]:
    """The live certificate and the signature in a renewal proof (PKIError when malformed)."""
    size = int.from_bytes(value[:2], "big")
    try:
        return x509.load_der_x509_certificate(value[2 : 2 + size]), value[2 + size :]
    except ValueError:
        raise PKIError(
            "the request's renewal proof is malformed: make a new one with `mor certs request --renew`"
        ) from None


def make_request(
    role: str, name: str, out_dir: Path, *, key_type: str = "p256", reuse_key: bool = False, renew: bool = False
) -> tuple[Path, Path]:
    """Make ``out_dir/NAME.key`` (0600) and ``out_dir/NAME.csr`` asking for ``mor://ROLE/NAME``.

    ``reuse_key=True`` signs a renewal request with the existing NAME.key instead of a new key;
    ``renew=True`` makes a new key as NAME.next.key beside the live one, which keeps serving until
    ``mor certs install`` swaps in the signed certificate; the request carries a proof signed with the
    live NAME.key (and NAME.pem), which lets the CA issue it while the old certificate is still live.
    Returns (key path, CSR path).
    """
    ident = check_identity(role, name)
    if reuse_key and renew:
        raise PKIError("--renew makes a new key and --reuse-key keeps the old one: choose one")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, csr_path = out_dir / f"{name}{'.next' if renew else ''}.key", out_dir / f"{name}.csr"
    if renew and key_path.exists():
        raise PKIError(
            f"{key_path} exists: a renewal is already pending. Install its certificate "
            f"(`mor certs install --cert NAME.pem --dir {out_dir}`), or delete {key_path} to start over"
        )
    proof_by = None
    if renew:
        live_key, live_cert = out_dir / f"{name}.key", out_dir / f"{name}.pem"
        if not live_key.exists() or not live_cert.exists():
            raise PKIError(
                f"--renew proves the request with the live {live_key.name} and {live_cert.name}, "
                f"which are not in {out_dir}: run it where they are, or make a first request "
                "without --renew"
            )
        try:
            cert = x509.load_pem_x509_certificate(live_cert.read_bytes())
        except ValueError:
            raise PKIError(f"{live_cert} is not a PEM certificate") from None
        proof_by = (cert.public_bytes(serialization.Encoding.DER), load_private_key(live_key))
    if reuse_key:
        key = load_private_key(key_path)
    else:
        key = new_key(key_type)
        write_private(key_path, key)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                ]
            )
        )
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ident.uri)]), critical=False)
    )
    if proof_by is not None:
        value = renewal_proof(proof_by[0], proof_by[1], name, key.public_key())
        builder = builder.add_extension(x509.UnrecognizedExtension(RENEWAL_PROOF_OID, value), critical=False)
    csr = builder.sign(key, signing_hash(key))
    write_public(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    log.info("request made", extra={"role": role, "site": name, "reused_key": reuse_key, "renewal": renew})
    return key_path, csr_path
