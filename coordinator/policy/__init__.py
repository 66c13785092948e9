"""The policy: its supervised warm start, GRPO with a KL penalty and the rewards it optimises, the oracle
reward, a public reward model's head start and the held-out evaluation."""
