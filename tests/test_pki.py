"""The PKI: what it writes verifies with OpenSSL, revocation bites, and TLS 1.3 contexts pair up."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mor_secure import pki
from mor_secure.commands.certs import group as certs_cli

OPENSSL = shutil.which("openssl") or ("/usr/bin/openssl" if Path("/usr/bin/openssl").exists() else None)
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command line is not installed")


def openssl_verify(ca_dir: Path, cert: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            OPENSSL,
            "verify",
            "-x509_strict",
            "-CAfile",
            str(ca_dir / "ca.pem"),
            "-crl_check",
            "-CRLfile",
            str(ca_dir / "crl.pem"),
            str(cert),
        ],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A private CA per test (cheap: milliseconds), for tests that revoke or re-issue."""
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    pki.issue(ca, role="coordinator", name="coord")
    pki.issue(ca, role="client", name="site-a")
    return ca


def context(ca: Path, role: str, name: str, folder: Path | None = None) -> ssl.SSLContext:
    folder = folder or ca
    return pki.ssl_context(
        role, ca=ca / "ca.pem", cert=folder / f"{name}.pem", key=folder / f"{name}.key", crl=ca / "crl.pem"
    )


class Link:
    """Two SSLObjects joined by memory BIOs (no sockets): the transport's set-up, in miniature."""

    def __init__(self, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
        self.s_in, self.s_out, self.c_in, self.c_out = (ssl.MemoryBIO() for _ in range(4))
        self.server = server_ctx.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.client = client_ctx.wrap_bio(self.c_in, self.c_out, server_side=False)

    def pump(self) -> None:
        self.s_in.write(self.c_out.read())
        self.c_in.write(self.s_out.read())

    def handshake(self) -> Link:
        """Drive both handshakes to completion; TLS errors propagate from the side that fails."""
        done = {"client": False, "server": False}
        for _ in range(10):
            for side, obj in (("client", self.client), ("server", self.server)):
                if not done[side]:
                    try:
                        obj.do_handshake()
                        done[side] = True
                    except ssl.SSLWantReadError:
                        pass
                self.pump()
            if all(done.values()):
                return self
        raise AssertionError("handshake did not finish")


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Link:
    return Link(server_ctx, client_ctx).handshake()


# --- files and OpenSSL --------------------------------------------------------------------------


@needs_openssl
def test_everything_issued_verifies_with_openssl(pki_dir: Path):
    for name in ("coord", "site-a", "site-b"):
        result = openssl_verify(pki_dir, pki_dir / f"{name}.pem")
        assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stderr


@needs_openssl
def test_revoked_certificate_fails_openssl_verify(ca_dir: Path):
    serial = pki.load_cert(ca_dir / "site-a.pem").serial_number
    assert pki.revoke(ca_dir, "site-a") == [serial]
    result = openssl_verify(ca_dir, ca_dir / "site-a.pem")
    assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr
    assert openssl_verify(ca_dir, ca_dir / "coord.pem").returncode == 0
    assert pki.revoke(ca_dir, "site-a") == []  # nothing live is left


def test_key_files_are_0600_even_with_a_permissive_umask(pki_dir: Path, tmp_path: Path):
    for key in ("ca.key", "coord.key", "site-a.key"):
        assert stat.S_IMODE((pki_dir / key).stat().st_mode) == 0o600
    old = os.umask(0)
    try:
        key, csr = pki.make_request("client", "site-z", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(pki.PKIError, match="never overwritten"):
        pki.make_request("client", "site-z", tmp_path)


def test_init_refuses_to_overwrite_a_ca(pki_dir: Path):
    before = (pki_dir / "ca.pem").read_bytes()
    with pytest.raises(pki.PKIError, match="invalidates every site"):
        pki.init_ca(pki_dir)
    assert (pki_dir / "ca.pem").read_bytes() == before


@pytest.mark.parametrize(
    "role,name",
    [
        ("client", "Site-A"),
        ("client", "-a"),
        ("client", "a/b"),
        ("client", "../x"),
        ("client", "site_a"),
        ("client", ""),
        ("client", "a" * 64),
        ("client", "a-"),
        ("admin", "site-a"),
    ],
)
def test_bad_name_or_role_is_rejected(tmp_path: Path, role: str, name: str):
    with pytest.raises(pki.PKIError, match="invalid name|unknown role"):
        pki.make_request(role, name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _der(csr: Path) -> bytes:
    return x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(serialization.Encoding.DER)


def _point(key_file: Path) -> bytes:
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@pytest.mark.parametrize("tamper", ["other-key", "other-name"])
def test_tampered_csr_is_refused(ca_dir: Path, tmp_path: Path, tamper: str):
    key, csr = pki.make_request("client", "site-q", tmp_path / "q")
    der = _der(csr)
    if tamper == "other-key":  # the request claims another key than the one that signed it
        other_key, _ = pki.make_request("client", "site-q", tmp_path / "other")
        forged = der.replace(_point(key), _point(other_key))
    else:  # the name was changed after signing
        forged = der.replace(b"mor://client/site-q", b"mor://client/site-x")
    assert forged != der
    bad = tmp_path / "forged.csr"
    bad.write_bytes(x509.load_der_x509_csr(forged).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(pki.PKIError, match="invalid signature"):
        pki.sign_request(ca_dir, bad)
    assert [c["name"] for c in pki.certificates(ca_dir)] == ["coord", "site-a"]


def test_identity_round_trip_and_extensions(pki_dir: Path):
    client = pki.load_cert(pki_dir / "site-a.pem")
    coord = pki.load_cert(pki_dir / "coord.pem")
    assert pki.identity_of(client) == pki.Identity("client", "site-a")
    assert pki.identity_of(client).uri == "mor://client/site-a"
    assert pki.identity_of(coord).uri == "mor://coordinator/coord"
    san = coord.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord"]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert pki.fingerprint(client).startswith("sha256:") and len(pki.fingerprint(client)) == 71
    with pytest.raises(pki.PKIError, match="exactly one SAN URI"):
        pki.identity_of(pki.load_cert(pki_dir / "ca.pem"))


def test_renewal_with_the_same_key_and_revocation_of_all_live_certificates(ca_dir: Path, tmp_path: Path):
    site = tmp_path / "site"
    _, csr = pki.make_request("client", "site-r", site)
    first = pki.load_cert(pki.sign_request(ca_dir, csr))
    _, csr = pki.make_request("client", "site-r", site, reuse_key=True)
    second = pki.load_cert(pki.sign_request(ca_dir, csr, days=1))
    assert first.public_key() == second.public_key() and first.serial_number != second.serial_number
    assert sorted(pki.revoke(ca_dir, "site-r")) == sorted([first.serial_number, second.serial_number])
    with pytest.raises(pki.PKIError, match="revoked certificate and may be compromised"):
        pki.sign_request(ca_dir, csr)
    with pytest.raises(pki.PKIError, match="never issued"):
        pki.revoke(ca_dir, "site-unknown")


def test_a_name_cannot_hold_both_roles(ca_dir: Path, tmp_path: Path):
    with pytest.raises(pki.PKIError, match="already has a live coordinator certificate"):
        pki.issue(ca_dir, role="client", name="coord", out_dir=tmp_path)
    assert not (tmp_path / "coord.key").exists()


# --- CRL freshness ------------------------------------------------------------------------------


def _stale_crl(ca_dir: Path) -> None:
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    ca = pki.load_cert(ca_dir / "ca.pem")
    now = dt.datetime.now(dt.timezone.utc)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(days=8))
        .next_update(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (ca_dir / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("problem", ["stale", "missing", "foreign", "garbage"])
def test_bad_crl_raises_crl_error_naming_the_fix(ca_dir: Path, tmp_path: Path, problem: str):
    crl = ca_dir / "crl.pem"
    if problem == "stale":
        _stale_crl(ca_dir)
    elif problem == "missing":
        crl.unlink()
    elif problem == "foreign":
        pki.init_ca(tmp_path / "other")
        shutil.copy(tmp_path / "other" / "crl.pem", crl)
    else:
        crl.write_text("not a crl")
    for call in (lambda: pki.check_crl(crl, ca_dir / "ca.pem"), lambda: context(ca_dir, "client", "site-a")):
        with pytest.raises(pki.CRLError) as err:
            call()
        assert "mor certs crl --ca-dir" in str(err.value) and str(crl) in str(err.value)
    if problem == "stale":
        assert pki.describe(ca_dir / "site-a.pem", ca_dir=ca_dir)["crl_stale"] is True
    pki.write_crl(ca_dir)  # the documented fix works
    assert pki.check_crl(crl, pki.load_cert(ca_dir / "ca.pem")).next_update_utc > dt.datetime.now(dt.timezone.utc)


# --- TLS 1.3 handshakes in memory ---------------------------------------------------------------


def test_mutual_tls13_handshake_and_peer_identities(pki_dir: Path):
    link = handshake(context(pki_dir, "coordinator", "coord"), context(pki_dir, "client", "site-a"))
    server, client = link.server, link.client
    assert server.version() == client.version() == "TLSv1.3"
    assert pki.peer_identity(server, "client") == pki.Identity("client", "site-a")
    assert pki.peer_identity(client, "coordinator", expected_name="coord") == pki.Identity("coordinator", "coord")
    with pytest.raises(pki.PKIError, match="expected coordinator 'other'"):
        pki.peer_identity(client, "coordinator", expected_name="other")
    client.write(b"hello")
    link.pump()
    assert server.read() == b"hello"
    with pytest.raises(pki.PKIError, match="certificate of role client cannot act as coordinator"):
        pki.peer_identity(server, "coordinator")


def test_ed25519_keys_work_in_tls13(ca_dir: Path, tmp_path: Path):
    pki.issue(ca_dir, role="client", name="site-ed", out_dir=tmp_path, key_type="ed25519")
    link = handshake(context(ca_dir, "coordinator", "coord"), context(ca_dir, "client", "site-ed", tmp_path))
    assert pki.peer_identity(link.server, "client").name == "site-ed"


def test_revoked_client_is_refused_by_the_coordinator(ca_dir: Path):
    client_ctx = context(ca_dir, "client", "site-a")  # built while still valid
    pki.revoke(ca_dir, "site-a")
    with pytest.raises(ssl.SSLError, match="certificate revoked"):
        handshake(context(ca_dir, "coordinator", "coord"), client_ctx)
    with pytest.raises(pki.PKIError, match="is revoked by the CA"):
        context(ca_dir, "client", "site-a")


def test_client_certificate_cannot_act_as_coordinator(pki_dir: Path):
    with pytest.raises(pki.PKIError, match="certificate of role client cannot act as coordinator"):
        context(pki_dir, "coordinator", "site-a")
    # Even a hand-built server context with a client certificate is refused by the dialling site (EKU).
    rogue = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    rogue.load_cert_chain(pki_dir / "site-a.pem", pki_dir / "site-a.key")
    with pytest.raises(ssl.SSLError, match="unsuitable certificate purpose"):
        handshake(rogue, context(pki_dir, "client", "site-b"))


def test_context_checks_pin_key_and_key_permissions(pki_dir: Path, tmp_path: Path):
    args = dict(ca=pki_dir / "ca.pem", cert=pki_dir / "site-a.pem", crl=pki_dir / "crl.pem")
    pinned = pki.ssl_context("client", key=pki_dir / "site-a.key", ca_fingerprint=pki.ca_fingerprint(pki_dir), **args)
    assert pinned.minimum_version == pinned.maximum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(pki.PKIError, match="not the pinned"):
        pki.ssl_context("client", key=pki_dir / "site-a.key", ca_fingerprint="sha256:" + "0" * 64, **args)
    with pytest.raises(pki.PKIError, match="does not belong to certificate"):
        pki.ssl_context("client", key=pki_dir / "site-b.key", **args)
    loose = tmp_path / "loose.key"
    shutil.copy(pki_dir / "site-a.key", loose)
    loose.chmod(0o644)
    with pytest.raises(pki.PKIError, match="chmod 600"):
        pki.ssl_context("client", key=loose, **args)


# --- the `mor certs` commands ---------------------------------------------------------------------


def test_cli_site_lifecycle(tmp_path: Path):
    run = CliRunner().invoke
    ca, site = tmp_path / "ca", tmp_path / "site"
    result = run(certs_cli, ["init", "--ca-dir", str(ca)])
    assert result.exit_code == 0, result.output
    fp = pki.ca_fingerprint(ca)
    assert fp in result.output
    again = run(certs_cli, ["init", "--ca-dir", str(ca)])
    assert again.exit_code != 0 and "refusing to overwrite" in again.output
    assert isinstance(again.exception, SystemExit)  # a clear error, not a traceback

    assert run(certs_cli, ["request", "--role", "client", "--name", "site-a", "--out", str(site)]).exit_code == 0
    signed = run(certs_cli, ["sign", "--ca-dir", str(ca), "--csr", str(site / "site-a.csr"), "--days", "10"])
    assert signed.exit_code == 0 and fp in signed.output and "mor://client/site-a" in signed.output
    assert run(certs_cli, ["issue", "--ca-dir", str(ca), "--role", "coordinator", "--name", "coord"]).exit_code == 0

    shown = run(certs_cli, ["show", str(site / "site-a.pem"), "--ca-dir", str(ca)])
    assert shown.exit_code == 0
    assert "site:         site-a" in shown.output and "revoked:      no" in shown.output
    assert "expires in:   10.0 days" in shown.output
    assert pki.fingerprint(pki.load_cert(site / "site-a.pem")) in shown.output

    revoked = run(certs_cli, ["revoke", "--ca-dir", str(ca), "--name", "site-a"])
    assert revoked.exit_code == 0 and "revoked 1 certificate" in revoked.output
    assert "revoked:      yes" in run(certs_cli, ["show", str(site / "site-a.pem"), "--ca-dir", str(ca)]).output
    listed = run(certs_cli, ["list", "--ca-dir", str(ca)]).output
    assert "revoked  client" in listed and "live     coordinator  coord" in listed

    assert run(certs_cli, ["crl", "--ca-dir", str(ca), "--days", "3"]).exit_code == 0
    next_update = pki.load_crl(ca / "crl.pem").next_update_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=2) < next_update <= dt.timedelta(days=3)


@pytest.mark.parametrize(
    "args,message",
    [
        (["request", "--role", "client", "--name", "Bad", "--out", "x"], "invalid name"),
        (["sign", "--ca-dir", "nowhere", "--csr", "missing.csr"], "does not exist"),
        (["revoke", "--ca-dir", "nowhere", "--name", "site-a"], "mor certs init"),
        (["show", "missing.pem"], "does not exist"),
    ],
)
def test_cli_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(certs_cli, args)
    assert result.exit_code != 0 and message in result.output
    assert isinstance(result.exception, SystemExit)


def test_validity_out_of_range_is_refused_without_leaving_files(ca_dir: Path, tmp_path: Path):
    for days in (0, -1, 10**6):
        with pytest.raises(pki.PKIError, match="whole number of days"):
            pki.issue(ca_dir, role="client", name="site-d", days=days, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_second_live_certificate_on_a_new_key_needs_revocation_replacement_or_a_renewal_proof(tmp_path: Path):
    ca_dir = tmp_path / "ca"
    pki.init_ca(ca_dir)
    site = tmp_path / "site"
    _, csr = pki.make_request("client", "site-q", site)
    first = pki.load_cert(pki.sign_request(ca_dir, csr, out=site / "site-q.pem"))
    _, stranger = pki.make_request("client", "site-q", tmp_path / "stranger")  # a new key, no proof
    with pytest.raises(pki.PKIError, match="already has a live certificate on another key.*--replace"):
        pki.sign_request(ca_dir, stranger)
    crl_before = pki.crl_number(pki.load_crl(ca_dir / "crl.pem"))

    # the site itself renews with a new key: its live key signs the request, the old one stays live
    _, renewal = pki.make_request("client", "site-q", site, renew=True)
    renewed = pki.load_cert(pki.sign_request(ca_dir, renewal, out=tmp_path / "renewed.pem"))
    assert [r["status"] for r in pki.certificates(ca_dir)] == ["live", "live"]

    # the operator asks for replacement: every live one of the name is revoked, a new CRL published
    replaced = pki.load_cert(pki.sign_request(ca_dir, stranger, replace=True))
    rows = {int(r["serial"]): r["status"] for r in pki.certificates(ca_dir)}
    assert rows == {first.serial_number: "revoked", renewed.serial_number: "revoked", replaced.serial_number: "live"}
    crl = pki.load_crl(ca_dir / "crl.pem")
    assert pki.crl_number(crl) > crl_before
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None


def test_the_ca_refuses_issue_of_a_live_name_without_replace_on_the_command_line(tmp_path: Path):
    from click.testing import CliRunner

    from mor_secure.commands.certs import group as certs_cli

    ca_dir = tmp_path / "ca"
    pki.init_ca(ca_dir)
    args = ["issue", "--ca-dir", str(ca_dir), "--role", "coordinator", "--name", "coord"]
    assert CliRunner().invoke(certs_cli, [*args, "--out-dir", str(tmp_path / "a")]).exit_code == 0
    again = CliRunner().invoke(certs_cli, [*args, "--out-dir", str(tmp_path / "b")])
    assert again.exit_code == 1 and "already has a live certificate" in again.output
    assert not (tmp_path / "b" / "coord.key").exists()
    replaced = CliRunner().invoke(certs_cli, [*args, "--out-dir", str(tmp_path / "b"), "--replace"])
    assert replaced.exit_code == 0, replaced.output
    assert [r["status"] for r in pki.certificates(ca_dir)] == ["revoked", "live"]
