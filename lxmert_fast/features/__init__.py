"""RoI features for LXMERT: the TSV format (``tsv``), the pure-Python reference source
(``TsvFeatures``) and the memory-mapped C++ feature store (``FeatureStore``, ``convert_tsv``)."""
from .errors import StoreFormatError, TsvFormatError
from .reference import TsvFeatures
from .store import FeatureStore, convert_tsv

__all__ = ["FeatureStore", "StoreFormatError", "TsvFeatures", "TsvFormatError", "convert_tsv"]
