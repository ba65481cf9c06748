"""lxmert_fast: LXMERT (Tan & Bansal, 2019) as a performance-engineered training system.

The model classes are drop-ins for transformers' LXMERT (same config fields, forward arguments,
output fields and state_dict keys); ``LxmertForNLVR2`` is the original repository's pair head;
``from_transformers(model)`` converts a transformers LXMERT instance.
"""
__version__ = "0.1.0"

from lxmert_fast.config import LxmertConfig
from lxmert_fast.heads import LxmertForNLVR2, LxmertForPreTraining, LxmertForQuestionAnswering
from lxmert_fast.modeling import LxmertModel
from lxmert_fast.modeling_loading import from_transformers

__all__ = ["LxmertConfig", "LxmertModel", "LxmertForPreTraining", "LxmertForQuestionAnswering",
           "LxmertForNLVR2", "from_transformers", "__version__"]
