"""Shared, session-scoped fixtures: one benchmark world, one tiny model per family, one dev PKI.

Each is built once per test session into pytest's temporary folder (never downloaded).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs on two workers (pyproject's addopts): one intra-op thread each, for the worker and the
    # processes it starts, or the two cores are oversubscribed and tiny-model training runs several times slower
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small benchmark world: 3 clients, seed 0."""
    from mor_secure.data.world import generate_world

    out = tmp_path_factory.mktemp("world") / "world"
    generate_world(out, seed=0, clients=3, pairs=240)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``tiny_model_dir("qwen2-vl")`` builds that family once and returns its folder."""
    from mor_secure.models.zoo import build_tiny_vlm

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_vlm(family, tmp_path_factory.mktemp(family) / "model", seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development PKI: a CA, coordinator 'coord', clients 'site-a' and 'site-b', a fresh CRL."""
    from mor_secure import pki

    ca_dir = tmp_path_factory.mktemp("pki") / "ca"
    pki.init_ca(ca_dir)
    pki.issue(ca_dir, role="coordinator", name="coord")
    for site in ("site-a", "site-b"):
        pki.issue(ca_dir, role="client", name=site)
    return ca_dir


@pytest.fixture(scope="session")
def public_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Public warm-start data: 96 rows, seed 0, 70% verbose answers (coordinator policy tests)."""
    from mor_secure.data.public import generate_public_sft

    return generate_public_sft(tmp_path_factory.mktemp("public") / "public", seed=0, n=96)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tiny-model training: on two shared cores two threads
    oversubscribe and run several times slower (use with ``pytest.mark.usefixtures``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
