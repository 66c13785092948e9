"""`mor client init`: a new site folder with its key, its certificate request and a commented client.toml.

The client.toml is generated from the ``ClientConfig`` dataclasses (every key, its default and its
help string), so it cannot drift from what the loader accepts. Values the site must give are set;
every other setting is written commented out at its default.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client_agent.config import ClientConfig
from mor_secure import pki
from mor_secure.config import ConfigError, describe
from mor_secure.pki.identity import check_identity

CERTS = "certs"
CONFIG_NAME = "client.toml"
LEDGER_NAME = "privacy-ledger.jsonl"
_ENDPOINT_RE = re.compile(r"tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


@dataclass
class SiteFolder:
    """What ``init_site`` wrote: the config, the key (0600, stays here) and the request to send."""

    config: Path
    key: Path
    csr: Path
    certs: Path


def coordinator_host(endpoint: str) -> str:
    """The host of a ``tcp://HOST:PORT`` endpoint (``ConfigError`` naming the expected form)."""
    match = _ENDPOINT_RE.fullmatch(endpoint)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(
            f"coordinator endpoint {endpoint!r} is not of the form tcp://HOST:PORT "
            "(for example tcp://coordinator.example.org:7000); ask the coordinator operator"
        )
    return match.group(1)


def toml_value(value: Any) -> str:
    """A TOML literal for a config value (strings and paths quoted, lists and tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _comment(text: str, width: int = 98) -> list[str]:
    words, lines, line = text.split(), [], "#"
    for word in words:
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "#"
        line += " " + word
    return lines + [line] if line != "#" else lines


def render_config(cls: type, values: dict[str, Any], title: str, todo: dict[str, str] | None = None) -> str:
    """A commented TOML file for ``cls``: each key with its help and default; keys in ``values`` are
    set, keys in ``todo`` get a commented placeholder saying what to fill in, the others are commented
    out at their default."""
    todo = todo or {}
    sections = {
        f.name: f.metadata.get("help", "")
        for f in dataclasses.fields(cls)
        if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name])
    }
    out = _comment(title) + [""]
    current = ""
    for key, default, help_text in sorted(describe(cls), key=lambda row: "." in row[0]):
        section, _, name = key.rpartition(".")
        if section != current:
            out += ["", f"[{section}]"] + _comment(sections.get(section, ""))
            current = section
        out += [""] + _comment(help_text)
        if key in values:
            out.append(f"{name} = {toml_value(values[key])}")
        elif key in todo:
            out.append(f'# {name} = "..."   ({todo[key]})')
        elif default is None:
            out.append(f"# {name} =   (no default)")
        else:
            out.append(f"# {name} = {toml_value(default)}   (default)")
    return "\n".join(out) + "\n"


def init_site(
    site: str,
    endpoint: str,
    out_dir: Path,
    *,
    coordinator_name: str | None = None,
    ca_fingerprint: str = "",
    data: Path | None = None,
    key_type: str = "p256",
) -> SiteFolder:
    """Create ``out_dir`` with certs/SITE.key (0600), certs/SITE.csr, a commented client.toml and the
    site's new privacy ledger (privacy-ledger.jsonl: every training run's spend; a missing one fails closed).

    Refuses an existing client.toml or key (nothing is overwritten). Raises ``ConfigError`` or
    ``pki.PKIError`` naming the fix.
    """
    host = coordinator_host(endpoint)
    name = coordinator_name or host
    try:
        check_identity("coordinator", name)
    except pki.PKIError as exc:
        raise ConfigError(
            f"coordinator name: {exc}; pass --coordinator-name with the name in the "
            "coordinator's certificate (mor://coordinator/NAME)"
        ) from None
    if ca_fingerprint and not re.fullmatch(r"sha256:[0-9a-f]{64}", ca_fingerprint.lower()):
        raise ConfigError(
            f"CA fingerprint {ca_fingerprint!r} is not 'sha256:' and 64 hex digits: copy it "
            "exactly as `mor certs init` or `mor certs show ca.pem` prints it"
        )
    out_dir = Path(out_dir)
    config_path = out_dir / CONFIG_NAME
    if config_path.exists():
        raise ConfigError(
            f"{config_path} already exists; refusing to overwrite it: choose another --out, or move the old folder away"
        )
    certs = out_dir / CERTS
    key, csr = pki.make_request("client", site, certs, key_type=key_type)
    values: dict[str, Any] = {
        "site": site,
        "tls.ca": f"{CERTS}/ca.pem",
        "tls.cert": f"{CERTS}/{site}.pem",
        "tls.key": f"{CERTS}/{site}.key",
        "tls.crl": f"{CERTS}/crl.pem",
        "tls.ca_fingerprint": ca_fingerprint.lower(),
        "coordinator.endpoint": endpoint,
        "coordinator.name": name,
        "privacy.ledger": LEDGER_NAME,
    }
    if data is not None:
        values["data.path"] = str(Path(data).expanduser().resolve())
    title = (
        f"MoR-Secure agent of site {site!r}, written by `mor client init`. Every setting is listed with "
        "what it does; the commented ones are at their default (remove the '#' to change one). "
        "Relative paths are relative to this file's folder. Check it with `mor client doctor "
        "--config client.toml`."
    )
    todo = {"data.path": "TO DO: the folder of your preference data, then remove the '#'"}
    config_path.write_text(render_config(ClientConfig, values, title, todo), encoding="utf-8")
    from client_agent.budget import SiteLedger

    if not (out_dir / LEDGER_NAME).exists():  # an earlier ledger of this site is kept, never replaced
        SiteLedger(out_dir / LEDGER_NAME).start(reason=f"`mor client init --site {site}`")
    return SiteFolder(config=config_path, key=key, csr=csr, certs=certs)


def next_steps(folder: SiteFolder, site: str) -> list[str]:
    """The numbered steps an operator follows after ``init`` (printed by the command)."""
    certs, config = folder.certs, folder.config
    return [
        f"Send {folder.csr} to the CA operator (only this file: {folder.key.name} never leaves this machine). "
        f"They run `mor certs sign --csr {folder.csr.name}`.",
        f"Put the three files they send back into {certs}/: {site}.pem, ca.pem and crl.pem.",
        f"Pin the CA: run `mor certs show {certs}/ca.pem`, compare its fingerprint with the one the CA "
        f"operator gives you by phone, and set tls.ca_fingerprint in {config} to it.",
        f"Point [data] path in {config} at your preference data; check it with `mor data check PATH`.",
        "Set your privacy budget in [privacy] (target_epsilon per training run, max_epsilon for life).",
        f"Check everything: `mor client doctor --config {config}`.",
        f"Train the reward model: `mor client train --config {config}`.",
        f"Serve it: `mor client serve --config {config}` (it dials out; open no inbound port).",
    ]
