"""FedAvg reward model: the parameter-sharing approach MoR replaces, simulated in one process.

K clients hold the same architecture. Each round the coordinator sends the global trainable
parameters down, every client takes ``local_steps`` steps on its own pairs (DP-SGD if asked, each
client accounting for its own data), sends its parameters up, and the coordinator averages them
weighted by client size (McMahan et al., 2017). Bytes are counted per round, both ways, from the
sizes of the trainable tensors, which is what a real deployment would ship.

Under DP the accountant covers every iterate of a client's DP-SGD, so the parameters it sends each
round spend nothing beyond its reported epsilon; the averaged model is post-processing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from coordinator.baselines.config import BaselinesConfig
from coordinator.baselines.data import dp_settings, load_client_data
from coordinator.baselines.local import LocalTrainer
from coordinator.baselines.strategy import ModelReward
from mor_secure.logs import get_logger
from mor_secure.rewards import build_reward_model
from mor_secure.rewards.training import resolve_device

log = get_logger("coordinator.fedavg")

LABEL = "FedAvg reward model (parameter sharing)"

State = dict[str, torch.Tensor]


def state_bytes(state: State) -> int:
    """Bytes of one copy of ``state`` on the wire (raw tensor data, no framing)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> State:
    """``sum_k w_k * state_k / sum_k w_k`` per tensor, accumulated in float64, in each tensor's dtype."""
    total = float(sum(weights))
    if not states or total <= 0:
        raise ValueError("averaging needs at least one state and a positive total weight")
    return {
        name: sum(w / total * s[name].double() for s, w in zip(states, weights)).to(states[0][name].dtype)
        for name in states[0]
    }


@dataclass
class RoundRecord:
    """One round: the bytes that crossed the network each way and the clients' mean local loss."""

    round: int
    down_bytes: int
    up_bytes: int
    mean_loss: float


class FedAvg:
    """The simulation: ``round()`` runs one round, ``run()`` all of them and returns the global model."""

    def __init__(self, config: BaselinesConfig, client_data: Sequence[Any] | None = None) -> None:
        self.config = config
        data = list(client_data) if client_data is not None else load_client_data(config)
        device, dp = resolve_device(config.device), dp_settings(config)
        steps = config.rounds * config.local_steps
        # The same seed for every client: one initialisation, as if the coordinator had sent it.
        self.clients = [
            LocalTrainer(
                build_reward_model(config.model, seed=config.seed),
                rows,
                total_steps=steps,
                batch_size=config.batch_size,
                lr=config.lr,
                weight_decay=config.weight_decay,
                seed=config.seed + 1000 * (k + 1),
                device=device,
                dp=dp,
            )
            for k, rows in enumerate(data)
        ]
        self.sizes = [c.n_pairs for c in self.clients]
        self.global_state: State = self.clients[0].model.saved_state_dict()
        self.rounds: list[RoundRecord] = []

    def broadcast(self) -> int:
        """Load the global parameters into every client; returns the bytes sent down."""
        for client in self.clients:
            client.model.load_saved_state_dict(self.global_state)
        return len(self.clients) * state_bytes(self.global_state)

    def round(self) -> RoundRecord:
        """Down, ``local_steps`` on each client, up, size-weighted average."""
        if len(self.rounds) >= self.config.rounds:
            raise RuntimeError(f"all {self.config.rounds} planned rounds have run")
        down = self.broadcast()
        losses = [client.train(self.config.local_steps) for client in self.clients]
        states = [client.model.saved_state_dict() for client in self.clients]
        self.global_state = weighted_average(states, self.sizes)
        finite = [v for v in losses if math.isfinite(v)]
        record = RoundRecord(
            len(self.rounds) + 1,
            down,
            sum(state_bytes(s) for s in states),
            sum(finite) / len(finite) if finite else math.nan,
        )
        self.rounds.append(record)
        log.info(
            "fedavg round",
            extra={
                "round": record.round,
                "clients": len(self.clients),
                "up_bytes": record.up_bytes,
                "loss": round(record.mean_loss, 4),
            },
        )
        return record

    def epsilons(self) -> list[float]:
        """Epsilon each client has spent so far (inf without DP)."""
        return [client.epsilon() for client in self.clients]

    def run(self) -> ModelReward:
        """Every remaining round, then the global model as a reward strategy with its training record."""
        while len(self.rounds) < self.config.rounds:
            self.round()
        model = build_reward_model(self.config.model, seed=self.config.seed)
        model.load_saved_state_dict(self.global_state)
        epsilons = self.epsilons()
        planned = self.config.rounds * self.config.local_steps
        if any(client.history.steps != planned for client in self.clients):
            raise RuntimeError(
                f"the accountants counted {[c.history.steps for c in self.clients]} steps, "
                f"the plan {planned} per client"
            )
        record = {
            "kind": "fedavg",
            "label": LABEL,
            "family": self.config.model.family,
            "clients": len(self.clients),
            "client_pairs": self.sizes,
            "rounds": [asdict(r) for r in self.rounds],
            "local_steps": self.config.local_steps,
            "parameter_bytes": state_bytes(self.global_state),
            "dp": self.config.dp,
            "epsilon_per_client": epsilons,
            "epsilon": max(epsilons),
            "delta_per_client": [c.delta for c in self.clients],
            "noise_multiplier_per_client": [c.noise_multiplier for c in self.clients],
        }
        return ModelReward(model, record)


def train_fedavg(config: BaselinesConfig, client_data: Sequence[Any] | None = None) -> ModelReward:
    """Run the FedAvg simulation on [baselines] data (or ``client_data``) and return the global model."""
    return FedAvg(config, client_data).run()
