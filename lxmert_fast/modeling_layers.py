"""LXMERT's building blocks (Tan & Bansal, EMNLP 2019, arXiv 1908.07490, section 2): embeddings,
attention sublayers, BERT layers, the cross-modality layer, the visual feature encoder, encoder.

Module and parameter names are transformers' (which are the original repository's), so state_dict
keys match. The fused operations go through ``lxmert_fast.ops`` only; ``config.kernel_impl`` picks
the reference or the kernels at call time. A linear bias that precedes a fused op is passed to it
as ``x_bias`` (``F.linear(x, dense.weight)``) so the kernel fuses the bias add. Such a module
reads its children's parameters inside its own forward; DeepSpeed ZeRO-3 detects that access and
registers them as the module's external parameters (gathered for its forward and backward).

A Linear that is not a plain ``nn.Linear`` (a PEFT LoRA wrapper, a quantized subclass) is called
as a module instead: its output is what the wrapper computes, and only the op after it is fused.
``LxmertEncoder`` checkpoints each layer (``torch.utils.checkpoint``, non-reentrant) when
``gradient_checkpointing`` is set and the model is training: the forward is recomputed in the
backward with torch's CPU and CUDA RNG states restored, so dropout (torch's, and the kernels',
whose seeds come from those generators) draws the same masks.
"""
import functools
from typing import Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from lxmert_fast import ops
from lxmert_fast.config import LxmertConfig
from lxmert_fast.kernels import attention_ref

ACTIVATIONS = {
    "gelu": F.gelu, "gelu_python": F.gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu,
    "tanh": torch.tanh, "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def plain(*linears: nn.Module) -> bool:
    """True when every module is exactly ``nn.Linear``: its weight may be read directly."""
    return all(type(m) is nn.Linear for m in linears)


def _p(dropout: nn.Dropout) -> float:
    """The dropout probability to pass to a fused op: 0 outside training."""
    return dropout.p if dropout.training else 0.0


def bias_act(x: torch.Tensor, linear: nn.Linear, act: str, impl: str) -> torch.Tensor:
    """act(x W^T + b); the erf GeLU goes through the fused ``bias_gelu``."""
    if act in ("gelu", "gelu_python") and plain(linear) and linear.bias is not None:
        return ops.bias_gelu(F.linear(x, linear.weight), linear.bias, impl=impl)
    return ACTIVATIONS[act](linear(x))


class LxmertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (padding_idx 0, as the
    original)."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=0)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size,
                                                  padding_idx=0)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, inputs_embeds=None):
        words = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        position_ids = torch.arange(words.shape[1], device=words.device)  # (L,)
        extra = self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        h = ops.dropout_add_layer_norm(words, extra, self.LayerNorm.weight, self.LayerNorm.bias,
                                       self.LayerNorm.eps, 0.0, impl=self.config.kernel_impl)
        return self.dropout(h)


class LxmertAttention(nn.Module):
    """Multi-head attention projections; q/k/v viewed as (B, L, H, D) without transposes."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size)

    def packed(self, x: torch.Tensor, names=("query", "key", "value")) -> torch.Tensor:
        """The projections ``names`` of x as one GEMM: (B, L, len(names), H, D), whose slices
        along dim 2 are the (B, L, H, D) views the attention ops read with their strides (one
        GEMM and one gradient accumulation instead of three; the parameters stay per name)."""
        linears = [getattr(self, name) for name in names]
        if not plain(*linears):  # wrapped projections (e.g. LoRA): each module's own forward
            out = torch.stack([m(x) for m in linears], dim=-2)  # (B, L, len(names), hidden)
            return out.view(*out.shape[:-1], self.num_attention_heads, self.attention_head_size)
        weight = torch.cat([m.weight for m in linears])  # (len(names) * hidden, hidden)
        bias = torch.cat([m.bias for m in linears])
        out = F.linear(x, weight, bias)  # (B, L, len(names) * hidden)
        return out.view(*out.shape[:-1], len(names), self.num_attention_heads,
                        self.attention_head_size)

    def forward(self, hidden_states, context, key_padding_mask=None, output_attentions=False):
        """Returns the context (B, Lq, hidden) and the probabilities (B, H, Lq, Lk) or None."""
        if context is hidden_states:  # self-attention: q, k, v from one GEMM
            q, k, v = self.packed(hidden_states).unbind(2)  # (B, L, H, D) each
        else:
            q = self.heads(self.query(hidden_states))  # (B, Lq, H, D)
            k, v = self.packed(context, ("key", "value")).unbind(2)  # (B, Lk, H, D)
        if output_attentions:
            out, probs = attention_ref(q, k, v, key_padding_mask, _p(self.dropout),
                                       return_probs=True, training=self.training)
        else:
            out = ops.attention(q, k, v, key_padding_mask, _p(self.dropout),
                                impl=self.config.kernel_impl)
            probs = None
        return out.reshape(*out.shape[:2], -1), probs


class LxmertAttentionOutput(nn.Module):
    """LayerNorm(dropout(dense(h)) + input), the bias fused into the LayerNorm op."""

    def __init__(self, config: LxmertConfig, in_features: Optional[int] = None):
        super().__init__()
        self.config = config
        self.dense = nn.Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        if plain(self.dense):
            x, x_bias = F.linear(hidden_states, self.dense.weight), self.dense.bias
        else:
            x, x_bias = self.dense(hidden_states), None
        return ops.dropout_add_layer_norm(
            x, input_tensor, self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps,
            _p(self.dropout), x_bias=x_bias, impl=self.config.kernel_impl)


class LxmertOutput(LxmertAttentionOutput):
    """The FFN's output sublayer: LayerNorm(dropout(dense(intermediate)) + input)."""

    def __init__(self, config: LxmertConfig):
        super().__init__(config, in_features=config.intermediate_size)


class LxmertIntermediate(nn.Module):
    """The FFN's first half: act(dense(x)), the bias fused into the GeLU op."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.config = config
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states):
        return bias_act(hidden_states, self.dense, self.config.hidden_act, self.config.kernel_impl)


class LxmertSelfAttentionLayer(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.self = LxmertAttention(config)
        self.output = LxmertAttentionOutput(config)

    def forward(self, hidden_states, key_padding_mask=None, output_attentions=False):
        ctx, probs = self.self(hidden_states, hidden_states, key_padding_mask, output_attentions)
        return self.output(ctx, hidden_states), probs


class LxmertCrossAttentionLayer(nn.Module):
    """The cross-attention sublayer whose weights both directions share.

    Both streams are projected in one GEMM for q, k and v together (concatenated along the
    sequence), attend to each other through ``ops.cross_attention_pair``, and share one output
    LayerNorm call."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.att = LxmertAttention(config)
        self.output = LxmertAttentionOutput(config)

    def forward(self, lang, visn, lang_mask=None, visn_mask=None, output_attentions=False):
        att, n_lang = self.att, lang.shape[1]
        both = torch.cat([lang, visn], dim=1)  # (B, L + N, hidden)
        qkv = att.packed(both)  # (B, L + N, 3, H, D)
        q_l, k_l, v_l = qkv[:, :n_lang].unbind(2)  # (B, L, H, D)
        q_v, k_v, v_v = qkv[:, n_lang:].unbind(2)  # (B, N, H, D)
        probs = None
        if output_attentions:
            out_l, probs = attention_ref(q_l, k_v, v_v, visn_mask, _p(att.dropout),
                                         return_probs=True, training=self.training)
            out_v = attention_ref(q_v, k_l, v_l, lang_mask, _p(att.dropout), training=self.training)
        else:
            out_l, out_v = ops.cross_attention_pair(q_l, k_l, v_l, q_v, k_v, v_v, lang_mask,
                                                    visn_mask, _p(att.dropout),
                                                    impl=att.config.kernel_impl)
        ctx = torch.cat([out_l, out_v], dim=1).flatten(2)  # (B, L + N, hidden)
        out = self.output(ctx, both)
        # contiguous once here: every consumer (q/k/v GEMM, residual LayerNorm) needs it so
        return out[:, :n_lang].contiguous(), out[:, n_lang:].contiguous(), probs


class LxmertLayer(nn.Module):
    """A BERT layer (self-attention + FFN): the language and object-relationship encoders."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.attention = LxmertSelfAttentionLayer(config)
        self.intermediate = LxmertIntermediate(config)
        self.output = LxmertOutput(config)

    def forward(self, hidden_states, key_padding_mask=None, output_attentions=False):
        h, probs = self.attention(hidden_states, key_padding_mask, output_attentions)
        return self.output(self.intermediate(h), h), probs


class LxmertXLayer(nn.Module):
    """A cross-modality layer: shared cross-attention, self-attention per stream, FFN per stream."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.visual_attention = LxmertCrossAttentionLayer(config)
        self.lang_self_att = LxmertSelfAttentionLayer(config)
        self.visn_self_att = LxmertSelfAttentionLayer(config)
        self.lang_inter = LxmertIntermediate(config)
        self.lang_output = LxmertOutput(config)
        self.visn_inter = LxmertIntermediate(config)
        self.visn_output = LxmertOutput(config)

    def forward(self, lang, lang_mask, visn, visn_mask, output_attentions=False):
        lang, visn, probs = self.visual_attention(lang, visn, lang_mask, visn_mask,
                                                  output_attentions)
        lang, _ = self.lang_self_att(lang, lang_mask)
        visn, _ = self.visn_self_att(visn, visn_mask)
        lang = self.lang_output(self.lang_inter(lang), lang)
        visn = self.visn_output(self.visn_inter(visn), visn)
        return lang, visn, probs


class LxmertVisualFeatureEncoder(nn.Module):
    """(LN(feats W_f + b_f) + LN(boxes W_b + b_b)) / 2, then dropout; no object index embedding."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.config = config
        self.visn_fc = nn.Linear(config.visual_feat_dim, config.hidden_size)
        self.visn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.box_fc = nn.Linear(config.visual_pos_dim, config.hidden_size)
        self.box_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, visual_feats, visual_pos):
        if not torch.is_autocast_enabled(visual_feats.device.type):  # e.g. float16 stored features
            dtype = self.visn_fc.weight.dtype
            visual_feats, visual_pos = visual_feats.to(dtype), visual_pos.to(dtype)
        if not plain(self.visn_fc, self.box_fc):
            feats = self.visn_layer_norm(self.visn_fc(visual_feats))
            boxes = self.box_layer_norm(self.box_fc(visual_pos))
            return self.dropout((feats + boxes) * 0.5)
        return ops.visual_feat_encoder(
            visual_feats, visual_pos, self.visn_fc.weight, self.visn_fc.bias,
            self.visn_layer_norm.weight, self.visn_layer_norm.bias, self.box_fc.weight,
            self.box_fc.bias, self.box_layer_norm.weight, self.box_layer_norm.bias,
            eps=self.visn_layer_norm.eps, dropout_p=_p(self.dropout), training=self.training,
            impl=self.config.kernel_impl)


class LxmertEncoder(nn.Module):
    """Language encoder (``layer``), object-relationship encoder (``r_layers``), cross-modality
    encoder (``x_layers``). Returns hidden states per layer and, on request, attentions."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.config = config
        self.visn_fc = LxmertVisualFeatureEncoder(config)
        self.layer = nn.ModuleList([LxmertLayer(config) for _ in range(config.l_layers)])
        self.x_layers = nn.ModuleList([LxmertXLayer(config) for _ in range(config.x_layers)])
        self.r_layers = nn.ModuleList([LxmertLayer(config) for _ in range(config.r_layers)])
        self.set_checkpointing(False)

    def set_checkpointing(self, enable: bool, every_n_layers: int = 1, **checkpoint_kwargs):
        """Checkpoint layers 0, n, 2n, ... in the order they run (language, object-relationship,
        cross-modality) in training; ``checkpoint_kwargs`` go to
        ``torch.utils.checkpoint.checkpoint`` (default ``use_reentrant=False``)."""
        self.gradient_checkpointing = bool(enable)
        layers = [*self.layer, *self.r_layers, *self.x_layers]
        self._checkpointed = {id(m) for i, m in enumerate(layers) if i % every_n_layers == 0}
        self._checkpoint = functools.partial(torch.utils.checkpoint.checkpoint,
                                             **{"use_reentrant": False, **checkpoint_kwargs})

    def _run(self, layer, *args):
        """``layer(*args)``, through the activation checkpoint when it is on and grads flow."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled() \
                and id(layer) in self._checkpointed:
            return self._checkpoint(layer, *args)
        return layer(*args)

    def forward(self, lang, lang_mask, visual_feats, visual_pos, visn_mask=None,
                output_attentions=False):
        visn = self.visn_fc(visual_feats, visual_pos)
        lang_states, visn_states, lang_att, visn_att, cross_att = [], [], [], [], []
        for layer in self.layer:
            lang, probs = self._run(layer, lang, lang_mask, output_attentions)
            lang_states.append(lang)
            lang_att.append(probs)
        for layer in self.r_layers:
            visn, probs = self._run(layer, visn, visn_mask, output_attentions)
            visn_states.append(visn)
            visn_att.append(probs)
        for layer in self.x_layers:
            lang, visn, probs = self._run(layer, lang, lang_mask, visn, visn_mask,
                                          output_attentions)
            lang_states.append(lang)
            visn_states.append(visn)
            cross_att.append(probs)
        attentions = (tuple(lang_att), tuple(visn_att), tuple(cross_att)) if output_attentions \
            else (None, None, None)
        return (tuple(lang_states), tuple(visn_states)) + attentions


class LxmertPooler(nn.Module):
    """tanh(dense(h[:, 0])): the pooled output from the language [CLS] position."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))
