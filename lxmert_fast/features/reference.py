"""``TsvFeatures``: the pure-Python feature source with the original LXMERT loader's semantics.

Every record of every TSV file is decoded into a dict of numpy arrays held in RAM (the original
repository's ``load_obj_tsv``; ~250 images/s and one copy per DataLoader worker). It is the
reference the C++ ``FeatureStore`` is tested against and the baseline of its benchmarks, and it
implements the same API (CONTRACTS.md, "Features"): ``len``, ``in``, ``ids``, ``index``,
``[img_id]`` and ``gather``. Features stay float32.

On top of the TSV reader's checks it rejects what a store cannot hold: a duplicate img_id, an
empty img_id, an image height/width of 0 or of more than 63 bits, and a feature dimension that
differs between images.
An image with num_boxes = 0 is allowed (its features have shape (0, D)).
"""
import os
from typing import Dict, List, Sequence, Union

import numpy as np
import torch

from .batch import allocate_batch, check_max_boxes, normalise_boxes, resolve_indices
from .tsv import TsvFormatError, iter_located

PathList = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def as_path_list(tsv_paths: PathList) -> List[str]:
    """One path or a sequence of paths -> list of str paths (non-empty)."""
    if isinstance(tsv_paths, (str, os.PathLike)):
        paths = [os.fspath(tsv_paths)]
    else:
        paths = [os.fspath(p) for p in tsv_paths]
    if not paths:
        raise ValueError("no TSV paths given")
    return paths


def _where(path, line_no, offset, img_id) -> str:
    return f"{path}: line {line_no} (byte offset {offset}), img_id {img_id!r}"


class TsvFeatures:
    """All records of ``tsv_paths`` decoded into RAM, in file order (files in the given order)."""

    def __init__(self, tsv_paths: PathList):
        self.paths = as_path_list(tsv_paths)
        self._records: List[Dict] = []
        self._index: Dict[str, int] = {}
        seen = {}
        self.dim = None
        for path in self.paths:
            for line_no, offset, item in iter_located(path):
                self._check(item, path, line_no, offset, seen)
                seen[item["img_id"]] = (path, line_no)
                self._index[item["img_id"]] = len(self._records)
                self._records.append(item)
        self.dim = self.dim or 0
        for item in self._records:
            if item["num_boxes"] == 0:
                item["features"] = np.zeros((0, self.dim), dtype=np.float32)
                item["features"].setflags(write=False)

    def _check(self, item, path, line_no, offset, seen):
        img_id = item["img_id"]
        if not img_id:
            raise TsvFormatError(f"{_where(path, line_no, offset, img_id)}: empty img_id")
        if img_id in seen:
            first = seen[img_id]
            raise TsvFormatError(f"{_where(path, line_no, offset, img_id)}: duplicate img_id "
                                 f"(first seen in {first[0]}: line {first[1]})")
        for key in ("img_h", "img_w"):
            if item[key] >= 2 ** 63:
                raise TsvFormatError(f"{_where(path, line_no, offset, img_id)}: field {key}="
                                     f"{item[key]} is too large (more than 63 bits)")
        for key in ("img_h", "img_w"):
            if item[key] == 0:
                raise TsvFormatError(f"{_where(path, line_no, offset, img_id)}: field {key}=0, "
                                     "image size must be positive")
        if item["num_boxes"]:
            d = item["features"].shape[1]
            if self.dim is None:
                self.dim = d
            elif d != self.dim:
                raise TsvFormatError(f"{_where(path, line_no, offset, img_id)}: feature "
                                     f"dimension {d} differs from the earlier images' {self.dim}")

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, img_id) -> bool:
        return img_id in self._index

    @property
    def ids(self) -> List[str]:
        return [r["img_id"] for r in self._records]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def index(self, img_id: str) -> int:
        try:
            return self._index[img_id]
        except (KeyError, TypeError):
            raise KeyError(f"img_id {img_id!r} not in {len(self)} images of {self.paths}") from None

    def __getitem__(self, img_id: str) -> Dict:
        return dict(self._records[self.index(img_id)])

    def gather(self, ids_or_indices, max_boxes: int = 36, pin_memory: bool = False,
               out=None) -> Dict[str, torch.Tensor]:
        """One padded batch (layout in ``batch.py``), filled in Python."""
        max_boxes = check_max_boxes(max_boxes)
        idx = resolve_indices(ids_or_indices, len(self), self.index)
        res = allocate_batch(len(idx), max_boxes, self.dim, torch.float32, pin_memory, out)
        arrays = {k: v.numpy() for k, v in res.items()}
        for a in arrays.values():
            a[...] = 0
        for b, i in enumerate(idx):
            rec = self._records[i]
            n = min(rec["num_boxes"], max_boxes)
            arrays["features"][b, :n] = rec["features"][:n]
            arrays["boxes"][b, :n] = normalise_boxes(rec["boxes"][:n], rec["img_h"], rec["img_w"])
            arrays["box_mask"][b, :n] = True
            for key in ("objects_id", "objects_conf", "attrs_id", "attrs_conf"):
                arrays[key][b, :n] = rec[key][:n]
            arrays["num_boxes"][b] = n
            arrays["img_h"][b] = rec["img_h"]
            arrays["img_w"][b] = rec["img_w"]
        return res
