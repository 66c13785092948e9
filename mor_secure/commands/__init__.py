"""Command groups of the `mor` CLI that belong to the core (each side owns its own group)."""
