"""Post-LN sublayer output for BERT-style layers: LayerNorm(dropout(x + x_bias) + residual).

This file holds the pure-PyTorch reference (``dropout_add_layer_norm_ref``), the Triton forward and
backward kernels, their launchers, the autograd Function, the custom op (torch.compile) and the
public ``dropout_add_layer_norm``.

Design (DESIGN.md section 3): the forward normalises BM rows per program (whole rows of up to
``MAX_N`` = 4096 features in registers) and saves mean, rstd and, with dropout, the keep mask
packed 8 features per byte ((M, ceil(N / 8)) uint8: 1/16 of a bfloat16 activation; drawn from a
counter-based RNG, ``_dropout.py``); the backward reads the mask back (it draws no random
numbers) and recomputes the LN input from x, x_bias and residual instead of storing it.
Published Triton LayerNorm backwards lose to torch at hidden ~768 on the dW/dB reduction; here
each backward program walks many rows, keeps its dW, dB and d(x_bias) partial sums in registers,
and one small (3, G, N) -> (3, N) torch sum finishes them (the Apex / Liger scheme): G is one
wave of resident programs (2 per SM up to 2048-wide rows, sm_90 compile figures), the partial
buffer is not zero-filled (every program writes its row) and the three gradients are rows of the
one sum (no copies). ``residual`` may be None (plain LN of dropout(x + x_bias)). Accumulation is
in float32 for float32/float16/bfloat16 inputs; wider rows (8192 spills registers in the
backward) fall back to the reference, as do other dtypes under impl="auto" (impl="triton" raises
for them). Row bases are int64; fewer than 2**31 rows.
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _impl
from ._dropout import (check_dropout_p, draw_seed, keep4_packed, kernel_seed_args, load_keep,
                       seed_args)
from ._impl import (KERNEL_DTYPES, as_rows, cdiv, check_tensors, next_pow2, tl, triton,
                    use_kernel)

MAX_N = 4096


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


# Offsets: a tile's first row is an int64 base (rows * stride can pass 2**31); offsets inside a
# tile are int32. Dropout: ``_dropout.keep4_packed`` with counters (4-column group) in stream (row)
# in the forward, which stores the packed mask (row stride ceil(N / 8) bytes); the backward
# reads it back (``load_keep``).
@triton.jit
def _ln_input(x_ptr, r_ptr, xb_ptr, keep, r, cols, msk, N, sx, sr, inv_keep,
              HAS_RES: tl.constexpr, HAS_XB: tl.constexpr, DROPOUT: tl.constexpr):
    """z = dropout(x + x_bias) + residual for a (BM, BN) tile with keep mask ``keep``, in float32.
    ``x_ptr``/``r_ptr`` point at the tile's first row; ``r`` are its local rows."""
    z = tl.load(x_ptr + r[:, None] * sx + cols[None, :], mask=msk, other=0.0).to(tl.float32)
    if HAS_XB:
        z += tl.load(xb_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if DROPOUT:
        z = tl.where(keep, z * inv_keep, 0.0)
    if HAS_RES:
        z += tl.load(r_ptr + r[:, None] * sr + cols[None, :], mask=msk, other=0.0).to(tl.float32)
    return z


@triton.jit(do_not_specialize=["seed", "call"])
def _ln_fwd_kernel(x_ptr, r_ptr, xb_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, keep_ptr,
                   seed_ptr, seed, call, thr, M, N, sx, sr, sy, eps, inv_keep,
                   HAS_RES: tl.constexpr, HAS_XB: tl.constexpr, SEED_IN_TENSOR: tl.constexpr,
                   DROPOUT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    row0 = tl.program_id(0).to(tl.int64) * BM
    r = tl.arange(0, BM)
    rows = row0 + r
    cols = tl.arange(0, BN)
    msk = (rows < M)[:, None] & (cols < N)[None, :]
    if SEED_IN_TENSOR:  # else the host's seed (inline: the interpreter pays per jit call)
        seed = tl.load(seed_ptr)
    keep = msk
    if DROPOUT:
        groups = tl.zeros([BM, BN // 4], tl.int32) + tl.arange(0, BN // 4)[None, :]
        keep, bits = keep4_packed(seed, groups, rows[:, None], call, thr)
        n8 = (N + 7) // 8
        b8 = tl.arange(0, BN // 8)
        tl.store(keep_ptr + rows[:, None] * n8 + b8[None, :], bits,
                 mask=(rows < M)[:, None] & (b8 < n8)[None, :])
    z = _ln_input(x_ptr + row0 * sx, r_ptr + row0 * sr, xb_ptr, keep, r, cols, msk, N, sx, sr,
                  inv_keep, HAS_RES, HAS_XB, DROPOUT)
    mean = tl.sum(z, 1) / N
    zc = tl.where(msk, z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, 1) / N + eps)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    y = zc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + row0 * sy + r[:, None] * sy + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=msk)
    tl.store(mean_ptr + rows, mean, mask=rows < M)
    tl.store(rstd_ptr + rows, rstd, mask=rows < M)


@triton.jit
def _ln_bwd_kernel(x_ptr, r_ptr, xb_ptr, w_ptr, dy_ptr, mean_ptr, rstd_ptr, keep_ptr, dz_ptr,
                   dx_ptr, part_ptr, M, N, G, rows_per_prog, sx, sr, sdy, inv_keep,
                   HAS_RES: tl.constexpr, HAS_XB: tl.constexpr, DROPOUT: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    n8 = (N + 7) // 8
    cols = tl.arange(0, BN)
    r = tl.arange(0, BM)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    dw = tl.zeros([BN], tl.float32)
    db = tl.zeros([BN], tl.float32)
    dxb = tl.zeros([BN], tl.float32)
    row_end = tl.minimum(pid * rows_per_prog + rows_per_prog, M)
    for r0 in range(pid * rows_per_prog, row_end, BM):
        base = tl.cast(r0, tl.int64)
        rows = base + r
        msk = (rows < row_end)[:, None] & (cols < N)[None, :]
        keep = msk
        if DROPOUT:  # the forward's mask, read back (no random numbers here)
            keep = load_keep(keep_ptr + rows[:, None] * n8, cols, msk)
        z = _ln_input(x_ptr + base * sx, r_ptr + base * sr, xb_ptr, keep, r, cols, msk, N, sx, sr,
                      inv_keep, HAS_RES, HAS_XB, DROPOUT)
        mean = tl.load(mean_ptr + rows, mask=rows < row_end, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rows < row_end, other=0.0)
        xhat = tl.where(msk, (z - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(dy_ptr + base * sdy + r[:, None] * sdy + cols[None, :], mask=msk, other=0.0)
        dy = dy.to(tl.float32)
        g = dy * w[None, :]
        c1 = tl.sum(xhat * g, 1) / N
        c2 = tl.sum(g, 1) / N
        dz = tl.where(msk, (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None], 0.0)
        offs = base * N + r[:, None] * N + cols[None, :]
        tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=msk)
        if DROPOUT:
            dz = tl.where(keep, dz * inv_keep, 0.0)
            tl.store(dx_ptr + offs, dz.to(dx_ptr.dtype.element_ty), mask=msk)
        dw += tl.sum(dy * xhat, 0)
        db += tl.sum(dy, 0)
        dxb += tl.sum(dz, 0)
    part = part_ptr + pid * N + cols
    tl.store(part, dw, mask=cols < N)
    tl.store(part + G * N, db, mask=cols < N)
    tl.store(part + 2 * G * N, dxb, mask=cols < N)


@functools.lru_cache(maxsize=1024)
def _tiles(M, N, backward):
    """(BM, BN, num_warps): ~4096 elements per forward tile, ~2048 per backward tile (the backward
    holds twice the live tensors) and <= 8 per thread there (sm_90 compile figures). BN >= 8:
    the dropout mask is stored in whole bytes."""
    bn = next_pow2(N, 8)
    bm = max(1, min(16, (2048 if backward else 4096) // bn, next_pow2(M)))
    if backward:
        return bm, bn, max(4, min(16, bm * bn // 256))
    return bm, bn, (4 if bm * bn <= 2048 else 8)


def bwd_programs_per_sm(warps):
    """Resident backward programs per SM the grid is sized for (one wave of long programs):
    checked against the compile figures by tests/kernels/test_kernel_sm90_compile.py."""
    return 2 if warps <= 8 else 1


@functools.lru_cache(maxsize=1024)
def _num_bwd_programs(sms, M, bm, warps):
    if sms:
        return max(1, min(bwd_programs_per_sm(warps) * sms, cdiv(M, bm)))
    return max(1, min(4, cdiv(M, bm)))  # the interpreter: few, long programs


def layer_norm_forward(x, residual, weight, bias, x_bias, seed, eps, p):
    """(y, mean, rstd, keep) for x and residual (the same shape) read as M rows of N =
    weight.numel() features; y is shaped like x. ``seed`` as ``_dropout.seed_args`` returns it
    (None without dropout); keep is the dropout mask packed 8 features per byte,
    (M, ceil(N / 8)) uint8, or None without dropout."""
    N = weight.shape[0]
    x, sx = as_rows(x, N)
    r, sr = (x, sx) if residual is None else as_rows(residual, N)
    M = x.numel() // N if N else 0
    dev = x.device
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    mean = torch.empty((M,), dtype=torch.float32, device=dev)
    rstd = torch.empty((M,), dtype=torch.float32, device=dev)
    keep = torch.empty((M, (N + 7) // 8), dtype=torch.uint8, device=dev) if p > 0 else None
    if M == 0:
        return y, mean, rstd, keep
    bm, bn, warps = _tiles(M, N, False)
    head, in_tensor = kernel_seed_args(x, p, seed)
    _ln_fwd_kernel[(cdiv(M, bm),)](
        x, r, x if x_bias is None else x_bias, weight, bias, y, mean, rstd,
        y if keep is None else keep, *head, M, N, sx, sr, N, eps, 1.0 / (1.0 - p),
        residual is not None, x_bias is not None, in_tensor, p > 0, bm, bn, num_warps=warps)
    return y, mean, rstd, keep


def layer_norm_backward(x, residual, weight, x_bias, keep, mean, rstd, dy, p):
    """(dz, dx or None, sums) for x, residual and dy read as rows of N = weight.numel() features:
    dz (shaped like the residual, or x without one) is the residual's gradient and, without
    dropout, also x's; sums (3, N) in the weight's dtype holds dweight, dbias and dx_bias
    (``_split`` them: no copies). ``keep`` is the forward's packed dropout mask (None without
    dropout): no random numbers."""
    N = weight.shape[0]
    x, sx = as_rows(x, N)
    r, sr = (x, sx) if residual is None else as_rows(residual, N)
    dy, sdy = as_rows(dy, N)
    M = x.numel() // N if N else 0
    dz = torch.empty_like(r, memory_format=torch.contiguous_format)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if p > 0 else None
    bm, bn, warps = _tiles(M, N, True)
    G = _num_bwd_programs(_impl.num_sms(x.device), M, bm, warps)
    part = torch.empty((3, G, N), dtype=torch.float32, device=x.device)  # every program writes
    if M > 0:
        _ln_bwd_kernel[(G,)](
            x, r, x if x_bias is None else x_bias, weight, dy, mean, rstd,
            dz if keep is None else keep, dz, dz if dx is None else dx, part, M, N, G,
            cdiv(M, G), sx, sr, sdy, 1.0 / (1.0 - p), residual is not None, x_bias is not None,
            p > 0, bm, bn, num_warps=warps)
    else:
        part.zero_()
    sums = part.sum(1)  # (3, N): the one small final reduction
    return dz, dx, sums if sums.dtype == weight.dtype else sums.to(weight.dtype)


def _split(sums, x_bias):
    """dweight, dbias, dx_bias (or None) from the backward's (3, N) sums."""
    dxb = None if x_bias is None else sums[2] if x_bias.dtype == sums.dtype else \
        sums[2].to(x_bias.dtype)
    return sums[0], sums[1], dxb


class _DropoutAddLayerNormFn(torch.autograd.Function):
    """Takes x and residual in their own shape (no reshape or view around it: one autograd node
    per call); the gradients come back in those shapes."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, x_bias, seed, eps, p):
        y, mean, rstd, keep = layer_norm_forward(x, residual, weight, bias, x_bias, seed, eps, p)
        ctx.save_for_backward(x, residual, weight, x_bias, mean, rstd, keep)
        ctx.p = p
        return y

    @staticmethod
    def backward(ctx, dy):
        x, residual, weight, x_bias, mean, rstd, keep = ctx.saved_tensors
        dz, dx, sums = layer_norm_backward(x, residual, weight, x_bias, keep, mean, rstd, dy,
                                           ctx.p)
        dw, db, dxb = _split(sums, x_bias)
        dres = None if residual is None else dz
        return (dz if dx is None else dx), dres, dw, db, dxb, None, None, None


# --- the same launchers as a torch custom op (torch.compile: no graph break) -----------------
# ln_fwd returns the keep mask always (custom ops return tensors): (0,) uint8 when p == 0.
def _tseed(seed):
    return None if seed is None else (seed, 0, 0)


@torch.library.custom_op("lxmert_fast::ln_fwd", mutates_args=())
def ln_fwd(x: Tensor, residual: Optional[Tensor], weight: Tensor, bias: Tensor,
           x_bias: Optional[Tensor], seed: Optional[Tensor], eps: float,
           p: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    y, mean, rstd, keep = layer_norm_forward(x, residual, weight, bias, x_bias, _tseed(seed), eps,
                                             p)
    return y, mean, rstd, x.new_empty((0,), dtype=torch.uint8) if keep is None else keep


@ln_fwd.register_fake
def _(x, residual, weight, bias, x_bias, seed, eps, p):
    N = weight.shape[0]
    M = x.numel() // N if N else 0
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            x.new_empty((M,), dtype=torch.float32), x.new_empty((M,), dtype=torch.float32),
            x.new_empty((M, (N + 7) // 8) if p > 0 else (0,), dtype=torch.uint8))


@torch.library.custom_op("lxmert_fast::ln_bwd", mutates_args=())
def ln_bwd(x: Tensor, residual: Optional[Tensor], weight: Tensor, x_bias: Optional[Tensor],
           keep: Tensor, mean: Tensor, rstd: Tensor, dy: Tensor,
           p: float) -> Tuple[Tensor, Tensor, Tensor]:
    dz, dx, sums = layer_norm_backward(x, residual, weight, x_bias, keep if p > 0 else None, mean,
                                       rstd, dy, p)
    return dz, x.new_empty((0,)) if dx is None else dx, sums


@ln_bwd.register_fake
def _(x, residual, weight, x_bias, keep, mean, rstd, dy, p):
    dz_dtype = x.dtype if residual is None else residual.dtype
    return (x.new_empty(x.shape, dtype=dz_dtype), x.new_empty(x.shape if p > 0 else (0,)),
            weight.new_empty((3, weight.shape[0])))


def _ln_setup(ctx, inputs, output):
    x, residual, weight, _, x_bias, _, _, p = inputs
    ctx.save_for_backward(x, residual, weight, x_bias, output[3], output[1], output[2])
    ctx.p, ctx.has_res, ctx.has_xb = p, residual is not None, x_bias is not None


def _ln_backward(ctx, dy, _dmean, _drstd, _dkeep):
    x, residual, weight, x_bias, keep, mean, rstd = ctx.saved_tensors
    dz, dx, sums = ln_bwd(x, residual, weight, x_bias, keep, mean, rstd, dy, ctx.p)
    dw, db, dxb = _split(sums, x_bias)
    return (dz if ctx.p == 0 else dx, dz if ctx.has_res else None, dw, db,
            dxb if ctx.has_xb else None, None, None, None)


ln_fwd.register_autograd(_ln_backward, setup_context=_ln_setup)


def _check(x, residual, weight, bias, x_bias):
    n = x.shape[-1]
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"dropout_add_layer_norm: residual shape {tuple(residual.shape)} != "
                         f"x shape {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("x_bias", x_bias)):
        if t is not None and tuple(t.shape) != (n,):
            raise ValueError(f"dropout_add_layer_norm: {name} shape {tuple(t.shape)} != ({n},) "
                             f"for x of shape {tuple(x.shape)}")


def _check_kernel_inputs(x, residual, weight, bias, x_bias):
    """Devices and kernel dtypes (dtypes may differ: fp32 LN weights with bf16 activations)."""
    dev = x.device
    for t in (residual, weight, bias, x_bias):
        if t is not None and (t.device != dev or t.dtype not in KERNEL_DTYPES):
            for name, u in (("residual", residual), ("weight", weight), ("bias", bias),
                            ("x_bias", x_bias)):
                if u is not None:
                    check_tensors("dropout_add_layer_norm", dev, u.dtype, **{name: u})
    M = x.numel() // max(x.shape[-1], 1)
    if M >= 2 ** 31:
        raise ValueError(f"dropout_add_layer_norm: x {tuple(x.shape)} has {M} rows, beyond the "
                         f"kernel's int32 row indices (2**31)")


def dropout_add_layer_norm(x, residual, weight, bias, eps: float = 1e-12, dropout_p: float = 0.0,
                           x_bias: Optional[torch.Tensor] = None,
                           impl: str = "auto") -> torch.Tensor:
    """LayerNorm(dropout(x + x_bias) + residual) over the last dim; ``residual`` may be None."""
    _check(x, residual, weight, bias, x_bias)
    p = check_dropout_p("dropout_add_layer_norm", dropout_p)
    N = x.shape[-1]
    unfit = None if N <= MAX_N else f"does not support rows of {N} > MAX_N = {MAX_N} features"
    if not use_kernel(impl, x, "dropout_add_layer_norm", unfit):
        return dropout_add_layer_norm_ref(x, residual, weight, bias, eps, p, x_bias)
    _check_kernel_inputs(x, residual, weight, bias, x_bias)
    if torch.compiler.is_compiling():
        seed = draw_seed(x.device) if p > 0 else None
        return ln_fwd(x, residual, weight, bias, x_bias, seed, float(eps), p)[0]
    seed = seed_args(x.device) if p > 0 else None
    return _DropoutAddLayerNormFn.apply(x, residual, weight, bias, x_bias, seed, float(eps), p)
