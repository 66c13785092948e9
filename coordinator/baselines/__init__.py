"""In-process reward baselines behind the fusion interface: a FedAvg reward model (parameter sharing,
simulated in one process) and a centralised reward model on pooled data (an upper bound, not
federated). Each is a ``RewardFusion``, so ``reward_callable`` and GRPO use it unchanged; importing
``registration`` registers the GRPO reward names ``fedavg`` and ``centralised``."""
