"""`mor client doctor`: check a site's installation, each check with a pass/fail line and the fix.

Checks, in order: the config loads; the certificate fits the site and the CA and is not expiring
within a week; the CRL is present and fresh; the CA matches the pinned fingerprint; the
coordinator answers a real mutual-TLS handshake with a welcome under the expected name; the data
set follows the schema; the trained reward model loads; privacy budget remains. A check whose
prerequisite failed is reported as failed with what to fix first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client_agent.config import ClientConfig, load_client_config
from mor_secure import __version__, pki
from mor_secure.config import ConfigError
from mor_secure.logs import get_logger
from mor_secure.pki.identity import has_role_eku
from mor_secure.pki.keys import load_private_key

log = get_logger("client.doctor")

EXPIRY_WARNING = dt.timedelta(days=7)


@dataclass
class Check:
    """One check's outcome: its name, pass or fail, what was found and, on failure, the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


class CheckFailed(Exception):
    """Raised inside a check: ``detail`` is what was found, ``fix`` what to do."""

    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


def _renew_fix(config: ClientConfig) -> str:
    folder = config.tls.cert.parent
    return (
        f"renew: `mor certs request --renew --role client --name {config.site} --out {folder}`, send the "
        f"CSR to the CA operator, then `mor certs install --cert NEW.pem --dir {folder}`"
    )


def check_certificate(config: ClientConfig) -> str:
    """The certificate speaks for this site as a client, comes from the CA, matches the key, is unrevoked
    and valid for at least ``EXPIRY_WARNING``."""
    tls = config.tls
    try:
        cert = pki.load_cert(tls.cert)
        ca = pki.load_cert(tls.ca)
    except pki.PKIError as exc:
        raise CheckFailed(
            str(exc),
            f"put the certificate and ca.pem the CA operator sent into "
            f"{tls.cert.parent} (see the next steps of `mor client init`)",
        ) from None
    try:
        ident = pki.identity_of(cert)
    except pki.PKIError as exc:
        raise CheckFailed(str(exc), "ask the CA operator to sign your CSR with `mor certs sign`") from None
    if ident.role != "client" or not has_role_eku(cert, "client"):
        raise CheckFailed(
            f"{tls.cert} is a {ident.role} certificate, not a site's",
            "make a client request: `mor certs request --role client`",
        )
    if ident.name != config.site:
        raise CheckFailed(
            f"{tls.cert} speaks for site {ident.name!r} but site = {config.site!r}",
            "fix `site` in the config or use this site's certificate",
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError):
        raise CheckFailed(
            f"{tls.cert} was not issued by the CA in {tls.ca}",
            "get ca.pem and the certificate from the same CA operator",
        ) from None
    try:
        key = load_private_key(tls.key)
    except pki.PKIError as exc:
        raise CheckFailed(str(exc), f"use the key `mor client init` made ({tls.key})") from None
    if key.public_key() != cert.public_key():
        raise CheckFailed(
            f"key {tls.key} does not belong to {tls.cert}",
            "use the key the request was made with (after a renewal: `mor certs install`)",
        )
    try:
        crl = pki.load_crl(tls.crl)
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise CheckFailed(
                f"{tls.cert} is revoked by the CA", "ask the CA operator why; rejoin with a new key and request"
            )
    except pki.CRLError:
        pass  # the CRL check says what is wrong with it
    left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    until = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if left <= dt.timedelta(0):
        raise CheckFailed(f"{tls.cert} expired on {until}", _renew_fix(config))
    if left < EXPIRY_WARNING:
        raise CheckFailed(
            f"{tls.cert} expires in {left.total_seconds() / 86400:.1f} days ({until})", _renew_fix(config)
        )
    return f"mor://client/{config.site}, valid until {until} ({left.days} days), key matches"


def check_crl(config: ClientConfig) -> str:
    """The CRL is signed by the CA and not stale (TLS fails closed otherwise)."""
    try:
        crl = pki.check_crl(config.tls.crl, config.tls.ca)
    except pki.PKIError as exc:
        raise CheckFailed(
            str(exc), f"ask the CA operator for a fresh crl.pem and copy it to {config.tls.crl}"
        ) from None
    left = crl.next_update_utc - dt.datetime.now(dt.timezone.utc)
    return f"fresh until {crl.next_update_utc:%Y-%m-%d %H:%M} UTC ({left.total_seconds() / 86400:.1f} days)"


def check_ca_pin(config: ClientConfig) -> str:
    """The CA certificate has the fingerprint pinned in tls.ca_fingerprint."""
    try:
        actual = pki.fingerprint(pki.load_cert(config.tls.ca))
    except pki.PKIError as exc:
        raise CheckFailed(str(exc), f"put the ca.pem the CA operator sent at {config.tls.ca}") from None
    pinned = config.tls.ca_fingerprint.lower()
    if not pinned:
        raise CheckFailed(
            f"no CA fingerprint pinned; {config.tls.ca} has {actual}",
            "compare it with the fingerprint the CA operator gives you by phone, then set tls.ca_fingerprint to it",
        )
    if actual != pinned:
        raise CheckFailed(
            f"{config.tls.ca} has fingerprint {actual}, not the pinned {pinned}",
            "someone else's CA? get ca.pem from the CA operator again and compare by phone",
        )
    return f"{actual[:23]}... matches the pin"


def check_coordinator(config: ClientConfig, timeout_s: float | None = None) -> str:
    """A real mutual-TLS session with the coordinator: handshake, its certificate under the expected name,
    and its Welcome (a Refused is a failure with the coordinator's reason)."""
    from mor_secure.transport import ClientOptions, TLSClient
    from mor_secure.transport.contexts import context_factory

    section = config.coordinator
    timeout_s = section.connect_timeout_s if timeout_s is None else timeout_s
    try:
        factory = context_factory(config.tls, "client")
        client = TLSClient(
            section.endpoint,
            factory,
            coordinators=config.serve.allow_coordinators or [section.name],
            worker_id="doctor",
            agent_version=__version__,
            options=ClientOptions(connect_timeout_s=timeout_s, backoff_max_s=timeout_s),
        )
    except pki.PKIError as exc:
        raise CheckFailed(f"not tried: {exc}", "fix the certificate and CRL checks first") from None
    client.start()
    try:
        welcomed = client.connected.wait(timeout_s + 1.0)
    finally:
        client.stop()
    if client.error is not None:
        raise CheckFailed(
            str(client.error),
            "send the coordinator operator this message (allow-list, CRL, certificate), or fix [coordinator] name",
        )
    if not welcomed and client.last_error:
        raise CheckFailed(
            client.last_error,
            "check [coordinator] endpoint and name, the CA and the CRL; "
            "send the coordinator operator this message if they look right",
        )
    if not welcomed:
        raise CheckFailed(
            f"no welcome from {section.endpoint} within {timeout_s:g}s",
            "check [coordinator] endpoint, that the coordinator runs, and that this machine may "
            "open outbound TCP connections to that port",
        )
    return f"welcomed by coordinator {section.name!r} at {section.endpoint}"


def check_data(config: ClientConfig) -> str:
    """The training split of [data].path, read as training reads it (column mapping, held-out rule,
    every image decoded)."""
    from client_agent.site_data import load_pairs
    from mor_secure.data.schema import DataError

    if config.data.path is None:
        raise CheckFailed("[data] path is not set", "set [data] path to your preference data folder")
    try:
        data = load_pairs(config, config.data.train_split, limit=False)
    except DataError as exc:
        raise CheckFailed(
            str(exc),
            "fix the data set, or [data] path / columns / train_split; `mor data check "
            "--config FILE` lists every problem",
        ) from None
    return f"{len(data)} preference pairs in split {config.data.train_split!r}"


def check_model(config: ClientConfig, config_path: Path) -> str:
    """The trained reward model in [train].out loads and matches its privacy report."""
    from client_agent.scoring import ServeError, load_served_model

    try:
        served = load_served_model(config, config_path)
    except ServeError as exc:
        raise CheckFailed(str(exc), f"`mor client train --config {config_path}`") from None
    eps = served.report.get("epsilon")
    shown = f"{eps:.3f}" if isinstance(eps, (int, float)) else str(eps)
    return f"{served.report.get('family')} model {served.sha256[:19]}... trained at epsilon {shown}"


def check_budget(config: ClientConfig) -> str:
    """Privacy budget remains on this data set (the ledger's runs composed)."""
    from client_agent.budget import LedgerCorrupt, site_status
    from mor_secure.errors import MorError

    if config.data.path is None:
        raise CheckFailed("not checked: [data] path is not set", "set [data] path first")
    try:
        status, _ = site_status(config)
    except LedgerCorrupt as exc:
        raise CheckFailed(str(exc), "restore the site ledger from backup; never delete it") from None
    except (MorError, OSError) as exc:  # the data or the settings: the data check names the problem
        raise CheckFailed(f"not checked: {exc}", "fix the data check first") from None
    if status.remaining <= 0:
        raise CheckFailed(
            f"spent epsilon {status.spent:.3f} of {status.max_epsilon:g}: no budget left for training",
            "serving the trained model costs nothing; more training needs new data or a "
            "larger [privacy] max_epsilon agreed by your data protection officer",
        )
    return f"spent epsilon {status.spent:.3f} of {status.max_epsilon:g}; remaining {status.remaining:.3f}"


def run_checks(config_path: Path, *, timeout_s: float | None = None) -> list[Check]:
    """Every check of the site at ``config_path``, in order (see the module docstring)."""
    config_path = Path(config_path)
    try:
        config = load_client_config(config_path)
    except ConfigError as exc:
        return [Check("config", False, str(exc), "edit the file; `mor client init` writes a commented one")]
    checks: list[tuple[str, Callable[[], str]]] = [
        ("certificate", lambda: check_certificate(config)),
        ("crl", lambda: check_crl(config)),
        ("ca pin", lambda: check_ca_pin(config)),
        ("coordinator", lambda: check_coordinator(config, timeout_s)),
        ("data", lambda: check_data(config)),
        ("model", lambda: check_model(config, config_path)),
        ("budget", lambda: check_budget(config)),
    ]
    results = [Check("config", True, f"{config_path} is valid (site {config.site})")]
    for name, run in checks:
        try:
            results.append(Check(name, True, run()))
        except CheckFailed as exc:
            results.append(Check(name, False, exc.detail, exc.fix))
    log.info("doctor done", extra={"checks": len(results), "failed": sum(not c.ok for c in results)})
    return results
