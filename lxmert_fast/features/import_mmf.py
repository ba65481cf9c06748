"""``mmf-npy``: MMF's feature scripts, ``<name>.npy`` (features) beside ``<name>_info.npy`` (a
dict pickled in a 0-d object array). Three writers share the layout (read in MMF
``tools/scripts/features/``):

- ``extract_features_vmb.py``: features (M, D) float32 with M = --num_features (100) rows: the
  top boxes by confidence, the rows after the first ``num_boxes`` being boxes of confidence 0
  (padding); info = {bbox (M, 4) pixels of the original image, num_boxes (the real count),
  objects (M,), cls_prob (M, 1600) (or 1601 with --background: column 0 is the background and
  ``objects`` counts it), image_width, image_height (the original image)}.
- ``frcnn/extract_features_frcnn.py`` (LXMERT's own FRCNN port): features (M, D) all the
  detections; info = {bbox (k, 4) original pixels, objects (k,), cls_prob (k,) the object
  confidences, with k = min(M, --num_features); num_boxes = the --num_features CLI value, NOT a
  count; image_width, image_height = the size of the RESIZED network input, not of the image
  the boxes are in}. The image size must then come from ``image_sizes`` (a file) or be taken as
  the boxes' bounding extent (``image_sizes="extent"``, approximate): without either, an error.
- ``extract_features_vinvl.py``: features (N, 2054) = 2048 box features + 6 box dims
  (x1/w, y1/h, x2/w, y2/h, width, height), split off here (recognised by an info without
  ``objects`` whose bbox has 6 columns, equal to the features' last 6); info = the detector's
  fields with bbox (N, 6) those normalised dims and image_width / image_height of the original
  image. VinVL's labels are its own 1594 / 524 classes, not LXMERT's: ids are stored as missing.

A vmb file whose boxes reach beyond its stored size is treated like an frcnn file.
"""
import json
import math
import os
from typing import Dict, Optional, Tuple, Union

import numpy as np

from .import_common import (NUM_OBJECT_CLASSES, array, as_numpy, build_record, check_ids, fail,
                            load_npy, need, rebase_ids, scalar_int, unpack_dict)

class ImageSizes:
    """Original image sizes from a JSON file ``{img_id: [height, width]}``."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        with open(self.path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                fail(self.path, f"not JSON ({e})")
        if not isinstance(raw, dict):
            fail(self.path, f"expected a JSON object {{img_id: [height, width]}}, got "
                            f"{type(raw).__name__}")
        self.sizes: Dict[str, Tuple[int, int]] = {}
        for img_id, hw in raw.items():
            if not (isinstance(hw, list) and len(hw) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw)):
                fail(self.path, f"img_id {img_id!r}: {hw!r} is not [height, width] in pixels")
            self.sizes[img_id] = (hw[0], hw[1])

    def lookup(self, img_id: str, source) -> Tuple[int, int]:
        if img_id not in self.sizes:
            fail(self.path, f"no size for img_id {img_id!r} (of {source})")
        return self.sizes[img_id]


def info_path(path: str) -> str:
    """``<name>.npy`` -> ``<name>_info.npy``."""
    return path[:-4] + "_info.npy"


def _extent(path, boxes: np.ndarray) -> Tuple[int, int]:
    if len(boxes) == 0:
        fail(path, "no boxes to take the image extent from")
    return (max(1, math.ceil(float(boxes[:, 3].max()))),
            max(1, math.ceil(float(boxes[:, 2].max()))))


def _image_size(path, img_id, stored, boxes, distrust: Optional[str], image_sizes):
    """(height, width) and where it came from: the sizes file, the file's own, or the extent."""
    if isinstance(image_sizes, ImageSizes):
        return image_sizes.lookup(img_id, path), "sizes file"
    if distrust is None:
        return stored, "file"
    if image_sizes == "extent":
        return _extent(path, boxes), "extent"
    fail(path, f"{distrust}: pass --image_sizes FILE (JSON {{img_id: [height, width]}}) for "
               "the exact sizes, or --image_sizes extent to take the boxes' bounding extent "
               "(approximate)")


def _labels_2d(info, path, rows: int):
    """vmb: objects (rows,) and cls_prob (rows, 1600 | 1601 with the background first);
    without objects, the argmax of cls_prob (as the extractor computes them)."""
    probs = array(info["cls_prob"], path, "info['cls_prob']", 2, rows=rows)
    if probs.shape[1] not in (NUM_OBJECT_CLASSES, NUM_OBJECT_CLASSES + 1):
        fail(path, f"info['cls_prob'] has {probs.shape[1]} columns, expected "
                   f"{NUM_OBJECT_CLASSES} (or {NUM_OBJECT_CLASSES + 1} with --background)")
    if "objects" in info:
        objects = array(info["objects"], path, "info['objects']", 1, rows=rows, kind="i")
    else:
        objects = probs.argmax(axis=1) if rows else np.zeros(0, np.int64)
    check_ids(objects, path, "info['objects']", probs.shape[1])
    conf = probs[np.arange(rows), objects].astype(np.float32)
    ids, conf = rebase_ids(objects, conf, probs.shape[1] - NUM_OBJECT_CLASSES)
    return ids, conf


def _read_detections(feats, info, path):
    """vmb / frcnn: (boxes, features, objects, stored size, distrust reason, notes)."""
    probs = as_numpy(need(info, "cls_prob", path, "info"))
    boxes = array(need(info, "bbox", path, "info"), path, "info['bbox']", 2, cols=4)
    k, num_boxes = boxes.shape[0], scalar_int(need(info, "num_boxes", path, "info"), path,
                                              "info['num_boxes']")
    stored = (scalar_int(need(info, "image_height", path, "info"), path, "info['image_height']"),
              scalar_int(need(info, "image_width", path, "info"), path, "info['image_width']"))
    if probs.ndim == 1:  # frcnn: k boxes, features of every detection
        if feats.shape[0] < k:
            fail(path, f"features have {feats.shape[0]} rows but info['bbox'] has {k}")
        ids = check_ids(array(need(info, "objects", path, "info"), path, "info['objects']", 1,
                              rows=k, kind="i"), path, "info['objects']", NUM_OBJECT_CLASSES)
        conf = array(probs, path, "info['cls_prob']", 1, rows=k).astype(np.float32)
        distrust = (f"info['image_width'] x info['image_height'] = {stored[1]} x {stored[0]} is "
                    "the size of the resized network input (extract_features_frcnn.py), "
                    "while the boxes are in original pixels")
        notes = {"variant": "frcnn", "padding_dropped": 0}
        return boxes, feats[:k], (ids, conf), stored, distrust, notes
    if feats.shape[0] != k:
        fail(path, f"features have {feats.shape[0]} rows but info['bbox'] has {k}")
    if num_boxes > k:
        fail(path, f"info['num_boxes'] = {num_boxes} but info['bbox'] has only {k} rows")
    ids, conf = _labels_2d(info, path, k)
    boxes, w, h = boxes[:num_boxes], stored[1], stored[0]
    distrust = None
    if num_boxes and (boxes[:, 2].max() > w + 1 or boxes[:, 3].max() > h + 1):
        distrust = (f"boxes reach x2 = {boxes[:, 2].max():.1f}, y2 = {boxes[:, 3].max():.1f}, "
                    f"beyond info['image_width'] x info['image_height'] = {w} x {h}")
    notes = {"variant": "vmb", "padding_dropped": k - num_boxes}
    return boxes, feats[:num_boxes], (ids[:num_boxes], conf[:num_boxes]), stored, distrust, notes


def _is_vinvl(feats, info) -> bool:
    bbox = info.get("bbox")
    return "objects" not in info and bbox is not None and as_numpy(bbox).ndim == 2 \
        and as_numpy(bbox).shape[1] == 6 and feats.shape[1] > 6


def _read_vinvl(feats, info, path):
    """VinVL: split the 6 box dims off the features; boxes back to original pixels."""
    n = feats.shape[0]
    w = scalar_int(need(info, "image_width", path, "info"), path, "info['image_width']")
    h = scalar_int(need(info, "image_height", path, "info"), path, "info['image_height']")
    norm = array(info["bbox"], path, "info['bbox']", 2, rows=n, cols=6)
    if not np.allclose(feats[:, -6:], norm, rtol=1e-5, atol=1e-6):
        fail(path, "the features' last 6 columns are not info['bbox'] (VinVL appends the "
                   "normalised box to each feature)")
    boxes = norm[:, :4].astype(np.float32) * np.array([w, h, w, h], dtype=np.float32)
    rank = None
    if "scores" in info:
        rank = array(info["scores"], path, "info['scores']", 1, rows=n)
    notes = {"variant": "vinvl", "padding_dropped": 0}
    return boxes, feats[:, :-6], rank, (h, w), notes


def read_mmf_npy(path: str, img_id: str, image_sizes=None,
                 max_boxes: Optional[int] = None) -> Tuple[Dict, Dict]:
    """One image's record and import notes from ``path`` (the features) and its _info.npy.
    ``image_sizes``: None, "extent" or an ``ImageSizes`` (used for every image)."""
    feats = array(load_npy(path, allow_pickle=False, key="<features>"), path, "<features>", 2)
    ipath = info_path(path)
    if not os.path.exists(ipath):
        fail(path, f"its info file {ipath} does not exist")
    info = unpack_dict(load_npy(ipath, allow_pickle=True, key="<info>"), ipath, "<info>")
    if _is_vinvl(feats, info):
        boxes, feats, rank, stored, notes = _read_vinvl(feats, info, ipath)
        size, notes["size_source"] = _image_size(path, img_id, stored, boxes, None, image_sizes)
        rec, more = build_record(path, img_id, size[0], size[1], boxes, feats, rank=rank,
                                 max_boxes=max_boxes)
        return rec, {**notes, **more}
    boxes, feats, objects, stored, distrust, notes = _read_detections(feats, info, ipath)
    size, notes["size_source"] = _image_size(ipath, img_id, stored, boxes, distrust, image_sizes)
    rec, more = build_record(path, img_id, size[0], size[1], boxes, feats, objects,
                             max_boxes=max_boxes)
    return rec, {**notes, **more}
