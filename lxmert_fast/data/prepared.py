"""A prepared pretraining corpus: LXMERT's JSON records as flat arrays, read through np.memmap
(issue 23; the layout of fairseq's MMapIndexedDataset and Megatron's indexed datasets).

    python -m lxmert_fast.data prepare RECORDS.json... OUT --vocab vocab.txt [--max_seq_len 20]

A directory of raw little-endian arrays plus ``meta.json``, one entry per (image, sentence) in
the original's order (records.py: records in file order, sources in ``sentf`` order):

    text_id                  the sentence's distinct text (sentences repeat: questions, captions)
    tokens, tok_offsets      WordPiece ids of each distinct text (tokenised once, cut to
                             max_seq_len - 2), CSR: text t is tokens[tok_offsets[t]:[t+1]]
    image, source, sent_idx  the sentence's image (position in images.txt), its source (index in
                             meta "sources") and its index in that source's list: uid =
                             f"{img_id}_{source}_{sent_idx:03d}"
    qa, label_offsets, label_ids, label_scores
                             1 where the source has QA labels; the label pruned to the answer
                             table (answers.json) as CSR over answer ids and scores
    by_image, image_start    sentence ids grouped by image (matching negatives: a sentence of
                             another image, drawn without rejection)
    text, text_offsets       each distinct text as UTF-8 (evaluation metadata only)

Written like the feature store: into a temporary directory beside OUT, every file fsynced, then
renamed into place, so a half-written corpus is never opened. ``meta.json`` holds the key the
corpus was made from (each record file's SHA-256 and size, the vocab's SHA-256, max_seq_len, the
answer table's SHA-256, the format version) and every array's dtype, length and byte size;
``open_prepared`` checks the sizes (a truncated file is named) and, given the key a run expects,
names each component that differs. A process holds O(images) Python objects (the image ids);
every rank and DataLoader worker maps the same pages.
"""
import hashlib
import json
import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

FORMAT, VERSION = "lxmert_fast.prepared_corpus", 1
ARRAYS = ("text_id", "tokens", "tok_offsets", "image", "source", "sent_idx", "qa", "label_offsets",
          "label_ids", "label_scores", "by_image", "image_start", "text", "text_offsets")


class PreparedCorpusError(ValueError):
    """A prepared corpus that is damaged, half-written, or made from other inputs."""


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def vocab_digest(tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary in id order (the file it came from, in effect)."""
    vocab = tokenizer.get_vocab()
    return hashlib.sha256("\n".join(sorted(vocab, key=vocab.get)).encode()).hexdigest()


def corpus_key(record_paths: Sequence[str], tokenizer, max_seq_len: int, answers) -> Dict:
    """What a prepared corpus is made from; equal keys give identical corpora. ``answers``: the
    answer table's answers, or a string saying how the table is made."""
    return {"version": VERSION, "max_seq_len": int(max_seq_len),
            "records": [{"name": os.path.basename(p), "sha256": file_sha256(p),
                         "bytes": os.path.getsize(p)} for p in record_paths],
            "vocab_sha256": vocab_digest(tokenizer),
            "answers_sha256": answers if isinstance(answers, str) else
            hashlib.sha256(json.dumps(list(answers)).encode()).hexdigest()}


def key_digest(key: Dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def key_differences(have: Dict, want: Dict) -> List[str]:
    """Human-readable components in which two keys differ."""
    out = []
    if have.get("version") != want.get("version"):
        out.append(f"format version {have.get('version')} (expected {want.get('version')})")
    if have.get("max_seq_len") != want.get("max_seq_len"):
        out.append(f"max_seq_len {have.get('max_seq_len')} (expected {want.get('max_seq_len')})")
    if want.get("vocab_sha256") is not None and have.get("vocab_sha256") != want["vocab_sha256"]:
        out.append("another vocab (the vocabulary's SHA-256 differs)")
    if want.get("answers_sha256") is not None and \
            have.get("answers_sha256") != want["answers_sha256"]:
        out.append("another answer table")
    h = [(r["name"], r["sha256"]) for r in have.get("records", [])]
    w = [(r["name"], r["sha256"]) for r in want.get("records", [])]
    if want.get("records") is not None and h != w:
        names = [n for n, _ in h]
        out.append(f"other records: made from {names}, expected "
                   f"{[n for n, _ in w]}" if names != [n for n, _ in w] else
                   f"other records: the content of {[n for (n, a), (_, b) in zip(h, w) if a != b]}"
                   f" differs")
    return out


class PreparedCorpus:
    """The arrays of a prepared corpus (read-only memmaps) and its O(images) metadata. The same
    container holds a fine-tuning split (lxmert_fast/tasks/prepared_records.py: other arrays,
    ``meta["task"]``)."""

    def __init__(self, path: str, meta: Dict):
        self.path, self.meta = path, meta
        self.key = meta["key"]
        self.sources: List[str] = meta["sources"]
        self.num_sentences, self.num_images = meta["num_sentences"], meta["num_images"]
        with open(os.path.join(path, "images.txt"), encoding="utf-8") as f:
            self.images: List[str] = f.read().split("\n")[:self.num_images]
        with open(os.path.join(path, "answers.json"), encoding="utf-8") as f:
            self.answers: List[str] = json.load(f)["answers"]
        for name, spec in meta["arrays"].items():
            file = os.path.join(path, name + ".bin")
            if spec["length"] == 0:
                arr = np.zeros(0, dtype=spec["dtype"])
            else:
                arr = np.memmap(file, dtype=spec["dtype"], mode="r", shape=(spec["length"],))
            setattr(self, name, arr)

    def __len__(self) -> int:
        return self.num_sentences

    def __getstate__(self):          # DataLoader workers re-open the maps (no copy pickled)
        return {"path": self.path}

    def __setstate__(self, state):
        other = open_prepared(state["path"])
        self.__dict__.update(other.__dict__)

    def sentence(self, i: int) -> str:
        t = int(self.text_id[i])
        return bytes(self.text[self.text_offsets[t]:self.text_offsets[t + 1]]).decode("utf-8")

    def uid(self, i: int) -> str:
        return (f"{self.images[int(self.image[i])]}_{self.sources[int(self.source[i])]}_"
                f"{int(self.sent_idx[i]):03d}")

    def label(self, i: int) -> Optional[Dict[str, float]]:
        """The pruned soft label {answer: score}, None for a sentence without QA labels."""
        if not self.qa[i]:
            return None
        lo, hi = int(self.label_offsets[i]), int(self.label_offsets[i + 1])
        return {self.answers[int(a)]: float(s)
                for a, s in zip(self.label_ids[lo:hi], self.label_scores[lo:hi])}


def _read_meta(path: str) -> Dict:
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isdir(path):
        raise PreparedCorpusError(f"{path}: not a prepared corpus directory (it does not exist)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise PreparedCorpusError(f"{path}: no meta.json (not a prepared corpus, or one whose "
                                  f"writing never completed)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PreparedCorpusError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PreparedCorpusError(f"{meta_path}: not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise PreparedCorpusError(f"{path}: format version {meta.get('version')}, this code reads "
                                  f"{VERSION}: prepare it again")
    return meta


def open_prepared(path: str, expect_key: Optional[Dict] = None) -> PreparedCorpus:
    """Open a prepared corpus; sizes checked, and its key against ``expect_key`` if given."""
    meta = _read_meta(path)
    names = ARRAYS if "task" not in meta else tuple(meta["arrays"])
    for name in names + ("images.txt", "answers.json"):
        spec = meta["arrays"].get(name) if name in names else meta["files"].get(name)
        if spec is None:
            raise PreparedCorpusError(f"{path}/meta.json lists no {name}")
        file = os.path.join(path, name + ".bin" if name in names else name)
        size = os.path.getsize(file) if os.path.exists(file) else None
        if size != spec["bytes"]:
            raise PreparedCorpusError(
                f"{file}: {'missing' if size is None else f'{size} bytes'}, meta.json says "
                f"{spec['bytes']} (truncated or replaced: prepare the corpus again)")
    if expect_key is not None:
        diff = key_differences(meta["key"], expect_key)
        if diff:
            raise PreparedCorpusError(f"{path} was prepared from other inputs: "
                                      + "; ".join(diff))
    return PreparedCorpus(path, meta)


def write_prepared(out: str, arrays: Dict[str, np.ndarray], images: List[str],
                   answers: List[str], sources: List[str], key: Dict,
                   extra_meta: Optional[Dict] = None) -> str:
    """Write the corpus into a temporary directory, fsync, rename to ``out`` (atomic)."""
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        specs, files = {}, {}
        for name in arrays:
            arr = np.ascontiguousarray(arrays[name])
            specs[name] = {"dtype": arr.dtype.str, "length": int(arr.shape[0]),
                           "bytes": int(arr.nbytes)}
            _write_synced(os.path.join(tmp, name + ".bin"), memoryview(arr).cast("B"))
        blobs = {"images.txt": "\n".join(images).encode("utf-8"),
                 "answers.json": json.dumps({"format": "lxmert_fast.answer_table",
                                             "answers": list(answers)}).encode("utf-8")}
        for name, blob in blobs.items():
            files[name] = {"bytes": len(blob)}
            _write_synced(os.path.join(tmp, name), blob)
        meta = {"format": FORMAT, "version": VERSION, "key": key, "key_digest": key_digest(key),
                "num_sentences": int(len(arrays["text_id"])), "num_images": len(images),
                "sources": list(sources), "arrays": specs, "files": files, **(extra_meta or {})}
        _write_synced(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=1).encode())
        _fsync_dir(tmp)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_synced(path: str, data) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def progress(message: str, enabled: bool = True) -> None:
    if enabled:
        print(f"prepare: {message}", file=sys.stderr, flush=True)
