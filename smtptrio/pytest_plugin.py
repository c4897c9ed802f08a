"""pytest fixtures for testing code that sends mail (registered via the pytest11 entry point)."""

from __future__ import annotations

__all__: list[str] = []
