"""Parity of the Triton attention kernels (lxmert_fast/kernels/attention.py) with the reference:
outputs and dq, dk, dv; self-attention and the two-way cross-attention pair. float32 runs on CPU
under the Triton interpreter (and on a GPU when there is one); float16/bfloat16 need a GPU."""
import pytest
import torch

from kernel_parity_testutil import DEVICE, assert_parity, padding_mask
from lxmert_fast.kernels import attention, attention_ref, cross_attention_pair
from lxmert_fast.kernels.attention import INTERPRETER_MAX_HEAD_DIM, MAX_HEAD_DIM

DTYPES = [torch.float32, pytest.param(torch.float16, marks=pytest.mark.gpu),
          pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]

# name: (B, Lq, Lk, H, D, key lengths: None = no mask, "rand" = random padding, list = per row)
CASES = {
    "lang-on-objects": (2, 20, 36, 2, 64, "rand"),
    "objects-on-lang": (2, 36, 20, 2, 64, "rand"),
    "length-1": (2, 1, 1, 2, 32, None),
    "one-key": (1, 7, 1, 2, 32, [1]),
    "primes": (2, 13, 29, 2, 32, "rand"),
    "fully-masked-row": (3, 5, 11, 1, 32, [0, 11, 4]),
    "no-mask": (1, 20, 36, 2, 64, None),
    "head-dim-128-two-key-blocks": (1, 5, 70, 2, 128, [70]),
    "two-query-blocks": (1, 70, 7, 2, 32, [5]),
    "head-dim-24": (1, 5, 6, 2, 24, "rand"),  # not a power of two: padded to 32 in registers
    "head-dim-256": (1, 3, 5, 1, 256, "rand"),  # INTERPRETER_MAX_HEAD_DIM, bf16/fp16's maximum
}


def _inputs(B, Lq, Lk, H, D, lengths):
    q = torch.randn(B, Lq, H, D, device=DEVICE)
    k = torch.randn(B, Lk, H, D, device=DEVICE)
    v = torch.randn(B, Lk, H, D, device=DEVICE)
    mask = None if lengths is None else padding_mask(B, Lk, None if lengths == "rand" else lengths)
    return q, k, v, mask, torch.randn(B, Lq, H, D, device=DEVICE)


def _kernel(q, k, v, mask):
    return attention(q, k, v, mask, impl="triton")


def _skip_if_routed(D, dtype):
    if DEVICE == "cuda" and D > MAX_HEAD_DIM[dtype]:
        pytest.skip(f"head dim {D} in {dtype} runs the reference on a GPU (MAX_HEAD_DIM)")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_attention_matches_reference(case, dtype):
    _skip_if_routed(CASES[case][4], dtype)
    q, k, v, mask, dout = _inputs(*CASES[case])
    out, (dq, dk, dv) = assert_parity(_kernel, attention_ref, [q, k, v, mask], [dout], dtype,
                                      ["out", "dq", "dk", "dv"])
    if mask is not None:  # rows whose keys are all masked: zeros, zero gradients, no NaN
        dead = ~mask.any(1)  # (B,) examples without any real key
        for name, t in (("out", out[0][dead]), ("dq", dq[dead]), ("dk", dk[~mask]),
                        ("dv", dv[~mask])):
            assert torch.count_nonzero(t) == 0, f"{name} is not zero where keys are masked"


@pytest.mark.parametrize("lq,lk", [(3, 512), (512, 3)])
def test_attention_512_keys_or_queries(lq, lk):
    """Long rows (4 key blocks at head dim 64) and many query blocks (8) stay in the kernel."""
    q, k, v, mask, dout = _inputs(1, lq, lk, 1, 64, [lk - 100 if lk > 100 else lk])
    assert_parity(_kernel, attention_ref, [q, k, v, mask], [dout], torch.float32,
                  ["out", "dq", "dk", "dv"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lq,lk", [(20, 36), (36, 20), (36, 36), (512, 512), (1, 1)])
@pytest.mark.parametrize("d", [32, 64, 128])
def test_attention_matches_reference_gpu_sizes(lq, lk, d, dtype):
    _skip_if_routed(d, dtype)
    B = 64 if lq * lk < 4096 else 2
    q, k, v, mask, dout = _inputs(B, lq, lk, 12, d, "rand")
    assert_parity(_kernel, attention_ref, [q, k, v, mask], [dout], dtype,
                  ["out", "dq", "dk", "dv"])


def test_attention_reads_projection_strides():
    """q, k, v as (B, L, H, D) views of one fused projection output (no transposes, no copies);
    gradients land in the projection output."""
    B, L, H, D = 2, 9, 2, 32
    qkv = torch.randn(B, L, 3 * H * D, device=DEVICE)
    mask = padding_mask(B, L, [9, 4])
    dout = torch.randn(B, L, H, D, device=DEVICE)

    def split(t):
        return [t[..., i * H * D:(i + 1) * H * D].view(B, L, H, D) for i in range(3)]

    assert not split(qkv)[0].is_contiguous()
    assert_parity(lambda t: attention(*split(t), mask, impl="triton"),
                  lambda t: attention_ref(*split(t), mask), [qkv], [dout], torch.float32,
                  ["out", "dqkv"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lang,objs", [(20, 36), (1, 3), (7, 13)])
def test_cross_attention_pair_matches_reference(lang, objs, dtype):
    B, H, D = 2, 2, 32
    t = [torch.randn(B, n, H, D, device=DEVICE) for n in (lang,) * 3 + (objs,) * 3]
    mask_l = padding_mask(B, lang, [lang, max(1, lang // 2)])
    mask_v = padding_mask(B, objs, [0, objs])  # first example: no objects at all
    douts = [torch.randn(B, lang, H, D, device=DEVICE), torch.randn(B, objs, H, D, device=DEVICE)]

    def kernel(q_l, k_l, v_l, q_v, k_v, v_v):
        return cross_attention_pair(q_l, k_l, v_l, q_v, k_v, v_v, mask_l, mask_v, impl="triton")

    def ref(q_l, k_l, v_l, q_v, k_v, v_v):
        return attention_ref(q_l, k_v, v_v, mask_v), attention_ref(q_v, k_l, v_l, mask_l)

    assert_parity(kernel, ref, t, douts, dtype,
                  ["out_l", "out_v", "dq_l", "dk_l", "dv_l", "dq_v", "dk_v", "dv_v"])


def test_cross_attention_pair_one_output_used():
    """Only out_l feeds the loss: the vision->language direction gets zero gradients."""
    B, H, D = 1, 2, 16
    t = [torch.randn(B, n, H, D, device=DEVICE, requires_grad=True) for n in (5, 5, 5, 3, 3, 3)]
    out_l, _ = cross_attention_pair(*t, impl="triton")
    out_l.sum().backward()
    ref_l = attention_ref(t[0], t[4], t[5])
    g = torch.autograd.grad(ref_l.sum(), [t[0], t[4], t[5]])
    torch.testing.assert_close(out_l, ref_l)
    for got, want in zip([t[0].grad, t[4].grad, t[5].grad], g):
        torch.testing.assert_close(got, want)
    assert t[3].grad.abs().max() == 0 and t[1].grad.abs().max() == 0


def test_auto_on_cpu_is_the_reference():
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine 'auto' picks the kernel")
    q, k, v, mask, _ = _inputs(1, 4, 6, 2, 16, "rand")
    assert torch.equal(attention(q, k, v, mask), attention_ref(q, k, v, mask))


@pytest.mark.parametrize("bad,err,match", [
    (dict(q=torch.randn(2, 5, 16)), ValueError, r"\(B, L, H, D\)"),
    (dict(k=torch.randn(2, 6, 3, 16)), ValueError, "shapes do not match"),
    (dict(k=torch.randn(2, 6, 2, 16, dtype=torch.float64)), TypeError, "k has dtype"),
    (dict(mask=torch.ones(2, 6, dtype=torch.int64)), TypeError, "key_padding_mask"),
    (dict(mask=torch.ones(2, 7, dtype=torch.bool)), ValueError, r"\(2, 7\)"),
    (dict(dropout_p=1.0), ValueError, "dropout_p=1.0"),
    (dict(impl="cuda"), ValueError, "impl='cuda'"),
    (dict(q=torch.randn(2, 5, 2, 16, dtype=torch.float64)), TypeError, "dtype torch.float64"),
])
def test_attention_errors_name_the_value(bad, err, match):
    args = dict(q=torch.randn(2, 5, 2, 16), k=torch.randn(2, 6, 2, 16), v=torch.randn(2, 6, 2, 16),
                mask=None, dropout_p=0.0, impl="triton")
    args.update(bad)
    with pytest.raises(err, match=match):
        attention(args["q"], args["k"], args["v"], args["mask"], args["dropout_p"],
                  impl=args["impl"])


def test_head_dim_limits_cover_every_kernel_dtype():
    """Every kernel dtype has a GPU head-dim limit; each power of two up to it is compiled for
    sm_90 by test_kernel_sm90_compile.py, and the CPU parity cases reach the interpreter's."""
    assert set(MAX_HEAD_DIM) == {torch.float32, torch.float16, torch.bfloat16}
    assert max(MAX_HEAD_DIM.values()) <= INTERPRETER_MAX_HEAD_DIM
    assert max(c[4] for c in CASES.values()) == INTERPRETER_MAX_HEAD_DIM


@pytest.mark.parametrize("pair", [False, True])
def test_triton_refuses_head_dim_beyond_limit_and_auto_falls_back(pair):
    D = (MAX_HEAD_DIM[torch.float32] if DEVICE == "cuda" else INTERPRETER_MAX_HEAD_DIM) + 16
    q = torch.randn(1, 3, 1, D, device=DEVICE)
    call = (lambda impl: cross_attention_pair(q, q, q, q, q, q, impl=impl)[0]) if pair else \
        (lambda impl: attention(q, q, q, impl=impl))
    with pytest.raises(ValueError, match=f"head dim {D} in torch.float32"):
        call("triton")
    torch.testing.assert_close(call("auto"), attention_ref(q, q, q))
