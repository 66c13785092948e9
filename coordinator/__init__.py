"""The coordinator: client pool, calibration, the Mixture-of-Rewards router, fusion strategies,
GRPO with a KL penalty, and the privacy ledger it keeps."""
