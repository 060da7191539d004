"""Scenarios that need logic (timing, counting, several connections in a loop)."""
