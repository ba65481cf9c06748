"""Attention for LXMERT's short sequences: self-attention and the shared two-way cross-attention.

Layout: q (B, Lq, H, D), k and v (B, Lk, H, D), read with their strides as they come out of a
projection; key_padding_mask (B, Lk) bool, True where the key is real. A query row whose keys are
all masked returns zeros (and zero gradients), never NaN.

This file holds the pure-PyTorch reference (``attention_ref``), and the public entry points
``attention`` / ``cross_attention_pair`` that pick an implementation with ``impl``.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._impl import resolve_impl


def attention_ref(q, k, v, key_padding_mask=None, dropout_p=0.0, scale=None, return_probs=False,
                  upcast=False, training=True):
    """Reference attention in plain PyTorch at the input dtype (float32 if ``upcast``).

    Returns out (B, Lq, H, D) and, if ``return_probs``, the probabilities (B, H, Lq, Lk) after
    dropout is NOT applied (as transformers reports them).
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, H, Lq, Lk)
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, Lk)
        scores = scores.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        probs = probs.masked_fill(~keep.any(-1, keepdim=True), 0.0)  # fully masked rows -> 0
    else:
        probs = torch.softmax(scores, dim=-1)
    dropped = F.dropout(probs, p=dropout_p, training=training) if dropout_p > 0 else probs
    out = torch.einsum("bhqk,bkhd->bqhd", dropped, v).to(dtype)  # (B, Lq, H, D)
    return (out, probs) if return_probs else out


def _check_qkv(q, k, v, key_padding_mask, name="attention"):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{name}: q, k, v must be (B, L, H, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"{name}: shapes do not match: q {tuple(q.shape)} (B, Lq, H, D), "
                         f"k {tuple(k.shape)} and v {tuple(v.shape)} (B, Lk, H, D)")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (k.shape[0], k.shape[1]):
        raise ValueError(f"{name}: key_padding_mask shape {tuple(key_padding_mask.shape)} != "
                         f"(B, Lk) = {(k.shape[0], k.shape[1])}")


def attention(q, k, v, key_padding_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              scale: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, per head; returns (B, Lq, H, D)."""
    _check_qkv(q, k, v, key_padding_mask)
    if resolve_impl(impl, q, "attention") == "torch":
        return attention_ref(q, k, v, key_padding_mask, dropout_p, scale)
    raise RuntimeError("attention: the Triton kernel is not available in this build")


def cross_attention_pair(q_l, k_l, v_l, q_v, k_v, v_v, mask_l=None, mask_v=None,
                         dropout_p: float = 0.0, impl: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """LXMERT's shared cross-attention, both directions:
    out_l = attention(q_l, k_v, v_v, mask_v) and out_v = attention(q_v, k_l, v_l, mask_l)."""
    _check_qkv(q_l, k_v, v_v, mask_v, "cross_attention_pair (language->vision)")
    _check_qkv(q_v, k_l, v_l, mask_l, "cross_attention_pair (vision->language)")
    if resolve_impl(impl, q_l, "cross_attention_pair") == "torch":
        return (attention_ref(q_l, k_v, v_v, mask_v, dropout_p),
                attention_ref(q_v, k_l, v_l, mask_l, dropout_p))
    raise RuntimeError("cross_attention_pair: the Triton kernel is not available in this build")
