"""RoI features for LXMERT: the TSV format (``tsv``), the pure-Python reference source
(``TsvFeatures``) and the memory-mapped C++ feature store (``FeatureStore``, ``convert_tsv``)."""
from .reference import TsvFeatures
from .tsv import TsvFormatError

__all__ = ["TsvFeatures", "TsvFormatError"]
