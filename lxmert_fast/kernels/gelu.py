"""GeLU (erf form, as BERT/LXMERT) of x + bias, for the FFN's intermediate layer.

This file holds the pure-PyTorch reference (``bias_gelu_ref``), the Triton forward and backward
kernels, their launchers, the autograd Function and the public ``bias_gelu``. The dense layer's
bias is added here instead of in the GEMM (one read of x, one write of y). The backward recomputes
x + bias, writes dx and keeps d(bias) partial sums per program in registers over many rows; one
small (G, N) -> (N,) torch sum finishes them. float32/float16/bfloat16, computed in float32.
"""
import functools
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _impl
from ._impl import as_rows, cdiv, check_tensors, next_pow2, tl, triton, use_kernel

_SQRT1_2 = tl.constexpr(0.7071067811865476)  # globals read by kernels must be constexpr
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


def bias_gelu_ref(x, bias, upcast=False):
    dtype = x.dtype
    if upcast:
        x, bias = x.float(), bias.float()
    return F.gelu(x + bias).to(dtype)


@triton.jit
def _load_h(x_ptr, b_ptr, rows, cols, M, N, sx):
    msk = (rows < M)[:, None] & (cols < N)[None, :]
    x = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=msk, other=0.0).to(tl.float32)
    return x + tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :], msk


@triton.jit
def _gelu_fwd_kernel(x_ptr, b_ptr, y_ptr, M, N, sx, BM: tl.constexpr, BN: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    h, msk = _load_h(x_ptr, b_ptr, rows, cols, M, N, sx)
    y = 0.5 * h * (1.0 + tl.erf(h * _SQRT1_2))
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _gelu_bwd_kernel(x_ptr, b_ptr, dy_ptr, dx_ptr, part_ptr, M, N, rows_per_prog, sx, sdy,
                     BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    db = tl.zeros([BN], tl.float32)
    row_end = tl.minimum(pid * rows_per_prog + rows_per_prog, M)
    for r0 in range(pid * rows_per_prog, row_end, BM):
        rows = r0 + tl.arange(0, BM)
        h, msk = _load_h(x_ptr, b_ptr, rows, cols, row_end, N, sx)
        dy = tl.load(dy_ptr + rows[:, None] * sdy + cols[None, :], mask=msk, other=0.0)
        grad = 0.5 * (1.0 + tl.erf(h * _SQRT1_2)) + h * _INV_SQRT_2PI * tl.exp(-0.5 * h * h)
        dx = tl.where(msk, dy.to(tl.float32) * grad, 0.0)
        tl.store(dx_ptr + rows[:, None] * N + cols[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=msk)
        db += tl.sum(dx, 0)
    tl.store(part_ptr + pid * N + cols, db, mask=cols < N)


@functools.lru_cache(maxsize=1024)
def _plan(M, N, sms):
    """(BM, BN, backward programs G, rows per backward program): ~4096 elements per tile; the
    backward grid is one wave of ``sms`` SMs (3 programs each), or 2 long programs on CPU."""
    bn = min(next_pow2(N), 1024)
    bm = max(1, min(4096 // bn, next_pow2(M)))
    if sms:
        G = max(1, min(cdiv(3 * sms, cdiv(N, bn)), cdiv(M, bm)))
    else:  # the interpreter: few, long programs
        G = max(1, min(2, cdiv(M, bm)))
    return bm, bn, G, cdiv(M, G)


def bias_gelu_forward(x, bias):
    """y = gelu(x + bias), y shaped like x, for x read as rows of N = bias.numel() features."""
    N = bias.shape[0]
    x, sx = as_rows(x, N)
    M = x.numel() // N if N else 0
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if M > 0:
        bm, bn, _, _ = _plan(M, N, _impl.num_sms(x.device))
        _gelu_fwd_kernel[(cdiv(M, bm), cdiv(N, bn))](x, bias, y, M, N, sx, bm, bn, num_warps=4)
    return y


def bias_gelu_backward(x, bias, dy):
    """(dx shaped like x, dbias) for x and dy read as rows of N = bias.numel() features."""
    N = bias.shape[0]
    x, sx = as_rows(x, N)
    dy, sdy = as_rows(dy, N)
    M = x.numel() // N if N else 0
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if M == 0:
        return dx, torch.zeros_like(bias)
    bm, bn, G, rows_per_prog = _plan(M, N, _impl.num_sms(x.device))
    part = torch.empty((G, N), dtype=torch.float32, device=x.device)  # every program writes
    _gelu_bwd_kernel[(G, cdiv(N, bn))](x, bias, dy, dx, part, M, N, rows_per_prog, sx, sdy, bm,
                                       bn, num_warps=4)
    db = part.sum(0)
    return dx, db if db.dtype == bias.dtype else db.to(bias.dtype)


class _BiasGeluFn(torch.autograd.Function):
    """Takes x in its own shape (no reshape or view around it: one autograd node per call)."""

    @staticmethod
    def forward(ctx, x, bias):
        x, _ = as_rows(x, bias.shape[0])
        ctx.save_for_backward(x, bias)
        return bias_gelu_forward(x, bias)

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        return bias_gelu_backward(x, bias, dy)


@torch.library.custom_op("lxmert_fast::bias_gelu_fwd", mutates_args=())
def bias_gelu_fwd(x: Tensor, bias: Tensor) -> Tensor:
    """The launchers as a torch custom op (torch.compile: no graph break at the kernel)."""
    return bias_gelu_forward(x, bias)


@bias_gelu_fwd.register_fake
def _(x, bias):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("lxmert_fast::bias_gelu_bwd", mutates_args=())
def bias_gelu_bwd(x: Tensor, bias: Tensor, dy: Tensor) -> Tuple[Tensor, Tensor]:
    return bias_gelu_backward(x, bias, dy)


@bias_gelu_bwd.register_fake
def _(x, bias, dy):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), bias.new_empty(bias.shape)


def _gelu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gelu_backward(ctx, dy):
    x, bias = ctx.saved_tensors
    return bias_gelu_bwd(x, bias, dy)


bias_gelu_fwd.register_autograd(_gelu_backward, setup_context=_gelu_setup)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """gelu_erf(x + bias) with bias (N,) broadcast over the last dim of x (..., N)."""
    if tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(f"bias_gelu: bias shape {tuple(bias.shape)} != ({x.shape[-1]},) "
                         f"for x of shape {tuple(x.shape)}")
    if not use_kernel(impl, x, "bias_gelu"):
        return bias_gelu_ref(x, bias)
    check_tensors("bias_gelu", x.device, bias.dtype, bias=bias)
    if torch.compiler.is_compiling():
        return bias_gelu_fwd(x, bias)
    return _BiasGeluFn.apply(x, bias)
