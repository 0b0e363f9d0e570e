"""Benchmark scripts: each starts what it measures and prints its figures."""
