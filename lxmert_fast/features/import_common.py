"""Shared parts of the feature importers (``importers.py``): loading ``.npy`` / ``.npz`` files,
checking what was read against the extractor's layout, and building one LXMERT record.

A record has the TSV field names (``tsv.FIELDNAMES``): features (N, D) float32, boxes (N, 4)
float32 pixels of the image (x1, y1, x2, y2), img_h / img_w, objects_id / attrs_id int64 and
objects_conf / attrs_conf float32. What a format does not hold is stored as ``MISSING_ID``
(= ``modeling_losses.IGNORE_INDEX``, so the obj/attr cross-entropy ignores the box whatever the
weighting) with confidence 0 (so a confidence-weighted loss gives it weight 0 as well).

Pickles: the MILVLG and MMF extractors store a dict in a 0-d object array, which only
``pickle`` can read. ``read_array`` unpickles only when the caller passes ``allow_pickle=True``,
which the importers do only for the formats whose extractor writes pickles, and then only
through the restricted unpickler (``safe_pickle.py``: plain data, numpy arrays and torch tensors;
any other global is refused, nothing in the file runs). Torch tensors inside such a pickle
(MILVLG's d2 mode stores GPU tensors) are loaded onto the CPU.
"""
import errno
import io
import math
import zipfile
import zlib
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from numpy.lib import format as npformat

from . import safe_pickle
from .errors import ImportFormatError

MISSING_ID = -100           # lxmert_fast.modeling_losses.IGNORE_INDEX
NUM_OBJECT_CLASSES = 1600   # Visual Genome classes of the BUTD detector (LxmertConfig)
NUM_ATTR_CLASSES = 400


def fail(path, what: str):
    raise ImportFormatError(f"{path}: {what}")


_HEADER_READERS = {(1, 0): npformat.read_array_header_1_0,
                   (2, 0): npformat.read_array_header_2_0}


def _remaining(fp) -> int:
    here = fp.tell()
    end = fp.seek(0, io.SEEK_END)
    fp.seek(here)
    return end - here


def read_array(fp, path, key: str, allow_pickle: bool) -> np.ndarray:
    """One array in .npy format from the open binary file ``fp``; an object array only with
    ``allow_pickle``, through the restricted unpickler (``safe_pickle.load``)."""
    try:
        version = npformat.read_magic(fp)
        header = _HEADER_READERS.get(version)
        if header is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = header(fp)
    except Exception as e:  # numpy's header parser raises ValueError, TokenError, ...
        fail(path, f"key {key!r}: not a .npy array ({type(e).__name__}: {e})")
    if not dtype.hasobject:
        count = math.prod(shape)
        size, left = count * dtype.itemsize, _remaining(fp)
        if size > left:
            fail(path, f"key {key!r}: {left} bytes of data, expected {shape} x "
                       f"{dtype.itemsize} = {size} (truncated)")
        try:
            a = np.frombuffer(fp.read(size), dtype=dtype, count=count)
            return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
        except (ValueError, TypeError, OverflowError) as e:
            fail(path, f"key {key!r}: {shape} x {dtype} is not an array numpy can hold ({e})")
    if not allow_pickle:
        fail(path, f"key {key!r} holds Python objects (a pickle), which this format never "
                   "writes: refusing to unpickle it")
    return safe_pickle.load(fp, path, key)


def load_npy(path, allow_pickle: bool, key: str = "<array>") -> np.ndarray:
    """The array of a .npy file; ``key`` names it in errors."""
    with open(path, "rb") as f:
        return read_array(f, path, key, allow_pickle)


# what zipfile raises on a corrupt file (RuntimeError: a flag bit says "encrypted"; an OSError
# only as EINVAL: a seek to a bad offset)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
               ValueError, OSError)


def _zip_error(e: Exception) -> bool:
    return not isinstance(e, OSError) or e.errno == errno.EINVAL


def load_npz(path, allow_pickle: bool) -> Dict[str, np.ndarray]:
    """Every array of a .npz (compressed or not) by key."""
    try:
        zf = zipfile.ZipFile(path)
    except _ZIP_ERRORS as e:
        if not _zip_error(e):
            raise
        fail(path, f"not a .npz file ({type(e).__name__}: {e})")
    out = {}
    with zf:
        for name in zf.namelist():
            key = name[:-4] if name.endswith(".npy") else name
            try:
                with zf.open(name) as member:
                    data = io.BytesIO(member.read())
            except _ZIP_ERRORS as e:
                if not _zip_error(e):
                    raise
                fail(path, f"key {key!r}: cannot read it from the .npz ({type(e).__name__}: "
                           f"{e})")
            out[key] = read_array(data, path, key, allow_pickle)
    return out


def unpack_dict(value, path, key: str) -> Dict:
    """The dict an extractor saved as a 0-d object array (``np.save(f, info_dict)``)."""
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.hasobject:
        value = value.item()
    if not isinstance(value, dict):
        kind = "ndarray" if isinstance(value, np.ndarray) else type(value).__name__
        fail(path, f"key {key!r} is a {kind}, expected a dict saved as a 0-d object array")
    return value


def need(mapping: Dict, key: str, path, where: str = ""):
    if key not in mapping:
        place = f" in {where}" if where else ""
        fail(path, f"missing key {key!r}{place} (keys: {sorted(mapping)})")
    return mapping[key]


def as_numpy(value) -> np.ndarray:
    """``value`` as an array; what numpy cannot make one of (a ragged list, ...) as a 0-d
    object array, which every check then refuses by its shape or dtype, naming the key."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        a = np.empty((), dtype=object)
        a[()] = value
        return a


def array(value, path, key: str, ndim: int, rows: Optional[int] = None,
          cols: Optional[int] = None, kind: str = "f") -> np.ndarray:
    """``value`` as an array of rank ``ndim`` (optionally ``rows`` x ``cols``), of numeric kind
    ``kind`` ("f": any real number, checked finite; "i": integers)."""
    a = as_numpy(value)
    dims = [str(rows if rows is not None else "N"), str(cols if cols is not None else "D")]
    want = "(" + ", ".join(dims[:ndim]) + ("," if ndim == 1 else "") + ")"
    if a.ndim != ndim or (rows is not None and a.shape[0] != rows) \
            or (cols is not None and ndim > 1 and a.shape[1] != cols):
        fail(path, f"key {key!r} has shape {a.shape}, expected {want}")
    if a.dtype.kind not in ("iu" if kind == "i" else "iuf"):
        fail(path, f"key {key!r} has dtype {a.dtype}, expected "
                   f"{'integers' if kind == 'i' else 'numbers'}")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            fail(path, f"key {key!r} has {int(bad.sum())} non-finite value(s), the first "
                       f"{a[where]} at index {where}")
    return a


def scalar_int(value, path, key: str) -> int:
    """A count or a size saved as a Python/numpy scalar or 0-d array; must be a whole number."""
    a = as_numpy(value)
    if a.shape not in ((), (1,)) or a.dtype.kind not in "iuf":
        fail(path, f"key {key!r} is {a.dtype} of shape {a.shape}, expected one number")
    x = a.reshape(()).item()
    if not np.isfinite(x) or x != int(x) or x < 0:
        fail(path, f"key {key!r} = {x} is not a non-negative whole number")
    return int(x)


def argmax_max(probs, path, key: str, rows: int, classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Class ids and confidences from a (rows, classes) probability matrix; with classes + 1
    columns, column 0 is the background (Caffe / maskrcnn-benchmark order) and is dropped."""
    p = array(probs, path, key, 2, rows=rows)
    if p.shape[1] == classes + 1:
        p = p[:, 1:]
    elif p.shape[1] != classes:
        fail(path, f"key {key!r} has {p.shape[1]} columns, expected {classes} classes "
                   f"(or {classes + 1} with the background first)")
    if rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    ids = p.argmax(axis=1)
    return ids.astype(np.int64), p[np.arange(rows), ids].astype(np.float32)


def check_ids(ids: np.ndarray, path, key: str, classes: int, hint: str = "") -> np.ndarray:
    """Ids must lie in [0, classes) or be MISSING_ID (the heads have ``classes`` outputs)."""
    bad = ((ids < 0) | (ids >= classes)) & (ids != MISSING_ID)
    if bad.any():
        i = int(np.argmax(bad))
        fail(path, f"key {key!r} holds {int(ids[i])} at row {i}, outside [0, {classes}){hint}")
    return ids.astype(np.int64)


def rebase_ids(ids: np.ndarray, conf: np.ndarray, id_base: int):
    """Ids counted from ``id_base`` -> 0-based; id_base - 1 and below (the background class of
    files that count it as 0) become MISSING_ID with confidence 0."""
    ids = ids.astype(np.int64) - id_base
    conf = conf.astype(np.float32).copy()
    background = ids < 0
    ids[background] = MISSING_ID
    conf[background] = 0.0
    return ids, conf


def select_boxes(rank: Optional[np.ndarray], n: int, max_boxes: Optional[int]) -> np.ndarray:
    """Rows to keep: all, or the ``max_boxes`` of highest ``rank`` (ties and a missing rank:
    the earlier row), in their original order."""
    if max_boxes is None or n <= max_boxes:
        return np.arange(n)
    if rank is None:
        return np.arange(max_boxes)
    return np.sort(np.argsort(-rank.astype(np.float64), kind="stable")[:max_boxes])


def build_record(path, img_id: str, img_h: int, img_w: int, boxes: np.ndarray,
                 features: np.ndarray, objects=None, attrs=None, rank=None,
                 max_boxes: Optional[int] = None) -> Tuple[Dict, Dict]:
    """One LXMERT record (TSV field names) and notes for the import report.

    ``objects`` / ``attrs``: (ids, conf) already 0-based and checked, or None (missing: stored
    as MISSING_ID, confidence 0). ``rank``: what ``max_boxes`` keeps the highest of (default
    the object confidence).
    """
    if img_h < 1 or img_w < 1 or img_h >= 2 ** 63 or img_w >= 2 ** 63:
        fail(path, f"image size {img_h} x {img_w} (h x w) is not positive")
    n = features.shape[0]
    notes = {"objects_missing": objects is None, "attrs_missing": attrs is None}
    filled = {}
    for name, pair in (("objects", objects), ("attrs", attrs)):
        if pair is None:
            pair = (np.full(n, MISSING_ID, np.int64), np.zeros(n, np.float32))
        filled[name] = pair
    if rank is None and objects is not None:
        rank = objects[1]
    keep = select_boxes(rank, n, max_boxes)
    notes["boxes_dropped"] = n - len(keep)
    rec = {"img_id": img_id, "img_h": int(img_h), "img_w": int(img_w), "num_boxes": len(keep),
           "boxes": np.ascontiguousarray(boxes[keep], dtype=np.float32),
           "features": np.ascontiguousarray(features[keep], dtype=np.float32)}
    for name in ("objects", "attrs"):
        ids, conf = filled[name]
        rec[f"{name}_id"] = np.ascontiguousarray(ids[keep], dtype=np.int64)
        rec[f"{name}_conf"] = np.ascontiguousarray(conf[keep], dtype=np.float32)
    return rec, notes
