"""Choosing an implementation for a fused op: ``impl="auto" | "triton" | "torch"``.

"torch" is the pure-PyTorch reference; "triton" runs the Triton kernels (on CPU tensors only
under ``TRITON_INTERPRET=1``); "auto" picks Triton for CUDA tensors when Triton is importable and
the reference everywhere else.
"""
import os

import torch

IMPLS = ("auto", "triton", "torch")

try:  # Triton is optional at run time: the reference path never needs it.
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAS_TRITON = False


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(impl: str, tensor: torch.Tensor, op: str) -> str:
    """Return "triton" or "torch" for ``impl`` given the tensor the op runs on."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is not one of {IMPLS}")
    if impl == "torch":
        return "torch"
    usable = HAS_TRITON and (tensor.is_cuda or interpreter_on())
    if impl == "auto":
        return "triton" if (HAS_TRITON and tensor.is_cuda) else "torch"
    if not usable:
        why = "triton is not installed" if not HAS_TRITON else (
            f"the tensor is on {tensor.device} and TRITON_INTERPRET is not set")
        raise RuntimeError(f"{op}: impl='triton' requested but {why}")
    return "triton"
