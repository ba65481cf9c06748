"""Exceptions of the feature package (the C++ extension raises these by name)."""
from .tsv import TsvFormatError


class StoreFormatError(ValueError):
    """A file that is not a valid feature store: wrong magic, version, truncated, corrupt."""


class ImportFormatError(ValueError):
    """An extractor's file that does not have the layout of its format, or holds a pickle that
    the restricted unpickler refuses (``safe_pickle.py``); names file and key."""


__all__ = ["ImportFormatError", "TsvFormatError", "StoreFormatError"]
