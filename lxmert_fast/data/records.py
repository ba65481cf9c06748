"""Reading LXMERT pretraining records and flattening them into (image, sentence) examples.

Record format (original data/lxmert/*.json): a JSON list of
``{"img_id": str, "sentf": {source: [sentence, ...]}, "labelf": {source: [{answer: score}, ...]}}``
where a ``labelf`` list, when present, is aligned with the ``sentf`` list of the same source.
Flattening follows the original LXMERTTorchDataset: records in file order, sources in ``sentf``
order, one example per sentence with uid ``"<img_id>_<source>_<idx:03d>"`` and, for QA sources,
its label. Malformed records raise ``RecordFormatError`` naming the file, record and key.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union


class RecordFormatError(ValueError):
    """A pretraining record that does not follow the LXMERT schema."""


@dataclass
class Example:
    uid: str
    img_id: str
    source: str
    sent: str
    label: Optional[Dict[str, float]]   # QA soft label (answers as in the file), None for captions


def _check(cond: bool, path: str, i: int, what: str) -> None:
    if not cond:
        raise RecordFormatError(f"{path}: record {i}: {what}")


def validate_record(rec, path: str = "<records>", i: int = 0) -> None:
    """Raise RecordFormatError unless ``rec`` is a well-formed LXMERT pretraining record."""
    _check(isinstance(rec, dict), path, i, f"expected an object, got {type(rec).__name__}")
    for key in ("img_id", "sentf"):
        _check(key in rec, path, i, f"missing key {key!r} (keys: {sorted(rec)})")
    _check(isinstance(rec["img_id"], str), path, i, "img_id is not a string")
    sentf, labelf = rec["sentf"], rec.get("labelf", {})
    _check(isinstance(sentf, dict), path, i, "sentf is not an object")
    _check(isinstance(labelf, dict), path, i, "labelf is not an object")
    for source, sents in sentf.items():
        _check(isinstance(sents, list) and all(isinstance(s, str) for s in sents), path, i,
               f"sentf[{source!r}] is not a list of strings")
    for source, labels in labelf.items():
        _check(source in sentf, path, i, f"labelf[{source!r}] has no sentf[{source!r}]")
        _check(isinstance(labels, list) and len(labels) == len(sentf[source]), path, i,
               f"labelf[{source!r}] has {len(labels) if isinstance(labels, list) else '?'} "
               f"labels for {len(sentf[source])} sentences")
        for label in labels:
            _check(isinstance(label, dict) and all(isinstance(v, (int, float))
                                                   for v in label.values()), path, i,
                   f"labelf[{source!r}] holds a label that is not {{answer: score}}: {label!r}")


def load_records(paths: Union[str, Sequence[str]]) -> List[Dict]:
    """Every record of the JSON file(s) ``paths``, validated; missing files listed at once."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"pretraining record file(s) not found: {missing}")
    out: List[Dict] = []
    for path in paths:
        with open(path) as f:
            try:
                recs = json.load(f)
            except json.JSONDecodeError as e:
                raise RecordFormatError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(recs, list):
            raise RecordFormatError(f"{path}: expected a JSON list of records, got "
                                    f"{type(recs).__name__}")
        for i, rec in enumerate(recs):
            validate_record(rec, str(path), i)
        out.extend(recs)
    return out


def flatten(records: Sequence[Dict]) -> List[Example]:
    """One Example per (image, sentence), in the original's order."""
    examples = []
    for rec in records:
        labelf = rec.get("labelf", {})
        for source, sents in rec["sentf"].items():
            labels = labelf.get(source)
            for idx, sent in enumerate(sents):
                examples.append(Example(uid=f"{rec['img_id']}_{source}_{idx:03d}",
                                        img_id=rec["img_id"], source=source, sent=sent,
                                        label=None if labels is None else dict(labels[idx])))
    return examples
