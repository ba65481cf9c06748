"""lxmert_fast.ops, the model's only entry to the fused ops: ``visual_feat_encoder`` with the
kernels matches it with the references (output and the gradients of every input and weight),
and the re-exported ops are the kernels' own functions."""
import pytest
import torch

from kernel_parity_testutil import DEVICE, assert_parity
from lxmert_fast import kernels, ops

HIDDEN, FEAT = 32, 16
NAMES = ["out", "dfeats", "dboxes", "dfeat_w", "dfeat_b", "dfeat_ln_w", "dfeat_ln_b", "dbox_w",
         "dbox_b", "dbox_ln_w", "dbox_ln_b"]


def _inputs(B=2, N=5):
    def vec(scale=0.1, base=0.0):
        return base + scale * torch.randn(HIDDEN, device=DEVICE)

    return [torch.randn(B, N, FEAT, device=DEVICE), torch.rand(B, N, 4, device=DEVICE),
            0.2 * torch.randn(HIDDEN, FEAT, device=DEVICE), vec(), vec(base=1.0), vec(),
            0.2 * torch.randn(HIDDEN, 4, device=DEVICE), vec(), vec(base=1.0), vec()]


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16,
                                                               marks=pytest.mark.gpu)])
def test_visual_feat_encoder_matches_reference(dtype):
    inputs = _inputs()
    dout = torch.randn(2, 5, HIDDEN, device=DEVICE)
    assert_parity(lambda *t: ops.visual_feat_encoder(*t, eps=1e-12, impl="triton"),
                  lambda *t: ops.visual_feat_encoder(*t, eps=1e-12, impl="torch"),
                  inputs, [dout], dtype, NAMES)


def test_visual_feat_encoder_dropout_and_shapes():
    inputs = _inputs()
    out = ops.visual_feat_encoder(*inputs, dropout_p=0.5, training=True, impl="triton")
    assert out.shape == (2, 5, HIDDEN)
    zeros = (out == 0).float().mean().item()
    assert 0.2 < zeros < 0.8, f"dropout 0.5 zeroed {zeros:.2f} of the output"
    evaluated = ops.visual_feat_encoder(*inputs, dropout_p=0.5, training=False, impl="triton")
    assert torch.equal(evaluated, ops.visual_feat_encoder(*inputs, impl="triton"))
    with pytest.raises(ValueError, match=r"feats \(2, 5, 16\) and boxes \(2, 4, 4\)"):
        ops.visual_feat_encoder(inputs[0], inputs[1][:, :4], *inputs[2:], impl="triton")


def test_ops_reexports_the_kernels():
    for name in ("attention", "cross_attention_pair", "dropout_add_layer_norm", "bias_gelu"):
        assert getattr(ops, name) is getattr(kernels, name)
