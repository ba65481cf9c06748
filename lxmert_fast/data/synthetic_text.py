"""Sentences about synthetic scenes: COCO-/VG-style captions, VQA-/GQA-style questions, NLVR2 statements.

Every sentence is true of its image (captions) or has an answer determined by the image
(questions), so the world is learnable: masked words (colours, classes, counts), matching and
answers can all be predicted from the RoI features and boxes. VQA-style labels are soft scores
from 10 simulated annotators with the VQA 2.0 preprocessing used by LXMERT's data: an answer
given by k annotators scores 0.3, 0.6, 0.9 for k = 1, 2, 3 and 1.0 for k >= 4.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np

from lxmert_fast.data import lexicon as lx
from lxmert_fast.data.synthetic_scenes import Scene, relation

# (sentence, answer, answer_type, question_type, answer pool for annotator noise)
Question = Tuple[str, str, str, str, List[str]]
YES_NO = ["yes", "no"]
COUNTS = [str(i) for i in range(0, 8)]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _desc(obj, rng: np.random.Generator, n_attrs: int) -> str:
    attrs = [obj.size, obj.colour, obj.material]
    keep = sorted(rng.choice(3, size=n_attrs, replace=False)) if n_attrs else []
    words = [attrs[i] for i in keep] + [obj.cls]
    return " ".join(words)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One COCO-style caption."""
    objs = scene.objects
    kind = int(rng.integers(4))
    a = _pick(rng, objs)
    if kind == 0 and len(objs) > 1:
        b = _pick(rng, [o for o in objs if o is not a])
        da, db = _desc(a, rng, 1), _desc(b, rng, 1)
        return f"{lx.article(da)} {da} {relation(a, b, scene)} {lx.article(db)} {db}"
    if kind == 1:
        n = scene.count(a.cls)
        noun = a.cls if n == 1 else lx.plural(a.cls)
        verb = "is" if n == 1 else "are"
        return f"there {verb} {lx.number_word(n)} {noun} in the picture"
    if kind == 2:
        classes = scene.classes()
        shown = [classes[i] for i in rng.permutation(len(classes))[:3]]
        items = [f"{lx.article(c)} {c}" for c in shown]
        listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        return f"a picture with {listed}"
    d = _desc(a, rng, 2)
    return f"{lx.article(d)} {d} in a scene with {len(objs)} objects"


def region_description(scene: Scene, rng: np.random.Generator) -> str:
    """One Visual Genome-style region description (a short phrase)."""
    a = _pick(rng, scene.objects)
    if int(rng.integers(3)) == 0 and len(scene.objects) > 1:
        b = _pick(rng, [o for o in scene.objects if o is not a])
        return f"{a.colour} {a.cls} {relation(a, b, scene)} {b.cls}"
    return _desc(a, rng, int(rng.integers(1, 4)))


def _absent_class(scene: Scene, rng: np.random.Generator) -> Optional[str]:
    absent = [c for c in scene.world_classes if scene.count(c) == 0]
    return _pick(rng, absent) if absent else None


def _unique_pair(scene: Scene, rng: np.random.Generator):
    singles = [c for c in scene.classes() if scene.count(c) == 1]
    if len(singles) < 2:
        return None
    i, j = rng.choice(len(singles), size=2, replace=False)
    return scene.unique(singles[i]), scene.unique(singles[j])


def vqa_question(scene: Scene, rng: np.random.Generator) -> Question:
    """One VQA-style question with its true answer."""
    singles = [c for c in scene.classes() if scene.count(c) == 1]
    kind = int(rng.integers(6))
    if kind == 0 and singles:
        o = scene.unique(_pick(rng, singles))
        return f"what color is the {o.cls}?", o.colour, "other", "what color is the", lx.COLOURS
    if kind == 1 and singles:
        o = scene.unique(_pick(rng, singles))
        return (f"what is the {o.cls} made of?", lx.MATERIAL_NOUN[o.material], "other",
                "what is the", sorted(lx.MATERIAL_NOUN.values()))
    if kind == 2:
        pair = _unique_pair(scene, rng)
        if pair is not None:
            a, b = pair
            rel = relation(a, b, scene)
            side = "left" if rng.random() < 0.5 else "right"
            ans = "yes" if rel == f"to the {side} of" else "no"
            return f"is the {a.cls} to the {side} of the {b.cls}?", ans, "yes/no", "is the", YES_NO
    if kind == 3:
        cls = _pick(rng, scene.classes()) if rng.random() < 0.75 else _absent_class(scene, rng)
        cls = cls or scene.classes()[0]
        n = scene.count(cls)
        return f"how many {lx.plural(cls)} are there?", str(n), "number", "how many", COUNTS
    if kind == 4:
        obj = _pick(rng, scene.objects)
        holders = {o.cls for o in scene.objects if o.colour == obj.colour}
        if len(holders) == 1:
            return (f"what is the {obj.colour} object?", obj.cls, "other", "what is the",
                    scene.world_classes)
    present = rng.random() < 0.5
    cls = _pick(rng, scene.classes()) if present else _absent_class(scene, rng)
    cls = cls or scene.classes()[0]
    ans = "yes" if scene.count(cls) else "no"
    return (f"is there {lx.article(cls)} {cls} in the picture?", ans, "yes/no", "is there a",
            YES_NO)


def gqa_question(scene: Scene, rng: np.random.Generator) -> Tuple[str, str]:
    """One GQA-style question with its exact answer."""
    kind = int(rng.integers(5))
    pair = _unique_pair(scene, rng)
    if kind == 0 and pair is not None:
        a, b = pair
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        left = a if a.cx <= b.cx else b
        return f"which object is more to the left, the {first.cls} or the {second.cls}?", left.cls
    if kind == 1 and pair is not None:
        a, _ = pair
        return (f"is the {a.cls} on the left or on the right of the image?",
                "left" if a.cx < scene.width / 2 else "right")
    if kind == 2 and pair is not None:
        a, b = pair
        return f"what color is the {a.cls} {relation(a, b, scene)} the {b.cls}?", a.colour
    if kind == 3:
        o = _pick(rng, scene.objects)
        return f"is the {o.colour} {o.cls} small or large?", o.size
    present = scene.classes()
    a = _pick(rng, present)
    others = [c for c in present if c != a]
    b = _pick(rng, others) if others and rng.random() < 0.5 else (_absent_class(scene, rng) or a)
    ans = "yes" if scene.count(a) and scene.count(b) else "no"
    return f"are there both {lx.plural(a)} and {lx.plural(b)} in the image?", ans


def vqa_soft_label(answer: str, pool: List[str], rng: np.random.Generator,
                   p_correct: float = 0.85) -> Dict[str, float]:
    """Soft scores from 10 simulated annotators: VQA 2.0 score(k) = 0.3, 0.6, 0.9, 1.0 (k >= 4)."""
    counts: Dict[str, int] = {}
    others = [a for a in pool if a != answer] or [answer]
    for _ in range(10):
        ans = answer if rng.random() < p_correct else _pick(rng, others)
        counts[ans] = counts.get(ans, 0) + 1
    return {a: min(1.0, round(0.3 * k, 1)) for a, k in sorted(counts.items())}


def nlvr2_statement(left: Scene, right: Scene, want: bool,
                    rng: np.random.Generator) -> Optional[str]:
    """An NLVR2-style statement about an image pair whose truth equals ``want`` (None if none fits)."""
    kind = int(rng.integers(4))
    if kind == 0:
        cls = _pick(rng, left.classes() + right.classes())
        total = left.count(cls) + right.count(cls)
        n = total if want else max(0, total + int(_pick(rng, [-2, -1, 1, 2])))
        n = n if n != total or want else total + 1
        if n == 1:
            return f"there is one {cls} in total"
        return f"there are {lx.number_word(n)} {lx.plural(cls)} in total"
    if kind == 1:
        side, scene = ("left", left) if rng.random() < 0.5 else ("right", right)
        if want:
            o = _pick(rng, scene.objects)
            return f"the {side} image contains {lx.article(o.colour)} {o.colour} {o.cls}"
        have = {(o.colour, o.cls) for o in scene.objects}
        for _ in range(20):
            colour, cls = _pick(rng, lx.COLOURS), _pick(rng, scene.world_classes)
            if (colour, cls) not in have:
                return f"the {side} image contains {lx.article(colour)} {colour} {cls}"
        return None
    if kind == 2:
        cls = _pick(rng, left.classes() + right.classes())
        a, b = left.count(cls), right.count(cls)
        if a == b:
            return None if want else f"the left image has more {lx.plural(cls)} than the right image"
        more = "left" if a > b else "right"
        side = more if want else ("right" if more == "left" else "left")
        other = "right" if side == "left" else "left"
        return f"the {side} image has more {lx.plural(cls)} than the {other} image"
    both = sorted(set(left.classes()) & set(right.classes()))
    either = sorted(set(left.classes()) ^ set(right.classes()))
    pool = both if want else either
    if not pool:
        return None
    cls = _pick(rng, pool)
    return f"both images contain {lx.article(cls)} {cls}"
