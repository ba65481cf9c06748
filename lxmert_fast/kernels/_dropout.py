"""Counter-based dropout shared by the kernels (Salmon et al. 2011, Philox 4x32-10).

The keep mask of an element is a pure function of (seed, stream, counter, call). One Philox call
gives four numbers, used for four neighbouring columns (``keep4_packed``): a (R, C) tile costs
R * C / 4 Philox calls. Counters are per program (a row, or a (batch, head) of one direction) so
no product of sizes can wrap: the tile's counter ``c0`` counts 4-column groups inside the program,
``c1`` names the program, ``c2``/``c3`` the call.

Only the forward draws: ``keep4_packed`` returns the mask and the same mask packed 8 columns per
byte (bit b of byte m is column 8m + b), which the forward stores (uint8, ceil(C / 8) bytes per
row) and the backward reads back with ``load_keep`` (no Philox there, so the backward does not
depend on the seed). The stored mask costs 1/16 of a bfloat16 activation of the same shape
(attention: (B, H, Lq, ceil(Lk / 8)) bytes beside (B, H, Lq, Lk) probabilities; LayerNorm:
(M, ceil(N / 8)) bytes beside (M, N) inputs).

Where the (seed, call) pair comes from (``seed_args``), so that ``torch.manual_seed``, a saved and
restored RNG state (checkpointing, activation recomputation) reproduce the same masks:
- CUDA, eager, not capturing a graph: torch's own CUDA Philox state, read and advanced on the host
  (``initial_seed`` and ``get_offset``/``set_offset``, as torch's fused dropout does): no kernel
  launch and no seed tensor per call.
- Under ``torch.compile``, while capturing a CUDA graph, and on CPU (the interpreter): a
  one-element int64 seed tensor drawn from torch's generator on the device (one small op per call;
  graph-safe, and Inductor draws all of a graph's seeds in one kernel). The call number is then 0.
"""
import torch

from ._impl import tl, triton

_SEED_HIGH = 2 ** 31 - 1
_SEED_MASK = 2 ** 63 - 1
_THRESHOLD_BITS = 24  # keep = (random >> 8) >= round(p * 2**24)


def draw_seed(device: torch.device) -> torch.Tensor:
    """One int64 seed on ``device`` from torch's default generator for that device."""
    return torch.randint(0, _SEED_HIGH, (1,), device=device, dtype=torch.int64)


def seed_args(device: torch.device):
    """(seed tensor or None, seed int, call number) for one dropout call on ``device``."""
    if device.type == "cuda" and not torch.compiler.is_compiling() \
            and not torch.cuda.is_current_stream_capturing():
        gen = torch.cuda.default_generators[device.index if device.index is not None
                                            else torch.cuda.current_device()]
        call = gen.get_offset()
        gen.set_offset(call + 4)  # torch advances its Philox offset in multiples of 4
        return None, gen.initial_seed() & _SEED_MASK, call
    return draw_seed(device), 0, 0


def kernel_seed_args(placeholder: torch.Tensor, p: float, seed):
    """The kernels' leading (seed_ptr, seed, call, threshold) arguments for ``seed`` as
    ``seed_args`` returns it (None without dropout), and their SEED_IN_TENSOR flag; without a
    seed tensor, ``placeholder`` fills the unused pointer."""
    st, si, call = (None, 0, 0) if seed is None else seed
    return (placeholder if st is None else st, si, call, threshold(p)), st is not None


def threshold(p: float) -> int:
    """The integer keep threshold of ``keep4_packed`` for dropout probability ``p``."""
    return int(round(p * (1 << _THRESHOLD_BITS)))


def check_dropout_p(op: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: dropout_p={p} must be in [0, 1)")
    return p


@triton.jit
def keep4_packed(seed, c0, stream, call, thr):
    """Keep mask (probability 1 - thr / 2**24) of a (R, 4 * C4) tile from (R, C4) counters
    ``c0`` (one per 4-column group), one Philox call per group: column 4j + l takes output l.
    Returns it and the same mask packed (R, C4 // 2) uint8: bit b of byte m is column 8m + b
    (groups 2m and 2m + 1 in the low and high 4 bits)."""
    R: tl.constexpr = c0.shape[0]
    C4: tl.constexpr = c0.shape[1]
    c0 = c0.to(tl.uint32, bitcast=True)
    c1 = tl.reshape(c0 * 0 + stream.to(tl.uint32), (R, C4 // 2, 2))  # a byte's 2 groups last
    c0 = tl.reshape(c0, (R, C4 // 2, 2))
    zero = c0 * 0
    call = call.to(tl.int64)
    c2 = zero + (call & 0xFFFFFFFF).to(tl.uint32)
    c3 = zero + (call >> 32).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    k0 = (r0 >> 8).to(tl.int32) >= thr
    k1 = (r1 >> 8).to(tl.int32) >= thr
    k2 = (r2 >> 8).to(tl.int32) >= thr
    k3 = (r3 >> 8).to(tl.int32) >= thr
    keep = tl.reshape(tl.join(tl.join(k0, k2), tl.join(k1, k3)), (R, 4 * C4))
    nib = k0.to(tl.uint8) | (k1.to(tl.uint8) << 1) | (k2.to(tl.uint8) << 2) \
        | (k3.to(tl.uint8) << 3)
    lo, hi = tl.split(nib)
    return keep, lo | (hi << 4)


@triton.jit
def load_keep(row_ptr, cols, mask):
    """The keep mask (R, C) of columns ``cols`` (C,) from ``keep4_packed``'s bytes as stored:
    ``row_ptr`` (R, 1) points at each row's first byte; ``mask`` (R, C) the real elements."""
    bits = tl.load(row_ptr + (cols // 8)[None, :], mask=mask, other=0)
    return ((bits >> (cols % 8).to(tl.uint8)[None, :]) & 1) != 0
