"""Benchmarks for hessinv: ``python -m benchmarks.core`` (issue 2) and ``python -m benchmarks.run``."""
