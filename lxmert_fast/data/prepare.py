"""Build a prepared corpus (prepared.py) from LXMERT pretraining records, and find or build one
in the cache for a run (issue 23).

``prepare_corpus`` reads the JSON records file by file (validated as records.py does: a
malformed record is named by file, record and key), flattens them in the original's order into
integer arrays, tokenises each distinct sentence once (``tokenizers`` batch encoding) and prunes
QA labels to the answer table (given, or built from the records' labels as AnswerTable.build
does). ``ensure_prepared`` keys a cache directory by the records' content, the vocab, max_seq_len
and the answer table: the first process to get there builds it under a file lock, the others (every
rank of a node) wait on the lock and open what it wrote.
"""
import fcntl
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .answers import AnswerTable
from .prepared import (PreparedCorpus, PreparedCorpusError, corpus_key, key_digest, open_prepared,
                       progress, write_prepared)
from .records import load_records

ANSWERS_FROM_RECORDS = "built from the records"
TOKENIZE_CHUNK = 100_000


class _Flat:
    """Per-sentence integer columns, appended record by record (no object per sentence)."""

    def __init__(self):
        self.images: List[str] = []
        self.image_pos: Dict[str, int] = {}
        self.sources: List[str] = []
        self.source_pos: Dict[str, int] = {}
        self.texts: Dict[str, int] = {}
        self.cols = {k: [] for k in ("image", "source", "sent_idx", "qa", "text_id", "n_labels")}
        self.label_ids: List[int] = []
        self.label_scores: List[float] = []

    def add(self, rec: Dict, table: AnswerTable, convert: Dict[str, str]) -> None:
        img = self.image_pos.setdefault(rec["img_id"], len(self.image_pos))
        if img == len(self.images):
            self.images.append(rec["img_id"])
        labelf = rec.get("labelf", {})
        c = self.cols
        for source, sents in rec["sentf"].items():
            src = self.source_pos.setdefault(source, len(self.source_pos))
            if src == len(self.sources):
                self.sources.append(source)
            labels = labelf.get(source)
            n = len(sents)
            c["image"].extend([img] * n)
            c["source"].extend([src] * n)
            c["sent_idx"].extend(range(n))
            c["qa"].extend([0 if labels is None else 1] * n)
            texts = self.texts
            c["text_id"].extend([texts.setdefault(s.strip(), len(texts)) for s in sents])
            if labels is None:
                c["n_labels"].extend([0] * n)
                continue
            for label in labels:
                kept = table.prune_label(label, convert)
                c["n_labels"].append(len(kept))
                self.label_ids.extend(table.ans2id(a) for a in kept)
                self.label_scores.extend(kept.values())


def _tokenize(texts: List[str], tokenizer, keep: int, show: bool):
    """(tokens, offsets) CSR over ``texts``, each cut to ``keep`` ids; the dtype fits the vocab."""
    dtype = np.uint16 if tokenizer.get_vocab_size() <= np.iinfo(np.uint16).max + 1 else np.int32
    # tokenizers >= 0.20: the batch encoder without character offsets (~25% faster here)
    encode = getattr(getattr(tokenizer, "_tokenizer", None), "encode_batch_fast", None) \
        or tokenizer.encode_batch
    chunks, lengths = [], np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        part = encode(texts[start:start + TOKENIZE_CHUNK], add_special_tokens=False)
        ids = [e.ids[:keep] for e in part]
        lengths[start:start + len(ids)] = [len(x) for x in ids]
        chunks.append(np.fromiter((t for x in ids for t in x), dtype=dtype,
                                  count=int(lengths[start:start + len(ids)].sum())))
        progress(f"tokenised {min(start + TOKENIZE_CHUNK, len(texts)):,} of {len(texts):,} "
                 f"distinct sentences", show and (start // TOKENIZE_CHUNK) % 10 == 9)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return (np.concatenate(chunks) if chunks else np.zeros(0, dtype)), offsets


def _utf8_csr(texts: List[str]):
    blobs = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def _arrays(flat: _Flat, tokenizer, max_seq_len: int, show: bool) -> Dict[str, np.ndarray]:
    c = flat.cols
    texts = list(flat.texts)
    tokens, tok_offsets = _tokenize(texts, tokenizer, max_seq_len - 2, show)
    text, text_offsets = _utf8_csr(texts)
    image = np.asarray(c["image"], dtype=np.int32)
    label_offsets = np.zeros(len(image) + 1, dtype=np.int64)
    np.cumsum(np.asarray(c["n_labels"], dtype=np.int64), out=label_offsets[1:])
    by_image = np.argsort(image, kind="stable").astype(np.int32)
    image_start = np.zeros(len(flat.images) + 1, dtype=np.int64)
    np.cumsum(np.bincount(image, minlength=len(flat.images)), out=image_start[1:])
    return {"text_id": np.asarray(c["text_id"], dtype=np.int32), "tokens": tokens,
            "tok_offsets": tok_offsets, "image": image,
            "source": np.asarray(c["source"], dtype=np.uint8),
            "sent_idx": np.asarray(c["sent_idx"], dtype=np.int32),
            "qa": np.asarray(c["qa"], dtype=np.uint8), "label_offsets": label_offsets,
            "label_ids": np.asarray(flat.label_ids, dtype=np.int32),
            "label_scores": np.asarray(flat.label_scores, dtype=np.float64),
            "by_image": by_image, "image_start": image_start, "text": text,
            "text_offsets": text_offsets}


def prepare_corpus(record_paths: Sequence[str], out: str, tokenizer, max_seq_len: int = 20,
                   answer_table: Optional[AnswerTable] = None, show: bool = True,
                   key: Optional[Dict] = None) -> PreparedCorpus:
    """Records -> prepared corpus at ``out`` (see the module docstring); returns it opened."""
    if max_seq_len < 3:
        raise ValueError(f"max_seq_len={max_seq_len}: needs room for [CLS], a token, [SEP]")
    record_paths = [os.fspath(p) for p in record_paths]
    started = time.perf_counter()
    records = []
    for path in record_paths:
        records.extend(load_records([path]))
        progress(f"read {path} ({len(records):,} records so far)", show)
    table = answer_table if answer_table is not None else AnswerTable.build(records)
    if key is None:
        key = corpus_key(record_paths, tokenizer, max_seq_len, ANSWERS_FROM_RECORDS
                         if answer_table is None else table.all_answers())
    flat, convert = _Flat(), {}
    for rec in records:
        flat.add(rec, table, convert)
    del records
    if len(flat.sources) > 255:
        raise ValueError(f"{len(flat.sources)} sentence sources in {record_paths}: at most 255")
    if not flat.cols["image"]:
        raise ValueError(f"no sentences in the pretraining records {record_paths}")
    progress(f"{len(flat.cols['image']):,} sentences ({len(flat.texts):,} distinct) over "
             f"{len(flat.images):,} images", show)
    arrays = _arrays(flat, tokenizer, max_seq_len, show)
    write_prepared(out, arrays, flat.images, table.all_answers(), flat.sources, key)
    progress(f"wrote {out} in {time.perf_counter() - started:.1f} s", show)
    return open_prepared(out, key)


def ensure_prepared(record_paths: Sequence[str], tokenizer, max_seq_len: int,
                    answer_table: Optional[AnswerTable] = None, cache_dir: Optional[str] = None,
                    show: bool = True) -> PreparedCorpus:
    """The prepared corpus of these inputs from the cache, built first if missing or damaged."""
    from .world import default_cache_dir

    answers = ANSWERS_FROM_RECORDS if answer_table is None else answer_table.all_answers()
    key = corpus_key(record_paths, tokenizer, max_seq_len, answers)
    root = os.path.join(cache_dir or default_cache_dir(), "prepared")
    os.makedirs(root, exist_ok=True)
    out = os.path.join(root, key_digest(key)[:24])
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # one builder; the other ranks wait here
        try:
            return open_prepared(out, key)
        except PreparedCorpusError as e:
            if os.path.exists(out):
                progress(f"{e}; preparing it again", show)
        return prepare_corpus(record_paths, out, tokenizer, max_seq_len, answer_table, show, key)
