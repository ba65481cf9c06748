"""LXMERT-format pretraining records of the real corpus's shape, at a chosen scale (issue 23).

    python -m benchmarks.corpus_shape OUT_DIR [--images 180000] [--sentences_per_image 51]
        [--feature_dim 16] [--files 4]

LXMERT pretrains on 9.18M (image, sentence) pairs over ~180k images: per image ~5 COCO / VG
captions and ~46 questions of VQA, GQA and Visual7W with soft labels. This writes ``--files``
JSON files of records ``{"img_id", "sentf": {source: [...]}, "labelf": {source: [...]}}`` with
5 captions (mscoco) and the rest questions (vqa 30%, gqa 55%, visual7w 15%), each of 6-14 whole
words of the BERT uncased vocabulary (so tokenisation costs what real text costs; questions
repeat across images as real ones do: a pool of distinct questions), soft labels of 1-3 answers
from a 3,500-answer pool; and a feature store with every image (``--feature_dim``: the corpus's
shape does not depend on it; batch-building figures use 2048). Deterministic in ``--seed``.
"""
import argparse
import json
import os
from typing import Dict, List

import numpy as np

CAPTIONS = 5
QA_SOURCES = (("vqa", 0.30), ("gqa", 0.55), ("visual7w", 0.15))
SCORES = np.array([0.3, 0.6, 0.9, 1.0])


def _words(vocab_path: str) -> np.ndarray:
    with open(vocab_path, encoding="utf-8") as f:
        tokens = [t.rstrip("\n") for t in f]
    return np.array([t for t in tokens if t.isalpha() and t.isascii() and len(t) > 1])


def _sentences(rng: np.random.Generator, words: np.ndarray, count: int, end: str) -> List[str]:
    lengths = rng.integers(6, 15, size=count)
    picks = words[rng.integers(0, len(words), size=int(lengths.sum()))]
    cuts = np.cumsum(lengths)[:-1]
    return [" ".join(p) + end for p in np.split(picks, cuts)]


def records(num_images: int, per_image: int, seed: int, vocab_path: str):
    """Yield the records of ``num_images`` images, ``per_image`` sentences each."""
    rng = np.random.default_rng(seed)
    words = _words(vocab_path)
    answers = words[rng.choice(len(words), 3500, replace=False)]
    questions = _sentences(rng, words, max(1000, num_images * 6), "?")  # repeated as real ones
    n_qa = per_image - CAPTIONS
    split = [int(round(n_qa * share)) for _, share in QA_SOURCES]
    split[-1] = n_qa - sum(split[:-1])
    for i in range(num_images):
        rec: Dict = {"img_id": f"img{i:07d}", "sentf": {"mscoco": _sentences(rng, words,
                                                                            CAPTIONS, ".")},
                     "labelf": {}}
        for (source, _), n in zip(QA_SOURCES, split):
            rec["sentf"][source] = [questions[j] for j in rng.integers(0, len(questions), n)]
            k = rng.integers(1, 4, size=n)
            rec["labelf"][source] = [
                {str(a): float(s) for a, s in zip(answers[rng.integers(0, len(answers), c)],
                                                   SCORES[rng.integers(0, 4, c)])} for c in k]
        yield rec


def write_corpus(out_dir: str, num_images: int, per_image: int = 51, files: int = 4,
                 seed: int = 0, vocab_path: str = None) -> List[str]:
    """Write the record files; returns their paths."""
    from lxmert_fast.data.tokenization import resolve_vocab

    vocab_path = vocab_path or resolve_vocab(None)
    os.makedirs(out_dir, exist_ok=True)
    paths, bounds = [], np.linspace(0, num_images, files + 1).astype(int)
    it = records(num_images, per_image, seed, vocab_path)
    for f in range(files):
        path = os.path.join(out_dir, f"pretrain_{f}.json")
        with open(path, "w") as fh:
            json.dump([next(it) for _ in range(bounds[f + 1] - bounds[f])], fh)
        paths.append(path)
    return paths


def write_features(out_path: str, num_images: int, dim: int, boxes: int = 36,
                   seed: int = 0) -> str:
    """A float16 feature store with images img0000000.. (random features, ``boxes`` each)."""
    from lxmert_fast.features import convert_tsv
    from lxmert_fast.features.synthetic import random_records
    from lxmert_fast.features.tsv import write_obj_tsv

    tsv = out_path + ".tsv"
    write_obj_tsv(tsv, random_records(num_images, dim=dim, boxes=(boxes,), seed=seed))
    convert_tsv([tsv], out_path, dtype="float16", durable=False)
    os.remove(tsv)
    return out_path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--images", type=int, default=180_000)
    p.add_argument("--sentences_per_image", type=int, default=51)
    p.add_argument("--feature_dim", type=int, default=16)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    paths = write_corpus(args.out_dir, args.images, args.sentences_per_image, args.files,
                         args.seed)
    store = write_features(os.path.join(args.out_dir, "features.store"), args.images,
                           args.feature_dim)
    print(f"wrote {paths} and {store}")


if __name__ == "__main__":
    main()


def write_vqa_split(path: str, num_questions: int, num_images: int, seed: int = 0,
                    vocab_path: str = None) -> str:
    """A VQA 2.0-format split (question_id, img_id, sent, soft label, types) over images
    img0000000.. of ``write_features``: what fine-tuning reads (0.6-1M questions per split)."""
    from lxmert_fast.data.tokenization import resolve_vocab

    rng = np.random.default_rng(seed)
    words = _words(vocab_path or resolve_vocab(None))
    answers = words[rng.choice(len(words), 3129, replace=False)]
    sents = _sentences(rng, words, num_questions, "?")
    imgs = rng.integers(0, num_images, num_questions)
    k = rng.integers(1, 4, num_questions)
    recs = [{"question_id": int(i), "img_id": f"img{int(imgs[i]):07d}", "sent": sents[i],
             "label": {str(a): float(s) for a, s in zip(answers[rng.integers(0, 3129, k[i])],
                                                         SCORES[rng.integers(0, 4, k[i])])},
             "answer_type": "other", "question_type": "what is"} for i in range(num_questions)]
    with open(path, "w") as f:
        json.dump(recs, f)
    return path
