"""The version, in one place (read by hatchling and by the greeting's ident)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
