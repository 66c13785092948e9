"""Names of the log events that tools read back (the fault-injection benchmark, log shippers, alerting).

A log record's message is its event name; the details travel as fields (``site``, ``reason``, ``kind`` ...).
Code that logs one of these events and code that looks for it both use the constant, so rewording a
message cannot silently change what a tool matches.
"""

from __future__ import annotations

AGENT_ADMITTED = "agent admitted"
"""An agent's session passed its privacy report check and may be asked for scores."""
AGENT_LEFT = "agent left"
"""A welcomed session ended (fields: site, reason, kind)."""
PEER_REFUSED = "peer refused or dropped"
"""A peer was refused or a session dropped before or without welcome (fields: address, identity, reason, kind)."""
CRL_RELOADED = "CRL reloaded"
"""The coordinator read a new revocation list and cut the sessions it revokes."""
SITE_PUT_ASIDE = "site put aside"
"""A site's circuit breaker opened: it is not asked until its cool-down ends (fields: site, reason, kind)."""
SCORING_FAILURES = "scoring round with failures"
"""A scoring round in which some site gave no usable answer."""
GRPO_START = "grpo start"
"""A GRPO run (or its resumption) begins."""
GRPO_DONE = "grpo done"
"""A GRPO run saved its final policy."""
