"""Benchmarks of simstudy (``python -m benchmarks [--quick]`` runs them all)."""
