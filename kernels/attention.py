"""Attention for LXMERT's short sequences: self-attention and the shared two-way cross-attention.

Layout: q (B, Lq, H, D), k and v (B, Lk, H, D), read with their strides as they come out of a
projection (no transposes, no copies; the last dim must be contiguous, else it is copied);
key_padding_mask (B, Lk) bool, True where the key is real. A query row whose keys are all masked
returns zeros (and zero gradients), never NaN.

Design (DESIGN.md section 3): LXMERT's attention problems are tiny (20 tokens, 36 objects) and
many (batch 256 x 12 heads), so the kernel is one program per (batch, head) holding whole score
rows, an exact softmax and a backward in the same program without atomics (FlashAttention's
recomputation, Dao et al. 2022, with a single tile in the common case). ``cross_attention_pair``
runs both directions of LXMERT's cross-attention in one launch (grid (B*H, 2)) forward and one
backward. Dropout on the probabilities uses a counter-based RNG (``_dropout.py``).

Limits: any Lq, Lk >= 1. Rows of up to ``BK`` keys (128 at head dim 64, 64 at head dim 128) are
held whole; longer rows are processed in key blocks with an online softmax (forward) and a second
loop nest for dq (backward), so 512 and beyond run in the kernel. Head dims up to 256 (any, padded
to a power of two); larger head dims fall back to the reference, as do dtypes other than
float32/float16/bfloat16 under impl="auto" (impl="triton" raises for them). Element counters
are int32: B*H*Lq*Lk must stay below 2**31 (checked).

Launch configuration (ptxas for sm_90, tests/kernels/kernel_sm90_compile.py; not yet timed on a
GPU): LXMERT's shapes use BQ=32/BK=64 (20 queries on 36 objects) or BQ=64/BK=32, BD=64, one
stage; the forward runs 4 warps (~220 registers, no spills), the backward 8 warps (~254
registers, no spills; with 4 it spills). ``_num_warps`` and ``BLOCK_ELEMS`` are the knobs.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._dropout import check_dropout_p, draw_seed, dropout_keep
from ._impl import check_tensors, next_pow2, tl, triton, use_kernel


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


# ---------------------------------------------------------------------------------------------
# Triton kernels. One program = one (batch, head) of one direction; it holds whole score rows
# (up to BK keys) and walks query blocks of BQ rows. Rows longer than BK keys use an online
# softmax over key blocks (forward) and a second loop nest for dq (backward): still no atomics.
# Scores live in the log2 domain (qk_scale = scale * log2(e)); lse is stored in that domain and is
# +inf for rows whose keys are all masked, so their probabilities (and gradients) are exactly 0.
# DOT is "ieee" for float32 inputs (full fp32 products, as torch's default matmul), else "tf32"
# (ignored for 16-bit operands). Small loads are written inline: the interpreter that runs the CPU
# tests pays per nested jit call.
# ---------------------------------------------------------------------------------------------
@triton.jit
def _attn_fwd_one(q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, lse_ptr, seed_ptr, bh, b, h, H, Lq, Lk, D,
                  sqb, sql, sqh, skb, skl, skh, svb, svl, svh, smb, sml, qk_scale, p_drop, rng0,
                  HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr,
                  BQ: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    q_ptr += b * sqb + h * sqh + offs_d[None, :]
    k_ptr += b * skb + h * skh + offs_d[None, :]
    v_ptr += b * svb + h * svh + offs_d[None, :]
    o_ptr += (b * Lq * H + h) * D + offs_d[None, :]
    m_ptr += b * smb
    rng0 += bh * Lq * Lk
    for q0 in range(0, Lq, BQ):
        offs_q = q0 + tl.arange(0, BQ)
        rows = (offs_q < Lq)[:, None] & dmask[None, :]
        q = tl.load(q_ptr + offs_q[:, None] * sql, mask=rows, other=0.0)
        m_i = tl.full([BQ], float("-inf"), tl.float32)
        l_i = tl.zeros([BQ], tl.float32)
        acc = tl.zeros([BQ, BD], tl.float32)
        for k0 in range(0, Lk, BK):
            offs_k = k0 + tl.arange(0, BK)
            valid = offs_k < Lk
            kv_mask = valid[:, None] & dmask[None, :]
            k = tl.load(k_ptr + offs_k[:, None] * skl, mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + offs_k[:, None] * svl, mask=kv_mask, other=0.0)
            if HAS_MASK:
                valid = valid & (tl.load(m_ptr + offs_k * sml, mask=offs_k < Lk, other=0) != 0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT) * qk_scale  # (BQ, BK)
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if DROPOUT:
                keep = dropout_keep(seed_ptr, rng0 + offs_q[:, None] * Lk + offs_k[None, :], p_drop)
                p = tl.where(keep, p, 0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT)
            m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        inv_l = tl.where(l_i > 0, 1.0 / l_safe, 0.0)
        if DROPOUT:
            inv_l = inv_l / (1.0 - p_drop)
        out = acc * inv_l[:, None]
        tl.store(o_ptr + offs_q[:, None] * (H * D), out.to(o_ptr.dtype.element_ty), mask=rows)
        lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), float("inf"))
        tl.store(lse_ptr + bh * Lq + offs_q, lse, mask=offs_q < Lq)


@triton.jit
def _attn_dscores(q, do, o, lse, k, v, valid, offs_q, offs_k, Lk, seed_ptr, rng0, qk_scale, scale,
                  p_drop, DROPOUT: tl.constexpr, DOT: tl.constexpr):
    """Recompute one (BQ, BK) tile: returns (dropped probabilities, d scores * scale)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT) * qk_scale
    p = tl.where(valid[None, :], tl.exp2(s - lse[:, None]), 0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # rowsum(P * dP) = rowsum(dO * O)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT)
    if DROPOUT:
        keep = dropout_keep(seed_ptr, rng0 + offs_q[:, None] * Lk + offs_k[None, :], p_drop)
        inv_keep = 1.0 / (1.0 - p_drop)
        pd = tl.where(keep, p * inv_keep, 0.0)
        dp = tl.where(keep, dp * inv_keep, 0.0)
    else:
        pd = p
    return pd, p * (dp - delta[:, None]) * scale


@triton.jit
def _attn_bwd_one(q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, lse_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr,
                  seed_ptr, bh, b, h, H, Lq, Lk, D, sqb, sql, sqh, skb, skl, skh, svb, svl, svh,
                  smb, sml, sdb, sdl, sdh, qk_scale, scale, p_drop, rng0,
                  HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr,
                  ONE_KB: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    q_ptr += b * sqb + h * sqh + offs_d[None, :]
    k_ptr += b * skb + h * skh + offs_d[None, :]
    v_ptr += b * svb + h * svh + offs_d[None, :]
    do_ptr += b * sdb + h * sdh + offs_d[None, :]
    o_ptr += (b * Lq * H + h) * D + offs_d[None, :]  # o, dq: contiguous (B, Lq, H, D)
    dq_ptr += (b * Lq * H + h) * D + offs_d[None, :]
    dk_ptr += (b * Lk * H + h) * D + offs_d[None, :]  # dk, dv: contiguous (B, Lk, H, D)
    dv_ptr += (b * Lk * H + h) * D + offs_d[None, :]
    m_ptr += b * smb
    lse_ptr += bh * Lq
    rng0 += bh * Lq * Lk
    for k0 in range(0, Lk, BK):  # dk, dv of one key block, summed over all query blocks
        offs_k = k0 + tl.arange(0, BK)
        valid = offs_k < Lk
        kv_mask = valid[:, None] & dmask[None, :]
        k = tl.load(k_ptr + offs_k[:, None] * skl, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + offs_k[:, None] * svl, mask=kv_mask, other=0.0)
        if HAS_MASK:
            valid = valid & (tl.load(m_ptr + offs_k * sml, mask=offs_k < Lk, other=0) != 0)
        dk = tl.zeros([BK, BD], tl.float32)
        dv = tl.zeros([BK, BD], tl.float32)
        for q0 in range(0, Lq, BQ):
            offs_q = q0 + tl.arange(0, BQ)
            rows = (offs_q < Lq)[:, None] & dmask[None, :]
            q = tl.load(q_ptr + offs_q[:, None] * sql, mask=rows, other=0.0)
            do = tl.load(do_ptr + offs_q[:, None] * sdl, mask=rows, other=0.0)
            o = tl.load(o_ptr + offs_q[:, None] * (H * D), mask=rows, other=0.0)
            lse = tl.load(lse_ptr + offs_q, mask=offs_q < Lq, other=float("inf"))
            pd, ds = _attn_dscores(q, do, o, lse, k, v, valid, offs_q, offs_k, Lk, seed_ptr, rng0,
                                   qk_scale, scale, p_drop, DROPOUT, DOT)
            dv += tl.dot(tl.trans(pd.to(do.dtype)), do, input_precision=DOT)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT)
            if ONE_KB:  # the whole row is in this tile: dq is final
                dq = tl.dot(ds.to(k.dtype), k, input_precision=DOT)
                tl.store(dq_ptr + offs_q[:, None] * (H * D), dq.to(dq_ptr.dtype.element_ty),
                         mask=rows)
        tl.store(dk_ptr + offs_k[:, None] * (H * D), dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
        tl.store(dv_ptr + offs_k[:, None] * (H * D), dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)
    if not ONE_KB:  # long rows: dq summed over key blocks in a second loop nest
        for q0 in range(0, Lq, BQ):
            offs_q = q0 + tl.arange(0, BQ)
            rows = (offs_q < Lq)[:, None] & dmask[None, :]
            q = tl.load(q_ptr + offs_q[:, None] * sql, mask=rows, other=0.0)
            do = tl.load(do_ptr + offs_q[:, None] * sdl, mask=rows, other=0.0)
            o = tl.load(o_ptr + offs_q[:, None] * (H * D), mask=rows, other=0.0)
            lse = tl.load(lse_ptr + offs_q, mask=offs_q < Lq, other=float("inf"))
            dq = tl.zeros([BQ, BD], tl.float32)
            for k0 in range(0, Lk, BK):
                offs_k = k0 + tl.arange(0, BK)
                valid = offs_k < Lk
                kv_mask = valid[:, None] & dmask[None, :]
                k = tl.load(k_ptr + offs_k[:, None] * skl, mask=kv_mask, other=0.0)
                v = tl.load(v_ptr + offs_k[:, None] * svl, mask=kv_mask, other=0.0)
                if HAS_MASK:
                    valid = valid & (tl.load(m_ptr + offs_k * sml, mask=offs_k < Lk, other=0) != 0)
                _, ds = _attn_dscores(q, do, o, lse, k, v, valid, offs_q, offs_k, Lk, seed_ptr,
                                      rng0, qk_scale, scale, p_drop, DROPOUT, DOT)
                dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT)
            tl.store(dq_ptr + offs_q[:, None] * (H * D), dq.to(dq_ptr.dtype.element_ty), mask=rows)


@triton.jit
def _attn_fwd_kernel(seed_ptr, H, D, qk_scale, p_drop,
                     qa, ka, va, ma, oa, la, Lqa, Lka, sqba, sqla, sqha, skba, skla, skha, svba,
                     svla, svha, smba, smla, rnga,
                     qb, kb, vb, mb, ob, lb, Lqb, Lkb, sqbb, sqlb, sqhb, skbb, sklb, skhb, svbb,
                     svlb, svhb, smbb, smlb, rngb,
                     MASK_A: tl.constexpr, BQ_A: tl.constexpr, BK_A: tl.constexpr,
                     MASK_B: tl.constexpr, BQ_B: tl.constexpr, BK_B: tl.constexpr,
                     PAIR: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr,
                     BD: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    if PAIR and tl.program_id(1) == 1:
        _attn_fwd_one(qb, kb, vb, mb, ob, lb, seed_ptr, bh, b, h, H, Lqb, Lkb, D, sqbb, sqlb, sqhb,
                      skbb, sklb, skhb, svbb, svlb, svhb, smbb, smlb, qk_scale, p_drop, rngb,
                      MASK_B, DROPOUT, DOT, BQ_B, BK_B, BD)
    else:
        _attn_fwd_one(qa, ka, va, ma, oa, la, seed_ptr, bh, b, h, H, Lqa, Lka, D, sqba, sqla, sqha,
                      skba, skla, skha, svba, svla, svha, smba, smla, qk_scale, p_drop, rnga,
                      MASK_A, DROPOUT, DOT, BQ_A, BK_A, BD)


@triton.jit
def _attn_bwd_kernel(seed_ptr, H, D, qk_scale, scale, p_drop,
                     qa, ka, va, ma, oa, la, Lqa, Lka, sqba, sqla, sqha, skba, skla, skha, svba,
                     svla, svha, smba, smla, rnga, doa, dqa, dka, dva, sdba, sdla, sdha,
                     qb, kb, vb, mb, ob, lb, Lqb, Lkb, sqbb, sqlb, sqhb, skbb, sklb, skhb, svbb,
                     svlb, svhb, smbb, smlb, rngb, dob, dqb, dkb, dvb, sdbb, sdlb, sdhb,
                     MASK_A: tl.constexpr, BQ_A: tl.constexpr, BK_A: tl.constexpr,
                     ONE_A: tl.constexpr, MASK_B: tl.constexpr, BQ_B: tl.constexpr,
                     BK_B: tl.constexpr, ONE_B: tl.constexpr, PAIR: tl.constexpr,
                     DROPOUT: tl.constexpr, DOT: tl.constexpr, BD: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    if PAIR and tl.program_id(1) == 1:
        _attn_bwd_one(qb, kb, vb, mb, ob, lb, dob, dqb, dkb, dvb, seed_ptr, bh, b, h, H, Lqb, Lkb,
                      D, sqbb, sqlb, sqhb, skbb, sklb, skhb, svbb, svlb, svhb, smbb, smlb, sdbb,
                      sdlb, sdhb, qk_scale, scale, p_drop, rngb, MASK_B, DROPOUT, DOT, ONE_B,
                      BQ_B, BK_B, BD)
    else:
        _attn_bwd_one(qa, ka, va, ma, oa, la, doa, dqa, dka, dva, seed_ptr, bh, b, h, H, Lqa, Lka,
                      D, sqba, sqla, sqha, skba, skla, skha, svba, svla, svha, smba, smla, sdba,
                      sdla, sdha, qk_scale, scale, p_drop, rnga, MASK_A, DROPOUT, DOT, ONE_A,
                      BQ_A, BK_A, BD)


# ---------------------------------------------------------------------------------------------
# Launchers. A "direction" is (q, k, v, mask); attention launches one, the pair two (grid dim 1).
# ---------------------------------------------------------------------------------------------
MAX_HEAD_DIM = 256
BLOCK_ELEMS = 8192  # BK * BD held per program: BK = 128 keys at D = 64, 64 at D = 128
MAX_BQ = 64
_LOG2E = 1.4426950408889634


def _blocks(Lq, Lk, D):
    bd = next_pow2(D, 16)
    return min(next_pow2(Lq, 16), MAX_BQ), min(next_pow2(Lk, 16), max(16, BLOCK_ELEMS // bd)), bd


def _num_warps(bq, bk, bd, backward):
    """Warps per program (sized with ptxas for sm_90, see the module docstring): the backward
    holds k, v, dk, dv and five (BQ, BK) tiles, twice the forward's registers."""
    elems = max(bq * bk, bk * bd)
    return 8 if elems > 4096 or (backward and elems >= 2048) else 4


def _lastdim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _prepare(q, k, v, mask, name):
    """Validate one direction for the kernel; returns it with unit last-dim strides."""
    _check_qkv(q, k, v, mask, name)
    check_tensors(name, q.device, q.dtype, k=k, v=v)
    if mask is not None and (mask.dtype != torch.bool or mask.device != q.device):
        raise TypeError(f"{name}: key_padding_mask must be a bool tensor on {q.device}; got "
                        f"{mask.dtype} on {mask.device}")
    if q.shape[1] < 1 or k.shape[1] < 1:
        raise ValueError(f"{name}: sequence lengths must be >= 1; got Lq={q.shape[1]}, "
                         f"Lk={k.shape[1]}")
    return _lastdim_contiguous(q), _lastdim_contiguous(k), _lastdim_contiguous(v), mask


def _dir_args(q, k, v, mask, o, lse, rng0):
    m = q if mask is None else mask.view(torch.uint8)
    sm = (0, 0) if mask is None else (mask.stride(0), mask.stride(1))
    return [q, k, v, m, o, lse, q.shape[1], k.shape[1], q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), *sm, rng0]


def _launch_meta(dirs, backward=False):
    """Per-direction constexprs, RNG counter bases and the launch options."""
    metas, rng0, warps = [], 0, 4
    for q, k, _, mask in dirs:
        B, Lq, H, D = q.shape
        bq, bk, bd = _blocks(Lq, k.shape[1], D)
        metas.append((mask is not None, bq, bk, bk >= k.shape[1], rng0))
        rng0 += B * H * Lq * k.shape[1]
        warps = max(warps, _num_warps(bq, bk, bd, backward))
    if rng0 >= 2 ** 31:
        raise ValueError(f"attention: B*H*Lq*Lk = {rng0} element counters exceed int32")
    return metas, dict(num_warps=warps, num_stages=1 if all(m[3] for m in metas) else 2), bd


def attention_forward(dirs, scale, p, seed):
    """Launch the forward for 1 or 2 directions; returns [(out (B, Lq, H, D), lse (B, H, Lq))]."""
    q0 = dirs[0][0]
    B, _, H, D = q0.shape
    res = [(torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty((B, H, q.shape[1]), dtype=torch.float32, device=q.device))
           for q, _, _, _ in dirs]
    if B * H == 0:
        return res
    metas, opts, bd = _launch_meta(dirs)
    args = [a for d, (o, lse), m in zip(dirs, res, metas) for a in _dir_args(*d, o, lse, m[4])]
    cexp = [c for m in metas for c in m[:3]]
    if len(dirs) == 1:
        args, cexp = args * 2, cexp * 2
    _attn_fwd_kernel[(B * H, len(dirs))](
        q0 if seed is None else seed, H, D, scale * _LOG2E, p, *args, *cexp, len(dirs) == 2,
        p > 0, "ieee" if q0.dtype == torch.float32 else "tf32", bd, **opts)
    return res


def attention_backward(dirs, outs, lses, douts, scale, p, seed):
    """Launch the backward for 1 or 2 directions; returns [(dq, dk, dv)] (contiguous)."""
    q0 = dirs[0][0]
    B, _, H, D = q0.shape
    grads = [(torch.empty(q.shape, dtype=q.dtype, device=q.device),
              torch.empty(k.shape, dtype=k.dtype, device=k.device),
              torch.empty(k.shape, dtype=k.dtype, device=k.device)) for q, k, _, _ in dirs]
    if B * H == 0:
        return grads
    metas, opts, bd = _launch_meta(dirs, backward=True)
    args, cexp = [], []
    for d, o, lse, do, g, m in zip(dirs, outs, lses, douts, grads, metas):
        do = _lastdim_contiguous(do)
        args += _dir_args(*d, o, lse, m[4]) + [do, *g, do.stride(0), do.stride(1), do.stride(2)]
        cexp += [m[0], m[1], m[2], m[3]]
    if len(dirs) == 1:
        args, cexp = args * 2, cexp * 2
    _attn_bwd_kernel[(B * H, len(dirs))](
        q0 if seed is None else seed, H, D, scale * _LOG2E, scale, p, *args, *cexp,
        len(dirs) == 2, p > 0, "ieee" if q0.dtype == torch.float32 else "tf32", bd, **opts)
    return grads


class _AttentionFn(torch.autograd.Function):
    """Eager autograd for 1 or 2 directions: inputs (scale, p, seed, q, k, v, mask, ...)."""

    @staticmethod
    def forward(ctx, scale, p, seed, *qkvm):
        dirs = [qkvm[i:i + 4] for i in range(0, len(qkvm), 4)]
        res = attention_forward(dirs, scale, p, seed)
        ctx.scale, ctx.p, ctx.n = scale, p, len(dirs)
        ctx.save_for_backward(seed, *qkvm, *[t for r in res for t in r])
        return tuple(o for o, _ in res)

    @staticmethod
    def backward(ctx, *douts):
        seed, *saved = ctx.saved_tensors
        n = ctx.n
        dirs = [tuple(saved[4 * i:4 * i + 4]) for i in range(n)]
        outs, lses = saved[4 * n::2], saved[4 * n + 1::2]
        douts = [torch.zeros_like(o) if d is None else d for d, o in zip(douts, outs)]
        grads = attention_backward(dirs, outs, lses, douts, ctx.scale, ctx.p, seed)
        return (None, None, None, *[g for dq, dk, dv in grads for g in (dq, dk, dv, None)])


def _run_kernel(dirs, p, scale):
    """The custom op under torch.compile (no graph break), else the autograd Function."""
    seed = draw_seed(dirs[0][0].device) if p > 0 else None
    if torch.compiler.is_compiling():
        from . import _custom_ops  # noqa: F401  (registers torch.ops.lxmert_fast.*)

        return _custom_ops.attention_dirs(dirs, seed, scale, p)
    return _AttentionFn.apply(scale, p, seed, *[t for d in dirs for t in d])

def attention(q, k, v, key_padding_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              scale: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, per head; returns (B, Lq, H, D).

    Dropout (``dropout_p`` > 0) is applied to the probabilities, as in BERT; pass 0 in eval."""
    _check_qkv(q, k, v, key_padding_mask)
    p = check_dropout_p("attention", dropout_p)
    if not use_kernel(impl, q, "attention", fits=q.shape[-1] <= MAX_HEAD_DIM):
        return attention_ref(q, k, v, key_padding_mask, p, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _run_kernel([_prepare(q, k, v, key_padding_mask, "attention")], p, scale)[0]


def cross_attention_pair(q_l, k_l, v_l, q_v, k_v, v_v, mask_l=None, mask_v=None,
                         dropout_p: float = 0.0,
                         impl: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """LXMERT's shared cross-attention, both directions (one launch forward, one backward):
    out_l = attention(q_l, k_v, v_v, mask_v) and out_v = attention(q_v, k_l, v_l, mask_l)."""
    name_l, name_v = ("cross_attention_pair (language->vision)",
                      "cross_attention_pair (vision->language)")
    _check_qkv(q_l, k_v, v_v, mask_v, name_l)
    _check_qkv(q_v, k_l, v_l, mask_l, name_v)
    p = check_dropout_p("cross_attention_pair", dropout_p)
    if not use_kernel(impl, q_l, "cross_attention_pair", fits=q_l.shape[-1] <= MAX_HEAD_DIM):
        return (attention_ref(q_l, k_v, v_v, mask_v, p), attention_ref(q_v, k_l, v_l, mask_l, p))
    if q_l.shape[0] != q_v.shape[0] or q_l.shape[2:] != q_v.shape[2:] or q_l.dtype != q_v.dtype:
        raise ValueError(f"cross_attention_pair: q_l {tuple(q_l.shape)} {q_l.dtype} and q_v "
                         f"{tuple(q_v.shape)} {q_v.dtype} must share B, H, D and dtype")
    dirs = [_prepare(q_l, k_v, v_v, mask_v, name_l), _prepare(q_v, k_l, v_l, mask_l, name_v)]
    out_l, out_v = _run_kernel(dirs, p, 1.0 / math.sqrt(q_l.shape[-1]))
    return out_l, out_v
