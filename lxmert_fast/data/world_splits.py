"""The synthetic world's JSON splits, in the exact formats of the original LXMERT data files.

- Pretraining records (data/lxmert/*.json): ``{"img_id", "sentf": {"mscoco": [...], "vg": [...],
  "vqa": [...], "gqa": [...]}, "labelf": {"vqa": [{answer: score}, ...], "gqa": [...]}}`` with
  each ``labelf`` list aligned with the ``sentf`` list of the same source.
- VQA (data/vqa/*.json): ``{"answer_type", "img_id", "label": {answer: score}, "question_id",
  "question_type", "sent"}``; soft scores from 10 simulated annotators.
- GQA (data/gqa/*.json): ``{"img_id", "label": {answer: 1.0}, "question_id", "sent"}``.
- NLVR2 (data/nlvr2/*.json): ``{"identifier", "img0", "img1", "label": 0|1, "sent", "uid"}``.
- Answer tables ``ans2label`` (dict answer -> label) / ``label2ans`` (list), built from the
  train and valid answers as the original's ``trainval_*`` tables, most frequent first.
The VQA/GQA questions of the pretraining records are those of the VQA/GQA splits of the same
images, as in the original (VQA/GQA train questions are part of LXMERT's pretraining data).
"""
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import numpy as np

from lxmert_fast.data import synthetic_text as st
from lxmert_fast.data.synthetic_scenes import Scene

# Sentences per image of each source; "nlvr2": NLVR2-style statements per image (each about a
# random pair of images of the same split): 4 gives 400 held-out pairs in the default world, so a
# fine-tuning difference of 0.05 is about two standard errors, not one.
DEFAULT_SENTENCES = {"mscoco": 2, "vg": 2, "vqa": 3, "gqa": 3, "nlvr2": 4}


def image_text(scene: Scene, index: int, seed: int, counts: Dict[str, int]) -> Dict:
    """Captions and questions of one image (deterministic in seed and image index)."""
    rng = np.random.default_rng([seed, 2, index])
    caps = [st.caption(scene, rng) for _ in range(counts["mscoco"])]
    regions = [st.region_description(scene, rng) for _ in range(counts["vg"])]
    vqa = []
    for q in range(counts["vqa"]):
        sent, ans, ans_type, q_type, pool = st.vqa_question(scene, rng)
        vqa.append({"answer_type": ans_type, "img_id": scene.img_id,
                    "label": st.vqa_soft_label(ans, pool, rng), "question_id": index * 100 + q,
                    "question_type": q_type, "sent": sent})
    gqa = []
    for q in range(counts["gqa"]):
        sent, ans = st.gqa_question(scene, rng)
        gqa.append({"img_id": scene.img_id, "label": {ans: 1.0},
                    "question_id": f"{index:07d}{q:02d}", "sent": sent})
    return {"mscoco": caps, "vg": regions, "vqa": vqa, "gqa": gqa}


def pretrain_record(img_id: str, text: Dict) -> Dict:
    return {
        "img_id": img_id,
        "sentf": {"mscoco": list(text["mscoco"]), "vg": list(text["vg"]),
                  "vqa": [q["sent"] for q in text["vqa"]], "gqa": [q["sent"] for q in text["gqa"]]},
        "labelf": {"vqa": [dict(q["label"]) for q in text["vqa"]],
                   "gqa": [dict(q["label"]) for q in text["gqa"]]},
    }


def nlvr2_split(scenes: Sequence[Scene], split: str, num: int, seed: int) -> List[Dict]:
    """``num`` statements over random image pairs of ``scenes``, labels balanced at random."""
    if len(scenes) < 2:
        raise ValueError(f"NLVR2 split {split!r} needs at least 2 images, got {len(scenes)}")
    out = []
    code = {"train": 0, "valid": 1}.get(split, 2)
    for k in range(num):
        rng = np.random.default_rng([seed, 4, code, k])
        i, j = rng.choice(len(scenes), size=2, replace=False)
        want = bool(rng.random() < 0.5)
        sent = None
        while sent is None:
            sent = st.nlvr2_statement(scenes[i], scenes[j], want, rng)
        out.append({"identifier": f"{split}-{k}-0-0", "img0": scenes[i].img_id,
                    "img1": scenes[j].img_id, "label": int(want), "sent": sent,
                    "uid": f"nlvr2_{split}_{k}"})
    return out


def answer_tables(examples: Sequence[Dict]) -> Tuple[Dict[str, int], List[str]]:
    """ans2label / label2ans over every answer in the labels, most frequent first (ties by name)."""
    counts = Counter(a for ex in examples for a in ex["label"])
    label2ans = sorted(counts, key=lambda a: (-counts[a], a))
    return {a: i for i, a in enumerate(label2ans)}, label2ans


def build_splits(train: Sequence[Scene], valid: Sequence[Scene], seed: int,
                 counts: Dict[str, int]) -> Dict[str, object]:
    """Every JSON file of the world, by file stem (``pretrain_train`` ... ``gqa_label2ans``)."""
    out: Dict[str, object] = {}
    for split, scenes, offset in (("train", train, 0), ("valid", valid, len(train))):
        texts = [image_text(s, offset + i, seed, counts) for i, s in enumerate(scenes)]
        out[f"pretrain_{split}"] = [pretrain_record(s.img_id, t) for s, t in zip(scenes, texts)]
        out[f"vqa_{split}"] = [q for t in texts for q in t["vqa"]]
        out[f"gqa_{split}"] = [q for t in texts for q in t["gqa"]]
        num_pairs = max(2, counts.get("nlvr2", 1) * len(scenes))
        out[f"nlvr2_{split}"] = nlvr2_split(scenes, split, num_pairs, seed)
    for task in ("vqa", "gqa"):
        ans2label, label2ans = answer_tables(out[f"{task}_train"] + out[f"{task}_valid"])
        out[f"{task}_ans2label"], out[f"{task}_label2ans"] = ans2label, label2ans
    return out
