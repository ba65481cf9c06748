"""Dropout inside the kernels (lxmert_fast/kernels/_dropout.py): keep rate and scaling within
statistical bounds, the backward using the forward's mask (stored packed, 8 elements per byte: the
packed bytes match the forward's outputs and the backward draws no random numbers), reproducibility
from torch's RNG state (manual_seed, get/set_rng_state, activation checkpointing)."""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kernel_parity_testutil import DEVICE, assert_parity, padding_mask
from lxmert_fast.kernels import attention, cross_attention_pair, dropout_add_layer_norm

A, LN = (importlib.import_module(f"lxmert_fast.kernels.{m}") for m in ("attention", "layernorm"))

P = 0.3
SIGMAS = 5


@pytest.fixture(params=["default", "host seed"])
def seed_mode(request, monkeypatch):
    """Both ways a launch gets its Philox key: the default of the device (a seed tensor on CPU;
    torch's CUDA Philox state read on the host on a GPU) and host (seed, call) ints, emulated
    from torch's generator on the device so that manual_seed reproduces them."""
    if request.param == "host seed":
        def host(device):
            seed, call = torch.randint(0, 2 ** 62, (2,), device=device).tolist()
            return None, seed, call * 4

        for mod in ("attention", "layernorm"):
            monkeypatch.setattr(importlib.import_module(f"lxmert_fast.kernels.{mod}"),
                                "seed_args", host)
    return request.param


def _assert_rate(keep, p=P):
    n = keep.numel()
    rate = keep.float().mean().item()
    bound = SIGMAS * math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) <= bound, f"keep rate {rate:.4f} vs {1 - p} +- {bound:.4f} (n={n})"


def _attention_keep(B, Lq, Lk, H, seed):
    """The keep mask (B, H, Lq, Lk) the kernel draws for ``seed``: zero queries give uniform
    probabilities 1/Lk and one-hot values read each dropped probability back."""
    q = torch.zeros(B, Lq, H, Lk, device=DEVICE)
    v = torch.eye(Lk, device=DEVICE)[None, :, None, :].expand(B, Lk, H, Lk).contiguous()
    torch.manual_seed(seed)
    scaled = attention(q, q[:, :1].expand(B, Lk, H, Lk), v, dropout_p=P, impl="triton") * Lk
    kept = scaled > 0
    torch.testing.assert_close(scaled[kept], torch.full_like(scaled[kept], 1 / (1 - P)))
    return kept.permute(0, 2, 1, 3)  # (B, H, Lq, Lk)


def _attention_with_keep(q, k, v, mask, keep):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, -1) * keep / (1 - P)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)


def test_attention_dropout_rate_scaling_and_backward_mask(seed_mode):
    B, Lq, Lk, H, D = 2, 32, 32, 2, 32  # few programs: the interpreter pays per program
    keep = _attention_keep(B, Lq, Lk, H, seed=11)
    _assert_rate(keep)
    q, k, v = (torch.randn(B, n, H, D, device=DEVICE) for n in (Lq, Lk, Lk))
    mask = padding_mask(B, Lk, [32, 9])

    def kernel(q, k, v):
        torch.manual_seed(11)  # same seed: the same counters give the same mask
        return attention(q, k, v, mask, P, impl="triton")

    assert_parity(kernel, lambda q, k, v: _attention_with_keep(q, k, v, mask, keep), [q, k, v],
                  [torch.randn(B, Lq, H, D, device=DEVICE)], torch.float32,
                  ["out", "dq", "dk", "dv"])


def test_cross_pair_dropout_masks_and_backward():
    """Both directions draw independent masks from one seed; the backward uses each."""
    B, H, Lt, No = 2, 2, 8, 16
    z_l, z_v = torch.zeros(B, Lt, H, No, device=DEVICE), torch.zeros(B, No, H, No, device=DEVICE)
    eye_v = torch.eye(No, device=DEVICE)[None, :, None, :].expand(B, No, H, No).contiguous()
    eye_l = torch.eye(No, device=DEVICE)[None, :Lt, None, :].expand(B, Lt, H, No).contiguous()
    torch.manual_seed(5)
    out_l, out_v = cross_attention_pair(z_l, z_l, eye_l, z_v, z_v, eye_v, dropout_p=P,
                                        impl="triton")
    keep_l = (out_l * No > 0).permute(0, 2, 1, 3)  # (B, H, Lt, No): language queries
    keep_v = (out_v[..., :Lt] * Lt > 0).permute(0, 2, 1, 3)  # (B, H, No, Lt)
    _assert_rate(torch.cat([keep_l.flatten(), keep_v.flatten()]))
    assert not torch.equal(keep_l[:, :, :, :Lt], keep_v[:, :, :Lt, :].transpose(-1, -2))
    t = [torch.randn(B, n, H, 16, device=DEVICE) for n in (Lt,) * 3 + (No,) * 3]
    ml, mv = padding_mask(B, Lt, [Lt, 5]), padding_mask(B, No, [No, 7])

    def kernel(*t):
        torch.manual_seed(5)
        return cross_attention_pair(*t, ml, mv, P, impl="triton")

    def ref(q_l, k_l, v_l, q_v, k_v, v_v):
        return (_attention_with_keep(q_l, k_v, v_v, mv, keep_l),
                _attention_with_keep(q_v, k_l, v_l, ml, keep_v))

    douts = [torch.randn(B, Lt, H, 16, device=DEVICE), torch.randn(B, No, H, 16, device=DEVICE)]
    assert_parity(kernel, ref, t, douts, torch.float32,
                  ["out_l", "out_v", "dq_l", "dk_l", "dv_l", "dq_v", "dk_v", "dv_v"])


def test_layer_norm_dropout_rate_and_backward_mask(seed_mode):
    M, N = 64, 64
    ones, w = torch.ones(M, N, device=DEVICE), torch.ones(N, device=DEVICE)
    b = torch.zeros(N, device=DEVICE)
    torch.manual_seed(3)
    keep = dropout_add_layer_norm(ones, None, w, b, 1e-12, P, impl="triton") > 0
    _assert_rate(keep)
    inputs = [torch.randn(M, N, device=DEVICE), torch.randn(M, N, device=DEVICE),
              1 + 0.1 * torch.randn(N, device=DEVICE), torch.randn(N, device=DEVICE),
              torch.randn(N, device=DEVICE)]

    def kernel(x, r, w, b, xb):
        torch.manual_seed(3)
        return dropout_add_layer_norm(x, r, w, b, 1e-12, P, xb, impl="triton")

    def ref(x, r, w, b, xb):
        return F.layer_norm((x + xb) * keep / (1 - P) + r, (N,), w, b, 1e-12)

    assert_parity(kernel, ref, inputs, [torch.randn(M, N, device=DEVICE)], torch.float32,
                  ["y", "dx", "dresidual", "dweight", "dbias", "dx_bias"])


def _unpack(keep, n):
    """The (..., n) bool mask of packed (..., ceil(n / 8)) uint8 bytes: bit b of byte m is
    element 8m + b (lxmert_fast/kernels/_dropout.py)."""
    bits = (keep[..., None].to(torch.int32) >> torch.arange(8, device=keep.device)) & 1
    return bits.flatten(-2)[..., :n].bool()


def _seed_tensor():
    return torch.tensor([1234], dtype=torch.int64, device=DEVICE)


def test_attention_packed_mask_is_the_forwards_mask():
    """The bytes the forward stores, unpacked, give its outputs through the reference dropout
    structure, for one direction and the pair (lengths not multiples of 8, padded keys)."""
    B, H, D, Lt, No = 2, 2, 16, 12, 20
    scale = 1 / math.sqrt(D)
    t = [torch.randn(B, n, H, D, device=DEVICE) for n in (Lt,) * 3 + (No,) * 3]
    ml, mv = padding_mask(B, Lt, [Lt, 5]), padding_mask(B, No, [No, 9])
    q_l, k_l, v_l, q_v, k_v, v_v = t
    (out, _, keep), = A.attention_forward(((q_l, k_v, v_v, mv),), scale, P, (_seed_tensor(), 0, 0))
    assert keep.shape == (B, H, Lt, 3) and keep.dtype == torch.uint8
    bits = _unpack(keep, No)
    _assert_rate(bits[mv[:, None, None, :].expand_as(bits)])
    torch.testing.assert_close(out, _attention_with_keep(q_l, k_v, v_v, mv, bits))
    res = A.attention_forward(((q_l, k_v, v_v, mv), (q_v, k_l, v_l, ml)), scale, P,
                              (_seed_tensor(), 0, 0))
    assert res[0][2].shape == (B, H, Lt, 3) and res[1][2].shape == (B, H, No, 2)
    torch.testing.assert_close(res[0][0], _attention_with_keep(q_l, k_v, v_v, mv,
                                                               _unpack(res[0][2], No)))
    torch.testing.assert_close(res[1][0], _attention_with_keep(q_v, k_l, v_l, ml,
                                                               _unpack(res[1][2], Lt)))


def test_layer_norm_packed_mask_is_the_forwards_mask():
    M, N = 6, 20
    x, r = torch.randn(M, N, device=DEVICE), torch.randn(M, N, device=DEVICE)
    w, b, xb = (torch.randn(N, device=DEVICE) for _ in range(3))
    y, _, _, keep = LN.layer_norm_forward(x, r, w, b, xb, (_seed_tensor(), 0, 0), 1e-12, P)
    assert keep.shape == (M, 3) and keep.dtype == torch.uint8
    bits = _unpack(keep, N)
    _assert_rate(bits)
    torch.testing.assert_close(y, F.layer_norm((x + xb) * bits / (1 - P) + r, (N,), w, b, 1e-12))


class _SeedBox:
    """Hands every dropout call the one seed tensor ``self.seed`` (the seed-tensor path)."""

    def __init__(self):
        self.seed = _seed_tensor()

    def __call__(self, device):
        return self.seed, 0, 0


def _attention_case(pair, custom_op):
    B, H, D, Lt, No = 1, 2, 16, 12, 20
    t = [torch.randn(B, n, H, D, device=DEVICE, requires_grad=True)
         for n in ((Lt,) * 3 + (No,) * 3 if pair else (Lt, No, No))]
    ml, mv = padding_mask(B, Lt, [9]), padding_mask(B, No, [17])
    if not pair:
        if custom_op:
            return t, lambda box, q, k, v: A.attn_fwd(q, k, v, mv, box.seed, 0.25, P)[:1]
        return t, lambda box, q, k, v: (attention(q, k, v, mv, P, impl="triton"),)
    if custom_op:
        return t, lambda box, *t: A.attn_pair_fwd(t[0], t[4], t[5], mv, t[3], t[1], t[2], ml,
                                                  box.seed, 0.25, P)[::3]
    return t, lambda box, *t: cross_attention_pair(*t, ml, mv, P, impl="triton")


def _layer_norm_case(custom_op):
    M, N = 6, 20
    t = [torch.randn(s, device=DEVICE, requires_grad=True) for s in ((M, N), (M, N), N, N, N)]
    if custom_op:
        return t, lambda box, *t: LN.ln_fwd(*t[:4], t[4], box.seed, 1e-12, P)[:1]
    return t, lambda box, *t: (dropout_add_layer_norm(*t[:4], 1e-12, P, t[4], impl="triton"),)


@pytest.mark.parametrize("custom_op", [False, True], ids=["eager", "custom op"])
@pytest.mark.parametrize("op", ["attention", "pair", "layer_norm"])
def test_backward_draws_no_random_numbers(op, custom_op, monkeypatch):
    """The seed tensor the forward drew from is overwritten before the backward: the gradients
    do not change (the backward reads the stored mask). The check can fail: that seed gives
    another mask, so a backward regenerating the mask from it would give other gradients."""
    box = _SeedBox()
    monkeypatch.setattr(A, "seed_args", box)
    monkeypatch.setattr(LN, "seed_args", box)
    inputs, run = _layer_norm_case(custom_op) if op == "layer_norm" else \
        _attention_case(op == "pair", custom_op)
    outs = run(box, *inputs)
    douts = [torch.randn_like(o) for o in outs]
    before = torch.autograd.grad(outs, inputs, douts, retain_graph=True)
    box.seed.add_(1)  # in place: the tensor the forward read
    after = torch.autograd.grad(outs, inputs, douts)
    for g0, g1 in zip(before, after):
        assert torch.equal(g0, g1)
    other = run(box, *inputs)
    assert all(not torch.equal(o, p) for o, p in zip(outs, other)), "the seed does not matter"


def _get_state():
    return torch.cuda.get_rng_state() if DEVICE == "cuda" else torch.get_rng_state()


def _set_state(state):
    (torch.cuda.set_rng_state if DEVICE == "cuda" else torch.set_rng_state)(state)


def _both_ops(x):
    h = dropout_add_layer_norm(x, x, torch.ones(16, device=DEVICE), torch.zeros(16, device=DEVICE),
                               1e-12, 0.5, impl="triton")
    q = h.view(1, 8, 2, 8)  # (B, L, H, D)
    return attention(q, q, q, dropout_p=0.5, impl="triton")


def test_dropout_reproducible_from_torch_rng_state(seed_mode):
    x = torch.randn(8, 16, device=DEVICE)
    torch.manual_seed(0)
    a = _both_ops(x)
    torch.manual_seed(0)
    assert torch.equal(a, _both_ops(x)), "same seed, different results"
    torch.manual_seed(1)
    assert not torch.equal(a, _both_ops(x)), "different seeds, same results"
    state = _get_state()
    c = _both_ops(x)
    _set_state(state)
    assert torch.equal(c, _both_ops(x)), "restored RNG state, different results"


def test_dropout_under_activation_checkpointing():
    """Recomputation in the backward restores the RNG state, so it sees the forward's masks."""
    x = torch.randn(8, 16, device=DEVICE, requires_grad=True)
    torch.manual_seed(2)
    g_plain = torch.autograd.grad(_both_ops(x).square().sum(), x)[0]
    torch.manual_seed(2)
    out = checkpoint(_both_ops, x, use_reentrant=False, preserve_rng_state=True)
    g_ckpt = torch.autograd.grad(out.square().sum(), x)[0]
    assert torch.equal(g_plain, g_ckpt)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_attention_dropout_rate_other_probabilities(p):
    B, L, H = 1, 32, 2
    q = torch.zeros(B, L, H, L, device=DEVICE)
    v = torch.eye(L, device=DEVICE)[None, :, None, :].expand(B, L, H, L).contiguous()
    torch.manual_seed(4)
    out = attention(q, q, v, dropout_p=p, impl="triton") * L * (1 - p)
    kept = out > 0.5
    torch.testing.assert_close(out[kept], torch.ones_like(out[kept]))
    _assert_rate(kept, p)


@pytest.mark.gpu
def test_cuda_seed_follows_torch_philox_state_without_a_launch():
    from lxmert_fast.kernels._dropout import seed_args

    dev = torch.device("cuda")
    torch.manual_seed(0)
    a, b = seed_args(dev), seed_args(dev)
    torch.manual_seed(0)
    assert seed_args(dev) == a and a[0] is None and b[2] == a[2] + 4
    state = torch.cuda.get_rng_state()
    c = seed_args(dev)
    torch.cuda.set_rng_state(state)
    assert seed_args(dev) == c
