"""Counter-based random numbers for whole batches: a pure function of (seed, epoch, stream,
example index, slot), computed with numpy over index arrays (issue 23).

An example's draws must not depend on which batch, rank, DataLoader worker or resumed run builds
it, and a batch of 256 must not pay for 256 generator objects (``np.random.default_rng`` per
example cost 19 ms per batch of 256). So every draw is a hash of its coordinates: the key
``(seed, epoch, stream)`` is mixed once, then ``mix(mix(key ^ index * G1) + (slot + 1) * G2)``
with SplitMix64's finaliser (Steele, Lea and Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014), whose output passes BigCrush as a counter-based generator. A stream
is one kind of draw (word-mask probability, random token, ...), a slot one position of it.
"""
import numpy as np

_G1 = np.uint64(0x9E3779B97F4A7C15)
_G2 = np.uint64(0xD1B54A32D192ED03)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1

# one id per kind of draw: a new kind takes a new id, an existing id never changes meaning
STREAMS = {"matched": 1, "negative": 2, "word_prob": 3, "word_token": 4, "obj_prob": 5,
           "obj_image": 6, "obj_box": 7, "answer": 8}


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _mix_int(value: int) -> int:
    with np.errstate(over="ignore"):
        return int(_mix(np.array([value & _MASK64], dtype=np.uint64))[0])


def stream_key(seed: int, epoch: int, stream: str) -> int:
    """The 64-bit key of one stream of one epoch."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}")
    key = _mix_int(int(seed) * 0x2545F4914F6CDD1D + 0x632BE59BD9B4E019)
    key = _mix_int(key ^ (int(epoch) * 0x9E3779B97F4A7C15 + 1))
    return _mix_int(key ^ STREAMS[stream])


def bits(key: int, index: np.ndarray, slots: int) -> np.ndarray:
    """(len(index), slots) uint64: the draws of examples ``index`` at slots 0..slots-1."""
    index = np.asarray(index, dtype=np.int64).astype(np.uint64)
    slot = (np.arange(slots, dtype=np.uint64) + np.uint64(1)) * _G2
    with np.errstate(over="ignore"):
        base = _mix(np.uint64(key) ^ (index * _G1))
        return _mix(base[:, None] + slot[None, :])


def uniform(seed: int, epoch: int, stream: str, index, slots: int = 1) -> np.ndarray:
    """(len(index), slots) float64 uniform on [0, 1) (53 bits, as numpy's ``random``)."""
    b = bits(stream_key(seed, epoch, stream), index, slots)
    return (b >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def below(u: np.ndarray, n) -> np.ndarray:
    """Integers uniform on [0, n) from uniforms ``u`` (``n`` >= 1, broadcast)."""
    n = np.asarray(n, dtype=np.int64)
    return np.minimum((u * n).astype(np.int64), np.maximum(n - 1, 0))
