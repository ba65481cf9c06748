"""The restricted unpickler of the feature importers (issue 22): a pickle in an extractor's file
can never run code.

MILVLG's ``butd-npz`` (key ``info``) and MMF's ``mmf-npy`` (``<name>_info.npy``) keep a dict
pickled in a 0-d object array (``np.save`` of a dict). A full ``pickle.Unpickler`` imports and
calls whatever global a file names (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...),
so a crafted file would run code at import. ``load`` resolves globals from a fixed table instead
of importing anything; every other global is refused with ``ImportFormatError`` naming the file,
the key and the global as module.name, before anything of it runs. Allowed, as the extractors'
files hold them:

- dicts, lists, tuples, str, bytes, int, float, bool, None: pickle opcodes, no global needed.
- numpy arrays and scalars: ``numpy.dtype``, ``numpy.ndarray`` (only as the first argument
  of ``_reconstruct``, never called), and ``_reconstruct`` / ``scalar`` of
  ``numpy.core.multiarray`` (numpy 1.x) or ``numpy._core.multiarray`` (numpy 2.x), each only
  as numpy's pickles use it, and every state checked before numpy reads it, since numpy's own
  ``__setstate__`` trusts its input and crashes on some crafted states (seen while fuzzing):
  ``_reconstruct(ndarray, (0,), b'b')`` only; an array's raw data exactly its bytes, an object
  array's item list exactly one item per element (numpy reads past a short list); a dtype from
  a type code (no structured or subarray dtypes) whose state must be the one numpy writes for
  it, so numpy's dtype ``__setstate__`` never runs; a scalar exactly its dtype's bytes.
- torch tensors (MILVLG's d2 mode keeps some, often on the GPU):
  ``torch._utils._rebuild_tensor_v2`` (no backward hooks, no metadata, no view larger than its
  storage), ``collections.OrderedDict`` (its empty hooks argument) and
  ``torch.storage._load_from_bytes``, whose bytes (a ``torch.save`` of one storage) are loaded
  with ``torch.load(..., weights_only=True, map_location="cpu")``, torch's own restricted
  unpickler; the result must be a storage. A global that torch refuses in there is refused
  here, named the same way.

The opcodes are walked first (``pickletools.genops``), before anything is built: a malformed or
truncated stream is an error, and so is a memo index beyond the opcodes so far (CPython's C
unpickler sizes its memo table by the index: one ``LONG_BINPUT`` of 10**9 costs gigabytes and
tens of seconds). Persistent ids and the extension registry are not supported (an error).
Arrays come back as ``CheckedArray``, an ndarray subclass that only adds the check
(``np.asarray`` gives the plain array).
"""
import collections
import io
import math
import pickle
import pickletools
import re

import numpy as np
import torch

from .errors import ImportFormatError

ALLOWED = ("dicts, lists, tuples, str, bytes, int, float, bool, None, numpy arrays, dtypes and "
           "scalars, torch tensors")


class _Refused(Exception):
    """A global the table does not hold, or an allowed one called in a way no extractor's file
    calls it; ``name`` is module.name."""

    def __init__(self, name: str, why: str = ""):
        super().__init__(name, why)
        self.name, self.why = name, why


_PLAIN = (int, str, type(None))


class _Dtype:
    """What ``numpy.dtype(code, align, copy)`` gives: a holder of the dtype. Its ``__setstate__``
    accepts only the state numpy writes for that dtype (in either byte order) and never calls
    numpy's, which crashes on some crafted states; the arrays and scalars take ``.dtype``.
    Codes only as numpy pickles them (a str), no structured or subarray dtypes."""

    def __init__(self, code, align=False, copy=False):
        if type(code) is not str or type(align) not in (bool, int) \
                or type(copy) not in (bool, int):
            raise _Refused("numpy.dtype", "called with arguments numpy's pickles never hold")
        self.dtype = np.dtype(code)
        if self.dtype.fields is not None or self.dtype.subdtype is not None:
            raise _Refused("numpy.dtype", f"structured or subarray dtype {self.dtype}")

    def __setstate__(self, state):
        if type(state) is not tuple or len(state) < 2 or \
                not all(type(x) in _PLAIN for x in state):
            raise ValueError(f"dtype state {state!r:.100} is not numpy's")
        dtype = self.dtype
        if state[1] in ("<", ">") and dtype.byteorder != "|":
            dtype = dtype.newbyteorder(state[1])
        if dtype.__reduce__()[2] != state:
            raise _Refused("numpy.dtype", f"state {state!r:.100} is not numpy's for {dtype}")
        self.dtype = dtype


def _real_dtype(dtype, what: str) -> np.dtype:
    if not isinstance(dtype, _Dtype):
        raise ValueError(f"{what} dtype is a {type(dtype).__name__}, not a numpy.dtype")
    return dtype.dtype


class CheckedArray(np.ndarray):
    """ndarray whose pickled state is checked before numpy's ``__setstate__`` reads it."""

    def __setstate__(self, state):
        if type(state) is not tuple or len(state) not in (4, 5):
            raise ValueError(f"array state is a {type(state).__name__}, not numpy's tuple")
        if len(state) == 5 and state[0] != 1:
            raise ValueError(f"array state version {state[0]!r:.20}, numpy writes 1")
        shape, dtype, fortran, data = state[-4:]
        if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"array shape {shape!r:.100} is not a tuple of non-negative ints")
        dtype = _real_dtype(dtype, "array")
        count = math.prod(shape)
        if dtype.hasobject:
            if dtype != np.dtype(object):
                raise _Refused("numpy.ndarray", f"dtype {dtype} mixes objects into a structure")
            if type(data) is not list or len(data) != count:
                raise ValueError(f"object array of shape {shape} holds "
                                 f"{len(data) if type(data) is list else type(data).__name__}"
                                 " items")
        elif type(data) is not bytes or len(data) != count * dtype.itemsize:
            raise ValueError(f"array of shape {shape} x {dtype} has "
                             f"{len(data) if type(data) is bytes else type(data).__name__}"
                             f" data bytes, expected {count * dtype.itemsize}")
        super().__setstate__((1, shape, dtype, bool(fortran), data))


class _NdarrayToken:
    """What ``numpy.ndarray`` resolves to: only ``_reconstruct`` accepts it; calling it is
    refused, so a file cannot allocate an array of any shape it likes."""

    def __call__(self, *args, **kwargs):
        raise _Refused("numpy.ndarray", "called: numpy's pickles only pass it to _reconstruct")

    def __repr__(self):
        return "numpy.ndarray"


_NDARRAY = _NdarrayToken()


def _numpy_reconstruct(module: str):
    def reconstruct(subtype, shape, dtype):
        if subtype is not _NDARRAY or type(shape) is not tuple or shape != (0,) \
                or type(dtype) not in (bytes, str) or dtype not in (b"b", "b"):
            raise _Refused(f"{module}._reconstruct",
                           f"called with ({subtype!r:.40}, {shape!r:.40}, {dtype!r:.40}), not "
                           "as numpy's pickles call it")
        return np.ndarray.__new__(CheckedArray, (0,), np.uint8)
    return reconstruct


_SCALAR = np.float32(0).__reduce__()[0]   # numpy's scalar(), whatever its module


def _numpy_scalar(dtype, data=None):
    dtype = _real_dtype(dtype, "scalar")
    if dtype.hasobject or type(data) is not bytes or len(data) != dtype.itemsize:
        raise ValueError(f"a {dtype} scalar of {type(data).__name__}, not {dtype.itemsize} bytes")
    return _SCALAR(dtype, data)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    name = "torch._utils._rebuild_tensor_v2"
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _Refused(name, f"its storage is a {type(storage).__name__}")
    if backward_hooks or metadata or not isinstance(requires_grad, bool):
        raise _Refused(name, "with backward hooks or metadata")
    t = torch.empty((0,), dtype=storage.dtype).set_(storage._untyped_storage, storage_offset,
                                                     size, stride)
    held = storage._untyped_storage.nbytes() // max(t.element_size(), 1)
    if t.numel() > held:
        raise _Refused(name, f"a tensor of {t.numel()} elements viewing a storage of {held}")
    t.requires_grad = requires_grad
    return t


def _storage_from_bytes(data):
    if not isinstance(data, bytes):
        raise _Refused("torch.storage._load_from_bytes", f"of a {type(data).__name__}")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise _Refused(refused.group(1), "inside a torch storage (torch.load(weights_only="
                                             "True) refused it)") from None
        raise ValueError(f"torch storage: {_torch_reason(e)}") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _Refused("torch.storage._load_from_bytes",
                       f"it held a {type(storage).__name__}, not a storage")
    return storage


def _torch_reason(e: Exception) -> str:
    """The reason in torch.load's weights-only error, without its advice paragraphs."""
    parts = [p.strip() for p in str(e).split("\n\n") if p.strip()]
    reasons = [p for p in parts if not p.startswith(("Weights only load failed",
                                                       "Check the documentation"))]
    return (reasons or parts or [type(e).__name__])[0]


_NUMPY = ("numpy.core.multiarray", "numpy._core.multiarray")   # numpy 1.x, 2.x
GLOBALS = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    **{(m, "_reconstruct"): _numpy_reconstruct(m) for m in _NUMPY},
    **{(m, "scalar"): _numpy_scalar for m in _NUMPY},
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def check_opcodes(data: bytes) -> None:
    """A well-formed stream up to STOP whose memo indices are at most the opcode count."""
    for n, (op, arg, pos) in enumerate(pickletools.genops(data)):
        if op.name in _PUTS and not 0 <= arg <= n:
            raise ValueError(f"{op.name} of memo index {arg} at byte {pos} (opcode {n})")


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals come from ``GLOBALS`` only (nothing is imported)."""

    def find_class(self, module, name):
        found = GLOBALS.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


def load(fp, path, key: str):
    """The object pickled in the binary file ``fp`` (from its position to its end) of ``path``,
    entry ``key``. A refused global raises ImportFormatError naming the three; a corrupt pickle
    an ImportFormatError naming the file, the key and what went wrong."""
    try:
        data = fp.read()
        check_opcodes(data)
        return SafeUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        why = f" ({e.why})" if e.why else ""
        raise ImportFormatError(
            f"{path}: key {key!r}: refusing to unpickle the global {e.name}{why}: these files "
            f"may hold only {ALLOWED}") from None
    except Exception as e:  # a corrupt pickle raises anything
        raise ImportFormatError(f"{path}: key {key!r}: cannot unpickle ({type(e).__name__}: "
                                f"{e})") from None
