"""Fine-tuning splits (VQA, GQA, NLVR2) prepared once as flat arrays, like the pretraining
corpus (lxmert_fast/data/prepared.py; issue 23): VQA/GQA splits hold 0.6-1M questions, and a
Python record per question cost every rank and DataLoader worker its copy.

The records are read and validated once (records.py: a bad record is named by file, index, id
and field), then written as arrays: each question's distinct text (tokens CSR, tokenised once)
and its image(s) (``image``, or ``image0`` / ``image1`` for NLVR2 pairs); the ids as UTF-8 CSR
(``qid``, ``qid_int`` where the file's id was an integer; NLVR2's ``identifier``); the label:
VQA/GQA soft labels as CSR over the split's answer strings (answers.json, every answer as in the
file, so scoring sees the full label) with ``has_label``, NLVR2 0/1 (-1: none); VQA's answer and
question types as ids into ``meta["types"]``. ``PreparedRecords`` is a read-only sequence of the
records.py dataclasses built on access, plus batch tokens with numpy: the dataset and the
evaluation code take it where they took a list.
"""
import os
from collections.abc import Sequence
from typing import Dict, List, Optional

import numpy as np

from lxmert_fast.data.prepare import _tokenize, _utf8_csr
from lxmert_fast.data.prepared import (PreparedCorpus, PreparedCorpusError, corpus_key, key_digest,
                                       open_prepared, write_prepared)

from .records import Nlvr2Record, QARecord, load_records


def _csr_strings(values: List[str]):
    return _utf8_csr([str(v) for v in values])


def _qa_arrays(records, images: Dict[str, int], answers: Dict[str, int], types: Dict):
    n = len(records)
    counts = np.zeros(n, dtype=np.int64)
    label_ids, label_scores = [], []
    for i, r in enumerate(records):
        if r.label:
            counts[i] = len(r.label)
            label_ids.extend(answers.setdefault(a, len(answers)) for a in r.label)
            label_scores.extend(r.label.values())
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    type_id = lambda t: -1 if t is None else types.setdefault(t, len(types))  # noqa: E731
    return {"image": np.array([images.setdefault(r.img_id, len(images)) for r in records],
                              dtype=np.int32),
            "has_label": np.array([r.label is not None for r in records], dtype=np.uint8),
            "label_offsets": offsets, "label_ids": np.asarray(label_ids, dtype=np.int32),
            "label_scores": np.asarray(label_scores, dtype=np.float64),
            "answer_type": np.array([type_id(r.answer_type) for r in records], dtype=np.int32),
            "question_type": np.array([type_id(r.question_type) for r in records],
                                      dtype=np.int32)}


def _nlvr2_arrays(records, images: Dict[str, int]):
    ident, ident_offsets = _csr_strings([r.identifier for r in records])
    pairs = np.array([(images.setdefault(r.img0, len(images)), images.setdefault(r.img1,
                                                                                  len(images)))
                      for r in records], dtype=np.int32).reshape(-1, 2)   # first-use order
    return {"image0": pairs[:, 0].copy(), "image1": pairs[:, 1].copy(),
            "label": np.array([-1 if r.label is None else r.label for r in records],
                              dtype=np.int8),
            "identifier": ident, "identifier_offsets": ident_offsets}


def prepare_task_records(task: str, record_paths: List[str], out: str, tokenizer,
                         max_seq_len: int = 20, key: Optional[Dict] = None) -> PreparedCorpus:
    """Fine-tuning records of ``task`` -> prepared split at ``out`` (written atomically)."""
    records = load_records(task, record_paths)
    if not records:
        raise ValueError(f"no {task} records in {record_paths}")
    texts: Dict[str, int] = {}
    text_id = np.array([texts.setdefault(r.sent.strip(), len(texts)) for r in records],
                       dtype=np.int32)
    tokens, tok_offsets = _tokenize(list(texts), tokenizer, max_seq_len - 2, False)
    text, text_offsets = _utf8_csr(list(texts))
    qid, qid_offsets = _csr_strings([r.qid for r in records])
    arrays = {"text_id": text_id, "tokens": tokens, "tok_offsets": tok_offsets, "text": text,
              "text_offsets": text_offsets, "qid": qid, "qid_offsets": qid_offsets,
              "qid_int": np.array([isinstance(r.qid, int) for r in records], dtype=np.uint8)}
    images: Dict[str, int] = {}
    answers: Dict[str, int] = {}
    types: Dict[str, int] = {}
    if task == "nlvr2":
        arrays.update(_nlvr2_arrays(records, images))
    else:
        arrays.update(_qa_arrays(records, images, answers, types))
    key = key or corpus_key(record_paths, tokenizer, max_seq_len, f"task {task}")
    write_prepared(out, arrays, list(images), list(answers), [], key,
                   extra_meta={"task": task, "types": list(types)})
    return open_prepared(out, key)


def ensure_task_records(task: str, record_paths: List[str], tokenizer, max_seq_len: int,
                        cache_dir: Optional[str] = None) -> "PreparedRecords":
    """The prepared split of these records from the cache, built first if missing or damaged
    (one builder per node under a file lock, as the pretraining corpus)."""
    import fcntl

    from lxmert_fast.data.world import default_cache_dir

    record_paths = [os.fspath(p) for p in record_paths]
    missing = [p for p in record_paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{task} record file(s) not found: {missing}")
    key = corpus_key(record_paths, tokenizer, max_seq_len, f"task {task}")
    root = os.path.join(cache_dir or default_cache_dir(), "prepared")
    os.makedirs(root, exist_ok=True)
    out = os.path.join(root, key_digest(key)[:24])
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return PreparedRecords(open_prepared(out, key))
        except PreparedCorpusError:
            pass
        return PreparedRecords(prepare_task_records(task, record_paths, out, tokenizer,
                                                    max_seq_len, key))


def _string(buf, offsets, i: int) -> str:
    return bytes(buf[offsets[i]:offsets[i + 1]]).decode("utf-8")


class PreparedRecords(Sequence):
    """The records of a prepared split, built on access (read-only, O(images) Python state)."""

    def __init__(self, corpus: PreparedCorpus):
        if "task" not in corpus.meta:
            raise PreparedCorpusError(f"{corpus.path} is a pretraining corpus, not a "
                                      f"fine-tuning split")
        self.corpus, self.task = corpus, corpus.meta["task"]
        self.types = corpus.meta.get("types", [])

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        c, i = self.corpus, int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range [0, {len(self)})")
        i %= len(self)
        qid = _string(c.qid, c.qid_offsets, i)
        qid = int(qid) if c.qid_int[i] else qid
        t = int(c.text_id[i])
        sent = _string(c.text, c.text_offsets, t)
        if self.task == "nlvr2":
            label = int(c.label[i])
            return Nlvr2Record(qid, _string(c.identifier, c.identifier_offsets, i),
                               c.images[int(c.image0[i])], c.images[int(c.image1[i])], sent,
                               None if label < 0 else label)
        label = None
        if c.has_label[i]:
            lo, hi = int(c.label_offsets[i]), int(c.label_offsets[i + 1])
            label = {c.answers[int(a)]: float(s)
                     for a, s in zip(c.label_ids[lo:hi], c.label_scores[lo:hi])}
        kind = lambda k: None if k < 0 else self.types[k]  # noqa: E731
        return QARecord(qid, c.images[int(c.image[i])], sent, label,
                        kind(int(c.answer_type[i])), kind(int(c.question_type[i])))

    def image_ids(self) -> List[str]:
        """Every image of the split, in first-use order (records.image_ids)."""
        return list(self.corpus.images)

    def token_rows(self, indices: np.ndarray):
        """(tokens (B, T) int64 zero-padded, lengths (B,)) of the examples' texts."""
        c = self.corpus
        tid = c.text_id[np.asarray(indices, dtype=np.int64)].astype(np.int64)
        lo = c.tok_offsets[tid]
        n = c.tok_offsets[tid + 1] - lo
        T = max(1, int(n.max()))
        col = np.arange(T)[None, :]
        valid = col < n[:, None]
        return np.where(valid, c.tokens[np.where(valid, lo[:, None] + col, 0)], 0), n
