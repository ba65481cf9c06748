"""Synthetic images for the embedded world: objects with classes, attributes, boxes and RoI features.

Each image stands in for one line of LXMERT's Faster R-CNN feature TSV (DESIGN.md section 1):
3-36 objects, each with a class and attributes (colour, size, material), a pixel box whose
position makes relations (left of / above) determinable, a detector confidence, and a 2048-d
float32 feature that carries the class and attributes as a low-dimensional signal embedded in
2048 dims: ``relu(P_class + 0.6 P_colour + 0.4 P_material + 0.3 P_size + sigma * noise)`` with
fixed random prototypes ``P`` (drawn from the world seed) and noise growing as confidence drops,
so a model can recover what the detector "saw" (and a linear probe can, see tests).
"""
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from lxmert_fast.data import lexicon as lx

FEATURE_DIM = 2048
MIN_OBJECTS, MAX_OBJECTS = 3, 36


@dataclass
class SceneObject:
    cls: str
    colour: str
    size: str
    material: str
    box: np.ndarray          # (4,) float32 pixels x1, y1, x2, y2
    conf: float
    attr_conf: float

    @property
    def cx(self) -> float:
        return float(self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return float(self.box[1] + self.box[3]) / 2


@dataclass
class Scene:
    img_id: str
    width: int
    height: int
    objects: List[SceneObject] = field(default_factory=list)

    def count(self, cls: str) -> int:
        return sum(o.cls == cls for o in self.objects)

    def classes(self) -> List[str]:
        return sorted({o.cls for o in self.objects})

    def unique(self, cls: str):
        """The only object of class ``cls``, or None when there are zero or several."""
        found = [o for o in self.objects if o.cls == cls]
        return found[0] if len(found) == 1 else None


class Prototypes:
    """Fixed random 2048-d directions for every class and attribute word of the world."""

    def __init__(self, seed: int, dim: int = FEATURE_DIM):
        rng = np.random.default_rng([seed, 7])
        names = lx.CLASSES + lx.ATTRIBUTES
        vecs = rng.standard_normal((len(names), dim)).astype(np.float32)
        self.vec: Dict[str, np.ndarray] = dict(zip(names, vecs))
        self.dim = dim

    def features(self, objects: List[SceneObject], rng: np.random.Generator) -> np.ndarray:
        """(n, dim) float32 RoI features of ``objects``."""
        n = len(objects)
        signal = np.stack([self.vec[o.cls] + 0.6 * self.vec[o.colour] + 0.4 * self.vec[o.material]
                           + 0.3 * self.vec[o.size] for o in objects])
        sigma = np.array([0.4 + 0.8 * (1.0 - o.conf) for o in objects], dtype=np.float32)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32)
        return np.maximum(signal + sigma[:, None] * noise, 0.0).astype(np.float32)


def _box(rng: np.random.Generator, size: str, width: int, height: int) -> np.ndarray:
    lo, hi = (30, 90) if size == "small" else (120, 240)
    bw = min(rng.uniform(lo, hi) * rng.uniform(0.8, 1.25), width - 2)
    bh = min(rng.uniform(lo, hi) * rng.uniform(0.8, 1.25), height - 2)
    x1 = rng.uniform(0, width - bw)
    y1 = rng.uniform(0, height - bh)
    return np.array([x1, y1, x1 + bw, y1 + bh], dtype=np.float32)


def make_scene(img_id: str, rng: np.random.Generator) -> Scene:
    """One image: a theme of 2-7 classes, 3-36 objects drawn from it with random attributes."""
    width, height = int(rng.integers(500, 641)), int(rng.integers(375, 481))
    theme = rng.choice(len(lx.CLASSES), size=int(rng.integers(2, 8)), replace=False)
    n = int(np.clip(MIN_OBJECTS + rng.binomial(MAX_OBJECTS - MIN_OBJECTS, 0.3),
                    MIN_OBJECTS, MAX_OBJECTS))
    scene = Scene(img_id, width, height)
    for _ in range(n):
        cls = lx.CLASSES[int(rng.choice(theme))]
        size = lx.SIZES[int(rng.integers(len(lx.SIZES)))]
        obj = SceneObject(
            cls=cls,
            colour=lx.COLOURS[int(rng.integers(len(lx.COLOURS)))],
            size=size,
            material=lx.MATERIALS[int(rng.integers(len(lx.MATERIALS)))],
            box=_box(rng, size, width, height),
            conf=float(rng.uniform(0.35, 1.0)),
            attr_conf=float(rng.uniform(0.2, 0.95)),
        )
        scene.objects.append(obj)
    return scene


def scene_record(scene: Scene, protos: Prototypes, rng: np.random.Generator) -> Dict:
    """The TSV record of ``scene`` (the fields of ``lxmert_fast.features.tsv.FIELDNAMES``).

    ``attrs_id`` holds one attribute per box like the public features (the detector's top
    attribute): here the colour.
    """
    objs = scene.objects
    return {
        "img_id": scene.img_id,
        "img_h": scene.height,
        "img_w": scene.width,
        "objects_id": np.array([lx.OBJECT_IDS[o.cls] for o in objs], dtype=np.int64),
        "objects_conf": np.array([o.conf for o in objs], dtype=np.float32),
        "attrs_id": np.array([lx.ATTR_IDS[o.colour] for o in objs], dtype=np.int64),
        "attrs_conf": np.array([o.attr_conf for o in objs], dtype=np.float32),
        "num_boxes": len(objs),
        "boxes": np.stack([o.box for o in objs]).astype(np.float32),
        "features": protos.features(objs, rng),
    }


def relation(a: SceneObject, b: SceneObject, scene: Scene) -> str:
    """Spatial relation of ``a`` to ``b`` as a phrase, from the box centres.

    Horizontal relations need a gap of 15% of the image width, vertical ones 15% of the height;
    otherwise the objects are "next to" each other.
    """
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= 0.15 * scene.width and abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) >= 0.15 * scene.height:
        return "above" if dy > 0 else "below"
    return "next to"
