"""LXMERT (Tan & Bansal, EMNLP 2019, arXiv 1908.07490): ``LxmertModel``, the backbone.

A drop-in for transformers' ``LxmertModel``: same constructor, forward arguments, output fields and
state_dict keys. The building blocks (``lxmert_fast.modeling_layers``, re-exported here) call the
fused operations through ``lxmert_fast.ops`` only; ``config.kernel_impl`` picks the reference or the
kernels at call time. The base class with transformers' model API is ``lxmert_fast.modeling_base``.

Differences from transformers, by design:
- Masks are boolean key-padding masks. A query whose keys are ALL masked (e.g. an image with every
  object padded) gets zeros from our attention; transformers' additive mask gives a uniform
  average over the padded keys. Rows with at least one real key agree.
- With ``output_attentions`` the probabilities are reported before attention dropout (transformers
  reports them after); in eval mode they are identical.
- ZeRO-3: a parameter is only ever read inside the forward of the module that owns it or of an
  ancestor (a sublayer passing its ``dense`` weight to a fused op); DeepSpeed registers the latter
  as external parameters of the reading module on first access, in forward and backward. No
  module is marked a ZeRO-3 "leaf": DeepSpeed reduces a leaf's gradients from a module backward
  hook, which fires too early for modules whose inputs need no gradient (the embeddings).
  The tied MLM decoder is an ``nn.Linear`` sharing the word embedding, as in transformers.
"""
from typing import Optional

import torch
from torch import nn

from lxmert_fast.config import LxmertConfig
from lxmert_fast.modeling_base import LxmertPreTrainedModel  # noqa: F401  (re-exported)
from lxmert_fast.modeling_layers import (  # noqa: F401  (re-exported building blocks)
    ACTIVATIONS, LxmertAttention, LxmertAttentionOutput, LxmertCrossAttentionLayer,
    LxmertEmbeddings, LxmertEncoder, LxmertIntermediate, LxmertLayer, LxmertOutput, LxmertPooler,
    LxmertSelfAttentionLayer, LxmertVisualFeatureEncoder, LxmertXLayer)
from lxmert_fast.modeling_outputs import LxmertModelOutput


def key_padding_mask(mask: Optional[torch.Tensor], shape, name: str) -> Optional[torch.Tensor]:
    """A (B, L) 0/1 or bool mask as a bool key-padding mask (True = real)."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


class LxmertModel(LxmertPreTrainedModel):
    """The LXMERT backbone: language output, vision output and pooled output."""

    def __init__(self, config: LxmertConfig):
        super().__init__(config)
        self.embeddings = LxmertEmbeddings(config)
        self.encoder = LxmertEncoder(config)
        self.pooler = LxmertPooler(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, new_embeddings: nn.Embedding):
        self.embeddings.word_embeddings = new_embeddings

    def _check_inputs(self, input_ids, inputs_embeds, visual_feats, visual_pos):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LxmertModel: give exactly one of input_ids and inputs_embeds")
        shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1])
        if len(shape) != 2 or shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"LxmertModel: input_ids shape {shape} must be (B, L) with L <= "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        if visual_feats is None or visual_pos is None:
            raise ValueError("LxmertModel: visual_feats and visual_pos are required")
        feat = (shape[0], visual_feats.shape[1] if visual_feats.dim() == 3 else -1,
                self.config.visual_feat_dim)
        if tuple(visual_feats.shape) != feat:
            raise ValueError(f"LxmertModel: visual_feats shape {tuple(visual_feats.shape)}, "
                             f"expected (B, N, visual_feat_dim) = {feat}")
        pos = (*feat[:2], self.config.visual_pos_dim)
        if tuple(visual_pos.shape) != pos:
            raise ValueError(f"LxmertModel: visual_pos shape {tuple(visual_pos.shape)}, "
                             f"expected (B, N, visual_pos_dim) = {pos}")
        return shape, feat[:2]

    def forward(self, input_ids=None, visual_feats=None, visual_pos=None, attention_mask=None,
                visual_attention_mask=None, token_type_ids=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        cfg = self.config
        output_attentions = (cfg.output_attentions if output_attentions is None
                             else output_attentions)
        output_hidden_states = (cfg.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        return_dict = cfg.return_dict if return_dict is None else return_dict
        text_shape, visn_shape = self._check_inputs(input_ids, inputs_embeds, visual_feats,
                                                    visual_pos)
        lang_mask = key_padding_mask(attention_mask, text_shape, "attention_mask")
        visn_mask = key_padding_mask(visual_attention_mask, visn_shape, "visual_attention_mask")
        if token_type_ids is None:
            device = (input_ids if input_ids is not None else inputs_embeds).device
            token_type_ids = torch.zeros(text_shape, dtype=torch.long, device=device)
        elif tuple(token_type_ids.shape) != text_shape:
            raise ValueError(f"LxmertModel: token_type_ids shape {tuple(token_type_ids.shape)}, "
                             f"expected {text_shape}")
        lang = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        lang_states, visn_states, lang_att, visn_att, cross_att = self.encoder(
            lang, lang_mask, visual_feats, visual_pos, visn_mask, output_attentions)
        out = LxmertModelOutput(
            language_output=lang_states[-1], vision_output=visn_states[-1],
            pooled_output=self.pooler(lang_states[-1]),
            language_hidden_states=lang_states if output_hidden_states else None,
            vision_hidden_states=visn_states if output_hidden_states else None,
            language_attentions=lang_att, vision_attentions=visn_att,
            cross_encoder_attentions=cross_att)
        return out if return_dict else out.to_tuple()
