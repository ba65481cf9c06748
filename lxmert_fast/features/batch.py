"""The batch layout shared by ``FeatureStore.gather`` and ``TsvFeatures.gather``.

A gathered batch is a dict of torch tensors (CONTRACTS.md, "Features"):
features (B, max_boxes, D) in the source's dtype, boxes (B, max_boxes, 4) float32 normalised by
img_w / img_h (x1, y1, x2, y2 as in the original LXMERT loader), box_mask (B, max_boxes) bool,
objects_id / attrs_id (B, max_boxes) int64, objects_conf / attrs_conf (B, max_boxes) float32,
num_boxes (B,) int64 = number of real slots (min(num_boxes, max_boxes)), img_h / img_w (B,) int64.
Padded slots are zero; an image with more than max_boxes boxes keeps its first max_boxes.

Buffers come from ``allocate_batch`` (optionally pinned) or from a caller's ``out`` dict (a
previous batch, reused); with ``out`` of leading size >= B, the returned tensors are views [:B].
"""
import warnings
from typing import Dict, Optional

import numpy as np
import torch

PER_BOX = {"boxes": (torch.float32, (4,)), "box_mask": (torch.bool, ()),
           "objects_id": (torch.int64, ()), "objects_conf": (torch.float32, ()),
           "attrs_id": (torch.int64, ()), "attrs_conf": (torch.float32, ())}
PER_IMAGE = {"num_boxes": torch.int64, "img_h": torch.int64, "img_w": torch.int64}
BATCH_KEYS = ("features",) + tuple(PER_BOX) + tuple(PER_IMAGE)

_warned_pin = False


def batch_shapes(batch: int, max_boxes: int, dim: int, feat_dtype: torch.dtype) -> Dict:
    """key -> (dtype, shape) of every tensor of a gathered batch."""
    shapes = {"features": (feat_dtype, (batch, max_boxes, dim))}
    for key, (dtype, tail) in PER_BOX.items():
        shapes[key] = (dtype, (batch, max_boxes) + tail)
    for key, dtype in PER_IMAGE.items():
        shapes[key] = (dtype, (batch,))
    return shapes


def _can_pin(pin_memory: bool) -> bool:
    global _warned_pin
    if pin_memory and not torch.cuda.is_available():
        if not _warned_pin:
            warnings.warn("gather(pin_memory=True): no CUDA device, returning pageable tensors")
            _warned_pin = True
        return False
    return pin_memory


def allocate_batch(batch: int, max_boxes: int, dim: int, feat_dtype: torch.dtype,
                   pin_memory: bool = False, out: Optional[Dict] = None) -> Dict:
    """Uninitialised tensors for one batch, or the validated views [:batch] of ``out``."""
    if max_boxes < 0:
        raise ValueError(f"max_boxes must be >= 0, got {max_boxes}")
    shapes = batch_shapes(batch, max_boxes, dim, feat_dtype)
    if out is None:
        pin = _can_pin(pin_memory)
        return {k: torch.empty(shape, dtype=dtype, pin_memory=pin)
                for k, (dtype, shape) in shapes.items()}
    result = {}
    for key, (dtype, shape) in shapes.items():
        if key not in out:
            raise ValueError(f"out buffer has no key {key!r} (expected keys {list(shapes)})")
        t = out[key]
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            raise ValueError(f"out[{key!r}] must be a CPU torch.Tensor, got {type(t).__name__}"
                             f"{' on ' + str(t.device) if isinstance(t, torch.Tensor) else ''}")
        if t.dtype != dtype or t.dim() != len(shape) or t.shape[1:] != shape[1:] \
                or t.shape[0] < batch or not t.is_contiguous():
            raise ValueError(f"out[{key!r}] is {tuple(t.shape)} {t.dtype} (contiguous="
                             f"{t.is_contiguous()}), need contiguous {dtype} with shape "
                             f"({'>=' + str(batch)}, {', '.join(map(str, shape[1:]))})")
        result[key] = t[:batch]
    return result


def resolve_indices(ids_or_indices, length: int, lookup) -> np.ndarray:
    """int64 record indices for a sequence of img_ids (str) and/or indices (int), or an integer
    array / tensor. ``lookup(img_id) -> int`` raises KeyError for an unknown id."""
    if isinstance(ids_or_indices, (str, bytes)):
        raise TypeError("gather() takes a sequence of img_ids or indices, not a single string "
                        f"{ids_or_indices!r}")
    if isinstance(ids_or_indices, torch.Tensor):
        ids_or_indices = ids_or_indices.detach().cpu().numpy()
    if isinstance(ids_or_indices, np.ndarray) and ids_or_indices.dtype.kind in "iu":
        idx = ids_or_indices.astype(np.int64).reshape(-1)
    else:
        idx = np.fromiter((lookup(x) if isinstance(x, str) else _as_index(x)
                           for x in ids_or_indices), dtype=np.int64)
    bad = (idx < 0) | (idx >= length)
    if bad.any():
        pos = int(np.argmax(bad))
        raise IndexError(f"gather: index {int(idx[pos])} at position {pos} is out of range "
                         f"for {length} images")
    return idx


def _as_index(x) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"gather: expected an img_id (str) or an index (int), got {x!r}")
    return int(x)


def check_max_boxes(max_boxes) -> int:
    if isinstance(max_boxes, bool) or not isinstance(max_boxes, (int, np.integer)) \
            or max_boxes < 0:
        raise ValueError(f"max_boxes must be a non-negative int, got {max_boxes!r}")
    return int(max_boxes)


def normalise_boxes(boxes: np.ndarray, img_h: int, img_w: int) -> np.ndarray:
    """Pixel boxes (n, 4) -> boxes / (w, h, w, h) in float32, as the original loader does."""
    out = np.array(boxes, dtype=np.float32, copy=True)
    out[:, (0, 2)] /= np.float32(img_w)
    out[:, (1, 3)] /= np.float32(img_h)
    return out
