"""Family name -> reward-model class; builds one from the [model] config or loads a saved folder."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from mor_secure.config import ConfigError
from mor_secure.errors import BadInput, MissingInput
from mor_secure.rewards.base import CONFIG_NAME, FORMAT, RewardModel
from mor_secure.rewards.dual_encoder import DualEncoderReward
from mor_secure.rewards.vlm import LlavaReward, Qwen2VLReward

FAMILIES: dict[str, type[RewardModel]] = {cls.family: cls for cls in (DualEncoderReward, Qwen2VLReward, LlavaReward)}


def family_class(name: str) -> type[RewardModel]:
    """The class registered as ``name``; the error lists the known families."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown reward-model family {name!r}; set [model].family to one of {', '.join(sorted(FAMILIES))}"
        ) from None


def is_saved_reward_model(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``RewardModel.save`` (not a bare VLM, not empty)."""
    return bool(path) and (Path(path) / CONFIG_NAME).is_file()


def build_reward_model(model_config: Any, *, seed: int = 0) -> RewardModel:
    """A fresh model of ``model_config.family`` (each constructor takes the [model] fields it names), or,
    where ``[model] base`` is a saved reward-model folder of that family (a publicly pretrained one),
    that model, to train on from its weights and spec."""
    cls = family_class(model_config.family)
    base = getattr(model_config, "base", "")
    if is_saved_reward_model(base):
        model = load_reward_model(base)
        if model.family != cls.family:
            raise ConfigError(
                f"[model] base {base} is a saved {model.family!r} reward model; set [model].family "
                f"= {model.family!r} or point base at a {cls.family!r} model"
            )
        model.train()
        return model
    names = inspect.signature(cls.__init__).parameters
    kwargs = {name: getattr(model_config, name) for name in names if hasattr(model_config, name)}
    if "seed" in names:
        kwargs["seed"] = seed
    return cls(**kwargs)


def load_reward_model(path: str | Path) -> RewardModel:
    """Rebuild a model saved with ``RewardModel.save`` (reward_config.json + model.safetensors)."""
    from safetensors.torch import load_file

    folder = Path(path)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise MissingInput(
            f"{folder}: no {CONFIG_NAME}; point at the [train].out folder of a finished `mor client train` run"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("spec"), dict):
        raise BadInput(f"{config_path}: not a reward-model config (format {FORMAT})")
    weights = folder / Path(str(config.get("weights", ""))).name
    if not weights.is_file():
        raise MissingInput(f"{weights}: weights missing; re-run training or copy the whole folder")
    try:
        model = family_class(str(config.get("family")))(**config["spec"])
    except TypeError as exc:
        raise BadInput(f"{config_path}: spec does not fit family {config.get('family')!r} ({exc})") from exc
    try:
        model.load_saved_state_dict(load_file(str(weights)))
    except ValueError as exc:
        raise BadInput(
            f"{weights}: {exc}; it was saved by another version of the {model.family!r} architecture: "
            "retrain it (`mor client train --no-resume`, `mor coordinator public-reward`)"
        ) from exc
    model.eval()
    return model
