"""``FeatureStore``: LXMERT RoI features memory-mapped from a binary store, and ``convert_tsv``.

The store (layout in csrc/common.h) is written once from the TSV files by the C++ converter
(parallel base64 decoding, float16 by default, temporary file + fsync + rename) and then opened
with mmap: nothing is copied into process memory, so every DataLoader worker and every rank on a
node shares the page cache instead of holding its own copy of the features (the original
loader's ~53 GB per process). ``gather`` fills a padded batch with C++ threads, GIL released.
Pickling a store pickles its path; a DataLoader worker re-opens the mapping.
"""
import os
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from .. import _featstore
from .batch import allocate_batch, check_max_boxes, resolve_indices
from .errors import StoreFormatError, TsvFormatError  # noqa: F401  (re-exported)
from .reference import PathList, as_path_list

DTYPES = {"float16": _featstore.FLOAT16, "float32": _featstore.FLOAT32}
_NP_DTYPE = {_featstore.FLOAT16: np.dtype(np.float16), _featstore.FLOAT32: np.dtype(np.float32)}
_TORCH_DTYPE = {_featstore.FLOAT16: torch.float16, _featstore.FLOAT32: torch.float32}
PER_BOX_FIELDS = ("objects_id", "objects_conf", "attrs_id", "attrs_conf", "boxes")


def default_threads() -> int:
    """Threads for C++ work: torch's intra-op setting (1 inside DataLoader workers)."""
    return max(1, torch.get_num_threads())


def convert_tsv(tsv_paths: PathList, out_path: Union[str, os.PathLike], dtype: str = "float16",
                num_threads: Optional[int] = None, progress=None, durable: bool = True) -> str:
    """Convert LXMERT TSV file(s) into a feature store at ``out_path``; returns ``out_path``.

    ``dtype`` is "float16" (numpy's round-to-nearest-even cast) or "float32" (exact).
    ``progress(bytes_read_total)`` is called after each block read (e.g. a tqdm update).
    Bad input raises TsvFormatError (file, line, byte offset, img_id) or OSError.

    The store is written under a temporary name beside it (``out_path.tmp.<pid>.<n>``) and
    renamed over ``out_path`` only when complete, so a failed or killed conversion never leaves
    a file that looks valid and never touches an existing ``out_path``. ``durable=True`` (the
    default) also flushes the data to disk before the rename (write-back started per block,
    fsync) and fsyncs the directory after it: the store then survives an OS crash or power loss
    too. ``durable=False`` skips those flushes and leaves the write-back to the kernel (faster
    where the disk is the bottleneck): a process crash is still safe, but after an OS crash or
    power loss before the kernel wrote the file back (typically within 30 s), ``out_path`` may
    be missing, the previous version, or (depending on the file system) a file of the right
    size with unwritten (zero) blocks, which opening does not detect.
    Temporary files of ``out_path`` left by a killed conversion (their writer pid no longer
    runs on this host) are removed first; a live writer's are kept. Do not convert to one
    ``out_path`` from several hosts sharing the directory at once.
    """
    paths = as_path_list(tsv_paths)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if num_threads is None:
        num_threads = os.cpu_count() or 1
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
    if not isinstance(durable, bool):
        raise ValueError(f"durable must be a bool, got {durable!r}")
    out_path = os.fspath(out_path)
    _featstore.convert(paths, out_path, DTYPES[dtype], num_threads, progress, durable)
    return out_path


class FeatureStore:
    """A converted feature store, memory-mapped read-only (CONTRACTS.md "Features" API).

    Replace a store by renaming a new file over it (as ``convert_tsv`` does): an open store keeps
    reading the old file. If the open file is truncated in place instead, reads would fault
    (SIGBUS) on the missing pages: every lookup, ``store[img_id]``, ``record`` and ``gather``
    first checks the file's size (one fstat) and raises StoreFormatError naming the file, the
    mapped and the current size. A truncation racing a read already checked, or touching a
    record's arrays (views of the mapping) after it, is not caught.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        self._open()

    def _open(self):
        self._store = _featstore.Store(self.path)
        self._arrays = self._store.arrays()
        for a in self._arrays.values():
            a.setflags(write=False)
        self._ids: Optional[List[str]] = None

    def __getstate__(self) -> Dict:
        return {"path": self.path}

    def __setstate__(self, state: Dict):
        self.path = state["path"]
        self._open()

    def __repr__(self) -> str:
        if "_store" not in self.__dict__:
            return f"FeatureStore({self.path!r}: not open)"
        return (f"FeatureStore({self.path!r}: {len(self)} images, {self.num_boxes} boxes, "
                f"dim {self.dim}, {self.dtype})")

    @property
    def dim(self) -> int:
        return self._store.feature_dim

    @property
    def dtype(self) -> np.dtype:
        return _NP_DTYPE[self._store.dtype]

    @property
    def num_boxes(self) -> int:
        return self._store.num_boxes

    @property
    def file_size(self) -> int:
        return self._store.file_size

    @property
    def boxes_per_image(self) -> np.ndarray:
        self._store.check_size()
        return np.diff(self._arrays["box_start"]).astype(np.int64)

    def __len__(self) -> int:
        return self._store.num_images

    def __contains__(self, img_id) -> bool:
        return isinstance(img_id, str) and self._store.lookup(img_id) >= 0

    @property
    def ids(self) -> List[str]:
        """img_ids in store order (built on first use, then cached)."""
        if self._ids is None:
            self._ids = self._store.ids()
        return self._ids

    def index(self, img_id: str) -> int:
        i = self._store.lookup(img_id) if isinstance(img_id, str) else -1
        if i < 0:
            raise KeyError(f"img_id {img_id!r} not in the {len(self)} images of {self.path}")
        return i

    def record(self, i: int) -> Dict:
        """Record ``i`` (store order) with TSV field names; arrays are read-only views."""
        self._store.check_size()
        a = self._arrays
        s, e = int(a["box_start"][i]), int(a["box_start"][i + 1])
        rec = {"img_id": self._store.id(i), "img_h": int(a["img_h"][i]),
               "img_w": int(a["img_w"][i]), "num_boxes": e - s,
               "features": a["features"][s:e]}
        for key in PER_BOX_FIELDS:
            rec[key] = a[key][s:e]
        return rec

    def __getitem__(self, img_id: str) -> Dict:
        return self.record(self.index(img_id))

    def box_rows(self, indices, boxes) -> np.ndarray:
        """(R, D) features of box ``boxes[r]`` of image ``indices[r]`` (store order); a box
        beyond its image's count gives zeros (the padding a gather would give)."""
        self._store.check_size()
        indices = np.asarray(indices, dtype=np.int64)
        boxes = np.asarray(boxes, dtype=np.int64)
        start = self._arrays["box_start"]
        first, count = start[indices].astype(np.int64), np.diff(start)[indices].astype(np.int64)
        inside = (boxes >= 0) & (boxes < count)
        rows = self._arrays["features"][np.where(inside, first + boxes, 0)]
        rows[~inside] = 0
        return rows

    def gather(self, ids_or_indices, max_boxes: int = 36, pin_memory: bool = False,
               out: Optional[Dict[str, torch.Tensor]] = None,
               num_threads: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """One padded batch (layout in ``batch.py``), filled by C++ threads without the GIL.

        ``out``: a previous batch's dict to fill again (leading size >= batch; views returned).
        ``num_threads``: default ``torch.get_num_threads()`` (1 in DataLoader workers).
        """
        max_boxes = check_max_boxes(max_boxes)
        if isinstance(ids_or_indices, (list, tuple)) and ids_or_indices \
                and all(isinstance(x, str) for x in ids_or_indices):
            idx = self._store.lookup_many(list(ids_or_indices))
            if (idx < 0).any():
                self.index(ids_or_indices[int(np.argmax(idx < 0))])
        else:
            idx = resolve_indices(ids_or_indices, len(self), self.index)
        res = allocate_batch(len(idx), max_boxes, self.dim, _TORCH_DTYPE[self._store.dtype],
                             pin_memory, out)
        a = {k: v.numpy() for k, v in res.items()}
        if a["features"].dtype == np.float16:
            a["features"] = a["features"].view(np.uint16)
        self._store.gather(idx, max_boxes, a["features"], a["boxes"], a["box_mask"],
                           a["objects_id"], a["objects_conf"], a["attrs_id"], a["attrs_conf"],
                           a["num_boxes"], a["img_h"], a["img_w"],
                           num_threads or default_threads())
        return res
