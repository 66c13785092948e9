"""The site's agent: dials the coordinator named in client.toml and serves its requests by type.

Handlers are registered per request type (health here; scoring is registered by the serving
code); the transport's network thread runs them, and a standby thread keeps reading and sending
heartbeats when one runs long, so heartbeats continue during long scoring batches.
"""

from __future__ import annotations

import os
import socket

from client_agent.config import ClientConfig
from mor_secure import __version__, pki, protocol
from mor_secure.config import ConfigError
from mor_secure.logs import get_logger
from mor_secure.protocol import HealthReply, HealthRequest, Message, ScoreRequest
from mor_secure.transport import ClientOptions, TLSClient
from mor_secure.transport.client import Handler
from mor_secure.transport.contexts import context_factory, own_identity

log = get_logger("agent")


class Agent:
    """One worker of a site: a ``TLSClient`` built from ``ClientConfig`` plus the site's handlers.

    The constructor checks the PKI material first (``pki.PKIError``/``pki.CRLError`` name the fix)
    and that the certificate speaks for ``config.site``.
    """

    def __init__(self, config: ClientConfig, *, worker_id: str | None = None) -> None:
        self.config = config
        factory = context_factory(config.tls, "client")
        identity = own_identity(config.tls)
        if identity.name != config.site:
            raise pki.PKIError(
                f"certificate {config.tls.cert} speaks for site {identity.name!r} but the "
                f"config says site = {config.site!r}: fix one of them"
            )
        coordinators = config.serve.allow_coordinators or [config.coordinator.name]
        section = config.coordinator
        options = ClientOptions(
            heartbeat_s=section.heartbeat_s,
            idle_timeout_s=section.idle_timeout_s,
            connect_timeout_s=section.connect_timeout_s,
            backoff_max_s=section.backoff_max_s,
            max_message_bytes=section.max_message_mb * 1024 * 1024,
        )
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        try:  # it goes into the coordinator's logs and status: refuse what would need quoting there
            protocol.check_worker_id(self.worker_id, "--worker-id")
        except protocol.ProtocolError as exc:
            raise ConfigError(str(exc)) from None
        self.client = TLSClient(
            section.endpoint,
            factory,
            coordinators=coordinators,
            worker_id=self.worker_id,
            agent_version=__version__,
            options=options,
        )
        self.register(HealthRequest, self._health)

    def register(self, kind: type[Message], handler: Handler) -> None:
        """Serve requests of type ``kind`` with ``handler`` (e.g. ``ScoreRequest``)."""
        self.client.register(kind, handler)

    def send(self, msg: Message) -> None:
        """Send an unsolicited message (a signed privacy report) to the coordinator; ``ConnectionError``
        when not connected."""
        self.client.send(msg)

    def serve_scores(self, handler: Handler, report: Message | None) -> None:
        """Answer ``ScoreRequest`` with ``handler`` (a ``ScoringService``) and send ``report`` (the
        signed ``PrivacyReportMsg``) after each welcome, so the coordinator can verify who spent what."""
        self.register(ScoreRequest, handler)
        self.client.on_welcome = (lambda: [report]) if report is not None else None

    def run(self) -> None:
        """Dial, serve and reconnect until ``stop()``; raises ``AgentRefused`` when refused."""
        log.info(
            "agent starting",
            extra={"site": self.config.site, "worker": self.worker_id, "endpoint": self.config.coordinator.endpoint},
        )
        self.client.run()

    def start(self) -> None:
        """Run in a background thread (tests, the demo)."""
        self.client.start()

    def stop(self) -> None:
        """Stop serving and close the connection."""
        self.client.stop()

    def _health(self, msg: HealthRequest) -> HealthReply:
        serves = sorted(kind.TYPE for kind in self.client.handlers)
        return HealthReply(request_id=msg.request_id, site=self.config.site, agent_version=__version__, serves=serves)
