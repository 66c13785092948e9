"""Benchmarks of the product: each module runs as ``python -m benchmarks.NAME`` from the checkout (or as
``mor bench NAME``) and writes its report, markdown and PNG, under ``benchmarks/results/``."""
