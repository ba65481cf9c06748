"""Parity of the Triton bias_gelu (lxmert_fast/kernels/gelu.py) with the reference: output, dx and
dbias. float32 on CPU under the Triton interpreter; float16/bfloat16 on a GPU."""
import pytest
import torch

from kernel_parity_testutil import DEVICE, assert_parity
from lxmert_fast.kernels import bias_gelu, bias_gelu_ref

DTYPES = [torch.float32, pytest.param(torch.float16, marks=pytest.mark.gpu),
          pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]


def _kernel(x, b):
    return bias_gelu(x, b, impl="triton")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 20, 3072), (1, 1, 1), (3, 7, 61), (9, 1100)])
def test_bias_gelu_matches_reference(shape, dtype):
    x = 3 * torch.randn(shape, device=DEVICE)  # covers the tails of the erf
    b = torch.randn(shape[-1], device=DEVICE)
    assert_parity(_kernel, bias_gelu_ref, [x, b], [torch.randn(shape, device=DEVICE)], dtype,
                  ["y", "dx", "dbias"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bias_gelu_matches_reference_gpu_ffn_size(dtype):
    x, b = torch.randn(14336, 3072, device=DEVICE), torch.randn(3072, device=DEVICE)
    assert_parity(_kernel, bias_gelu_ref, [x, b], [torch.randn_like(x)], dtype,
                  ["y", "dx", "dbias"])


def test_bias_gelu_bad_inputs_raise_naming_them():
    with pytest.raises(ValueError, match=r"bias shape \(5,\) != \(4,\)"):
        bias_gelu(torch.randn(2, 4), torch.randn(5), impl="triton")
    with pytest.raises(TypeError, match="dtype torch.float64"):
        bias_gelu(torch.randn(2, 4).double(), torch.randn(4).double(), impl="triton")
