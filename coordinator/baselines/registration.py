"""GRPO reward names for the baselines: ``[grpo] reward = "fedavg"`` or ``"centralised"`` loads the model
`mor coordinator router` saved under [router] out/baselines; ``"fedavg:FOLDER"`` names a saved one."""

from __future__ import annotations

from pathlib import Path

from coordinator.baselines.strategy import ModelReward
from coordinator.policy.rewards import RewardContext, RewardError, register_reward

KINDS = ("fedavg", "centralised")


def load_baseline(kind: str, ctx: RewardContext, arg: str) -> ModelReward:
    """The saved ``kind`` baseline from ``arg`` (a folder) or the router run's default folder."""
    if arg:
        folder = Path(arg)
    elif ctx.config is not None:
        folder = ctx.config.router.out / "baselines" / kind
    else:
        raise RewardError(f"[grpo] reward = {kind!r} needs a saved model: '{kind}:FOLDER'")
    try:
        baseline = ModelReward.load(folder)
    except (OSError, ValueError) as exc:
        raise RewardError(
            f"cannot load the {kind} baseline at {folder}: {exc}. Run `mor coordinator router` "
            f"with [baselines] data set, or name a saved folder: '{kind}:FOLDER'"
        ) from None
    if baseline.record.get("kind") != kind:
        raise RewardError(f"{folder} holds a {baseline.record.get('kind')!r} baseline, not {kind!r}")
    return baseline


for _kind in KINDS:
    register_reward(_kind, lambda ctx, arg, kind=_kind: load_baseline(kind, ctx, arg))
