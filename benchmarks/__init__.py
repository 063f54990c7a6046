"""Benchmarks for hessinv: ``python -m benchmarks.core`` (the depth benchmark) and ``python -m benchmarks.run``."""
