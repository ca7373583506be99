"""Mutation testing driver (see mutation/run.py and docs/testing.md)."""
