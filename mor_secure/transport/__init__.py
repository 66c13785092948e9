"""Mutual TLS 1.3 carried in ZeroMQ frames: a sans-IO TLS session, the coordinator's ROUTER side
and the agent's DEALER side (libzmq itself has no TLS, and CURVE has no CA, expiry or revocation)."""

from mor_secure.transport.client import AgentRefused, ClientOptions, TLSClient
from mor_secure.transport.server import EndKind, Peer, Refusal, ServerOptions, SessionEnded, TLSServer
from mor_secure.transport.tls import TLSError, TLSSession

__all__ = [
    "AgentRefused",
    "ClientOptions",
    "EndKind",
    "Peer",
    "Refusal",
    "ServerOptions",
    "SessionEnded",
    "TLSClient",
    "TLSError",
    "TLSServer",
    "TLSSession",
]
