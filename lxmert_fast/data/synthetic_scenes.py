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
from typing import Dict, List, Optional, Tuple

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
    world_classes: List[str] = field(default_factory=lambda: list(lx.CLASSES))
    _counts: Optional[Dict[str, int]] = field(default=None, repr=False, compare=False)

    def counts(self) -> Dict[str, int]:
        """Objects per class (computed once; scenes are not modified after make_scene)."""
        if self._counts is None:
            self._counts = {}
            for o in self.objects:
                self._counts[o.cls] = self._counts.get(o.cls, 0) + 1
        return self._counts

    def count(self, cls: str) -> int:
        return self.counts().get(cls, 0)

    def classes(self) -> List[str]:
        return sorted(self.counts())

    def unique(self, cls: str):
        """The only object of class ``cls``, or None when there are zero or several."""
        found = [o for o in self.objects if o.cls == cls]
        return found[0] if len(found) == 1 else None


class Prototypes:
    """Fixed random 2048-d directions for every class and attribute word of the world."""

    def __init__(self, seed: int, dim: int = FEATURE_DIM):
        rng = np.random.default_rng([seed, 7])
        names = lx.CLASSES + lx.ATTRIBUTES
        self.matrix = rng.standard_normal((len(names), dim)).astype(np.float32)
        self.row = {name: i for i, name in enumerate(names)}
        self.dim = dim

    def features(self, objects: List[SceneObject], rng: np.random.Generator) -> np.ndarray:
        """(n, dim) float32 RoI features of ``objects``."""
        m, row = self.matrix, self.row
        sigma = np.array([0.4 + 0.8 * (1.0 - o.conf) for o in objects], dtype=np.float32)
        out = rng.standard_normal((len(objects), self.dim), dtype=np.float32)
        out *= sigma[:, None]
        # sums of rows by fancy indexing (no BLAS call: thread start-up dominates at this size)
        out += m[[row[o.cls] for o in objects]]
        out += 0.6 * m[[row[o.colour] for o in objects]]
        out += 0.4 * m[[row[o.material] for o in objects]]
        out += 0.3 * m[[row[o.size] for o in objects]]
        return np.maximum(out, 0.0, out=out)


def _boxes(rng: np.random.Generator, large: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n, 4) float32 pixel boxes: sides 30-90 px (small) or 120-240 px (large), inside the image."""
    n = len(large)
    lo, hi = np.where(large, 120.0, 30.0), np.where(large, 240.0, 90.0)
    side = rng.uniform(lo[:, None], hi[:, None], size=(n, 2)) * rng.uniform(0.8, 1.25, size=(n, 2))
    bw = np.minimum(side[:, 0], width - 2)
    bh = np.minimum(side[:, 1], height - 2)
    x1 = rng.random(n) * (width - bw)
    y1 = rng.random(n) * (height - bh)
    return np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)


@dataclass(frozen=True)
class SceneSpec:
    """How images are drawn: the world's classes are the first ``num_classes`` of
    ``lexicon.CLASSES``; an image has a theme of ``classes_per_image`` (inclusive range) of them
    and ``objects_per_image`` objects (binomial between the bounds, mean 30% of the way)."""
    num_classes: int = len(lx.CLASSES)
    classes_per_image: Tuple[int, int] = (2, 7)
    objects_per_image: Tuple[int, int] = (MIN_OBJECTS, MAX_OBJECTS)

    def __post_init__(self):
        if not 2 <= self.num_classes <= len(lx.CLASSES):
            raise ValueError(f"num_classes={self.num_classes} must be in [2, {len(lx.CLASSES)}]")
        lo, hi = self.classes_per_image
        if not 1 <= lo <= hi <= self.num_classes:
            raise ValueError(f"classes_per_image={self.classes_per_image} must satisfy "
                             f"1 <= min <= max <= num_classes={self.num_classes}")
        lo, hi = self.objects_per_image
        if not 2 <= lo <= hi <= MAX_OBJECTS:
            raise ValueError(f"objects_per_image={self.objects_per_image} must satisfy "
                             f"2 <= min <= max <= {MAX_OBJECTS}")

    @property
    def classes(self) -> List[str]:
        return lx.CLASSES[:self.num_classes]


def make_scene(img_id: str, rng: np.random.Generator, spec: SceneSpec = SceneSpec()) -> Scene:
    """One image: a theme of ``spec.classes_per_image`` classes, objects drawn from it with random
    attributes (the default spec: 2-7 of 46 classes, 3-36 objects)."""
    width, height = int(rng.integers(500, 641)), int(rng.integers(375, 481))
    lo, hi = spec.classes_per_image
    theme = rng.choice(spec.num_classes, size=int(rng.integers(lo, hi + 1)), replace=False)
    lo, hi = spec.objects_per_image
    n = lo + int(rng.binomial(hi - lo, 0.3))
    cls = theme[rng.integers(len(theme), size=n)]
    colour = rng.integers(len(lx.COLOURS), size=n)
    size = rng.integers(len(lx.SIZES), size=n)
    material = rng.integers(len(lx.MATERIALS), size=n)
    conf = rng.uniform(0.35, 1.0, size=n)
    attr_conf = rng.uniform(0.2, 0.95, size=n)
    boxes = _boxes(rng, size == lx.SIZES.index("large"), width, height)
    objects = [SceneObject(cls=lx.CLASSES[cls[i]], colour=lx.COLOURS[colour[i]],
                           size=lx.SIZES[size[i]], material=lx.MATERIALS[material[i]],
                           box=boxes[i], conf=float(conf[i]), attr_conf=float(attr_conf[i]))
               for i in range(n)]
    return Scene(img_id, width, height, objects, world_classes=spec.classes)


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
