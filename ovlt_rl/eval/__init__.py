"""Benchmark evaluation: `ovlt eval`."""
