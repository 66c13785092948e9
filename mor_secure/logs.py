"""Logging set-up shared by every `mor` command: plain text for people, JSON lines for shippers.

Records carry counts and ids only; callers never log data content (prompts, images, answers).
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record; fields passed through ``extra=`` become keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class KeyValueFormatter(logging.Formatter):
    """Human-readable lines; ``extra=`` fields are appended as key=value pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        if extras:
            line += " " + " ".join(f"{k}={_field(v)}" for k, v in extras.items())
        return line


def _field(value: object) -> str:
    """A key=value field that cannot forge another field or line: quoted and escaped when it holds
    spaces, '=', quotes or control characters (peer-supplied values such as worker ids do)."""
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' ="'):
        return text
    return json.dumps(text)


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Route the ``mor`` logger hierarchy to stderr in the chosen format (idempotent)."""
    logger = logging.getLogger("mor")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if json_lines else KeyValueFormatter())
    logger.addHandler(handler)
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``mor`` hierarchy, e.g. ``get_logger("transport")``."""
    return logging.getLogger(f"mor.{name}")
