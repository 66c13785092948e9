"""Benchmark domains, one module each; importing this package registers them in a fixed order."""

from mor_secure.data.domains import chart, detail, medical  # noqa: F401  (importing a module registers it)
from mor_secure.data.domains.base import DOMAINS, IMAGE_SIZE, Domain, Question, register

ORDER = ("detail", "medical", "chart")
"""Client k of the benchmark world holds mostly domain ``ORDER[k % 3]``: fixed here, whatever order the
modules above are imported in (a sorted import list once swapped which client held which domain)."""
_ordered = {name: DOMAINS[name] for name in ORDER} | {n: d for n, d in DOMAINS.items() if n not in ORDER}
DOMAINS.clear()
DOMAINS.update(_ordered)


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
