"""What the router reads: frozen features of (image, prompt) and an optional objective embedding.

``PromptFeatures`` mean-pools the reference VLM's last hidden states over the prompt's tokens
(image tokens included), without gradients and in batches, and caches each item under a hash of
its content so a prompt repeated across GRPO generations or epochs is embedded once.
``ObjectiveEmbedding`` is a small learned table over alignment-objective names, joined to the
features inside the router.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mor_secure.logs import get_logger

log = get_logger("coordinator.mixture.features")


def strip_images(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with any PIL payload removed from image parts (as TRL injects them), text untouched."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [
                {k: v for k, v in part.items() if not (part.get("type") == "image" and k == "image")}
                for part in content
            ]
        out.append({**message, "content": content})
    return out


def content_key(image: Any, prompt: Sequence[dict[str, Any]]) -> str:
    """A SHA-256 of the image pixels and the prompt's JSON: equal content, equal key."""
    digest = hashlib.sha256()
    if image is not None:
        digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
        digest.update(image.tobytes())
    digest.update(b"\x00")
    digest.update(json.dumps(strip_images(prompt), sort_keys=True, default=str).encode())
    return digest.hexdigest()


class PromptFeatures:
    """Frozen mean-pooled prompt features of a VLM (``[N, hidden]``), cached by content hash.

    The cache keeps the ``max_cached`` most recently used items (a GRPO data set's prompts, typically).
    """

    def __init__(
        self,
        model_name_or_path: str | Path,
        *,
        batch_size: int = 16,
        device: str | None = None,
        max_cached: int = 50_000,
    ) -> None:
        from mor_secure.models.loading import load_vlm

        self.name = str(model_name_or_path)
        self.model, self.processor = load_vlm(model_name_or_path, device=device)
        self.model.eval().requires_grad_(False)
        self.batch_size, self.max_cached = batch_size, max_cached
        self.dim = int(self.model.config.get_text_config().hidden_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        """How many distinct items are cached."""
        return len(self._cache)

    @torch.no_grad()
    def _embed(self, images: list[Any], prompts: list[list[dict[str, Any]]]) -> torch.Tensor:
        from mor_secure.models.loading import vlm_inputs

        inputs = vlm_inputs(self.processor, images, prompts)
        inputs = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        # logits_to_keep=1: only the hidden states are wanted, not a [batch, length, vocab] logit tensor.
        out = self.model(**inputs, output_hidden_states=True, return_dict=True, logits_to_keep=1)
        hidden = out.hidden_states[-1]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).float().cpu()

    def __call__(self, images: Sequence[Any], prompts: Sequence[Sequence[dict[str, Any]]]) -> torch.Tensor:
        """Features ``[N, dim]`` for N (image, prompt) pairs; only unseen content runs the model."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts; pass one image per prompt")
        keys = [content_key(img, p) for img, p in zip(images, prompts)]
        todo: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in self._cache and key not in todo:
                todo[key] = i
        pending = list(todo.items())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            rows = [i for _, i in chunk]
            feats = self._embed([images[i] for i in rows], [strip_images(prompts[i]) for i in rows])
            for (key, _), feat in zip(chunk, feats):
                self._cache[key] = feat
        if pending:
            log.debug("embedded prompts", extra={"new": len(pending), "cached": len(self._cache)})
        if not keys:
            return torch.zeros(0, self.dim)
        out = torch.stack([self._cache[k] for k in keys])
        for key in keys:
            self._cache.move_to_end(key)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return out


class ObjectiveEmbedding(nn.Module):
    """A learned vector per alignment-objective name (e.g. "accuracy", "concise")."""

    def __init__(self, vocabulary: Sequence[str], dim: int) -> None:
        super().__init__()
        if not vocabulary or len(set(vocabulary)) != len(vocabulary):
            raise ValueError(f"objective vocabulary must be non-empty and distinct, got {list(vocabulary)!r}")
        self.vocabulary = list(vocabulary)
        self._index = {name: i for i, name in enumerate(self.vocabulary)}
        self.table = nn.Embedding(len(self.vocabulary), dim)

    def forward(self, names: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[N, dim]`` of N objective names; unknown names are refused with the vocabulary."""
        unknown = sorted({n for n in names if n not in self._index})
        if unknown:
            raise ValueError(f"unknown objective(s) {unknown}; the router knows {self.vocabulary}")
        ids = torch.tensor([self._index[n] for n in names], dtype=torch.long, device=self.table.weight.device)
        return self.table(ids)
