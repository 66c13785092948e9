"""Offline vision-language models: a local tokenizer, a zoo of tiny random VLMs, one loader.

Every part of MoR-Secure takes its model through :func:`load_vlm` (local folder or cached hub id,
never a download) and builds batches with :func:`vlm_inputs`; tests and the demo build tiny
models with :func:`build_tiny_vlm`.
"""

from mor_secure.models.loading import (
    ModelNotFoundError,
    count_parameters,
    family_of,
    load_processor,
    load_vlm,
    resolve_model,
    vlm_inputs,
)
from mor_secure.models.zoo import FAMILIES, build_tiny_vlm

__all__ = [
    "FAMILIES",
    "ModelNotFoundError",
    "build_tiny_vlm",
    "count_parameters",
    "family_of",
    "load_processor",
    "load_vlm",
    "resolve_model",
    "vlm_inputs",
]
