"""Readers for the original LXMERT fine-tuning records (Tan & Bansal 2019, repository ``data/``).

Formats (one JSON list per split, as the original's ``src/tasks/*_data.py`` read them):
- VQA 2.0: ``{"question_id", "img_id", "sent", "label": {answer: score}, "answer_type",
  "question_type"}``; scores are the VQA soft scores (0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / 4+
  humans); test splits have no ``label``.
- GQA: ``{"question_id", "img_id", "sent", "label"}`` with ``label`` ``{answer: 1.0}`` as the
  original ships it (a bare answer string is accepted too); testdev submissions have no label.
- NLVR2: ``{"identifier", "img0", "img1", "sent", "label": 0 | 1, "uid"}``; records are keyed by
  ``uid``, prediction files by ``identifier``.

Unlike the original (which trusts its files), a bad record raises ``RecordError`` naming the
file, the record index, its id and the field.
"""
import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

TASKS = ("vqa", "gqa", "nlvr2")


class RecordError(ValueError):
    """A malformed fine-tuning record; the message names file, record index, id and field."""


@dataclass(frozen=True)
class QARecord:
    """A VQA or GQA question about one image. ``label`` is None for unlabelled (test) splits."""
    qid: Union[int, str]
    img_id: str
    sent: str
    label: Optional[Dict[str, float]]
    answer_type: Optional[str] = None
    question_type: Optional[str] = None


@dataclass(frozen=True)
class Nlvr2Record:
    """An NLVR2 statement about an image pair; ``label`` is 1 (True), 0 (False) or None."""
    qid: Union[int, str]  # the record's uid
    identifier: str
    img0: str
    img1: str
    sent: str
    label: Optional[int]


Record = Union[QARecord, Nlvr2Record]


class _Where:
    """Formats the location of a record for error messages."""

    def __init__(self, path, index, obj):
        self.path, self.index = path, index
        key = next((k for k in ("question_id", "uid", "identifier") if isinstance(obj, dict)
                    and k in obj), None)
        self.rid = f", {key} {obj[key]!r}" if key else ""

    def fail(self, what):
        raise RecordError(f"{self.path}: record {self.index}{self.rid}: {what}")


def _field(obj, name, where, types, required=True):
    if name not in obj:
        if required:
            where.fail(f"missing field {name!r} (fields present: {sorted(obj)})")
        return None
    value = obj[name]
    if not isinstance(value, types) or isinstance(value, bool):
        where.fail(f"field {name!r}={value!r} has type {type(value).__name__}, expected "
                   f"{' or '.join(t.__name__ for t in types)}")
    return value


def _id(obj, name, where):
    """Ids may be ints (VQA question_id) or strings (GQA); kept as they are, so prediction files
    write them back with their original JSON type."""
    value = _field(obj, name, where, (int, str))
    if isinstance(value, str) and not value:
        where.fail(f"field {name!r} is empty")
    return value


def _text(obj, name, where, required=True):
    value = _field(obj, name, where, (str,), required)
    if required and not value.strip():
        where.fail(f"field {name!r} is empty")
    return value


def _soft_label(value, where):
    if not isinstance(value, dict):
        where.fail(f"field 'label'={value!r} must be an object {{answer: score}}")
    for ans, score in value.items():
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 <= score <= 1:
            where.fail(f"label[{ans!r}]={score!r} is not a score in [0, 1]")
    return {str(a): float(s) for a, s in value.items()}


def parse_vqa(obj, where) -> QARecord:
    label = obj.get("label")
    return QARecord(qid=_id(obj, "question_id", where), img_id=str(_id(obj, "img_id", where)),
                    sent=_text(obj, "sent", where),
                    label=None if label is None else _soft_label(label, where),
                    answer_type=_text(obj, "answer_type", where, required=False),
                    question_type=_text(obj, "question_type", where, required=False))


def parse_gqa(obj, where) -> QARecord:
    label = obj.get("label")
    if isinstance(label, str):
        label = {label: 1.0}
    elif label is not None:
        label = _soft_label(label, where)
        if len(label) != 1:
            where.fail(f"GQA label {label!r} must hold exactly one answer (exact-match metric)")
    return QARecord(qid=_id(obj, "question_id", where), img_id=str(_id(obj, "img_id", where)),
                    sent=_text(obj, "sent", where), label=label)


def parse_nlvr2(obj, where) -> Nlvr2Record:
    label = obj.get("label")
    if label is not None and (isinstance(label, bool) or label not in (0, 1)):
        where.fail(f"field 'label'={label!r} must be 0 or 1")
    return Nlvr2Record(qid=_id(obj, "uid", where), identifier=str(_id(obj, "identifier", where)),
                       img0=str(_id(obj, "img0", where)), img1=str(_id(obj, "img1", where)),
                       sent=_text(obj, "sent", where), label=label)


PARSERS = {"vqa": parse_vqa, "gqa": parse_gqa, "nlvr2": parse_nlvr2}


def check_task(task: str) -> str:
    if task not in PARSERS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    return task


def parse_records(task: str, items: Sequence, path: str = "<records>") -> List[Record]:
    """Validate and convert a list of raw record dicts; duplicate ids are an error."""
    parse = PARSERS[check_task(task)]
    if not isinstance(items, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
    records, seen = [], {}
    for index, obj in enumerate(items):
        where = _Where(path, index, obj)
        if not isinstance(obj, dict):
            where.fail(f"expected a JSON object, got {type(obj).__name__}")
        rec = parse(obj, where)
        if rec.qid in seen:
            where.fail(f"duplicate id {rec.qid!r} (first at record {seen[rec.qid]})")
        seen[rec.qid] = index
        records.append(rec)
    return records


def load_records(task: str, paths: Union[str, Sequence[str]]) -> List[Record]:
    """Read one or more split files (the original concatenates e.g. train + nominival)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise ValueError(f"no record files given for task {task!r}")
    records, seen = [], set()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                items = json.load(f)
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}: not valid JSON ({err})") from err
        for rec in parse_records(task, items, path):
            if rec.qid in seen:
                raise RecordError(f"{path}: id {rec.qid!r} already read from an earlier file")
            seen.add(rec.qid)
            records.append(rec)
    return records


def image_ids(records: Sequence[Record]) -> List[str]:
    """Every image a split needs, in first-use order (NLVR2: both images of each pair)."""
    out = {}
    for rec in records:
        for img in ((rec.img0, rec.img1) if isinstance(rec, Nlvr2Record) else (rec.img_id,)):
            out.setdefault(img, None)
    return list(out)
