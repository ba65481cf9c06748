"""Output containers of the LXMERT models, with transformers' field names and access rules.

Like transformers' ``ModelOutput``: attribute access, ``out["name"]``, and integer/slice indexing
over the tuple of the fields that are not None (in declaration order), which is also what the
models return with ``return_dict=False``. ``keys()`` / ``items()`` list the non-None fields.

``LxmertForPreTrainingOutput.losses`` (each loss term by name) is an addition of ours; it is not
part of the tuple, so indices stay those of transformers.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

Tensors = Optional[Tuple[torch.Tensor, ...]]


class ModelOutput:
    """Base for the output dataclasses; ``_extra_fields`` are kept out of the tuple view."""

    _extra_fields: Tuple[str, ...] = ()

    def _tuple_fields(self):
        return [f.name for f in dataclasses.fields(self)
                if f.name not in self._extra_fields and getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, name) for name in self._tuple_fields())

    def keys(self):
        return self._tuple_fields()

    def values(self):
        return list(self.to_tuple())

    def items(self):
        return [(name, getattr(self, name)) for name in self._tuple_fields()]

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self._tuple_fields() and key not in self._extra_fields:
                raise KeyError(f"{type(self).__name__} has no field {key!r} set; "
                               f"set fields: {self._tuple_fields()}")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key) -> bool:
        return key in self._tuple_fields()

    def __iter__(self):
        return iter(self._tuple_fields())

    def __len__(self) -> int:
        return len(self._tuple_fields())


@dataclass
class LxmertModelOutput(ModelOutput):
    """language_output (B, L, hidden), vision_output (B, N, hidden), pooled_output (B, hidden);
    hidden states: one per language/vision layer then one per cross layer (no embedding output);
    attentions (B, H, Lq, Lk) per layer (cross: the language-queries direction)."""

    language_output: Optional[torch.Tensor] = None
    vision_output: Optional[torch.Tensor] = None
    pooled_output: Optional[torch.Tensor] = None
    language_hidden_states: Tensors = None
    vision_hidden_states: Tensors = None
    language_attentions: Tensors = None
    vision_attentions: Tensors = None
    cross_encoder_attentions: Tensors = None


@dataclass
class LxmertForPreTrainingOutput(ModelOutput):
    """Total loss, MLM logits (B, L, vocab), matching scores (B, 2), QA scores (B, num_qa_labels),
    and ``losses``: each loss term that ran ("mlm", "matched", "obj", "attr", "feat", "qa")."""

    _extra_fields = ("losses",)

    loss: Optional[torch.Tensor] = None
    prediction_logits: Optional[torch.Tensor] = None
    cross_relationship_score: Optional[torch.Tensor] = None
    question_answering_score: Optional[torch.Tensor] = None
    language_hidden_states: Tensors = None
    vision_hidden_states: Tensors = None
    language_attentions: Tensors = None
    vision_attentions: Tensors = None
    cross_encoder_attentions: Tensors = None
    losses: Dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LxmertForQuestionAnsweringOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    question_answering_score: Optional[torch.Tensor] = None
    language_hidden_states: Tensors = None
    vision_hidden_states: Tensors = None
    language_attentions: Tensors = None
    vision_attentions: Tensors = None
    cross_encoder_attentions: Tensors = None


@dataclass
class LxmertForNLVR2Output(ModelOutput):
    """loss and logits (B, 2); hidden states and attentions are those of the 2B encoder passes
    ordered (sentence 0, image 0), (sentence 0, image 1), (sentence 1, image 0), ..."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    language_hidden_states: Tensors = None
    vision_hidden_states: Tensors = None
    language_attentions: Tensors = None
    vision_attentions: Tensors = None
    cross_encoder_attentions: Tensors = None
