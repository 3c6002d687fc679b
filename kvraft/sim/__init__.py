"""Deterministic cluster simulator and its checkers."""
