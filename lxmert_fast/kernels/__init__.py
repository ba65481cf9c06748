"""Fused kernels for lxmert_fast (importable as ``lxmert_fast.kernels``).

Each op file holds its pure-PyTorch reference, its Triton kernels, launchers, autograd Function
and its torch custom op (``torch.ops.lxmert_fast.*``, what torch.compile traces).
Every public op takes ``impl="auto" | "triton" | "torch"``.
"""
from ._impl import HAS_TRITON, IMPLS, resolve_impl
from .attention import attention, attention_ref, cross_attention_pair
from .gelu import bias_gelu, bias_gelu_ref
from .layernorm import dropout_add_layer_norm, dropout_add_layer_norm_ref

__all__ = [
    "HAS_TRITON", "IMPLS", "resolve_impl",
    "attention", "attention_ref", "cross_attention_pair",
    "bias_gelu", "bias_gelu_ref",
    "dropout_add_layer_norm", "dropout_add_layer_norm_ref",
]
