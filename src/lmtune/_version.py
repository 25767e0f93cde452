"""The package version, importable without side effects."""

__version__ = "0.1.0"
