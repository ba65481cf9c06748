"""RoI features for LXMERT: the TSV format (``tsv``), the pure-Python reference source
(``TsvFeatures``), the memory-mapped C++ feature store (``FeatureStore``, ``convert_tsv``) and
the importers of today's extractors' files into it (``import_features``)."""
from .errors import StoreFormatError, TsvFormatError
from .import_common import ImportFormatError
from .importers import FORMATS, import_features
from .reference import TsvFeatures
from .store import FeatureStore, convert_tsv

__all__ = ["FORMATS", "FeatureStore", "ImportFormatError", "StoreFormatError", "TsvFeatures",
           "TsvFormatError", "convert_tsv", "import_features"]
