"""Post-LN sublayer output for BERT-style layers: LayerNorm(dropout(x + x_bias) + residual).

This file holds the pure-PyTorch reference (``dropout_add_layer_norm_ref``), the Triton forward and
backward kernels, their launchers, the autograd Function and the public ``dropout_add_layer_norm``.

Design (DESIGN.md section 3): the forward normalises BM rows per program (whole rows of up to
``MAX_N`` = 8192 features in registers) and saves only mean and rstd; the dropout mask is a pure
function of (seed, element index) and is regenerated in the backward, which recomputes the LN input
from x, x_bias and residual instead of storing it. Published Triton LayerNorm backwards lose to
torch at hidden ~768 on the dW/dB reduction; here each backward program walks many rows, keeps its
dW, dB and d(x_bias) partial sums in registers, and one small (3, G, N) -> (3, N) torch sum finishes
them (the Apex / Liger scheme). ``residual`` may be None (plain LN of dropout(x + x_bias)).
Accumulation is in float32 for float32/float16/bfloat16 inputs; wider rows fall back to the
reference, as do other dtypes under impl="auto" (impl="triton" raises for them).
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ._dropout import check_dropout_p, draw_seed, dropout_keep
from ._impl import check_tensors, next_pow2, sm_count, tl, triton, use_kernel

MAX_N = 8192


def dropout_add_layer_norm_ref(x, residual, weight, bias, eps=1e-12, dropout_p=0.0, x_bias=None,
                               upcast=False, training=True):
    dtype = x.dtype
    if upcast:
        x, weight, bias = x.float(), weight.float(), bias.float()
        residual = None if residual is None else residual.float()
        x_bias = None if x_bias is None else x_bias.float()
    h = x if x_bias is None else x + x_bias
    if dropout_p > 0:
        h = F.dropout(h, p=dropout_p, training=training)
    h = h if residual is None else h + residual
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps).to(dtype)


@triton.jit
def _ln_input(x_ptr, r_ptr, xb_ptr, seed_ptr, rows, cols, msk, N, sx, sr, p_drop,
              HAS_RES: tl.constexpr, HAS_XB: tl.constexpr, DROPOUT: tl.constexpr):
    """z = dropout(x + x_bias) + residual for a (BM, BN) tile, in float32, and the keep mask."""
    z = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=msk, other=0.0).to(tl.float32)
    if HAS_XB:
        z += tl.load(xb_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    keep = msk
    if DROPOUT:
        keep = dropout_keep(seed_ptr, rows[:, None] * N + cols[None, :], p_drop)
        z = tl.where(keep, z / (1.0 - p_drop), 0.0)
    if HAS_RES:
        z += tl.load(r_ptr + rows[:, None] * sr + cols[None, :], mask=msk, other=0.0).to(tl.float32)
    return z, keep


@triton.jit
def _ln_fwd_kernel(x_ptr, r_ptr, xb_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, seed_ptr,
                   M, N, sx, sr, sy, eps, p_drop, HAS_RES: tl.constexpr, HAS_XB: tl.constexpr,
                   DROPOUT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.arange(0, BN)
    msk = (rows < M)[:, None] & (cols < N)[None, :]
    z, _ = _ln_input(x_ptr, r_ptr, xb_ptr, seed_ptr, rows, cols, msk, N, sx, sr, p_drop,
                     HAS_RES, HAS_XB, DROPOUT)
    mean = tl.sum(z, 1) / N
    zc = tl.where(msk, z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, 1) / N + eps)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    y = zc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + rows[:, None] * sy + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=msk)
    tl.store(mean_ptr + rows, mean, mask=rows < M)
    tl.store(rstd_ptr + rows, rstd, mask=rows < M)


@triton.jit
def _ln_bwd_kernel(x_ptr, r_ptr, xb_ptr, w_ptr, dy_ptr, mean_ptr, rstd_ptr, seed_ptr, dz_ptr,
                   dx_ptr, part_ptr, M, N, G, rows_per_prog, sx, sr, sdy, p_drop,
                   HAS_RES: tl.constexpr, HAS_XB: tl.constexpr, DROPOUT: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BN)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    dw = tl.zeros([BN], tl.float32)
    db = tl.zeros([BN], tl.float32)
    dxb = tl.zeros([BN], tl.float32)
    row_end = tl.minimum(pid * rows_per_prog + rows_per_prog, M)
    for r0 in range(pid * rows_per_prog, row_end, BM):
        rows = r0 + tl.arange(0, BM)
        msk = (rows < row_end)[:, None] & (cols < N)[None, :]
        z, keep = _ln_input(x_ptr, r_ptr, xb_ptr, seed_ptr, rows, cols, msk, N, sx, sr, p_drop,
                            HAS_RES, HAS_XB, DROPOUT)
        mean = tl.load(mean_ptr + rows, mask=rows < row_end, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rows < row_end, other=0.0)
        xhat = tl.where(msk, (z - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(dy_ptr + rows[:, None] * sdy + cols[None, :], mask=msk, other=0.0)
        dy = dy.to(tl.float32)
        g = dy * w[None, :]
        c1 = tl.sum(xhat * g, 1) / N
        c2 = tl.sum(g, 1) / N
        dz = tl.where(msk, (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None], 0.0)
        offs = rows[:, None] * N + cols[None, :]
        tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=msk)
        if DROPOUT:
            dz = tl.where(keep, dz / (1.0 - p_drop), 0.0)
            tl.store(dx_ptr + offs, dz.to(dx_ptr.dtype.element_ty), mask=msk)
        dw += tl.sum(dy * xhat, 0)
        db += tl.sum(dy, 0)
        dxb += tl.sum(dz, 0)
    part = part_ptr + pid * N + cols
    tl.store(part, dw, mask=cols < N)
    tl.store(part + G * N, db, mask=cols < N)
    tl.store(part + 2 * G * N, dxb, mask=cols < N)


def _rows(t, N):
    t = t.reshape(-1, N)
    return t if t.stride(-1) == 1 else t.contiguous()


def _tiles(M, N):
    bn = next_pow2(N)
    bm = max(1, min(16, 4096 // bn, next_pow2(M)))
    return bm, bn, (4 if bm * bn <= 2048 else 8)


def _num_bwd_programs(x, M, bm):
    if x.is_cuda:
        sms = sm_count(x.device.index)
        return max(1, min(2 * sms, triton.cdiv(M, bm)))
    return max(1, min(4, triton.cdiv(M, bm)))  # the interpreter: few, long programs


def layer_norm_forward(x, residual, weight, bias, x_bias, seed, eps, p):
    """(y, mean, rstd) with x, residual given as (M, N) row views."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    mean = torch.empty((M,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return y, mean, rstd
    bm, bn, warps = _tiles(M, N)
    r = x if residual is None else residual
    _ln_fwd_kernel[(triton.cdiv(M, bm),)](
        x, r, x if x_bias is None else x_bias, weight, bias, y, mean, rstd,
        x if seed is None else seed, M, N, x.stride(0), r.stride(0), y.stride(0), eps, p,
        residual is not None, x_bias is not None, p > 0, bm, bn, num_warps=warps)
    return y, mean, rstd


def layer_norm_backward(x, residual, weight, x_bias, seed, mean, rstd, dy, p):
    """(dz, dx or None, dweight, dbias, dx_bias or None): dz is the residual's gradient and, without
    dropout, also x's."""
    M, N = x.shape
    dz = torch.empty((M, N), dtype=x.dtype if residual is None else residual.dtype, device=x.device)
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device) if p > 0 else None
    bm, bn, warps = _tiles(M, N)
    G = _num_bwd_programs(x, M, bm)
    part = torch.zeros((3, G, N), dtype=torch.float32, device=x.device)
    if M > 0:
        r = x if residual is None else residual
        _ln_bwd_kernel[(G,)](
            x, r, x if x_bias is None else x_bias, weight, dy, mean, rstd,
            x if seed is None else seed, dz, dz if dx is None else dx, part, M, N, G,
            triton.cdiv(M, G), x.stride(0), r.stride(0), dy.stride(0), p,
            residual is not None, x_bias is not None, p > 0, bm, bn, num_warps=warps)
    sums = part.sum(1)  # (3, N): the one small final reduction
    dxb = None if x_bias is None else sums[2].to(x_bias.dtype, copy=True)
    return dz, dx, sums[0].to(weight.dtype, copy=True), sums[1].to(weight.dtype, copy=True), dxb


class _DropoutAddLayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, x_bias, seed, eps, p):
        y, mean, rstd = layer_norm_forward(x, residual, weight, bias, x_bias, seed, eps, p)
        ctx.save_for_backward(x, residual, weight, x_bias, seed, mean, rstd)
        ctx.p = p
        return y

    @staticmethod
    def backward(ctx, dy):
        x, residual, weight, x_bias, seed, mean, rstd = ctx.saved_tensors
        dz, dx, dw, db, dxb = layer_norm_backward(x, residual, weight, x_bias, seed, mean, rstd,
                                                  _rows(dy, x.shape[1]), ctx.p)
        dres = None if residual is None else dz
        return (dz if dx is None else dx), dres, dw, db, dxb, None, None, None


def _check(x, residual, weight, bias, x_bias):
    n = x.shape[-1]
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"dropout_add_layer_norm: residual shape {tuple(residual.shape)} != "
                         f"x shape {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("x_bias", x_bias)):
        if t is not None and tuple(t.shape) != (n,):
            raise ValueError(f"dropout_add_layer_norm: {name} shape {tuple(t.shape)} != ({n},) "
                             f"for x of shape {tuple(x.shape)}")


def dropout_add_layer_norm(x, residual, weight, bias, eps: float = 1e-12, dropout_p: float = 0.0,
                           x_bias: Optional[torch.Tensor] = None,
                           impl: str = "auto") -> torch.Tensor:
    """LayerNorm(dropout(x + x_bias) + residual) over the last dim; ``residual`` may be None."""
    _check(x, residual, weight, bias, x_bias)
    p = check_dropout_p("dropout_add_layer_norm", dropout_p)
    if not use_kernel(impl, x, "dropout_add_layer_norm", fits=x.shape[-1] <= MAX_N):
        return dropout_add_layer_norm_ref(x, residual, weight, bias, eps, p, x_bias)
    for name, t in (("residual", residual), ("weight", weight), ("bias", bias), ("x_bias", x_bias)):
        if t is not None:  # dtypes may differ (fp32 LN weights with bf16 activations)
            check_tensors("dropout_add_layer_norm", x.device, t.dtype, **{name: t})
    N = x.shape[-1]
    x2, r2 = _rows(x, N), None if residual is None else _rows(residual, N)
    seed = draw_seed(x.device) if p > 0 else None
    if torch.compiler.is_compiling():
        from ._custom_ops import layer_norm_op

        y = layer_norm_op(x2, r2, weight, bias, x_bias, seed, float(eps), p)
    else:
        y = _DropoutAddLayerNormFn.apply(x2, r2, weight, bias, x_bias, seed, float(eps), p)
    return y.view(x.shape)
