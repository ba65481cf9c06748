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
backward. Dropout on the probabilities uses a counter-based RNG (``_dropout.py``) in the forward,
which stores the keep mask packed 8 keys per byte ((B, H, Lq, ceil(Lk / 8)) uint8 per direction:
1/16 of the bfloat16 probabilities it masks); the backward reads it back and draws no random
numbers.

Limits: any Lq, Lk >= 1. Rows of up to ``BK`` keys (forward: 128 at head dim 64; backward: 64)
are held whole; longer rows are processed in key blocks with an online softmax (forward) and a
second loop nest for dq (backward), so 512 and beyond run in the kernel. Head dims (any, padded
to a power of two) up to ``MAX_HEAD_DIM`` per dtype on a GPU: 256 for float16/bfloat16, 32 for
float32 (see ``MAX_HEAD_DIM``: exact fp32 products have no tensor-core path on sm_90 and spill
from head dim 64). Beyond them, and for other dtypes, impl="auto" runs the reference and
impl="triton" raises naming the dtype and head dim. Batch offsets are int64; one example's
q/k/v must span fewer than 2**31 elements (checked, the error names the shapes). Dropout
counters are per (batch, head) program, so no product of sizes wraps.

Launch configuration (``_CONFIG``/``_plan``; ptxas for sm_90 through
tests/kernels/kernel_sm90_compile.py, figures in benchmarks/results/sm90-compile-triton-3.9/;
not yet timed on a GPU): 16-bit forward query blocks of up to 64 rows, backward of 16 rows, 4
warps. At LXMERT's shapes (head dim 64, 20 tokens, 36 objects) the forward uses 104-186 registers
(2-4 programs per SM, so one program's loads overlap another's math) and the backward 122-223
(2-4 programs per SM), no spills (triton 3.9; 3.6 is clean too). A single direction launches
its own kernel (no arguments passed twice); the pair launches grid (B*H, 2).
"""
import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dropout import (check_dropout_p, draw_seed, keep4_packed, kernel_seed_args, load_keep,
                       seed_args)
from ._impl import check_tensors, next_pow2, tl, triton, use_kernel

# Largest head dim the kernels take on a GPU, per dtype; larger ones run the reference under
# "auto" and raise under "triton". float32 stops at 32: its exact ("ieee") products have no tensor
# core path on sm_90, and the CUDA-core dot of a 64-wide head spills registers in the backward
# (ptxas: 400-1300 B per thread), so float32 attention at LXMERT's head dim 64 is torch's cuBLAS
# matmuls. The interpreter (CPU tests) takes every head dim up to 256 in float32: it checks the
# kernels' logic, which is the same code for every dtype.
MAX_HEAD_DIM = {torch.float16: 256, torch.bfloat16: 256, torch.float32: 32}
INTERPRETER_MAX_HEAD_DIM = 256


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
    (B, _, H, D), (Bk, Lk, Hk, Dk) = q.shape, k.shape
    if tuple(k.shape) != tuple(v.shape) or B != Bk or H != Hk or D != Dk:
        raise ValueError(f"{name}: shapes do not match: q {tuple(q.shape)} (B, Lq, H, D), "
                         f"k {tuple(k.shape)} and v {tuple(v.shape)} (B, Lk, H, D)")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (Bk, Lk):
        raise ValueError(f"{name}: key_padding_mask shape {tuple(key_padding_mask.shape)} != "
                         f"(B, Lk) = {(Bk, Lk)}")


# ---------------------------------------------------------------------------------------------
# Triton kernels. One program = one (batch, head) of one direction; it holds whole score rows
# (up to BK keys) and walks query blocks of BQ rows. Rows longer than BK keys use an online
# softmax over key blocks (forward) and a second loop nest for dq (backward): still no atomics.
# Scores live in the log2 domain (qk_scale = scale * log2(e)); lse is stored in that domain and is
# +inf for rows whose keys are all masked, so their probabilities (and gradients) are exactly 0.
# DOT is "ieee" for float32 inputs (full fp32 products, as torch's default matmul), else "tf32"
# (ignored for 16-bit operands). Batch offsets are int64 (b * stride can pass 2**31); offsets
# inside one (batch, head) are int32, checked by the launcher. Dropout: ``_dropout.keep4_packed``
# with counters (query row, 4-key group) in the program's own stream (2 * bh + direction); the
# forward stores the packed mask (row stride ceil(Lk / 8) bytes), the backward reads it back
# (``load_keep``).
# ---------------------------------------------------------------------------------------------
@triton.jit
def _key_block(k_ptr, v_ptr, m_ptr, k0, Lk, skl, svl, sml, dmask, HAS_MASK: tl.constexpr,
               BK: tl.constexpr):
    """Key block ``k0``: (key offsets, load mask, k, v, valid keys: in range and not padding)."""
    offs_k = k0 + tl.arange(0, BK)
    valid = offs_k < Lk
    kv_mask = valid[:, None] & dmask[None, :]
    k = tl.load(k_ptr + offs_k[:, None] * skl, mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + offs_k[:, None] * svl, mask=kv_mask, other=0.0)
    if HAS_MASK:
        valid = valid & (tl.load(m_ptr + offs_k * sml, mask=offs_k < Lk, other=0) != 0)
    return offs_k, kv_mask, k, v, valid


@triton.jit
def _query_block(q_ptr, do_ptr, o_ptr, lse_ptr, q0, Lq, sql, sdl, so, dmask, BQ: tl.constexpr):
    """Query block ``q0`` of the backward: (query offsets, load mask, q, dout, out, lse)."""
    offs_q = q0 + tl.arange(0, BQ)
    rows = (offs_q < Lq)[:, None] & dmask[None, :]
    q = tl.load(q_ptr + offs_q[:, None] * sql, mask=rows, other=0.0)
    do = tl.load(do_ptr + offs_q[:, None] * sdl, mask=rows, other=0.0)
    o = tl.load(o_ptr + offs_q[:, None] * so, mask=rows, other=0.0)
    lse = tl.load(lse_ptr + offs_q, mask=offs_q < Lq, other=float("inf"))
    return offs_q, rows, q, do, o, lse


@triton.jit
def _attn_fwd_one(q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, lse_ptr, keep_ptr, seed, call, thr, bh,
                  stream, H, Lq, Lk, D, sqb, sql, sqh, skb, skl, skh, svb, svl, svh, smb, sml,
                  qk_scale, inv_keep, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                  DOT: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    q_ptr += b * sqb + h * sqh + offs_d[None, :]
    k_ptr += b * skb + h * skh + offs_d[None, :]
    v_ptr += b * svb + h * svh + offs_d[None, :]
    o_ptr += (b * Lq * H + h) * D + offs_d[None, :]  # out: contiguous (B, Lq, H, D)
    lse_ptr += bh.to(tl.int64) * Lq
    m_ptr += b * smb
    lk4 = (Lk + 3) // 4
    lk8 = (Lk + 7) // 8
    keep_ptr += bh.to(tl.int64) * Lq * lk8  # keep: (B, H, Lq, ceil(Lk / 8)) uint8
    for q0 in range(0, Lq, BQ):
        offs_q = q0 + tl.arange(0, BQ)
        rows = (offs_q < Lq)[:, None] & dmask[None, :]
        q = tl.load(q_ptr + offs_q[:, None] * sql, mask=rows, other=0.0)
        m_i = tl.full([BQ], float("-inf"), tl.float32)
        l_i = tl.zeros([BQ], tl.float32)
        acc = tl.zeros([BQ, BD], tl.float32)
        for k0 in range(0, Lk, BK):
            offs_k, kv_mask, k, v, valid = _key_block(
                k_ptr, v_ptr, m_ptr, k0, Lk, skl, svl, sml, dmask, HAS_MASK, BK)
            s = tl.dot(q, tl.trans(k), input_precision=DOT) * qk_scale  # (BQ, BK)
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if DROPOUT:
                groups = offs_q[:, None] * lk4 + (k0 // 4 + tl.arange(0, BK // 4))[None, :]
                keep, bits = keep4_packed(seed, groups, stream, call, thr)
                p = tl.where(keep, p, 0.0)
                offs_b = k0 // 8 + tl.arange(0, BK // 8)
                tl.store(keep_ptr + offs_q[:, None] * lk8 + offs_b[None, :], bits,
                         mask=(offs_q < Lq)[:, None] & (offs_b < lk8)[None, :])
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT)
            m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        inv_l = tl.where(l_i > 0, 1.0 / l_safe, 0.0)
        if DROPOUT:
            inv_l = inv_l * inv_keep
        out = acc * inv_l[:, None]
        tl.store(o_ptr + offs_q[:, None] * (H * D), out.to(o_ptr.dtype.element_ty), mask=rows)
        lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), float("inf"))
        tl.store(lse_ptr + offs_q, lse, mask=offs_q < Lq)


@triton.jit
def _attn_dscores(q, do, o, lse, k, v, valid, offs_q, k0, Lq, keep_ptr, lk8, qk_scale, scale,
                  inv_keep, DROPOUT: tl.constexpr, DOT: tl.constexpr, BK: tl.constexpr):
    """Recompute one (BQ, BK) tile: returns (dropped probabilities, d scores * scale). The keep
    mask is the forward's, read back from its packed bytes (no random numbers here)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT) * qk_scale
    p = tl.where(valid[None, :], tl.exp2(s - lse[:, None]), 0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # rowsum(P * dP) = rowsum(dO * O)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT)
    if DROPOUT:
        offs_k = k0 + tl.arange(0, BK)
        keep = load_keep(keep_ptr + offs_q[:, None] * lk8, offs_k,
                         (offs_q < Lq)[:, None] & (offs_k < lk8 * 8)[None, :])
        pd = tl.where(keep, p * inv_keep, 0.0)
        dp = tl.where(keep, dp * inv_keep, 0.0)
    else:
        pd = p
    return pd, p * (dp - delta[:, None]) * scale


@triton.jit
def _attn_bwd_one(q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, lse_ptr, keep_ptr, do_ptr, dq_ptr, dk_ptr,
                  dv_ptr, bh, H, Lq, Lk, D, sqb, sql, sqh, skb, skl, skh, svb, svl, svh, smb, sml,
                  sdb, sdl, sdh, qk_scale, scale, inv_keep,
                  HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr,
                  ONE_KB: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    b = (bh // H).to(tl.int64)
    h = bh % H
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
    lse_ptr += bh.to(tl.int64) * Lq
    lk8 = (Lk + 7) // 8
    keep_ptr += bh.to(tl.int64) * Lq * lk8
    for k0 in range(0, Lk, BK):  # dk, dv of one key block, summed over all query blocks
        offs_k, kv_mask, k, v, valid = _key_block(
            k_ptr, v_ptr, m_ptr, k0, Lk, skl, svl, sml, dmask, HAS_MASK, BK)
        dk = tl.zeros([BK, BD], tl.float32)
        dv = tl.zeros([BK, BD], tl.float32)
        for q0 in range(0, Lq, BQ):
            offs_q, rows, q, do, o, lse = _query_block(
                q_ptr, do_ptr, o_ptr, lse_ptr, q0, Lq, sql, sdl, H * D, dmask, BQ)
            pd, ds = _attn_dscores(q, do, o, lse, k, v, valid, offs_q, k0, Lq, keep_ptr, lk8,
                                   qk_scale, scale, inv_keep, DROPOUT, DOT, BK)
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
            offs_q, rows, q, do, o, lse = _query_block(
                q_ptr, do_ptr, o_ptr, lse_ptr, q0, Lq, sql, sdl, H * D, dmask, BQ)
            dq = tl.zeros([BQ, BD], tl.float32)
            for k0 in range(0, Lk, BK):
                offs_k, kv_mask, k, v, valid = _key_block(
                    k_ptr, v_ptr, m_ptr, k0, Lk, skl, svl, sml, dmask, HAS_MASK, BK)
                _, ds = _attn_dscores(q, do, o, lse, k, v, valid, offs_q, k0, Lq, keep_ptr, lk8,
                                      qk_scale, scale, inv_keep, DROPOUT, DOT, BK)
                dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT)
            tl.store(dq_ptr + offs_q[:, None] * (H * D), dq.to(dq_ptr.dtype.element_ty), mask=rows)


@triton.jit(do_not_specialize=["seed", "call"])
def _attn_fwd_kernel(seed_ptr, seed, call, thr, H, D, qk_scale, inv_keep,
                     q, k, v, m, o, lse, keep, Lq, Lk, sqb, sql, sqh, skb, skl, skh, svb, svl,
                     svh, smb, sml, HAS_MASK: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
                     SEED_IN_TENSOR: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr,
                     BD: tl.constexpr):
    bh = tl.program_id(0)
    if SEED_IN_TENSOR:  # else the host's seed (inline: the interpreter pays per jit call)
        seed = tl.load(seed_ptr)
    _attn_fwd_one(q, k, v, m, o, lse, keep, seed, call, thr, bh, 2 * bh, H, Lq, Lk, D, sqb, sql,
                  sqh, skb, skl, skh, svb, svl, svh, smb, sml, qk_scale, inv_keep, HAS_MASK,
                  DROPOUT, DOT, BQ, BK, BD)


@triton.jit(do_not_specialize=["seed", "call"])
def _attn_pair_fwd_kernel(seed_ptr, seed, call, thr, H, D, qk_scale, inv_keep,
                          qa, ka, va, ma, oa, la, keepa, Lqa, Lka, sqba, sqla, sqha, skba, skla,
                          skha, svba, svla, svha, smba, smla,
                          qb, kb, vb, mb, ob, lb, keepb, Lqb, Lkb, sqbb, sqlb, sqhb, skbb, sklb,
                          skhb, svbb, svlb, svhb, smbb, smlb,
                          MASK_A: tl.constexpr, BQ_A: tl.constexpr, BK_A: tl.constexpr,
                          MASK_B: tl.constexpr, BQ_B: tl.constexpr, BK_B: tl.constexpr,
                          SEED_IN_TENSOR: tl.constexpr, DROPOUT: tl.constexpr,
                          DOT: tl.constexpr, BD: tl.constexpr):
    bh = tl.program_id(0)
    if SEED_IN_TENSOR:  # else the host's seed (inline: the interpreter pays per jit call)
        seed = tl.load(seed_ptr)
    if tl.program_id(1) == 1:
        _attn_fwd_one(qb, kb, vb, mb, ob, lb, keepb, seed, call, thr, bh, 2 * bh + 1, H, Lqb,
                      Lkb, D, sqbb, sqlb, sqhb, skbb, sklb, skhb, svbb, svlb, svhb, smbb, smlb,
                      qk_scale, inv_keep, MASK_B, DROPOUT, DOT, BQ_B, BK_B, BD)
    else:
        _attn_fwd_one(qa, ka, va, ma, oa, la, keepa, seed, call, thr, bh, 2 * bh, H, Lqa, Lka,
                      D, sqba, sqla, sqha, skba, skla, skha, svba, svla, svha, smba, smla,
                      qk_scale, inv_keep, MASK_A, DROPOUT, DOT, BQ_A, BK_A, BD)


@triton.jit
def _attn_bwd_kernel(H, D, qk_scale, scale, inv_keep,
                     q, k, v, m, o, lse, keep, Lq, Lk, sqb, sql, sqh, skb, skl, skh, svb, svl,
                     svh, smb, sml, do, dq, dk, dv, sdb, sdl, sdh,
                     HAS_MASK: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
                     ONE_KB: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr,
                     BD: tl.constexpr):
    _attn_bwd_one(q, k, v, m, o, lse, keep, do, dq, dk, dv, tl.program_id(0), H, Lq, Lk, D,
                  sqb, sql, sqh, skb, skl, skh, svb, svl, svh, smb, sml, sdb, sdl, sdh, qk_scale,
                  scale, inv_keep, HAS_MASK, DROPOUT, DOT, ONE_KB, BQ, BK, BD)


@triton.jit
def _attn_pair_bwd_kernel(H, D, qk_scale, scale, inv_keep,
                          qa, ka, va, ma, oa, la, keepa, Lqa, Lka, sqba, sqla, sqha, skba, skla,
                          skha, svba, svla, svha, smba, smla, doa, dqa, dka, dva, sdba, sdla,
                          sdha,
                          qb, kb, vb, mb, ob, lb, keepb, Lqb, Lkb, sqbb, sqlb, sqhb, skbb, sklb,
                          skhb, svbb, svlb, svhb, smbb, smlb, dob, dqb, dkb, dvb, sdbb, sdlb,
                          sdhb,
                          MASK_A: tl.constexpr, BQ_A: tl.constexpr, BK_A: tl.constexpr,
                          ONE_A: tl.constexpr, MASK_B: tl.constexpr, BQ_B: tl.constexpr,
                          BK_B: tl.constexpr, ONE_B: tl.constexpr, DROPOUT: tl.constexpr,
                          DOT: tl.constexpr, BD: tl.constexpr):
    bh = tl.program_id(0)
    if tl.program_id(1) == 1:
        _attn_bwd_one(qb, kb, vb, mb, ob, lb, keepb, dob, dqb, dkb, dvb, bh, H, Lqb, Lkb, D,
                      sqbb, sqlb, sqhb, skbb, sklb, skhb, svbb, svlb, svhb, smbb, smlb, sdbb,
                      sdlb, sdhb, qk_scale, scale, inv_keep, MASK_B, DROPOUT, DOT, ONE_B, BQ_B,
                      BK_B, BD)
    else:
        _attn_bwd_one(qa, ka, va, ma, oa, la, keepa, doa, dqa, dka, dva, bh, H, Lqa, Lka, D,
                      sqba, sqla, sqha, skba, skla, skha, svba, svla, svha, smba, smla, sdba,
                      sdla, sdha, qk_scale, scale, inv_keep, MASK_A, DROPOUT, DOT, ONE_A, BQ_A,
                      BK_A, BD)


# ---------------------------------------------------------------------------------------------
# Launchers. A "direction" is (q, k, v, mask); attention launches one, the pair two (grid dim 1).
# ``seed`` is ``_dropout.seed_args``'s (tensor or None, int, call) or None without dropout. With
# dropout the forward also returns each direction's keep mask, (B, H, Lq, ceil(Lk / 8)) uint8
# (8 keys per byte), which the backward reads instead of drawing again; else None.
# ---------------------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634
_I32 = 2 ** 31
# Per (float32?, backward): the largest query block, the keys x head-dim elements of a key block
# held per program, and the most such elements for 4 warps (else 8). Sized with
# tests/kernels/kernel_sm90_compile.py: no spills, >= 2 programs per SM at LXMERT's shapes. The
# query block also keeps its (BQ, BD) accumulator within 4096 elements (head dim 256: 16 rows),
# and the backward runs 1 stage: software-pipelined loads (the keep-mask bytes among them) cost
# it up to ~70 registers and spilled at head dim 256.
_CONFIG = {(False, False): (64, 8192, 4096), (False, True): (16, 4096, 4096),
           (True, False): (16, 4096, 2048), (True, True): (16, 2048, 512)}


def _maxnreg(fp32, bd):
    """.maxnreg 255 for float32 and head dim 256: triton 3.6's ptxas otherwise held those at
    80-168 registers and spilled 16-64 B; elsewhere none (with it triton 3.9's ptxas takes up to
    60 more registers for the 16-bit LXMERT kernels). sm_90 compile check: clean on 3.6 and 3.9."""
    return 255 if fp32 or bd >= 256 else None


@functools.lru_cache(maxsize=4096)
def _plan(Lq, Lk, D, fp32, backward):
    """(BQ, BK, BD, one key block?, num_warps, num_stages) of one direction."""
    max_bq, elems, four_warps = _CONFIG[fp32, backward]
    bd = next_pow2(D, 16)
    bk = min(next_pow2(Lk, 16), max(16, elems // bd))
    bq = min(next_pow2(Lq, 16), max_bq, max(16, 4096 // bd))  # (BQ, BD) fp32 accumulator
    one = bk >= Lk
    warps = 4 if max(bq * bk, bk * bd) <= four_warps else 8
    if fp32 and not one:  # key blocks: halve them (no spills); the forward keeps its warps
        bk = max(16, bk // 2)
        warps = 4 if backward and max(bq * bk, bk * bd) <= four_warps else warps
    return bq, bk, bd, one, warps, (1 if one or backward else 2)


def _dir_args(q, k, v, mask, o, lse, keep):
    sq, sk, sv = q.stride(), k.stride(), v.stride()
    m, smb, sml = (q, 0, 0) if mask is None else (mask, mask.stride(0), mask.stride(1))
    return (q, k, v, m, o, lse, q if keep is None else keep, q.shape[1], k.shape[1], sq[0], sq[1],
            sq[2], sk[0], sk[1], sk[2], sv[0], sv[1], sv[2], smb, sml)


def _keep_shape(q, k):
    """The packed keep mask of one direction: (B, H, Lq, ceil(Lk / 8)) uint8."""
    return q.shape[0], q.shape[2], q.shape[1], (k.shape[1] + 7) // 8


def attention_forward(dirs, scale, p, seed):
    """Launch the forward for 1 or 2 directions; returns [(out (B, Lq, H, D), lse (B, H, Lq),
    keep mask (B, H, Lq, ceil(Lk / 8)) uint8 or None without dropout)]."""
    q0 = dirs[0][0]
    B, _, H, D = q0.shape
    fp32 = q0.dtype == torch.float32
    res = [(torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty((B, H, q.shape[1]), dtype=torch.float32, device=q.device),
            torch.empty(_keep_shape(q, k), dtype=torch.uint8, device=q.device) if p > 0 else None)
           for q, k, _, _ in dirs]
    if B * H == 0:
        return res
    head, in_tensor = kernel_seed_args(q0, p, seed)
    head += (H, D, scale * _LOG2E, 1.0 / (1.0 - p))
    dot = "ieee" if fp32 else "tf32"
    if len(dirs) == 1:
        (q, k, v, mask), (o, lse, keep) = dirs[0], res[0]
        bq, bk, bd, _, warps, stages = _plan(q.shape[1], k.shape[1], D, fp32, False)
        _attn_fwd_kernel[(B * H,)](*head, *_dir_args(q, k, v, mask, o, lse, keep), mask is not None,
                                   bq, bk, in_tensor, p > 0, dot, bd, num_warps=warps,
                                   num_stages=stages, maxnreg=_maxnreg(fp32, bd))
        return res
    (qa, ka, va, ma), (qb, kb, vb, mb) = dirs
    pa = _plan(qa.shape[1], ka.shape[1], D, fp32, False)
    pb = _plan(qb.shape[1], kb.shape[1], D, fp32, False)
    _attn_pair_fwd_kernel[(B * H, 2)](
        *head, *_dir_args(qa, ka, va, ma, *res[0]), *_dir_args(qb, kb, vb, mb, *res[1]),
        ma is not None, pa[0], pa[1], mb is not None, pb[0], pb[1], in_tensor, p > 0, dot, pa[2],
        num_warps=max(pa[4], pb[4]), num_stages=max(pa[5], pb[5]),
        maxnreg=_maxnreg(fp32, pa[2]))
    return res


def _grads(q, k):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _bwd_dir_args(d, o, lse, keep, do, g):
    do = do if do.stride(-1) == 1 else do.contiguous()
    sd = do.stride()
    return _dir_args(*d, o, lse, keep) + (do, *g, sd[0], sd[1], sd[2])


def attention_backward(dirs, outs, lses, keeps, douts, scale, p):
    """Launch the backward for 1 or 2 directions with the forward's keep masks (None without
    dropout); returns [(dq, dk, dv)] (contiguous). Draws no random numbers."""
    q0 = dirs[0][0]
    B, _, H, D = q0.shape
    fp32 = q0.dtype == torch.float32
    grads = [_grads(q, k) for q, k, _, _ in dirs]
    if B * H == 0:
        return grads
    head = (H, D, scale * _LOG2E, scale, 1.0 / (1.0 - p))
    dot = "ieee" if fp32 else "tf32"
    args = [_bwd_dir_args(*z) for z in zip(dirs, outs, lses, keeps, douts, grads)]
    if len(dirs) == 1:
        q, k = dirs[0][0], dirs[0][1]
        bq, bk, bd, one, warps, stages = _plan(q.shape[1], k.shape[1], D, fp32, True)
        _attn_bwd_kernel[(B * H,)](*head, *args[0], dirs[0][3] is not None, bq, bk, one, p > 0,
                                   dot, bd, num_warps=warps, num_stages=stages,
                                   maxnreg=_maxnreg(fp32, bd))
        return grads
    pa = _plan(dirs[0][0].shape[1], dirs[0][1].shape[1], D, fp32, True)
    pb = _plan(dirs[1][0].shape[1], dirs[1][1].shape[1], D, fp32, True)
    _attn_pair_bwd_kernel[(B * H, 2)](
        *head, *args[0], *args[1], dirs[0][3] is not None, pa[0], pa[1], pa[3],
        dirs[1][3] is not None, pb[0], pb[1], pb[3], p > 0, dot, pa[2],
        num_warps=max(pa[4], pb[4]), num_stages=max(pa[5], pb[5]),
        maxnreg=_maxnreg(fp32, pa[2]))
    return grads


# ---------------------------------------------------------------------------------------------
# Eager autograd (one Function per direction count, no argument lists built per call) and the
# same launchers as torch custom ops for torch.compile (no graph break at the kernels).
# ---------------------------------------------------------------------------------------------
class _AttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale, p, seed):
        (out, lse, keep), = attention_forward(((q, k, v, mask),), scale, p, seed)
        ctx.save_for_backward(q, k, v, mask, out, lse, keep)
        ctx.args = scale, p
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask, out, lse, keep = ctx.saved_tensors
        scale, p = ctx.args
        (dq, dk, dv), = attention_backward(((q, k, v, mask),), (out,), (lse,), (keep,), (dout,),
                                           scale, p)
        return dq, dk, dv, None, None, None, None


class _PairFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qa, ka, va, ma, qb, kb, vb, mb, scale, p, seed):
        (oa, la, keep_a), (ob, lb, keep_b) = attention_forward(
            ((qa, ka, va, ma), (qb, kb, vb, mb)), scale, p, seed)
        ctx.save_for_backward(qa, ka, va, ma, qb, kb, vb, mb, oa, la, keep_a, ob, lb, keep_b)
        ctx.args = scale, p
        return oa, ob

    @staticmethod
    def backward(ctx, doa, dob):
        qa, ka, va, ma, qb, kb, vb, mb, oa, la, keep_a, ob, lb, keep_b = ctx.saved_tensors
        scale, p = ctx.args
        doa = torch.zeros_like(oa) if doa is None else doa
        dob = torch.zeros_like(ob) if dob is None else dob
        ga, gb = attention_backward(((qa, ka, va, ma), (qb, kb, vb, mb)), (oa, ob), (la, lb),
                                    (keep_a, keep_b), (doa, dob), scale, p)
        return (*ga, None, *gb, None, None, None, None)


# The custom ops return a keep mask always (custom ops return tensors): (0,) uint8 when p == 0.
def _tseed(seed):
    return None if seed is None else (seed, 0, 0)


def _no_keep(q):
    return q.new_empty((0,), dtype=torch.uint8)


def _keep_or_none(keep, p):
    return keep if p > 0 else None


def _fake_out(q, k, p):
    B, Lq, H, _ = q.shape
    keep = q.new_empty(_keep_shape(q, k), dtype=torch.uint8) if p > 0 else _no_keep(q)
    return q.new_empty(q.shape), q.new_empty((B, H, Lq), dtype=torch.float32), keep


@torch.library.custom_op("lxmert_fast::attn_fwd", mutates_args=())
def attn_fwd(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], seed: Optional[Tensor],
             scale: float, p: float) -> Tuple[Tensor, Tensor, Tensor]:
    out, lse, keep = attention_forward(((q, k, v, mask),), scale, p, _tseed(seed))[0]
    return out, lse, _no_keep(q) if keep is None else keep


@attn_fwd.register_fake
def _(q, k, v, mask, seed, scale, p):
    return _fake_out(q, k, p)


@torch.library.custom_op("lxmert_fast::attn_bwd", mutates_args=())
def attn_bwd(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], out: Tensor, lse: Tensor,
             keep: Tensor, dout: Tensor, scale: float,
             p: float) -> Tuple[Tensor, Tensor, Tensor]:
    return attention_backward(((q, k, v, mask),), (out,), (lse,), (_keep_or_none(keep, p),),
                              (dout,), scale, p)[0]


@attn_bwd.register_fake
def _(q, k, v, mask, out, lse, keep, dout, scale, p):
    return q.new_empty(q.shape), k.new_empty(k.shape), k.new_empty(k.shape)


def _attn_setup(ctx, inputs, output):
    q, k, v, mask, _, scale, p = inputs
    ctx.save_for_backward(q, k, v, mask, *output)
    ctx.scale, ctx.p = scale, p


def _attn_backward(ctx, dout, _dlse, _dkeep):
    q, k, v, mask, out, lse, keep = ctx.saved_tensors
    dq, dk, dv = attn_bwd(q, k, v, mask, out, lse, keep, dout, ctx.scale, ctx.p)
    return dq, dk, dv, None, None, None, None


attn_fwd.register_autograd(_attn_backward, setup_context=_attn_setup)


@torch.library.custom_op("lxmert_fast::attn_pair_fwd", mutates_args=())
def attn_pair_fwd(qa: Tensor, ka: Tensor, va: Tensor, ma: Optional[Tensor], qb: Tensor,
                  kb: Tensor, vb: Tensor, mb: Optional[Tensor], seed: Optional[Tensor],
                  scale: float, p: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    (oa, la, keep_a), (ob, lb, keep_b) = attention_forward(
        ((qa, ka, va, ma), (qb, kb, vb, mb)), scale, p, _tseed(seed))
    return (oa, la, _no_keep(qa) if keep_a is None else keep_a,
            ob, lb, _no_keep(qb) if keep_b is None else keep_b)


@attn_pair_fwd.register_fake
def _(qa, ka, va, ma, qb, kb, vb, mb, seed, scale, p):
    return (*_fake_out(qa, ka, p), *_fake_out(qb, kb, p))


@torch.library.custom_op("lxmert_fast::attn_pair_bwd", mutates_args=())
def attn_pair_bwd(qa: Tensor, ka: Tensor, va: Tensor, ma: Optional[Tensor], qb: Tensor,
                  kb: Tensor, vb: Tensor, mb: Optional[Tensor], oa: Tensor, la: Tensor,
                  keep_a: Tensor, ob: Tensor, lb: Tensor, keep_b: Tensor, doa: Tensor,
                  dob: Tensor, scale: float,
                  p: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    ga, gb = attention_backward(((qa, ka, va, ma), (qb, kb, vb, mb)), (oa, ob), (la, lb),
                                (_keep_or_none(keep_a, p), _keep_or_none(keep_b, p)),
                                (doa, dob), scale, p)
    return (*ga, *gb)


@attn_pair_bwd.register_fake
def _(qa, ka, va, ma, qb, kb, vb, mb, oa, la, keep_a, ob, lb, keep_b, doa, dob, scale, p):
    return (qa.new_empty(qa.shape), ka.new_empty(ka.shape), ka.new_empty(ka.shape),
            qb.new_empty(qb.shape), kb.new_empty(kb.shape), kb.new_empty(kb.shape))


def _pair_setup(ctx, inputs, output):
    *tensors, _, scale, p = inputs
    ctx.save_for_backward(*tensors, *output)
    ctx.scale, ctx.p = scale, p


def _pair_backward(ctx, doa, _dla, _dka, dob, _dlb, _dkb):
    qa, ka, va, ma, qb, kb, vb, mb, oa, la, keep_a, ob, lb, keep_b = ctx.saved_tensors
    doa = torch.zeros_like(oa) if doa is None else doa
    dob = torch.zeros_like(ob) if dob is None else dob
    g = attn_pair_bwd(qa, ka, va, ma, qb, kb, vb, mb, oa, la, keep_a, ob, lb, keep_b, doa, dob,
                      ctx.scale, ctx.p)
    return (*g[:3], None, *g[3:], None, None, None, None)


attn_pair_fwd.register_autograd(_pair_backward, setup_context=_pair_setup)


# ---------------------------------------------------------------------------------------------
# Public ops.
# ---------------------------------------------------------------------------------------------
def _unfit(q, name):
    """Why the kernel cannot take this problem (the reason the reference runs), or None."""
    D = q.shape[-1]
    limit = MAX_HEAD_DIM.get(q.dtype, 0) if q.is_cuda else INTERPRETER_MAX_HEAD_DIM
    if D > limit:
        return (f"does not support head dim {D} in {q.dtype} on {q.device.type} (at most "
                f"{limit}; beyond it the sm_90 kernel would spill registers or exceed shared "
                f"memory): use impl='auto' (the reference) or 'torch'")
    return None


def _prepare(q, k, v, mask, name):
    """Kernel-side checks of one direction (shapes were checked); unit last-dim strides."""
    dt, dev = q.dtype, q.device
    if k.dtype != dt or v.dtype != dt or k.device != dev or v.device != dev:
        check_tensors(name, dev, dt, k=k, v=v)
    if mask is not None and (mask.dtype != torch.bool or mask.device != dev):
        raise TypeError(f"{name}: key_padding_mask must be a bool tensor on {dev}; got "
                        f"{mask.dtype} on {mask.device}")
    Lq, Lk = q.shape[1], k.shape[1]
    if Lq < 1 or Lk < 1:
        raise ValueError(f"{name}: sequence lengths must be >= 1; got Lq={Lq}, Lk={Lk}")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    if max(Lq * q.stride(1), Lk * k.stride(1), Lk * v.stride(1), Lq * q.shape[2] * q.shape[3],
           Lk * k.shape[2] * k.shape[3], Lq * ((Lk + 3) // 4)) >= _I32:
        raise ValueError(f"{name}: one example's q {tuple(q.shape)} / k {tuple(k.shape)} spans "
                         f"2**31 elements or more, beyond the kernel's int32 in-head offsets")
    return q, k, v, mask


def _seed(p, device):
    if p == 0:
        return None
    if torch.compiler.is_compiling():
        return draw_seed(device)
    return seed_args(device)


def attention(q, k, v, key_padding_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              scale: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, per head; returns (B, Lq, H, D).

    Dropout (``dropout_p`` > 0) is applied to the probabilities, as in BERT; pass 0 in eval."""
    _check_qkv(q, k, v, key_padding_mask)
    p = check_dropout_p("attention", dropout_p)
    if not use_kernel(impl, q, "attention", _unfit(q, "attention")):
        return attention_ref(q, k, v, key_padding_mask, p, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q, k, v, mask = _prepare(q, k, v, key_padding_mask, "attention")
    seed = _seed(p, q.device)
    if torch.compiler.is_compiling():
        return attn_fwd(q, k, v, mask, seed, scale, p)[0]
    return _AttentionFn.apply(q, k, v, mask, scale, p, seed)


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
    if not use_kernel(impl, q_l, "cross_attention_pair", _unfit(q_l, "cross_attention_pair")):
        return (attention_ref(q_l, k_v, v_v, mask_v, p), attention_ref(q_v, k_l, v_l, mask_l, p))
    if q_l.shape[0] != q_v.shape[0] or q_l.shape[2:] != q_v.shape[2:] or q_l.dtype != q_v.dtype:
        raise ValueError(f"cross_attention_pair: q_l {tuple(q_l.shape)} {q_l.dtype} and q_v "
                         f"{tuple(q_v.shape)} {q_v.dtype} must share B, H, D and dtype")
    a = _prepare(q_l, k_v, v_v, mask_v, name_l)
    b = _prepare(q_v, k_l, v_l, mask_l, name_v)
    scale = 1.0 / math.sqrt(q_l.shape[-1])
    seed = _seed(p, q_l.device)
    if torch.compiler.is_compiling():
        out_l, _, _, out_v, _, _ = attn_pair_fwd(*a, *b, seed, scale, p)
        return out_l, out_v
    return _PairFn.apply(*a, *b, scale, p, seed)
