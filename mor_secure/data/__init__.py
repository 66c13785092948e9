"""The benchmark world (seeded multi-domain visual QA with ground truth) and the preference
data schema and loader shared by clients and the coordinator.

Submodules: ``domains`` (one generator per domain), ``styles``, ``schema``, ``world``, ``loader``.
"""
