"""Benchmark domains, one module each; importing this package registers them in a fixed order."""

from mor_secure.data.domains.base import DOMAINS, IMAGE_SIZE, Domain, Question, register
from mor_secure.data.domains import detail, medical, chart  # noqa: F401,E402  (registration order)


def domain_names() -> list[str]:
    """Registered domain names in registration order: client k owns ``domain_names()[k % n]``."""
    return list(DOMAINS)


def get_domain(name: str) -> Domain:
    """The registered domain called ``name``; unknown names raise ``KeyError`` listing the known."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise KeyError(f"unknown domain {name!r}; known: {', '.join(DOMAINS)}") from None


__all__ = ["DOMAINS", "IMAGE_SIZE", "Domain", "Question", "domain_names", "get_domain", "register"]
