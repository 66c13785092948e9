"""``dual-encoder``: fixed image and text features, small trainable encoders on each and an MLP head;
builds from scratch (no VLM, no tokenizer file) and trains in seconds on a CPU.

Why fixed features: DP noise grows with the number of trained weights, and a site holds a few
hundred pairs. An end-to-end encoder (patch and byte embeddings, 150k weights) reached 100%
held-out accuracy without DP but stayed at chance at epsilon 8 on 200 pairs; hand-made features
with a ~28k-weight trainable part (width 32) learn under DP (Tramer & Boneh, "Differentially Private
Learning Needs Better Features", ICLR 2021). Only Linear layers train, so Opacus' per-pair
gradients are cheap hooks.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from mor_secure.data.schema import answer_text, question_text
from mor_secure.rewards.base import Batch, RewardModel, Text

GRID = 8
"""Images are summarised per cell of a GRID x GRID grid (mean colour, foreground share, edge strength) ..."""
LEVELS = 4
"""... plus a colour histogram with LEVELS levels per channel."""
FOREGROUND = 0.1
"""A pixel is foreground when a channel differs from the image's median colour by more than this (0-1 scale)."""
IMAGE_FEATURES = 5 * GRID * GRID + LEVELS**3
_WORD = re.compile(r"\w+|[^\w\s]")


def _cells(values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` ([H, W] or [H, W, C]) over each cell of the GRID x GRID grid, flattened."""
    cell = values.shape[0] // GRID
    trimmed = values[: cell * GRID, : cell * GRID]
    return trimmed.reshape(GRID, cell, GRID, cell, *values.shape[2:]).mean(axis=(1, 3)).ravel()


def image_features(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """[N, IMAGE_FEATURES]: per cell the mean RGB (colour and position), the share of pixels away from the
    median colour (where objects are, whatever their colour) and the mean gradient (edges: corners and
    outlines); and a colour histogram. Foreground and edges lifted the `detail` site's pairwise accuracy at
    epsilon 4 from 91-92% to 95-96% (two validation worlds), its chart accuracy unchanged."""
    out = np.zeros((len(images), IMAGE_FEATURES), dtype=np.float32)
    for i, image in enumerate(images):
        resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32) / 255
        levels = np.minimum((pixels * LEVELS).astype(np.int64), LEVELS - 1)
        bins = (levels[..., 0] * LEVELS + levels[..., 1]) * LEVELS + levels[..., 2]
        histogram = np.bincount(bins.ravel(), minlength=LEVELS**3) / bins.size
        median = np.median(pixels.reshape(-1, 3), axis=0)
        foreground = (np.abs(pixels - median).max(axis=-1) > FOREGROUND).astype(np.float32)
        grey = pixels.mean(axis=-1)
        edges = np.zeros_like(grey)
        edges[:, 1:] += np.abs(np.diff(grey, axis=1))
        edges[1:, :] += np.abs(np.diff(grey, axis=0))
        out[i] = np.concatenate([_cells(pixels), np.sqrt(histogram), _cells(foreground), np.sqrt(_cells(edges))])
    return torch.from_numpy(out)


def text_features(texts: Sequence[str], buckets: int, max_length: int) -> torch.Tensor:
    """[N, buckets]: a hashed, L2-normalised bag of words, word pairs and byte trigrams (an embedding
    bag with a fixed vocabulary-free hash: no tokenizer file, any language)."""
    out = torch.zeros(len(texts), buckets)
    for i, text in enumerate(texts):
        text = text[:max_length].lower()
        words = _WORD.findall(text)
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        grams += [text[j : j + 3] for j in range(max(len(text) - 2, 1))]
        for gram in grams:
            out[i, zlib.crc32(gram.encode("utf-8")) % buckets] += 1.0
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-6)


class DualEncoderReward(RewardModel):
    """r = MLP([image, prompt, answer, image*answer, prompt*answer, image*prompt*answer]) over two small encoders.

    The three-way product lets what an answer means for the image depend on the question: without it a colour
    word scored high on any question about a blue image ("What shape is shown?" -> "blue"), and the `detail`
    site put the true answer first for 56% of questions in one validation world of two (89% with it).
    """

    family = "dual-encoder"

    def __init__(
        self, *, width: int = 32, image_size: int = 64, max_length: int = 256, text_buckets: int = 256, seed: int = 0
    ) -> None:
        super().__init__(
            dict(width=width, image_size=image_size, max_length=max_length, text_buckets=text_buckets, seed=seed)
        )
        torch.manual_seed(seed)
        self.image_size, self.max_length, self.text_buckets = image_size, max_length, text_buckets
        self.image = nn.Sequential(
            nn.Linear(IMAGE_FEATURES, width), nn.ReLU(), nn.Linear(width, width), nn.LayerNorm(width)
        )
        self.text = nn.Sequential(nn.Linear(text_buckets, width), nn.LayerNorm(width))
        self.head = nn.Sequential(nn.Linear(6 * width, width), nn.ReLU(), nn.Linear(width, 1))

    def _text(self, texts: Sequence[str]) -> torch.Tensor:
        """Features of each text's last max_length characters (an answer's end is where pairs differ)."""
        from mor_secure.rewards.truncation import keep_tail

        return text_features([keep_tail(t, self.max_length) for t in texts], self.text_buckets, self.max_length)

    def encode(self, images: Sequence[Image.Image], prompts: Sequence[Text], completions: Sequence[Text]) -> Batch:
        return {
            "image": image_features(images, self.image_size),
            "prompt": self._text([question_text(p) for p in prompts]),
            "answer": self._text([answer_text(c) for c in completions]),
        }

    def encode_pairs(
        self, images: Sequence[Image.Image], prompts: Sequence[Text], chosen: Sequence[Text], rejected: Sequence[Text]
    ) -> Batch:
        """Image and prompt once per pair, the two answers as separate tensors."""
        return {
            "image": image_features(images, self.image_size),
            "prompt": self._text([question_text(p) for p in prompts]),
            "chosen": self._text([answer_text(c) for c in chosen]),
            "rejected": self._text([answer_text(c) for c in rejected]),
        }

    def forward(self, **pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes image and prompt once and each answer once: every layer sees batch B (pairs)."""
        img, question = self.image(pairs["image"]), self.text(pairs["prompt"])
        return (
            self._head(img, question, self.text(pairs["chosen"])),
            self._head(img, question, self.text(pairs["rejected"])),
        )

    def score_batch(self, batch: Batch) -> torch.Tensor:
        return self._head(self.image(batch["image"]), self.text(batch["prompt"]), self.text(batch["answer"]))

    def _head(self, img: torch.Tensor, prompt: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        features = torch.cat([img, prompt, answer, img * answer, prompt * answer, img * prompt * answer], dim=-1)
        return self.head(features).squeeze(-1)
