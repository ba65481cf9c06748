"""Exceptions of the feature package (the C++ extension raises these by name)."""
from .tsv import TsvFormatError


class StoreFormatError(ValueError):
    """A file that is not a valid feature store: wrong magic, version, truncated, corrupt."""


__all__ = ["TsvFormatError", "StoreFormatError"]
