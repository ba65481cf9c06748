"""Counter-based dropout shared by the kernels (Salmon et al. 2011, Philox 4x32 via ``tl.rand``).

The keep mask of element ``i`` is a pure function of (seed, i), so a backward kernel regenerates
the forward's mask instead of storing it. The seed is drawn from torch's generator on the input's
device (a one-element int64 tensor, no host-device sync on CUDA): ``torch.manual_seed`` and a saved
and restored RNG state (checkpointing, activation recomputation) reproduce the same masks.
"""
import torch

from ._impl import tl, triton

_SEED_HIGH = 2 ** 31 - 1


def draw_seed(device: torch.device) -> torch.Tensor:
    """One int64 seed on ``device`` from torch's default generator for that device."""
    return torch.randint(0, _SEED_HIGH, (1,), device=device, dtype=torch.int64)


def check_dropout_p(op: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: dropout_p={p} must be in [0, 1)")
    return p


@triton.jit
def dropout_keep(seed_ptr, offsets, p):
    """Boolean keep mask (probability 1 - p) for the element counters ``offsets``."""
    seed = tl.load(seed_ptr)
    return tl.rand(seed, offsets) >= p
