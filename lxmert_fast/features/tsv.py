"""LXMERT's RoI-feature TSV format, in pure Python: the reference reader and a writer.

One line per image, tab-separated, fields in ``FIELDNAMES`` order (no header). Array fields are
base64 of raw little-endian bytes: objects_id/attrs_id int64[n], objects_conf/attrs_conf
float32[n], boxes float32[n, 4] (pixels x1, y1, x2, y2), features float32[n, D] (D = 2048 for the
public Faster R-CNN features).

``load_obj_tsv`` keeps the original repository's semantics (src/utils.py: every record decoded
into a dict of numpy arrays held in RAM) and is the reference for the C++ store and the baseline
for its benchmarks; unlike the original, bad input raises ``TsvFormatError`` naming the file,
line, img_id and byte offset.
"""
import base64
import binascii
import os
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

FIELDNAMES = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
              "num_boxes", "boxes", "features"]
INT_FIELDS = ("img_h", "img_w", "num_boxes")
# (field, dtype, trailing shape; -1 means "whatever is left", i.e. the feature dimension)
ARRAY_FIELDS = (("objects_id", np.int64, ()), ("objects_conf", np.float32, ()),
                ("attrs_id", np.int64, ()), ("attrs_conf", np.float32, ()),
                ("boxes", np.float32, (4,)), ("features", np.float32, (-1,)))


class TsvFormatError(ValueError):
    """A malformed LXMERT TSV line; the message names file, line, img_id and byte offset."""


def _fail(path, line_no, offset, img_id, what):
    where = f"{path}: line {line_no} (byte offset {offset})"
    if img_id is not None:
        where += f", img_id {img_id!r}"
    raise TsvFormatError(f"{where}: {what}")


def parse_line(line: str, path="<tsv>", line_no=1, offset=0) -> Dict:
    """Decode one TSV line into the original loader's dict (read-only numpy arrays)."""
    parts = line.rstrip("\r\n").split("\t")
    img_id = parts[0] if parts and parts[0] else None
    if len(parts) != len(FIELDNAMES):
        missing = FIELDNAMES[len(parts):] if len(parts) < len(FIELDNAMES) else []
        what = (f"missing field(s) {missing}" if missing
                else f"{len(parts)} fields, expected {len(FIELDNAMES)}")
        _fail(path, line_no, offset, img_id, f"{what} (line truncated or malformed)")
    item = dict(zip(FIELDNAMES, parts))
    for key in INT_FIELDS:
        try:
            item[key] = int(item[key])
        except ValueError:
            _fail(path, line_no, offset, img_id, f"field {key}={item[key][:40]!r} is not an integer")
        if item[key] < 0:
            _fail(path, line_no, offset, img_id, f"field {key}={item[key]} is negative")
    n = item["num_boxes"]
    for key, dtype, tail in ARRAY_FIELDS:
        try:
            raw = base64.b64decode(item[key], validate=True)
        except (binascii.Error, ValueError) as e:
            _fail(path, line_no, offset, img_id, f"field {key}: invalid base64 ({e})")
        itemsize = np.dtype(dtype).itemsize
        per_box = itemsize * (4 if tail == (4,) else 1)
        if tail == (-1,):
            if n == 0 or len(raw) % (n * itemsize) != 0 or len(raw) == 0:
                if not (n == 0 and len(raw) == 0):
                    _fail(path, line_no, offset, img_id,
                          f"field {key}: {len(raw)} bytes is not num_boxes={n} x D x {itemsize}")
            shape = (n, len(raw) // (n * itemsize) if n else 0)
        else:
            if len(raw) != n * per_box:
                _fail(path, line_no, offset, img_id,
                      f"field {key}: {len(raw)} bytes, expected num_boxes={n} x {per_box} = {n * per_box}")
            shape = (n,) + tail
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=False)
        arr = arr.reshape(shape)
        arr.setflags(write=False)
        item[key] = arr
    return item


def iter_located(path: str) -> Iterator[Tuple[int, int, Dict]]:
    """Yield ``(line_no, byte_offset, record)`` for each non-blank line of one TSV file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"feature TSV not found: {path}")
    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    text = raw.decode("ascii")
                except UnicodeDecodeError as e:
                    _fail(path, line_no, offset, None, f"non-ASCII byte at column {e.start}")
                yield line_no, offset, parse_line(text, path, line_no, offset)
            offset += len(raw)


def iter_obj_tsv(path: str) -> Iterator[Dict]:
    """Yield decoded records of one TSV file, in file order."""
    for _, _, item in iter_located(path):
        yield item


def load_obj_tsv(path: str, topk: Optional[int] = None) -> List[Dict]:
    """The original loader: every record of ``path`` decoded into a list of dicts in RAM."""
    data = []
    for item in iter_obj_tsv(path):
        data.append(item)
        if topk is not None and len(data) == topk:
            break
    return data


def format_line(rec: Dict) -> str:
    """One TSV line (no trailing newline) for a record with the ``FIELDNAMES`` keys."""
    n = int(rec["num_boxes"])
    out = [str(rec["img_id"]), str(int(rec["img_h"])), str(int(rec["img_w"]))]
    for key in ("objects_id", "objects_conf", "attrs_id", "attrs_conf"):
        dtype = dict((k, d) for k, d, _ in ARRAY_FIELDS)[key]
        arr = np.ascontiguousarray(rec[key], dtype=np.dtype(dtype).newbyteorder("<"))
        if arr.shape != (n,):
            raise ValueError(f"img_id {rec['img_id']!r}: {key} shape {arr.shape} != ({n},)")
        out.append(base64.b64encode(arr.tobytes()).decode("ascii"))
        if key == "attrs_conf":
            out.append(str(n))
    boxes = np.ascontiguousarray(rec["boxes"], dtype="<f4")
    feats = np.ascontiguousarray(rec["features"], dtype="<f4")
    if boxes.shape != (n, 4) or feats.ndim != 2 or feats.shape[0] != n:
        raise ValueError(f"img_id {rec['img_id']!r}: boxes {boxes.shape} / features {feats.shape} "
                         f"do not match num_boxes={n}")
    out += [base64.b64encode(boxes.tobytes()).decode("ascii"),
            base64.b64encode(feats.tobytes()).decode("ascii")]
    # Field order check: img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf,
    # num_boxes, boxes, features.
    return "\t".join(out)


def write_obj_tsv(path: str, records: Iterable[Dict]) -> int:
    """Write records to ``path`` atomically (temporary name, then rename); returns the count."""
    tmp = f"{path}.tmp.{os.getpid()}"
    count = 0
    try:
        with open(tmp, "w", encoding="ascii") as f:
            for rec in records:
                f.write(format_line(rec) + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count
