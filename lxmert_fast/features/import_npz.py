"""The two per-image ``.npz`` formats: ``butd-npz`` and ``uniter-npz``.

``butd-npz``: the files of MILVLG bottom-up-attention.pytorch, one ``<name>.npz`` per image.

Caffe mode (``utils/extract_utils.py::save_roi_features``, ``np.savez_compressed``):
  x (N, D) float32 RoI features; bbox (N, 4) float32, pixels of the original image;
  num_bbox, image_h, image_w (0-d ints); info: a dict pickled in a 0-d object array with
  image_id, image_h, image_w, num_boxes, objects_id (N,) int64, objects_conf (N,) float32 and,
  only when attributes were on, attrs_id (N,) int64 / attrs_conf (N,) float32.
  Since September 2020 the ids are the argmax over the classes without the background
  (0-based over 1600 objects / 400 attributes); earlier files took the argmax over all columns,
  background / "no attribute" included as 0: import those with ``id_base=1`` (background then
  becomes a missing label).
D2 mode (``utils/extract_d2features.py``): the same x / bbox / num_bbox / image_h / image_w plus
  image_h_inner / image_w_inner, and info = {objects (N,) 0-based, cls_prob (N, 1600) with the
  background column dropped, and with attributes attrs_id = the (N, A) attribute probabilities
  (torch tensors) and attrs_scores (or attrs_conf) = their logits}. Object confidences are
  cls_prob at the stored class (ids and confidences are its argmax / max where objects is
  absent); attribute ids / confidences are the argmax / max of the probabilities (a first
  "no attribute" column of A = 401 dropped).

``uniter-npz``: the per-image files of UNITER's BUTD extraction (the ``chenrocks/butd-caffe``
image, ``save_to_npz``: ``<prefix>_<image_id>.npz``, ``np.savez_compressed``), which UNITER's
``scripts/convert_imgdir.py`` then packs into LMDB. Keys, all float16:

  features (N, D); norm_bb (N, 6) = (x1/w, y1/h, x2/w, y2/h, width/w, height/h), normalised by
  the image size, which the file does not keep; conf (N, 1) the detector's confidence;
  soft_labels (N, 1601) the class probabilities, background in column 0.

Imported as: boxes = norm_bb[:, :4] with image size 1 x 1 (``gather`` divides by the size, so
it returns them unchanged), objects_id = argmax of soft_labels without the background (0-based
over the 1600 classes), objects_conf = conf; no attributes (stored as missing). No pickles:
a file holding one is refused.
"""
from typing import Dict, Optional, Tuple

import numpy as np

from .import_common import (NUM_ATTR_CLASSES, NUM_OBJECT_CLASSES, argmax_max, array,
                            as_numpy, build_record, check_ids, fail, load_npz, need,
                            rebase_ids, scalar_int, unpack_dict)

_ID_HINT = (" (files written before Sept 2020 count the background as class 0: import them "
            "with --id_base 1)")


def _pair(info: Dict, path, id_key: str, conf_key: str, n: int, classes: int, id_base: int):
    """(ids, conf) stored as two (N,) arrays of ``info``; None when the id key is absent."""
    if id_key not in info:
        return None
    ids = array(info[id_key], path, f"info[{id_key!r}]", 1, rows=n, kind="i")
    conf = array(need(info, conf_key, path, "info"), path, f"info[{conf_key!r}]", 1, rows=n)
    ids, conf = rebase_ids(ids, conf, id_base)
    return check_ids(ids, path, f"info[{id_key!r}]", classes, _ID_HINT), conf


def _caffe_labels(info: Dict, path, n: int, id_base: int):
    objects = _pair(info, path, "objects_id", "objects_conf", n, NUM_OBJECT_CLASSES, id_base)
    if objects is None:
        need(info, "objects_id", path, "info")
    attrs = _pair(info, path, "attrs_id", "attrs_conf", n, NUM_ATTR_CLASSES, id_base)
    info_n = scalar_int(need(info, "num_boxes", path, "info"), path, "info['num_boxes']")
    if info_n != n:
        fail(path, f"info['num_boxes'] = {info_n} but key 'x' has {n} rows")
    return objects, attrs


def _d2_labels(info: Dict, path, n: int):
    probs = array(need(info, "cls_prob", path, "info"), path, "info['cls_prob']", 2, rows=n,
                  cols=NUM_OBJECT_CLASSES)
    if "objects" in info:
        ids = array(info["objects"], path, "info['objects']", 1, rows=n, kind="i")
        ids = check_ids(ids, path, "info['objects']", NUM_OBJECT_CLASSES)
        objects = (ids, probs[np.arange(n), ids].astype(np.float32))
    else:
        objects = argmax_max(probs, path, "info['cls_prob']", n, NUM_OBJECT_CLASSES)
    if "attrs_id" in info and as_numpy(info["attrs_id"]).ndim == 2:   # probabilities
        attrs = argmax_max(info["attrs_id"], path, "info['attrs_id']", n, NUM_ATTR_CLASSES)
    else:
        attrs = _pair(info, path, "attrs_id", "attrs_conf", n, NUM_ATTR_CLASSES, 0)
    return objects, attrs


def read_butd_npz(path: str, img_id: Optional[str], id_base: int = 0,
                  max_boxes: Optional[int] = None) -> Tuple[Dict, Dict]:
    """One image's record and import notes; ``img_id`` None takes info['image_id']."""
    data = load_npz(path, allow_pickle=True)
    feats = array(need(data, "x", path), path, "x", 2)
    n = feats.shape[0]
    boxes = array(need(data, "bbox", path), path, "bbox", 2, rows=n, cols=4)
    num_bbox = scalar_int(need(data, "num_bbox", path), path, "num_bbox")
    if num_bbox != n:
        fail(path, f"num_bbox = {num_bbox} but key 'x' has {n} rows")
    img_h = scalar_int(need(data, "image_h", path), path, "image_h")
    img_w = scalar_int(need(data, "image_w", path), path, "image_w")
    info = unpack_dict(need(data, "info", path), path, "info")
    d2 = "image_h_inner" in data
    if d2 and id_base != 0:
        fail(path, f"id_base={id_base} applies to caffe-mode files (ids counting the background "
                   "as 0); this is a d2-mode file (key 'image_h_inner'), whose ids are 0-based")
    objects, attrs = _d2_labels(info, path, n) if d2 else _caffe_labels(info, path, n, id_base)
    if img_id is None:
        img_id = str(need(info, "image_id", path, "info"))
    rec, notes = build_record(path, img_id, img_h, img_w, boxes, feats, objects, attrs,
                              max_boxes=max_boxes)
    notes["mode"] = "d2" if d2 else "caffe"
    return rec, notes


def read_uniter_npz(path: str, img_id: str, max_boxes: Optional[int] = None
                    ) -> Tuple[Dict, Dict]:
    """One image's record and import notes."""
    data = load_npz(path, allow_pickle=False)
    feats = array(need(data, "features", path), path, "features", 2)
    n = feats.shape[0]
    norm_bb = array(need(data, "norm_bb", path), path, "norm_bb", 2, rows=n, cols=6)
    conf = as_numpy(need(data, "conf", path))
    if conf.ndim == 2 and conf.shape[1] == 1:   # (N, 1) as written
        conf = conf[:, 0]
    conf = array(conf, path, "conf", 1, rows=n)
    ids, _ = argmax_max(need(data, "soft_labels", path), path, "soft_labels", n,
                        NUM_OBJECT_CLASSES)
    boxes = norm_bb[:, :4]
    rec, notes = build_record(path, img_id, 1, 1, boxes, feats, (ids, conf.astype("float32")),
                              max_boxes=max_boxes)
    notes["size_source"] = "normalised"
    return rec, notes
