"""The coordinator: the federation (``federation/``), the Mixture-of-Rewards (``mixture/``), the policy it
aligns with GRPO (``policy/``), in-process reward baselines (``baselines/``) and the ``mor coordinator``
commands (``commands/``)."""
