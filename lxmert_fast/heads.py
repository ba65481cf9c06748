"""LXMERT task heads and models: pretraining (Tan & Bansal 2019, section 3.1), question answering,
and the NLVR2 pair classifier of the original repository.

``LxmertForPreTraining`` and ``LxmertForQuestionAnswering`` are drop-ins for transformers' classes
(state_dict keys ``cls.*``, ``obj_predict_head.*``, ``answer_head.logit_fc.*``; the MLM decoder
``cls.predictions.decoder.weight`` is the word embedding). Loss defaults and the original's
options are described in ``lxmert_fast.modeling_losses``.

``LxmertForNLVR2`` is the original's head: the encoder runs on (sentence, image 0) and
(sentence, image 1) as one batch of 2B; the two pooled outputs are concatenated and classified by
Linear(2h, 2h) -> GeLU -> LayerNorm(eps 1e-12) -> Linear(2h, 2), trained with cross-entropy.
"""
import torch
import torch.nn.functional as F
from torch import nn

from lxmert_fast import modeling_losses as losses
from lxmert_fast import modeling_resize as resize
from lxmert_fast.config import LxmertConfig
from lxmert_fast.modeling import LxmertModel, LxmertPreTrainedModel
from lxmert_fast.modeling_itc import LxmertContrastiveHead, itc_loss
from lxmert_fast.modeling_layers import ACTIVATIONS
from lxmert_fast.modeling_outputs import (LxmertForNLVR2Output, LxmertForPreTrainingOutput,
                                          LxmertForQuestionAnsweringOutput)


class GeLU(nn.Module):
    def forward(self, x):
        return F.gelu(x)


class LxmertPredictionHeadTransform(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class LxmertLMPredictionHead(nn.Module):
    """MLM head; ``decoder`` shares its weight with the word embeddings, ``bias`` is its own."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.transform = LxmertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states):
        return self.decoder(self.transform(hidden_states)) + self.bias


class LxmertPreTrainingHeads(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.predictions = LxmertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


class LxmertVisualAnswerHead(nn.Module):
    """hidden -> 2 hidden -> GeLU -> LayerNorm -> num_labels."""

    def __init__(self, config: LxmertConfig, num_labels: int):
        super().__init__()
        hid = config.hidden_size
        self.logit_fc = nn.Sequential(nn.Linear(hid, hid * 2), GeLU(),
                                      nn.LayerNorm(hid * 2, eps=config.layer_norm_eps),
                                      nn.Linear(hid * 2, num_labels))

    def forward(self, hidden_states):
        return self.logit_fc(hidden_states)


def visual_loss_sizes(config: LxmertConfig) -> dict:
    """The masked-object outputs the config enables: name -> output width."""
    sizes = {}
    if config.visual_obj_loss:
        sizes["obj"] = config.num_object_labels
    if config.visual_attr_loss:
        sizes["attr"] = config.num_attr_labels
    if config.visual_feat_loss:
        sizes["feat"] = config.visual_feat_dim
    return sizes


class LxmertVisualObjHead(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.transform = LxmertPredictionHeadTransform(config)
        self.visual_losses = visual_loss_sizes(config)
        self.decoder_dict = nn.ModuleDict({key: nn.Linear(config.hidden_size, num)
                                           for key, num in self.visual_losses.items()})

    def forward(self, hidden_states):
        h = self.transform(hidden_states)
        return {key: self.decoder_dict[key](h) for key in self.visual_losses}


class _QAHeadMixin:
    """transformers' QA-head resizing (rows kept, new rows initialised)."""

    def get_qa_logit_layer(self):
        return self.answer_head.logit_fc[-1] if hasattr(self, "answer_head") else None

    def resize_num_qa_labels(self, num_labels):
        old = self.get_qa_logit_layer()
        if num_labels is None or old is None:
            return old
        if num_labels != old.out_features:
            new = nn.Linear(old.in_features, num_labels).to(old.weight.device, old.weight.dtype)
            self._init_weights(new)
            keep = min(old.out_features, num_labels)
            with torch.no_grad():
                new.weight[:keep] = old.weight[:keep]
                new.bias[:keep] = old.bias[:keep]
            self.answer_head.logit_fc[-1] = new
        self.config.num_qa_labels = num_labels
        self.num_qa_labels = num_labels
        return self.get_qa_logit_layer()


def _backbone_kwargs(kw):
    return {k: kw[k] for k in ("input_ids", "visual_feats", "visual_pos", "attention_mask",
                               "visual_attention_mask", "token_type_ids", "inputs_embeds",
                               "output_attentions", "output_hidden_states")}


MLM_POSITIONS = ("all", "labeled")


def mlm_capacity_granule(num_tokens: int) -> int:
    """The step of the capacity buckets for a (B, L) text batch of ``num_tokens`` = B * L: an
    eighth of it rounded up to a multiple of 8 (at most 8 shapes, so at most 8 compiled graphs)."""
    return min(num_tokens, max(8, -(-num_tokens // 64) * 8))


def mlm_gather_index(labels: torch.Tensor, granule: int = None) -> torch.Tensor:
    """The fixed-capacity gather of the MLM head: (C,) int64 flat positions into the (B, L) text,
    every labeled token (``labels != -100``) first in row-major order, then unlabeled positions
    as padding (their label is -100: they add nothing to the loss or the gradients).

    C is the smallest multiple of ``granule`` (default ``mlm_capacity_granule(B * L)``) that holds
    every labeled token, at most B * L: a batch with more masked tokens than usual grows C to the
    next bucket (a new shape), none is ever dropped. Call it where the labels are on the host
    (the data loader): the count is read there, so the device step never synchronises."""
    if labels.dim() != 2:
        raise ValueError(f"mlm_gather_index: labels shape {tuple(labels.shape)}, expected (B, L)")
    flat = labels.reshape(-1)
    granule = mlm_capacity_granule(flat.numel()) if granule is None else int(granule)
    if granule < 1:
        raise ValueError(f"mlm_gather_index: granule={granule} must be >= 1")
    unlabeled = (flat == losses.IGNORE_INDEX).to(torch.int8)
    count = flat.numel() - int(unlabeled.sum())
    capacity = min(flat.numel(), max(1, -(-count // granule)) * granule)
    return torch.argsort(unlabeled, stable=True)[:capacity]


def _gathered_rows(language_output, labels, index):
    """(states (C, H), labels (C,)) at the flat positions ``index`` (C,) of mlm_gather_index."""
    if index.dtype != torch.int64 or index.dim() != 1:
        raise ValueError(f"mlm_positions: a position tensor must be 1-D int64 (from "
                         f"mlm_gather_index); got {index.dtype} of shape {tuple(index.shape)}")
    num_tokens = language_output.shape[0] * language_output.shape[1]
    if not 1 <= index.shape[0] <= num_tokens:
        raise ValueError(f"mlm_positions: {index.shape[0]} positions for a text of {num_tokens} "
                         f"tokens (B, L) = {tuple(language_output.shape[:2])}")
    states = language_output.reshape(num_tokens, -1).index_select(0, index)  # (C, H)
    return states, labels.reshape(-1).index_select(0, index)                  # (C,)


def _mlm_rows(language_output, labels, mlm_positions):
    """(states, labels) the MLM head and loss see: all tokens, only the labeled ones (boolean
    indexing: a host synchronisation), or a fixed-capacity gather (a position tensor)."""
    is_index = isinstance(mlm_positions, torch.Tensor)
    if not is_index and mlm_positions not in MLM_POSITIONS:
        raise ValueError(f"mlm_positions={mlm_positions!r}: expected one of {MLM_POSITIONS} or "
                         f"a position tensor from mlm_gather_index")
    if labels is None or (not is_index and mlm_positions == "all"):
        return language_output, labels
    if tuple(labels.shape) != tuple(language_output.shape[:2]):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match the text "
                         f"(B, L) = {tuple(language_output.shape[:2])}")
    if is_index:
        return _gathered_rows(language_output, labels, mlm_positions)
    keep = labels != losses.IGNORE_INDEX
    return language_output[keep], labels[keep]


class LxmertForPreTraining(_QAHeadMixin, LxmertPreTrainedModel):
    """LXMERT with the pretraining heads: MLM, matching, masked-object (obj/attr/feat), QA."""

    _tied_weights_keys = {"cls.predictions.decoder.weight":
                          "lxmert.embeddings.word_embeddings.weight"}

    def __init__(self, config: LxmertConfig):
        super().__init__(config)
        self.num_qa_labels = config.num_qa_labels
        self.lxmert = LxmertModel(config)
        self.cls = LxmertPreTrainingHeads(config)
        if config.task_obj_predict:
            self.obj_predict_head = LxmertVisualObjHead(config)
        if config.task_qa:
            self.answer_head = LxmertVisualAnswerHead(config, config.num_qa_labels)
        if config.task_itc:
            self.itc_head = LxmertContrastiveHead(config)
        self.visual_losses = visual_loss_sizes(config)
        self.post_init()

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            decoder, words = self.cls.predictions.decoder, self.lxmert.get_input_embeddings()
            decoder.weight = words.weight
            decoder.out_features = words.num_embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def _resize_vocab_heads(self, size, mean_resizing):
        """The MLM bias (zeros for added tokens) and, when untied, the decoder."""
        predictions = self.cls.predictions
        predictions.bias = resize.resized_bias(predictions.bias, size)
        if not self.config.tie_word_embeddings:
            resize.resize_linear_(predictions.decoder, size, mean_resizing,
                                  self.config.initializer_range)

    def _losses(self, out, scores, labels, obj_labels, matched_label, ans):
        cfg, terms = self.config, {}
        if labels is not None and cfg.task_mask_lm:
            terms["mlm"] = losses.cross_entropy(scores[0], labels, "labels")
        if matched_label is not None and cfg.task_matched:
            terms["matched"] = losses.cross_entropy(scores[1], matched_label, "matched_label")
        if obj_labels is not None and cfg.task_obj_predict:
            visual = self.obj_predict_head(out.vision_output)
            terms.update(losses.visual_losses(visual, obj_labels, self.visual_losses,
                                              cfg.visual_loss_normalizer))
        if ans is not None and cfg.task_qa:
            terms["qa"] = losses.cross_entropy(scores[2], ans, "ans")
        return terms

    def _itc(self, out, visual_pos, visual_attention_mask, matched_label):
        """The ITC loss (modeling_itc.py) on the single-modality encoders' last states."""
        cfg = self.config
        text, image = self.itc_head(out.language_hidden_states[cfg.l_layers - 1],
                                    out.vision_hidden_states[cfg.r_layers - 1],
                                    visual_attention_mask)
        return itc_loss(text, image, matched_label, visual_pos, cfg.itc_temperature)

    def forward(self, input_ids=None, visual_feats=None, visual_pos=None, attention_mask=None,
                visual_attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                obj_labels=None, matched_label=None, ans=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, mlm_positions="all",
                masked_lm_labels=None):
        """transformers' arguments, plus ``mlm_positions``: "all" (default, transformers'
        behaviour: ``prediction_logits`` (B, L, vocab)) or "labeled": with ``labels`` given, the
        MLM head runs only where ``labels != -100`` and ``prediction_logits`` is (N, vocab) for
        those N tokens in row-major order (same MLM loss and gradients; the vocab-sized decoder
        and its softmax are the largest head: a training loop wants this), or a position tensor
        from ``mlm_gather_index(labels)`` (made where the labels are on the host): the head runs
        on those C rows, every labeled token and padding, ``prediction_logits`` (C, vocab): the
        same loss and gradients with static shapes and no host synchronisation (train.py).
        ``masked_lm_labels``: the old name of ``labels`` (a FutureWarning, as transformers 4)."""
        labels = losses.legacy_mlm_labels(labels, masked_lm_labels)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        cfg = self.config
        want_states = cfg.output_hidden_states if output_hidden_states is None \
            else output_hidden_states
        itc = cfg.task_itc and matched_label is not None
        kwargs = _backbone_kwargs(locals())
        kwargs["output_hidden_states"] = want_states or itc
        out = self.lxmert(**kwargs, return_dict=True)
        itc_term = self._itc(out, visual_pos, visual_attention_mask, matched_label) if itc \
            else None
        if not want_states:
            out.language_hidden_states = out.vision_hidden_states = None
        lang_states, mlm_labels = _mlm_rows(out.language_output, labels, mlm_positions)
        lang_scores, match_scores = self.cls(lang_states, out.pooled_output)
        qa_scores = (self.answer_head(out.pooled_output) if self.config.task_qa
                     else out.pooled_output[0][0])  # transformers' placeholder without a QA head
        terms = self._losses(out, (lang_scores, match_scores, qa_scores), mlm_labels, obj_labels,
                             matched_label, ans)
        if itc_term is not None:
            terms["itc"] = itc_term
        given = (labels, matched_label, obj_labels, ans)
        total = (None if all(x is None for x in given)
                 else losses.pretraining_total(terms, out.pooled_output.device))
        result = LxmertForPreTrainingOutput(
            loss=total, prediction_logits=lang_scores, cross_relationship_score=match_scores,
            question_answering_score=qa_scores, language_hidden_states=out.language_hidden_states,
            vision_hidden_states=out.vision_hidden_states,
            language_attentions=out.language_attentions, vision_attentions=out.vision_attentions,
            cross_encoder_attentions=out.cross_encoder_attentions, losses=terms)
        return result if return_dict else result.to_tuple()


class LxmertForQuestionAnswering(_QAHeadMixin, LxmertPreTrainedModel):
    """LXMERT with the answer head; loss per ``config.qa_loss`` ("ce": transformers',
    "bce": the original's soft-score BCE)."""

    def __init__(self, config: LxmertConfig):
        super().__init__(config)
        self.num_qa_labels = config.num_qa_labels
        self.lxmert = LxmertModel(config)
        self.answer_head = LxmertVisualAnswerHead(config, config.num_qa_labels)
        self.post_init()

    def forward(self, input_ids=None, visual_feats=None, visual_pos=None, attention_mask=None,
                visual_attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.lxmert(**_backbone_kwargs(locals()), return_dict=True)
        scores = self.answer_head(out.pooled_output)  # (B, num_qa_labels)
        loss = None
        if labels is not None:
            loss = (losses.soft_bce(scores, labels) if self.config.qa_loss == "bce"
                    else losses.cross_entropy(scores, labels, "labels"))
        result = LxmertForQuestionAnsweringOutput(
            loss=loss, question_answering_score=scores,
            language_hidden_states=out.language_hidden_states,
            vision_hidden_states=out.vision_hidden_states,
            language_attentions=out.language_attentions, vision_attentions=out.vision_attentions,
            cross_encoder_attentions=out.cross_encoder_attentions)
        return result if return_dict else result.to_tuple()


class LxmertForNLVR2(LxmertPreTrainedModel):
    """NLVR2: one sentence, two images; logits (B, 2) from both pooled outputs concatenated."""

    def __init__(self, config: LxmertConfig):
        super().__init__(config)
        self.lxmert = LxmertModel(config)
        hid = config.hidden_size * 2
        self.logit_fc = nn.Sequential(nn.Linear(hid, hid), GeLU(), nn.LayerNorm(hid, eps=1e-12),
                                      nn.Linear(hid, 2))
        self.post_init()

    @staticmethod
    def _pairs(name, x, batch, trailing):
        """(B, 2, *trailing) -> (2B, *trailing), rows ordered (b0 img0, b0 img1, b1 img0, ...)."""
        if x is None:
            return None
        if x.dim() != 2 + len(trailing) or tuple(x.shape[:2]) != (batch, 2) or \
                any(t is not None and s != t for s, t in zip(x.shape[2:], trailing)):
            want = ", ".join(["B", "2", *("N" if t is None else str(t) for t in trailing)])
            raise ValueError(f"LxmertForNLVR2: {name} shape {tuple(x.shape)}, expected ({want}) "
                             f"with B = {batch}")
        return x.reshape(batch * 2, *x.shape[2:])

    def forward(self, input_ids=None, visual_feats=None, visual_pos=None, attention_mask=None,
                visual_attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        text = input_ids if input_ids is not None else inputs_embeds
        if text is None or visual_feats is None or visual_pos is None:
            raise ValueError("LxmertForNLVR2: input_ids (or inputs_embeds), visual_feats and "
                             "visual_pos are required")
        batch, cfg = text.shape[0], self.config
        twice = (lambda x: None if x is None else x.repeat_interleave(2, dim=0))  # (2B, ...)
        out = self.lxmert(
            input_ids=twice(input_ids), inputs_embeds=twice(inputs_embeds),
            attention_mask=twice(attention_mask), token_type_ids=twice(token_type_ids),
            visual_feats=self._pairs("visual_feats", visual_feats, batch,
                                     (None, cfg.visual_feat_dim)),
            visual_pos=self._pairs("visual_pos", visual_pos, batch, (None, cfg.visual_pos_dim)),
            visual_attention_mask=self._pairs("visual_attention_mask", visual_attention_mask,
                                              batch, (None,)),
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True)
        logits = self.logit_fc(out.pooled_output.reshape(batch, -1))  # (B, 2)
        loss = None if labels is None else losses.cross_entropy(logits, labels, "labels")
        result = LxmertForNLVR2Output(
            loss=loss, logits=logits, language_hidden_states=out.language_hidden_states,
            vision_hidden_states=out.vision_hidden_states,
            language_attentions=out.language_attentions, vision_attentions=out.vision_attentions,
            cross_encoder_attentions=out.cross_encoder_attentions)
        return result if return_dict else result.to_tuple()
