"""The kernels as torch custom ops (each registered in its op file): schemas, fake (meta) kernels and
autograd registrations pass ``torch.library.opcheck``, and ``torch.compile(fullgraph=True)`` of code
calling every op traces without graph breaks and matches eager (same seeds, same masks)."""
import importlib

import pytest
import torch

import lxmert_fast.kernels as K
from kernel_parity_testutil import DEVICE

# the op modules (the package re-exports functions of the same names)
A, GE, LN = (importlib.import_module(f"lxmert_fast.kernels.{m}")
             for m in ("attention", "gelu", "layernorm"))

CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


def _qkv(L, grad=True):
    return [torch.randn(1, L, 1, 16, device=DEVICE, requires_grad=grad) for _ in range(3)]


def _mask(L):
    m = torch.ones(1, L, dtype=torch.bool, device=DEVICE)
    m[0, -1] = False
    return m


def _seed():
    return torch.tensor([7], dtype=torch.int64, device=DEVICE)


@pytest.mark.parametrize("with_dropout", [False, True])
def test_opcheck_attention_ops(with_dropout):
    (q, k, v), seed, p = _qkv(3), _seed() if with_dropout else None, 0.2 if with_dropout else 0.0
    torch.library.opcheck(A.attn_fwd, (q, k, v, _mask(3), seed, 0.25, p), test_utils=CHECKS)
    q2, k2, v2 = _qkv(2)
    torch.library.opcheck(A.attn_pair_fwd, (q, k2, v2, _mask(2), q2, k, v, None, seed, 0.25, p),
                          test_utils=CHECKS)


@pytest.mark.parametrize("residual,x_bias,p", [(True, True, 0.2), (False, False, 0.0)])
def test_opcheck_layer_norm_and_gelu_ops(residual, x_bias, p):
    x = torch.randn(5, 24, device=DEVICE, requires_grad=True)
    r = torch.randn(5, 24, device=DEVICE, requires_grad=True) if residual else None
    w, b, xb = (torch.randn(24, device=DEVICE, requires_grad=True) for _ in range(3))
    torch.library.opcheck(LN.ln_fwd, (x, r, w, b, xb if x_bias else None,
                                     _seed() if p else None, 1e-5, p), test_utils=CHECKS)
    torch.library.opcheck(GE.bias_gelu_fwd, (x, b), test_utils=CHECKS)


def _all_ops(q, k, v, mask, x, r, w, b):
    out = K.attention(q, k, v, mask, dropout_p=0.1, impl="triton")
    out_l, out_v = K.cross_attention_pair(q, k, v, k, q, q, mask_l=mask, mask_v=None,
                                          dropout_p=0.1, impl="triton")
    y = K.dropout_add_layer_norm(x, r, w, b, dropout_p=0.1, x_bias=b, impl="triton")
    return out.sum() + out_l.square().sum() + out_v.sum() + K.bias_gelu(y, b, impl="triton").sum()


def test_compile_fullgraph_matches_eager():
    """aot_eager runs the graph Dynamo and AOTAutograd capture (custom ops as opaque nodes)
    without Inductor's code generation, which needs a GPU for Triton."""
    torch._dynamo.reset()
    q, k, v = _qkv(3)
    args = [q, k, v, _mask(3)] + [torch.randn(s, device=DEVICE, requires_grad=True)
                                  for s in ((4, 32), (4, 32), (32,), (32,))]
    diff = [a for a in args if a.requires_grad]
    compiled = torch.compile(_all_ops, fullgraph=True, backend="aot_eager")
    torch.manual_seed(9)
    loss_c = compiled(*args)
    grads_c = torch.autograd.grad(loss_c, diff)
    torch.manual_seed(9)
    loss_e = _all_ops(*args)
    grads_e = torch.autograd.grad(loss_e, diff)
    torch.testing.assert_close(loss_c, loss_e)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge)


@pytest.mark.gpu
def test_compile_inductor_fullgraph_matches_eager():
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    q, k, v = _qkv(20)
    args = [q, k, v, _mask(20)] + [torch.randn(s, device=DEVICE, requires_grad=True)
                                   for s in ((40, 768), (40, 768), (768,), (768,))]
    diff = [a for a in args if a.requires_grad]
    with inductor_config.patch(fallback_random=True):  # the same seeds as eager
        compiled = torch.compile(_all_ops, fullgraph=True)
        torch.manual_seed(9)
        grads_c = torch.autograd.grad(compiled(*args), diff)
    torch.manual_seed(9)
    grads_e = torch.autograd.grad(_all_ops(*args), diff)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge)
