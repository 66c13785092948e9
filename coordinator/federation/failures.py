"""Why a site gave no usable answer to one request: a kind to act on, beside a detail for people.

The pool's retries, the circuit breaker and the status page decide on the kind; the detail (the
server's or the agent's own words) is only shown. ``str(failure)`` is the line operators read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FailureKind(Enum):
    """The ways one site can fail one request; the value is how the failure's line starts."""

    TIMEOUT = "timeout"
    """No reply within the request's deadline: the whole deadline is spent, so it is not retried."""
    DISCONNECTED = "disconnected"
    """The session ended before the reply (the transport says how)."""
    ERROR_REPLY = "error reply"
    """The agent answered with an ``Error`` (its ``code`` says whose fault it is)."""
    NOT_CONNECTED = "not connected"
    """No session of the site."""
    NOT_ADMITTED = "connected but not admitted"
    """A session without a verified privacy report: it is never asked for scores."""
    REFUSED = "refused or dropped"
    """The site's last session was refused (certificate, allow-list, version ...)."""
    PUT_ASIDE = "put aside"
    """The site's circuit breaker is open; it was not asked."""
    BAD_REPLY = "bad reply"
    """A reply that cannot be used: no reply in the round, or another number of scores than items."""
    MODEL_MISMATCH = "model mismatch"
    """Scores from a model whose privacy report the coordinator never received."""


REQUEST_ERRORS = frozenset({"malformed", "bad_image", "image_too_large", "batch_too_large", "unsupported", "bad_reply"})
"""Agent error codes that say the request itself is wrong: retrying it, or blaming the site, would not help."""


@dataclass(frozen=True)
class Failure:
    """One site's failure of one request: its ``kind``, a ``detail`` and, for an error reply, the agent's ``code``."""

    kind: FailureKind
    detail: str = ""
    code: str = ""

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value

    @property
    def blames_request(self) -> bool:
        """The agent refused the request's content: not the site's fault."""
        return self.kind is FailureKind.ERROR_REPLY and self.code in REQUEST_ERRORS

    @property
    def retryable(self) -> bool:
        """Worth another attempt inside the same deadline (it failed fast and not because of the request)."""
        return self.kind is not FailureKind.TIMEOUT and not self.blames_request

    @property
    def counts_against_site(self) -> bool:
        """Counts toward the site's circuit breaker."""
        return self.kind is not FailureKind.PUT_ASIDE and not self.blames_request

    @property
    def opens_breaker_at_once(self) -> bool:
        """A timeout costs a whole deadline: the breaker opens at the first one."""
        return self.kind is FailureKind.TIMEOUT
