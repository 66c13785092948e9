"""`mor certs`: the project CA, site keys and requests, signing, revocation and the CRL."""

from __future__ import annotations

from pathlib import Path

import click

from mor_secure import pki
from mor_secure.cli import MorGroup

CA_DIR = click.option(
    "--ca-dir",
    type=click.Path(path_type=Path),
    default=Path("certs/ca"),
    show_default=True,
    envvar="MOR_CA_DIR",
    help="The CA folder (ca.pem, ca.key, crl.pem, index.json); env MOR_CA_DIR.",
)
DAYS = click.option(
    "--days",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Certificate validity in days; short-lived certificates limit a lost key's damage.",
)
CRL_DAYS = click.option(
    "--crl-days",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="Days until the published CRL goes stale; re-run `mor certs crl` before then.",
)
ROLE = click.option(
    "--role",
    type=click.Choice(pki.ROLES),
    required=True,
    help="client: a site that dials in; coordinator: the server sites connect to.",
)
NAME = click.option(
    "--name", required=True, help="Site or coordinator name, e.g. site-a (a-z, 0-9, '-', '.'; at most 63)."
)
REPLACE = click.option(
    "--replace",
    is_flag=True,
    default=False,
    help="The name already has a live certificate on another key: revoke it (new CRL) and issue "
    "this one. Without it such a request is refused (a renewal made with `request --renew` "
    "proves the old key and needs no --replace).",
)
KEY_TYPE = click.option(
    "--key-type",
    type=click.Choice(pki.KEY_TYPES),
    default="p256",
    show_default=True,
    help="Key algorithm; both work with TLS 1.3 here, P-256 is the most widely supported.",
)


def _crl_reminder(crl: Path, days: int) -> None:
    click.echo(
        f"CRL:  {crl} (stale in {days} days: copy it to every site now and re-run "
        f"`mor certs crl` before then, or every handshake fails)"
    )


@click.group(name="certs", cls=MorGroup)
def group() -> None:
    """Project CA, site keys and certificates, revocation (PKI).

    \b
    Adding a site (its key never leaves it):
      site:  mor certs request --role client --name site-a --out DIR
      CA:    mor certs sign --ca-dir CA --csr site-a.csr      (send back site-a.pem, ca.pem, crl.pem)
    Renewing (no downtime):
      site:  mor certs request --renew --role client --name site-a --out DIR
      CA:    mor certs sign --ca-dir CA --csr site-a.csr
      site:  mor certs install --cert NEW.pem --dir DIR
    Removing a site:  mor certs revoke --ca-dir CA --name site-a, then copy crl.pem to every site.
    See certs/README.md for the whole procedure.
    """


@group.command()
@CA_DIR
@click.option("--common-name", default="MoR-Secure CA", show_default=True, help="Subject CN of the CA.")
@click.option(
    "--days", type=click.IntRange(min=1), default=3650, show_default=True, help="CA certificate validity in days."
)
@CRL_DAYS
def init(ca_dir: Path, common_name: str, days: int, crl_days: int) -> None:
    """Create a new CA in --ca-dir (refuses to overwrite an existing one).

    Prints the CA fingerprint that every site pins (tls.ca_fingerprint in its config).
    """
    ca = pki.init_ca(ca_dir, common_name=common_name, days=days, crl_days=crl_days)
    click.echo(f"CA:   {ca}\nkey:  {ca_dir / 'ca.key'} (0600: keep it offline and backed up)")
    _crl_reminder(ca_dir / "crl.pem", crl_days)
    click.echo(f"fingerprint (sites pin this): {pki.ca_fingerprint(ca)}")


@group.command()
@ROLE
@NAME
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for NAME.key (0600, stays here) and NAME.csr (send to the CA operator).",
)
@KEY_TYPE
@click.option(
    "--reuse-key",
    is_flag=True,
    default=False,
    help="Renewal: sign the request with the existing NAME.key instead of making a new key.",
)
@click.option(
    "--renew",
    is_flag=True,
    default=False,
    help="Renewal with a new key, without downtime: writes NAME.next.key beside the live key; "
    "the agent keeps serving until `mor certs install` swaps in the new certificate.",
)
def request(role: str, name: str, out_dir: Path, key_type: str, reuse_key: bool, renew: bool) -> None:
    """Make this party's private key and a certificate request (run at the site)."""
    key, csr = pki.make_request(role, name, out_dir, key_type=key_type, reuse_key=reuse_key, renew=renew)
    click.echo(f"key:  {key} ({'reused' if reuse_key else 'new'}, 0600: it never leaves this machine)")
    click.echo(f"CSR:  {csr} (send it to the CA operator: `mor certs sign --csr {csr.name}`)")
    if renew or reuse_key:
        click.echo(
            f"then: `mor certs install --cert {name}.NEW.pem --dir {out_dir}` with the certificate "
            "that comes back (keep the live files until then)"
        )


@group.command()
@click.option(
    "--cert",
    "cert_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The renewed certificate the CA operator sent back (save it outside --dir or under "
    "another name than NAME.pem).",
)
@click.option(
    "--dir",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The folder of the live NAME.pem and NAME.key (where `request --renew` ran).",
)
def install(cert_path: Path, out_dir: Path) -> None:
    """Swap in a renewed certificate (run at the site; no restart needed).

    Checks it against NAME.next.key (or NAME.key after --reuse-key) and ca.pem, then moves key and
    certificate into place atomically. A running agent keeps its session and presents the new
    certificate at its next reconnect.
    """
    done = pki.install_certificate(cert_path, out_dir)
    click.echo(
        f"installed: {done.cert} ({done.fingerprint[:23]}...) until {done.not_after:%Y-%m-%d %H:%M} UTC"
        + (f", key {done.key} replaced" if done.new_key else ", same key")
    )
    click.echo(
        "running agents present it at their next reconnect; once they have, the CA operator may "
        "revoke the old certificate"
    )


@group.command()
@CA_DIR
@click.option(
    "--csr",
    "csr_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The request a site sent (made with `mor certs request`).",
)
@DAYS
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the certificate [default: NAME.pem next to the CSR].",
)
@REPLACE
def sign(ca_dir: Path, csr_path: Path, days: int, out: Path | None, replace: bool) -> None:
    """Verify a site's request and issue its certificate (run on the CA).

    Refuses a second live certificate for a name on a new key unless the request proves the old key
    (`mor certs request --renew`) or --replace revokes the old one; copy the new crl.pem to every site then.
    """
    cert = pki.sign_request(ca_dir, csr_path, days=days, out=out, replace=replace)
    info = pki.describe(cert)
    click.echo(f"certificate: {cert} for mor://{info['role']}/{info['name']} until {info['not_after']}")
    click.echo(f"send back:   {cert.name}, {ca_dir / 'ca.pem'} and {ca_dir / 'crl.pem'}")
    click.echo(f"CA fingerprint (sites pin this): {pki.ca_fingerprint(ca_dir)}")


@group.command()
@CA_DIR
@ROLE
@NAME
@DAYS
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write NAME.pem and NAME.key [default: the CA folder].",
)
@KEY_TYPE
@REPLACE
def issue(ca_dir: Path, role: str, name: str, days: int, out_dir: Path | None, key_type: str, replace: bool) -> None:
    """Development shortcut: make a key and certificate on the CA machine.

    In production use `request` at the site and `sign` here, so the key never travels.
    """
    cert, key = pki.issue(ca_dir, role=role, name=name, days=days, out_dir=out_dir, key_type=key_type, replace=replace)
    click.echo(f"certificate: {cert}\nkey:         {key} (0600)")
    click.echo(f"CA fingerprint: {pki.ca_fingerprint(ca_dir)}")


@group.command()
@CA_DIR
@NAME
@CRL_DAYS
@click.option(
    "--serial",
    default=None,
    help="Revoke only this certificate (hex serial from `mor certs list`), "
    "e.g. the one a renewal replaced; the site stays enrolled.",
)
def revoke(ca_dir: Path, name: str, crl_days: int, serial: str | None) -> None:
    """Revoke every live certificate of NAME (or only --serial) and publish a new CRL."""
    try:
        number = int(serial, 16) if serial is not None else None
    except ValueError:
        raise click.BadParameter(
            f"{serial!r} is not a hex serial; copy it from `mor certs list`", param_hint="--serial"
        ) from None
    serials = pki.revoke(ca_dir, name, crl_days=crl_days, serial=number)
    if serials:
        click.echo(f"revoked {len(serials)} certificate(s) of {name}: " + ", ".join(f"{s:x}" for s in serials))
    else:
        click.echo(f"{name} has no live certificate (already revoked or expired); CRL re-published")
    _crl_reminder(ca_dir / "crl.pem", crl_days)


@group.command()
@CA_DIR
@click.option(
    "--days", type=click.IntRange(min=1), default=7, show_default=True, help="Days until this CRL goes stale."
)
def crl(ca_dir: Path, days: int) -> None:
    """Re-issue the CRL (do it before the current one goes stale, e.g. from cron)."""
    path = pki.write_crl(ca_dir, days=days)
    _crl_reminder(path, days)


@group.command(name="list")
@CA_DIR
def list_(ca_dir: Path) -> None:
    """List every certificate the CA issued, with its status (live, expired, revoked)."""
    rows = pki.certificates(ca_dir)
    if not rows:
        click.echo("no certificates issued yet")
    for row in rows:
        click.echo(
            f"{row['status']:8} {row['role']:12} {row['name']:24} until {row['not_after']}  "
            f"serial {int(row['serial']):x}"
        )


@group.command()
@click.argument("cert_file", type=click.Path(path_type=Path))
@click.option(
    "--ca-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Also check the certificate against this CA and its crl.pem.",
)
@click.option(
    "--crl",
    type=click.Path(path_type=Path),
    default=None,
    help="Check revocation against this CRL (default with --ca-dir: its crl.pem).",
)
def show(cert_file: Path, ca_dir: Path | None, crl: Path | None) -> None:
    """Show a certificate: subject, role, site, validity, fingerprint, revoked or not."""
    info = pki.describe(cert_file, ca_dir=ca_dir, crl=crl)
    yes_no = {True: "yes", False: "no", None: "unknown (give --ca-dir or --crl)"}
    rows = [
        ("subject", info["subject"]),
        ("role", info["role"] or "none (not a MoR-Secure certificate)"),
        ("site", info["name"] or "none"),
        ("issuer", info["issuer"]),
        ("serial", info["serial"]),
        ("valid from", info["not_before"]),
        ("valid until", info["not_after"]),
        (
            "expires in",
            f"{info['expires_in_days']} days"
            + (
                " (EXPIRED: renew with `mor certs request --reuse-key` and `sign`)"
                if info["expires_in_days"] <= 0
                else ""
            ),
        ),
        ("fingerprint", info["fingerprint"]),
    ]
    if info["issued_by_ca"] is not None:
        rows.append(("issued by CA", yes_no[info["issued_by_ca"]]))
    rows.append(("revoked", yes_no[info["revoked"]]))
    if "crl_stale" in info:
        note = " (STALE: run `mor certs crl` on the CA and copy crl.pem here)" if info["crl_stale"] else ""
        rows.append(("CRL stale at", f"{info['crl_next_update']}{note}"))
    for label, value in rows:
        click.echo(f"{label + ':':14}{value}")
