"""Runnable examples that use only prodkit's public API."""
