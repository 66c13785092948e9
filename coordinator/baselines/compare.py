"""Train both in-process baselines and measure them on the router's held-out pairs, for the table
`mor coordinator router` prints beside MoR, the uniform mean and each single client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coordinator.baselines.centralised import train_centralised
from coordinator.baselines.config import BaselinesConfig
from coordinator.baselines.data import load_client_data
from coordinator.baselines.fedavg import train_fedavg
from mor_secure.logs import get_logger

log = get_logger("coordinator.baselines")


def baseline_accuracies(config: BaselinesConfig, test_rows: Any, out_dir: Path) -> dict[str, float]:
    """{label: held-out pairwise accuracy} of the FedAvg and centralised models; {} when [baselines] data
    is empty. Each model is saved in ``out_dir``/fedavg and ``out_dir``/centralised with its record
    (bytes per round, epsilon) beside it."""
    if not config.data:
        return {}
    client_data = load_client_data(config)
    out: dict[str, float] = {}
    summary: dict[str, Any] = {}
    for name, train in (("fedavg", train_fedavg), ("centralised", train_centralised)):
        baseline = train(config, client_data)
        accuracy = baseline.pairwise_accuracy(test_rows)
        baseline.save(out_dir / name)
        out[baseline.label] = accuracy
        summary[name] = {**baseline.record, "accuracy": accuracy, "path": str(out_dir / name)}
        log.info(
            "baseline evaluated", extra={"baseline": name, "pairs": len(test_rows), "accuracy": round(accuracy, 4)}
        )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out
