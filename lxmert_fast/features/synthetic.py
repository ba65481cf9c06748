"""Random LXMERT feature records (TSV field names, original dtypes) for tests and benchmarks.

Boxes lie inside the image (x1 <= x2 <= img_w, y1 <= y2 <= img_h) like detector output; features
are non-negative (post-ReLU RoI pooling) with a spread of magnitudes that exercises float16
rounding (subnormals and values beyond float16's range included when ``extreme`` is set).
"""
from typing import Dict, Iterator, Optional, Sequence

import numpy as np


def random_record(rng: np.random.Generator, img_id: str, num_boxes: int, dim: int = 2048,
                  extreme: bool = False) -> Dict:
    """One record with ``num_boxes`` boxes of ``dim``-d features."""
    img_h, img_w = int(rng.integers(200, 1000)), int(rng.integers(200, 1000))
    xy = rng.random((num_boxes, 2, 2), dtype=np.float32)
    xy.sort(axis=1)
    scale = np.array([img_w, img_h], dtype=np.float32)
    boxes = (xy * scale).reshape(num_boxes, 4).astype(np.float32)
    feats = rng.exponential(1.0, (num_boxes, dim)).astype(np.float32)
    feats[rng.random((num_boxes, dim)) < 0.3] = 0.0
    if extreme and num_boxes:
        flat = feats.reshape(-1)
        pick = rng.integers(0, flat.size, min(flat.size, 64))
        specials = np.array([6.0e-8, 3.0e-5, 1.0e-9, 65504.0, 65520.0, 7.0e4, -2.5e-6,
                             np.inf, -np.inf, np.nan, 1.00048828125, 2049.0], dtype=np.float32)
        flat[pick] = specials[rng.integers(0, specials.size, pick.size)]
    return {"img_id": img_id, "img_h": img_h, "img_w": img_w,
            "objects_id": rng.integers(0, 1600, num_boxes).astype(np.int64),
            "objects_conf": rng.random(num_boxes, dtype=np.float32),
            "attrs_id": rng.integers(0, 400, num_boxes).astype(np.int64),
            "attrs_conf": rng.random(num_boxes, dtype=np.float32),
            "num_boxes": num_boxes, "boxes": boxes, "features": feats}


def random_records(count: int, dim: int = 2048, boxes: Sequence[int] = (36,), seed: int = 0,
                   prefix: str = "img", extreme: bool = False,
                   rng: Optional[np.random.Generator] = None) -> Iterator[Dict]:
    """``count`` records; each image's box count is drawn from ``boxes``."""
    rng = rng or np.random.default_rng(seed)
    for i in range(count):
        n = int(boxes[int(rng.integers(0, len(boxes)))])
        yield random_record(rng, f"{prefix}{i:07d}", n, dim, extreme)
