"""Post-LN sublayer output for BERT-style layers: LayerNorm(dropout(x + x_bias) + residual).

This file holds the pure-PyTorch reference (``dropout_add_layer_norm_ref``) and the public entry
point ``dropout_add_layer_norm`` that picks an implementation with ``impl``.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ._impl import resolve_impl


def dropout_add_layer_norm_ref(x, residual, weight, bias, eps=1e-12, dropout_p=0.0, x_bias=None,
                               upcast=False, training=True):
    dtype = x.dtype
    if upcast:
        x, residual, weight, bias = x.float(), residual.float(), weight.float(), bias.float()
        x_bias = None if x_bias is None else x_bias.float()
    h = x if x_bias is None else x + x_bias
    if dropout_p > 0:
        h = F.dropout(h, p=dropout_p, training=training)
    h = h + residual
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps).to(dtype)


def _check(x, residual, weight, bias, x_bias):
    n = x.shape[-1]
    if residual.shape != x.shape:
        raise ValueError(f"dropout_add_layer_norm: residual shape {tuple(residual.shape)} != "
                         f"x shape {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("x_bias", x_bias)):
        if t is not None and tuple(t.shape) != (n,):
            raise ValueError(f"dropout_add_layer_norm: {name} shape {tuple(t.shape)} != ({n},) "
                             f"for x of shape {tuple(x.shape)}")


def dropout_add_layer_norm(x, residual, weight, bias, eps: float = 1e-12, dropout_p: float = 0.0,
                           x_bias: Optional[torch.Tensor] = None, impl: str = "auto") -> torch.Tensor:
    _check(x, residual, weight, bias, x_bias)
    if resolve_impl(impl, x, "dropout_add_layer_norm") == "torch":
        return dropout_add_layer_norm_ref(x, residual, weight, bias, eps, dropout_p, x_bias)
    raise RuntimeError("dropout_add_layer_norm: the Triton kernel is not available in this build")
