"""MoR-Secure core: what both the client agent and the coordinator import.

PKI, the TLS-in-ZeroMQ transport, the message protocol, privacy accounting, the ledger,
the benchmark world and the offline model zoo live here; neither side is imported from here.
"""

__version__ = "0.1.0"
