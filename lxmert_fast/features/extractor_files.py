"""Files written exactly as each extractor writes them, from LXMERT records (``synthetic.py``),
for the importers' tests and benchmark: same keys, dtypes, shapes, 0-d object arrays holding
pickled dicts (torch tensors where the extractor leaves them), padding rows and resized sizes.
The extractors' code is described in ``import_npz.py``, ``import_mmf.py`` and
``import_npz.py``; each writer here notes what it reproduces.

Every writer takes one record (``random_record``: pixel boxes, 0-based ids, confidences) and a
directory, and returns the path of the feature file it wrote.
"""
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .import_common import NUM_ATTR_CLASSES, NUM_OBJECT_CLASSES


def class_probs(ids: np.ndarray, conf: np.ndarray, classes: int, seed: int = 0,
                background_first: bool = False) -> np.ndarray:
    """(N, classes [+1]) float32 probabilities whose argmax is ``ids`` with value ``conf``
    (other classes below conf / 2); with ``background_first`` a column 0 of background."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    p = (rng.random((n, classes), dtype=np.float32) * (conf[:, None] / 2)).astype(np.float32)
    p[np.arange(n), ids] = conf
    if background_first:
        p = np.concatenate([rng.random((n, 1), dtype=np.float32) * conf[:, None] / 2, p], 1)
    return p


def write_butd_caffe(rec: Dict, out_dir: str, attrs: bool = True, id_base: int = 0) -> str:
    """MILVLG ``save_roi_features`` (caffe mode): x / bbox are torch tensors handed to
    ``np.savez_compressed``; info ids are the numpy argmax (int64), confidences float32; files
    before Sept 2020 (``id_base=1``) counted the background as class 0."""
    stem = rec["img_id"]
    info = {"image_id": stem, "image_h": rec["img_h"], "image_w": rec["img_w"],
            "num_boxes": rec["num_boxes"],
            "objects_id": rec["objects_id"].astype(np.int64) + id_base,
            "objects_conf": rec["objects_conf"].astype(np.float32)}
    if attrs:
        info.update(attrs_id=rec["attrs_id"].astype(np.int64) + id_base,
                    attrs_conf=rec["attrs_conf"].astype(np.float32))
    out = os.path.join(out_dir, stem)
    np.savez_compressed(out, x=torch.from_numpy(np.array(rec["features"], np.float32)),
                        bbox=torch.from_numpy(np.array(rec["boxes"], np.float32)),
                        num_bbox=rec["num_boxes"], image_h=rec["img_h"], image_w=rec["img_w"],
                        info=info)
    return out + ".npz"


def write_butd_d2(rec: Dict, out_dir: str, attrs: bool = True) -> str:
    """MILVLG ``extract_d2features.py`` (roi_feats): info = {objects, cls_prob (N, 1600)} plus,
    with attributes, attrs_id = the (N, 401) attribute probabilities and attrs_scores = logits,
    both torch tensors; image_h_inner / image_w_inner = the resized input's size."""
    n = rec["num_boxes"]
    info = {"objects": rec["objects_id"].astype(np.int64),
            "cls_prob": class_probs(rec["objects_id"], rec["objects_conf"], NUM_OBJECT_CLASSES)}
    if attrs:
        probs = class_probs(rec["attrs_id"], rec["attrs_conf"], NUM_ATTR_CLASSES, seed=1,
                            background_first=True)
        info.update(attrs_id=torch.from_numpy(probs), attrs_scores=torch.randn(n, 401))
    out = os.path.join(out_dir, rec["img_id"] + ".npz")
    np.savez_compressed(out, x=np.array(rec["features"], np.float32),
                        bbox=np.array(rec["boxes"], np.float32), num_bbox=n,
                        image_h=rec["img_h"], image_w=rec["img_w"],
                        image_h_inner=600, image_w_inner=800, info=info)
    return out


def _pad_rows(a: np.ndarray, rows: int, rng) -> np.ndarray:
    """Rows appended after the real ones (detections of confidence 0 in vmb's top-M)."""
    extra = rng.random((rows - len(a),) + a.shape[1:]).astype(a.dtype) * 10
    return np.concatenate([a, extra]) if rows > len(a) else a


def write_mmf_vmb(rec: Dict, out_dir: str, num_features: int = 100,
                  background: bool = False) -> str:
    """MMF ``extract_features_vmb.py``: num_features rows; num_boxes = the real count (boxes of
    non-zero confidence); cls_prob (M, 1600), or (M, 1601) and background-counting objects with
    --background."""
    rng = np.random.default_rng(7)
    n, m = rec["num_boxes"], max(num_features, rec["num_boxes"])
    ids = np.concatenate([rec["objects_id"].astype(np.int64),
                          rng.integers(0, NUM_OBJECT_CLASSES, m - n)])
    columns = ids + int(background)   # id -1 = the background won (only with --background)
    conf = np.concatenate([rec["objects_conf"], np.full(m - n, 0.01, np.float32)])
    probs = class_probs(columns, conf.astype(np.float32), NUM_OBJECT_CLASSES + int(background))
    info = {"bbox": _pad_rows(np.array(rec["boxes"], np.float32), m, rng),
            "num_boxes": n, "objects": columns, "cls_prob": probs,
            "image_width": rec["img_w"], "image_height": rec["img_h"]}
    base = os.path.join(out_dir, rec["img_id"])
    np.save(base + ".npy", _pad_rows(np.array(rec["features"], np.float32), m, rng))
    np.save(base + "_info.npy", info)
    return base + ".npy"


def write_mmf_frcnn(rec: Dict, out_dir: str, resized: Tuple[int, int],
                    num_features: int = 100) -> str:
    """MMF ``frcnn/extract_features_frcnn.py``: features = every detection; bbox / objects /
    cls_prob (the (k,) object confidences) cut to num_features; num_boxes = the CLI value;
    image_width / image_height = ``resized`` (h, w), the network input's size."""
    k = min(num_features, rec["num_boxes"])
    info = {"bbox": np.array(rec["boxes"][:k], np.float32), "num_boxes": num_features,
            "objects": rec["objects_id"][:k].astype(np.int64),
            "cls_prob": rec["objects_conf"][:k].astype(np.float32),
            "image_width": resized[1], "image_height": resized[0]}
    base = os.path.join(out_dir, rec["img_id"])
    np.save(base + ".npy", np.array(rec["features"], np.float32))
    np.save(base + "_info.npy", info)
    return base + ".npy"


def vinvl_box_dims(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """MMF ``extract_features_vinvl.py::_norm_box``: (x1/w, y1/h, x2/w, y2/h, x2n - x1n,
    y2n - y1n) in float32 (torch arithmetic)."""
    b = torch.zeros(len(boxes), 6)
    b[:, :4] = torch.from_numpy(np.array(boxes, np.float32))
    b[:, 0] /= w
    b[:, 1] /= h
    b[:, 2] /= w
    b[:, 3] /= h
    b[:, 4] = b[:, 2] - b[:, 0]
    b[:, 5] = b[:, 3] - b[:, 1]
    return b.numpy()


def write_mmf_vinvl(rec: Dict, out_dir: str) -> str:
    """MMF ``extract_features_vinvl.py``: features (N, 2054) = box_features + the 6 box dims;
    info = the detector's fields (VinVL's own label space) with bbox (N, 6) replaced by the
    normalised dims and image_width / image_height of the original image."""
    dims = vinvl_box_dims(rec["boxes"], rec["img_w"], rec["img_h"])
    feats = np.array(rec["features"], np.float32)
    info = {"labels": rec["objects_id"] % 1594 + 1, "scores": rec["objects_conf"],
            "box_features": feats, "attr_labels": rec["attrs_id"] % 524 + 1,
            "attr_scores": rec["attrs_conf"], "bbox": dims,
            "image_width": rec["img_w"], "image_height": rec["img_h"]}
    base = os.path.join(out_dir, rec["img_id"])
    np.save(base + ".npy", np.concatenate([feats, dims], axis=1))
    np.save(base + "_info.npy", info)
    return base + ".npy"


def write_uniter(rec: Dict, out_dir: str, prefix: str = "nlvr2_",
                 confidence: Optional[np.ndarray] = None) -> str:
    """UNITER's BUTD ``save_to_npz``: ``<prefix><image_id>.npz`` (savez_compressed) with
    norm_bb (N, 6), features, conf (N, 1) and soft_labels (N, 1601, background first), all
    float16; the confidence went through float64."""
    w, h = float(rec["img_w"]), float(rec["img_h"])
    b = np.array(rec["boxes"], np.float32)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    sx, sy, sw, sh = b[:, 0] / w, b[:, 1] / h, bw / w, bh / h
    norm_bb = np.stack([sx, sy, sx + sw, sy + sh, sw, sh], axis=1)
    conf = rec["objects_conf"] if confidence is None else confidence
    conf = np.asarray(conf, np.float64).reshape(rec["num_boxes"], -1).astype(np.float32)
    soft = class_probs(rec["objects_id"], rec["objects_conf"], NUM_OBJECT_CLASSES,
                       background_first=True)
    out = os.path.join(out_dir, prefix + rec["img_id"] + ".npz")
    np.savez_compressed(out, norm_bb=norm_bb.astype(np.float16),
                        features=np.array(rec["features"], np.float32).astype(np.float16),
                        conf=conf.astype(np.float16), soft_labels=soft.astype(np.float16))
    return out
