"""Choosing an implementation for a fused op: ``impl="auto" | "triton" | "torch"``.

"torch" is the pure-PyTorch reference; "triton" runs the Triton kernels (on CPU tensors only
under ``TRITON_INTERPRET=1``); "auto" picks Triton for CUDA tensors when Triton is importable and
the reference everywhere else.

Also exports ``triton`` / ``tl``: the real modules, or (when Triton is not installed) a stand-in
whose ``jit`` leaves the function undecorated, so the op files import and their references work.
"""
import functools
import os
from typing import Optional

import torch

IMPLS = ("auto", "triton", "torch")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

try:  # Triton is optional at run time: the reference path never needs it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAS_TRITON = False

    class _NoTriton:
        """Stand-in for ``triton`` and ``triton.language``: decorators pass functions through."""

        @staticmethod
        def constexpr(value=None):
            return value

        @staticmethod
        def jit(fn=None, **_):
            return fn if fn is not None else (lambda f: f)

    triton = tl = _NoTriton()


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Triton reads TRITON_INTERPRET when it decorates the kernels (at import), so read it once too.
_INTERPRET = HAS_TRITON and interpreter_on()


def resolve_impl(impl: str, tensor: torch.Tensor, op: str) -> str:
    """Return "triton" or "torch" for ``impl`` given the tensor the op runs on."""
    if impl == "auto":
        return "triton" if (HAS_TRITON and tensor.is_cuda) else "torch"
    if impl == "torch":
        return "torch"
    if impl != "triton":
        raise ValueError(f"{op}: impl={impl!r} is not one of {IMPLS}")
    if not (HAS_TRITON and (tensor.is_cuda or _INTERPRET)):
        why = "triton is not installed" if not HAS_TRITON else (
            f"the tensor is on {tensor.device} and TRITON_INTERPRET is not set")
        raise RuntimeError(f"{op}: impl='triton' requested but {why}")
    return "triton"


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the host's grid arithmetic (``triton.cdiv`` is a jit function: calling it
    from Python goes through the JIT's argument handling, ~10 us a call)."""
    return -(-a // b)


def as_rows(t: torch.Tensor, N: int):
    """(tensor, row stride) that a kernel reads as rows of ``N`` elements with a unit last stride:
    ``t`` itself when its rows are evenly spaced (2-D with unit last stride, or contiguous of any
    rank), else a contiguous copy. No view is made, so no autograd node and no op per call."""
    if t.dim() == 2 and t.stride(1) == 1:
        return t, t.stride(0)
    if not t.is_contiguous():
        t = t.contiguous()
    return t, N


def next_pow2(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum) (Triton block sizes must be powers of two)."""
    n = max(int(n), minimum)
    return 1 << (n - 1).bit_length()


def check_tensors(op: str, device: torch.device, dtype: torch.dtype, **tensors) -> None:
    """Raise naming the tensor when one is on another device, has another dtype than ``dtype``,
    or when ``dtype`` is not a kernel dtype. ``None`` values are skipped."""
    if dtype not in KERNEL_DTYPES:
        names = ", ".join(n for n, t in tensors.items() if t is not None) or "input"
        raise TypeError(f"{op}: {names} has dtype {dtype}, which the Triton kernel does not "
                        f"support (use one of {KERNEL_DTYPES})")
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but the input is on {device}")
        if t.dtype != dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}, expected {dtype}")


@functools.lru_cache(maxsize=None)
def sm_count(device_index) -> int:
    """Streaming multiprocessors of a CUDA device (sizes the persistent backward grids)."""
    return torch.cuda.get_device_properties(device_index or 0).multi_processor_count


def num_sms(device: torch.device) -> int:
    """SMs a persistent grid is sized for: the CUDA device's; 0 on CPU (the interpreter, where
    few long programs are fastest). The sm_90 compile check replaces it with 132."""
    return sm_count(device.index) if device.type == "cuda" else 0


def use_kernel(impl: str, tensor: torch.Tensor, op: str, unfit: Optional[str] = None) -> bool:
    """Whether ``op`` runs its Triton kernel: ``resolve_impl`` says "triton", the dtype is a kernel
    dtype and the problem fits the kernel's documented limits (``unfit`` is None, else it says
    why not). Under "auto" what does not fit runs the reference; an explicit "triton" raises."""
    if resolve_impl(impl, tensor, op) == "torch":
        return False
    if tensor.dtype not in KERNEL_DTYPES:
        unfit = f"does not support dtype {tensor.dtype} (use one of {KERNEL_DTYPES})"
        if impl == "auto":
            return False
        raise TypeError(f"{op}: impl='triton' {unfit}")
    if unfit is not None:
        if impl == "auto":
            return False
        raise ValueError(f"{op}: impl='triton' {unfit}")
    return True
