"""GeLU (erf form, as BERT/LXMERT) of x + bias, for the FFN's intermediate layer.

This file holds the pure-PyTorch reference (``bias_gelu_ref``) and the public entry point
``bias_gelu`` that picks an implementation with ``impl``.
"""
import torch
import torch.nn.functional as F

from ._impl import resolve_impl


def bias_gelu_ref(x, bias, upcast=False):
    dtype = x.dtype
    if upcast:
        x, bias = x.float(), bias.float()
    return F.gelu(x + bias).to(dtype)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    if tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(f"bias_gelu: bias shape {tuple(bias.shape)} != ({x.shape[-1]},) "
                         f"for x of shape {tuple(x.shape)}")
    if resolve_impl(impl, x, "bias_gelu") == "torch":
        return bias_gelu_ref(x, bias)
    raise RuntimeError("bias_gelu: the Triton kernel is not available in this build")
