"""Supervised warm start of the policy: fine-tune the base VLM on public (image, prompt, completion) rows.

A plain torch loop (AdamW, linear warm-up then linear decay, loss on the completion tokens only)
over :func:`mor_secure.models.vlm_inputs`, so it runs the same on the tiny offline models and on
a real VLM. The result is saved as a model folder that :func:`mor_secure.models.load_vlm` and
GRPO's reference reload take by path.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mor_secure.data.schema import DataError
from mor_secure.errors import BadInput
from mor_secure.logs import get_logger

log = get_logger("coordinator.policy.sft")

IGNORE_INDEX = -100


def load_rows(data: Any, *, columns: Mapping[str, str] | None = None) -> Any:
    """A ``datasets.Dataset`` of image + prompt rows from a data set object or a local data set.

    A ``save_to_disk`` folder that already has ``image`` and a conversational ``prompt`` is read as it
    is (every column kept: ``completion`` for SFT, reward columns for GRPO); any other source in the
    layouts the site loader reads (parquet, JSON lines with image paths, ``images`` lists, plain-string
    prompts, ``columns`` mapping other names) becomes canonical prompt rows with no answers needed.
    """
    from datasets import Dataset

    from mor_secure.data.loader import load_preferences
    from mor_secure.data.schema import features_for, shape

    if isinstance(data, Dataset):
        return data
    path = Path(data)
    if not columns and (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        from datasets import load_from_disk

        rows = load_from_disk(str(path))
        expected = features_for("prompts")
        if all(c in rows.features and shape(rows.features[c]) == shape(expected[c]) for c in ("image", "prompt")):
            return rows
    return load_preferences(path, kind="prompts", columns=columns)


def completion_batch(processor: Any, rows: dict[str, list]) -> dict[str, torch.Tensor]:
    """Model inputs for whole exchanges with ``labels`` set on the completion tokens only."""
    from mor_secure.models import vlm_inputs

    images, prompts = rows["image"], rows["prompt"]
    full = vlm_inputs(processor, images, prompts, rows["completion"], padding_side="right")
    prompt_only = vlm_inputs(processor, images, prompts, padding_side="right")
    prompt_len = prompt_only["attention_mask"].sum(dim=1, keepdim=True)
    positions = torch.arange(full["input_ids"].shape[1]).unsqueeze(0)
    labels = full["input_ids"].masked_fill((positions < prompt_len) | (full["attention_mask"] == 0), IGNORE_INDEX)
    return {**full, "labels": labels}


SEQUENCE_PADDING = {
    "input_ids": None,
    "attention_mask": 0,
    "labels": IGNORE_INDEX,
    "mm_token_type_ids": 0,
    "token_type_ids": 0,
}
"""Per-token inputs (padded right when rows are batched; None: the tokenizer's pad id); every other
input (pixel values, image grids) is concatenated along its first dimension."""


def collate(encoded: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch from rows encoded one at a time by :func:`completion_batch`.

    The tensors equal those of encoding the rows together (right padding).
    """
    length = max(row["input_ids"].shape[-1] for row in encoded)
    batch = {}
    for key in encoded[0]:
        if key in SEQUENCE_PADDING:
            value = pad_id if SEQUENCE_PADDING[key] is None else SEQUENCE_PADDING[key]
            batch[key] = torch.cat(
                [torch.nn.functional.pad(row[key], (0, length - row[key].shape[-1]), value=value) for row in encoded]
            )
        else:
            batch[key] = torch.cat([row[key] for row in encoded])
    return batch


def run_sft(
    base: str | Path,
    data: Any,
    out_dir: str | Path,
    *,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup_ratio: float = 0.05,
    seed: int = 0,
) -> Path:
    """Fine-tune ``base`` on ``data`` for ``steps`` batches and save model and processor to ``out_dir``.

    ``data`` is a data set (or its folder) with image, prompt and completion columns. Returns
    ``out_dir``; ``out_dir/sft.json`` records the settings and the first and last losses.
    """
    import json

    from transformers import get_linear_schedule_with_warmup

    from mor_secure.models import load_vlm

    if steps < 1 or batch_size < 1:
        raise BadInput(f"steps and batch_size must be at least 1 (got {steps}, {batch_size})")
    rows = load_rows(data)
    missing = {"image", "prompt", "completion"} - set(rows.column_names)
    if missing:
        raise DataError(
            f"the SFT data lacks column(s) {', '.join(sorted(missing))}; it needs image, "
            "prompt and completion (as `mor coordinator public-data` writes)"
        )
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, processor = load_vlm(base)
    model.train()
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=lr)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, int(warmup_ratio * steps)), steps)
    order: list[int] = []
    losses: list[float] = []
    cache: dict[int, dict[str, torch.Tensor]] = {}  # rows are encoded once and reused every epoch
    with tqdm(range(steps), desc="sft", unit="step") as bar:
        for _ in bar:
            if len(order) < batch_size:
                fresh = list(range(len(rows)))
                rng.shuffle(fresh)
                order.extend(fresh)
            for i in order[:batch_size]:
                if i not in cache:
                    cache[i] = completion_batch(processor, rows[i : i + 1])
            batch = collate([cache[i] for i in order[:batch_size]], processor.tokenizer.pad_token_id)
            del order[:batch_size]
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    window = max(1, min(20, steps // 5))
    summary = {
        "base": str(base),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "rows": len(rows),
        "first_loss": sum(losses[:window]) / window,
        "last_loss": sum(losses[-window:]) / window,
    }
    (out_dir / "sft.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info(
        "sft done",
        extra={
            "steps": steps,
            "first_loss": round(summary["first_loss"], 4),
            "last_loss": round(summary["last_loss"], 4),
        },
    )
    return out_dir
