"""Parity of the Triton dropout_add_layer_norm (lxmert_fast/kernels/layernorm.py) with the
reference, without dropout: the output and the gradients of x, residual, weight, bias and x_bias.
float32 on CPU under the Triton interpreter; float16/bfloat16 on a GPU. (Dropout:
test_kernel_dropout.py.)"""
import pytest
import torch

from kernel_parity_testutil import DEVICE, assert_parity
from lxmert_fast.kernels import dropout_add_layer_norm, dropout_add_layer_norm_ref
from lxmert_fast.kernels.layernorm import MAX_N

DTYPES = [torch.float32, pytest.param(torch.float16, marks=pytest.mark.gpu),
          pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]
EPS = 1e-12


def _inputs(shape, residual=True, x_bias=True):
    n = shape[-1]
    return [torch.randn(shape, device=DEVICE),
            torch.randn(shape, device=DEVICE) if residual else None,
            1 + 0.1 * torch.randn(n, device=DEVICE), 0.1 * torch.randn(n, device=DEVICE),
            0.1 * torch.randn(n, device=DEVICE) if x_bias else None]


def _names(inputs):
    return ["y"] + ["d" + n for n, t in zip(("x", "residual", "weight", "bias", "x_bias"), inputs)
                    if t is not None]


def _kernel(x, r, w, b, xb):
    return dropout_add_layer_norm(x, r, w, b, EPS, 0.0, x_bias=xb, impl="triton")


def _ref(x, r, w, b, xb):
    return dropout_add_layer_norm_ref(x, r, w, b, EPS, 0.0, x_bias=xb)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,residual,x_bias", [
    ((2, 20, 768), True, True),   # a BERT sublayer output at the real hidden size
    ((1, 1, 768), True, True),    # one row
    ((3, 7, 61), True, False),    # prime width, no x_bias
    ((37, 130), False, True),     # no residual (the visual feature encoder)
    ((5, 2), True, True),         # tiny width
    ((2, MAX_N), True, True),     # the widest row the kernel takes
])
def test_layer_norm_matches_reference(shape, residual, x_bias, dtype):
    inputs = _inputs(shape, residual, x_bias)
    dy = torch.randn(shape, device=DEVICE)
    assert_parity(_kernel, _ref, inputs, [dy], dtype, _names(inputs))


def _strided(kind, shape):
    """A tensor of ``shape`` whose memory is not the contiguous layout of that shape."""
    if kind == "column slice":  # 2-D rows, evenly spaced but wider than the row: read in place
        return torch.randn(shape[0], shape[1] + 32, device=DEVICE)[:, :shape[1]]
    if kind == "transposed":  # (B, L, N) from (L, B, N): the kernel's rows are not evenly spaced
        return torch.randn(shape[1], shape[0], shape[2], device=DEVICE).transpose(0, 1)
    return torch.randn(*shape[:-1], 2 * shape[-1], device=DEVICE)[..., ::2]  # "strided features"


@pytest.mark.parametrize("x_kind,r_kind,dy_kind,shape", [
    ("column slice", "column slice", "column slice", (12, 64)),
    ("transposed", "strided features", "transposed", (2, 5, 48)),
    ("strided features", "transposed", "strided features", (3, 4, 40)),
])
def test_layer_norm_reads_strided_inputs(x_kind, r_kind, dy_kind, shape):
    """Inputs and output gradient in other layouts than contiguous (a column slice is read in
    place through its row stride; the rest are copied): the output and every gradient match the
    reference, each gradient shaped like its input."""
    _, _, w, b, xb = _inputs(shape)
    inputs = [_strided(x_kind, shape), _strided(r_kind, shape), w, b, xb]
    k_out, k_grads = assert_parity(_kernel, _ref, inputs, [_strided(dy_kind, shape)],
                                   torch.float32, _names(inputs))
    assert k_out[0].shape == shape and [tuple(g.shape) for g in k_grads[:2]] == [shape] * 2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,n", [(14336, 768), (4096, 1024), (9216, 768)])
def test_layer_norm_matches_reference_gpu_sizes(rows, n, dtype):
    inputs = _inputs((rows, n))
    assert_parity(_kernel, _ref, inputs, [torch.randn(rows, n, device=DEVICE)], dtype,
                  _names(inputs))


def test_layer_norm_mixed_precision_weights():
    """float32 LayerNorm weights with float16 activations (autocast-style) are read as they are;
    each gradient comes back in its input's dtype."""
    x, r, w, b, xb = _inputs((4, 3, 64))
    x, r = x.half().requires_grad_(), r.half().requires_grad_()
    w, b, xb = (t.requires_grad_() for t in (w, b, xb))
    y = dropout_add_layer_norm(x, r, w, b, EPS, 0.0, xb, impl="triton")
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, r, w, b, xb], dy)
    ref_in = [t.detach().float().requires_grad_() for t in (x, r, w, b, xb)]
    y_ref = _ref(*ref_in)
    ref_grads = torch.autograd.grad(y_ref, ref_in, dy.float())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), y_ref, atol=4e-3, rtol=2e-3)
    for name, g, t, rg in zip(("x", "residual", "weight", "bias", "x_bias"), grads,
                              (x, r, w, b, xb), ref_grads):
        assert g.dtype == t.dtype, f"d{name} dtype {g.dtype} != {t.dtype}"
        torch.testing.assert_close(g.float(), rg, atol=4e-3, rtol=2e-3, msg=f"d{name}")


@pytest.mark.parametrize("bad,err,match", [
    (dict(residual=torch.randn(4, 9)), ValueError, r"residual shape \(4, 9\)"),
    (dict(weight=torch.randn(7)), ValueError, r"weight shape \(7,\)"),
    (dict(x_bias=torch.randn(3)), ValueError, r"x_bias shape \(3,\)"),
    (dict(dropout_p=-0.1), ValueError, "dropout_p=-0.1"),
    (dict(bias=torch.randn(8, dtype=torch.float64)), TypeError, "bias has dtype torch.float64"),
    (dict(x=torch.randn(4, 8, dtype=torch.float64)), TypeError, "dtype torch.float64"),
])
def test_layer_norm_errors_name_the_value(bad, err, match):
    args = dict(x=torch.randn(4, 8), residual=torch.randn(4, 8), weight=torch.randn(8),
                bias=torch.randn(8), x_bias=None, dropout_p=0.0)
    args.update(bad)
    with pytest.raises(err, match=match):
        dropout_add_layer_norm(args["x"], args["residual"], args["weight"], args["bias"], EPS,
                               args["dropout_p"], args["x_bias"], impl="triton")


def test_layer_norm_beyond_max_n_refused_or_reference():
    x, r, w, b, xb = _inputs((2, MAX_N + 1))
    with pytest.raises(ValueError, match=f"rows of {MAX_N + 1} > MAX_N"):
        dropout_add_layer_norm(x, r, w, b, EPS, 0.0, xb, impl="triton")
    torch.testing.assert_close(dropout_add_layer_norm(x, r, w, b, EPS, 0.0, xb, impl="auto"),
                               _ref(x, r, w, b, xb))
