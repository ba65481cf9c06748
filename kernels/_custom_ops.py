"""The Triton paths registered as torch custom ops (``torch.ops.lxmert_fast.*``).

``torch.compile`` traces these as opaque nodes (no graph break at the kernels): each op has a fake
(meta) implementation giving output shapes and an autograd formula that calls the backward op.
Eager calls use the ops' ``torch.autograd.Function`` directly (less dispatch overhead); both run the
same launchers. Dropout seeds are op inputs, drawn by the caller from torch's generator.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .attention import attention_backward, attention_forward
from .gelu import bias_gelu_backward, bias_gelu_forward
from .layernorm import layer_norm_backward, layer_norm_forward

_NS = "lxmert_fast"


def _attn_fake(q, k, v):
    B, Lq, H, _ = q.shape
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty((B, H, Lq), dtype=torch.float32, device=q.device))


def _grads_fake(q, k):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device))


# --- attention, one direction -----------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::attn_fwd", mutates_args=())
def attn_fwd(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], seed: Optional[Tensor],
             scale: float, p: float) -> Tuple[Tensor, Tensor]:
    return tuple(attention_forward([(q, k, v, mask)], scale, p, seed)[0])


@attn_fwd.register_fake
def _(q, k, v, mask, seed, scale, p):
    return _attn_fake(q, k, v)


@torch.library.custom_op(f"{_NS}::attn_bwd", mutates_args=())
def attn_bwd(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], seed: Optional[Tensor],
             out: Tensor, lse: Tensor, dout: Tensor, scale: float,
             p: float) -> Tuple[Tensor, Tensor, Tensor]:
    return tuple(attention_backward([(q, k, v, mask)], [out], [lse], [dout], scale, p,
                                          seed)[0])


@attn_bwd.register_fake
def _(q, k, v, mask, seed, out, lse, dout, scale, p):
    return _grads_fake(q, k)


def _attn_setup(ctx, inputs, output):
    q, k, v, mask, seed, scale, p = inputs
    ctx.save_for_backward(q, k, v, mask, seed, *output)
    ctx.scale, ctx.p = scale, p


def _attn_backward(ctx, dout, _dlse):
    q, k, v, mask, seed, out, lse = ctx.saved_tensors
    dq, dk, dv = attn_bwd(q, k, v, mask, seed, out, lse, dout, ctx.scale, ctx.p)
    return dq, dk, dv, None, None, None, None


attn_fwd.register_autograd(_attn_backward, setup_context=_attn_setup)


# --- attention, both directions of LXMERT's cross-attention in one launch ---------------------
@torch.library.custom_op(f"{_NS}::attn_pair_fwd", mutates_args=())
def attn_pair_fwd(qa: Tensor, ka: Tensor, va: Tensor, ma: Optional[Tensor], qb: Tensor,
                  kb: Tensor, vb: Tensor, mb: Optional[Tensor], seed: Optional[Tensor],
                  scale: float, p: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    (oa, la), (ob, lb) = attention_forward([(qa, ka, va, ma), (qb, kb, vb, mb)], scale, p,
                                                 seed)
    return oa, la, ob, lb


@attn_pair_fwd.register_fake
def _(qa, ka, va, ma, qb, kb, vb, mb, seed, scale, p):
    return (*_attn_fake(qa, ka, va), *_attn_fake(qb, kb, vb))


@torch.library.custom_op(f"{_NS}::attn_pair_bwd", mutates_args=())
def attn_pair_bwd(qa: Tensor, ka: Tensor, va: Tensor, ma: Optional[Tensor], qb: Tensor,
                  kb: Tensor, vb: Tensor, mb: Optional[Tensor], seed: Optional[Tensor],
                  oa: Tensor, la: Tensor, ob: Tensor, lb: Tensor, doa: Tensor, dob: Tensor,
                  scale: float, p: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    ga, gb = attention_backward([(qa, ka, va, ma), (qb, kb, vb, mb)], [oa, ob], [la, lb],
                                      [doa, dob], scale, p, seed)
    return (*ga, *gb)


@attn_pair_bwd.register_fake
def _(qa, ka, va, ma, qb, kb, vb, mb, seed, oa, la, ob, lb, doa, dob, scale, p):
    return (*_grads_fake(qa, ka), *_grads_fake(qb, kb))


def _pair_setup(ctx, inputs, output):
    *tensors, scale, p = inputs
    ctx.save_for_backward(*tensors, *output)
    ctx.scale, ctx.p = scale, p


def _pair_backward(ctx, doa, _dla, dob, _dlb):
    qa, ka, va, ma, qb, kb, vb, mb, seed, oa, la, ob, lb = ctx.saved_tensors
    doa = torch.zeros_like(oa) if doa is None else doa
    dob = torch.zeros_like(ob) if dob is None else dob
    g = attn_pair_bwd(qa, ka, va, ma, qb, kb, vb, mb, seed, oa, la, ob, lb, doa, dob, ctx.scale,
                      ctx.p)
    return (*g[:3], None, *g[3:], None, None, None, None)


attn_pair_fwd.register_autograd(_pair_backward, setup_context=_pair_setup)


def attention_dirs(dirs: List[tuple], seed: Optional[Tensor], scale: float,
                   p: float) -> Tuple[Tensor, ...]:
    """Outputs of 1 or 2 attention directions through the custom ops."""
    if len(dirs) == 1:
        return (attn_fwd(*dirs[0], seed, scale, p)[0],)
    oa, _, ob, _ = attn_pair_fwd(*dirs[0], *dirs[1], seed, scale, p)
    return oa, ob


# --- dropout_add_layer_norm -------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::ln_fwd", mutates_args=())
def ln_fwd(x: Tensor, residual: Optional[Tensor], weight: Tensor, bias: Tensor,
           x_bias: Optional[Tensor], seed: Optional[Tensor], eps: float,
           p: float) -> Tuple[Tensor, Tensor, Tensor]:
    return layer_norm_forward(x, residual, weight, bias, x_bias, seed, eps, p)


@ln_fwd.register_fake
def _(x, residual, weight, bias, x_bias, seed, eps, p):
    M = x.shape[0]
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            x.new_empty((M,), dtype=torch.float32), x.new_empty((M,), dtype=torch.float32))


@torch.library.custom_op(f"{_NS}::ln_bwd", mutates_args=())
def ln_bwd(x: Tensor, residual: Optional[Tensor], weight: Tensor, x_bias: Optional[Tensor],
           seed: Optional[Tensor], mean: Tensor, rstd: Tensor, dy: Tensor,
           p: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dz, dx, dw, db, dxb = layer_norm_backward(x, residual, weight, x_bias, seed, mean, rstd,
                                                  dy.contiguous(), p)
    return (dz, x.new_empty((0,)) if dx is None else dx, dw, db,
            x.new_empty((0,)) if dxb is None else dxb)


@ln_bwd.register_fake
def _(x, residual, weight, x_bias, seed, mean, rstd, dy, p):
    dz_dtype = x.dtype if residual is None else residual.dtype
    return (x.new_empty(x.shape, dtype=dz_dtype), x.new_empty(x.shape if p > 0 else (0,)),
            weight.new_empty(weight.shape), weight.new_empty(weight.shape),
            x.new_empty((0,)) if x_bias is None else x_bias.new_empty(x_bias.shape))


def _ln_setup(ctx, inputs, output):
    x, residual, weight, _, x_bias, seed, _, p = inputs
    ctx.save_for_backward(x, residual, weight, x_bias, seed, output[1], output[2])
    ctx.p, ctx.has_res, ctx.has_xb = p, residual is not None, x_bias is not None


def _ln_backward(ctx, dy, _dmean, _drstd):
    x, residual, weight, x_bias, seed, mean, rstd = ctx.saved_tensors
    dz, dx, dw, db, dxb = ln_bwd(x, residual, weight, x_bias, seed, mean, rstd, dy, ctx.p)
    return (dz if ctx.p == 0 else dx, dz if ctx.has_res else None, dw, db,
            dxb if ctx.has_xb else None, None, None, None)


ln_fwd.register_autograd(_ln_backward, setup_context=_ln_setup)


def layer_norm_op(x, residual, weight, bias, x_bias, seed, eps, p):
    return ln_fwd(x, residual, weight, bias, x_bias, seed, eps, p)[0]


# --- bias_gelu --------------------------------------------------------------------------------
@torch.library.custom_op(f"{_NS}::bias_gelu_fwd", mutates_args=())
def bias_gelu_fwd(x: Tensor, bias: Tensor) -> Tensor:
    return bias_gelu_forward(x, bias)


@bias_gelu_fwd.register_fake
def _(x, bias):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op(f"{_NS}::bias_gelu_bwd", mutates_args=())
def bias_gelu_bwd(x: Tensor, bias: Tensor, dy: Tensor) -> Tuple[Tensor, Tensor]:
    return bias_gelu_backward(x, bias, dy.contiguous())


@bias_gelu_bwd.register_fake
def _(x, bias, dy):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), bias.new_empty(bias.shape)


def _gelu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gelu_backward(ctx, dy):
    x, bias = ctx.saved_tensors
    return bias_gelu_bwd(x, bias, dy)


bias_gelu_fwd.register_autograd(_gelu_backward, setup_context=_gelu_setup)
bias_gelu_op = bias_gelu_fwd
