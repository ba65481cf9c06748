"""Bad input to convert_tsv / FeatureStore: a clear exception naming file, line, byte offset and
img_id, nothing half-written, an existing output left intact (issue 4, "Bad input")."""
import os
import re
import struct

import numpy as np
import pytest

from lxmert_fast.features import (FeatureStore, StoreFormatError, TsvFeatures, TsvFormatError,
                                  convert_tsv)
from lxmert_fast.features.synthetic import random_records
from lxmert_fast.features.tsv import format_line


def _lines(n=4, seed=0, boxes=(3,), prefix="img"):
    return [format_line(r) for r in random_records(n, dim=8, boxes=boxes, seed=seed,
                                                   prefix=prefix)]


def _write(path, lines):
    with open(path, "w", encoding="latin-1", newline="") as f:
        f.write("".join(line + "\n" for line in lines))
    return str(path)


def _set_field(line, index, value):
    parts = line.split("\t")
    parts[index] = value
    return "\t".join(parts)


def _both_fail(paths, tmp_path, pattern, exc=TsvFormatError):
    """Both readers raise ``exc`` matching ``pattern``; no output or temp file is left."""
    out = tmp_path / "out.lxf"
    with pytest.raises(exc, match=pattern) as cpp:
        convert_tsv(paths, out, num_threads=2)
    with pytest.raises(exc, match=pattern):
        TsvFeatures(paths)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]
    return str(cpp.value)


def _offset(lines, k):
    return sum(len(line) + 1 for line in lines[:k])


CASES = {
    # name: (line transform, expected message fragment)
    "missing_fields": (lambda l: "\t".join(l.split("\t")[:7]),
                       r"missing field\(s\) \['num_boxes', 'boxes', 'features'\]"),
    "truncated_line": (lambda l: l[: len(l) - 7], r"field features: (invalid base64|\d+ bytes)"),
    "bad_base64": (lambda l: _set_field(l, 4, "*" + l.split("\t")[4][1:]),
                   r"field objects_conf: invalid base64 \(Only base64 data"),
    "length_mismatch": (lambda l: _set_field(l, 7, "4"),
                        r"field objects_id: 24 bytes, expected num_boxes=4 x 8 = 32"),
    "short_array": (lambda l: _set_field(l, 8, l.split("\t")[8][4:]),
                    r"field boxes: 45 bytes, expected num_boxes=3 x 16 = 48"),
    "extra_field": (lambda l: l + "\tzzz", r"11 fields, expected 10"),
    # the C++ reader does not scan the features field for tabs; extra fields still come first
    "tab_in_features": (lambda l: l[:-6] + "\t" + l[-6:-3] + "\t" + l[-3:],
                        r"12 fields, expected 10"),
    "tab_in_features_and_bad_int": (lambda l: _set_field(l, 1, "12a") + "\t",
                                    r"11 fields, expected 10"),
    "not_an_int": (lambda l: _set_field(l, 1, "12a"), r"field img_h='12a' is not an integer"),
    "negative": (lambda l: _set_field(l, 2, "-5"), r"field img_w=-5 is negative"),
    "zero_size": (lambda l: _set_field(l, 2, "0"), r"field img_w=0, image size must be positive"),
    "dim_mismatch": (lambda l: _set_field(l, 9, l.split("\t")[9][: len(l.split("\t")[9]) // 2]),
                     r"feature dimension 4 differs from the earlier images' 8"),
    "empty_img_id": (lambda l: _set_field(l, 0, ""), r"empty img_id"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_line_names_file_line_offset_img_id(tmp_path, case):
    transform, fragment = CASES[case]
    lines = _lines()
    lines[2] = transform(lines[2])
    path = _write(tmp_path / "bad.tsv", lines)
    msg = _both_fail([path], tmp_path, fragment)
    assert msg.startswith(f"{path}: line 3 (byte offset {_offset(lines, 2)})"), msg
    if case != "empty_img_id":
        assert "img_id 'img0000002'" in msg


def test_error_in_second_file_and_first_error_wins(tmp_path):
    a = _write(tmp_path / "a.tsv", _lines(3, seed=1, prefix="a"))
    lines = _lines(300, seed=2, boxes=(2,))
    lines[250] = _set_field(lines[250], 4, "!!")      # found by a worker thread
    lines[299] = _set_field(lines[299], 1, "x")       # found by the reading thread
    b = _write(tmp_path / "b.tsv", ["", "  "] + lines)
    msg = _both_fail([a, b], tmp_path, "field objects_conf: invalid base64")
    assert msg.startswith(f"{b}: line 253 (byte offset {4 + _offset(lines, 250)}), "
                          "img_id 'img0000250'"), msg


def test_duplicate_img_id_names_both_places(tmp_path):
    a = _write(tmp_path / "a.tsv", _lines(2, seed=1))
    b = _write(tmp_path / "b.tsv", _lines(3, seed=2))
    msg = _both_fail([a, b], tmp_path, "duplicate img_id")
    assert re.search(rf"{re.escape(b)}: line 1 \(byte offset 0\), img_id 'img0000000': "
                     rf"duplicate img_id \(first seen in {re.escape(a)}: line 1\)", msg), msg


def test_non_ascii_and_empty_input(tmp_path):
    lines = _lines(2)
    lines[1] = "\xe9" + lines[1]
    path = _write(tmp_path / "u.tsv", lines)
    with pytest.raises(TsvFormatError, match=r"line 2 .*non-ASCII"):
        convert_tsv([path], tmp_path / "o.lxf")
    with pytest.raises(TsvFormatError, match=r"line 2 .*non-ASCII"):
        TsvFeatures(path)
    empty = _write(tmp_path / "e.tsv", ["", " \r"])
    with pytest.raises(TsvFormatError, match=r"no images in .*e.tsv"):
        convert_tsv([empty], tmp_path / "o.lxf")


def test_missing_inputs_and_output_dir(tmp_path):
    good = _write(tmp_path / "g.tsv", _lines(2))
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        convert_tsv([good, str(tmp_path / "nope.tsv")], tmp_path / "o.lxf")
    with pytest.raises(FileNotFoundError, match="no_dir"):
        convert_tsv([good], tmp_path / "no_dir" / "o.lxf")
    with pytest.raises(IsADirectoryError):
        convert_tsv([str(tmp_path)], tmp_path / "o.lxf")
    with pytest.raises(ValueError, match="dtype must be one of"):
        convert_tsv([good], tmp_path / "o.lxf", dtype="bfloat16")
    with pytest.raises(ValueError, match="num_threads"):
        convert_tsv([good], tmp_path / "o.lxf", num_threads=0)
    assert sorted(os.listdir(tmp_path)) == ["g.tsv"]


def test_failed_conversion_keeps_existing_output(tmp_path):
    good = _write(tmp_path / "g.tsv", _lines(5))
    out = tmp_path / "o.lxf"
    convert_tsv([good], out)
    before = out.read_bytes()
    bad_lines = _lines(5)
    bad_lines[4] = bad_lines[4][:-10]
    bad = _write(tmp_path / "b.tsv", bad_lines)
    with pytest.raises(TsvFormatError, match="line 5"):
        convert_tsv([bad], out)
    assert out.read_bytes() == before and len(FeatureStore(out)) == 5

    def interrupt(done):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        convert_tsv([good], out, progress=interrupt)
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["b.tsv", "g.tsv", "o.lxf"]


@pytest.fixture
def store_bytes(tmp_path):
    path = _write(tmp_path / "g.tsv", _lines(6, boxes=(0, 2, 5)))
    convert_tsv([path], tmp_path / "s.lxf")
    return (tmp_path / "s.lxf").read_bytes()


def _corrupt(tmp_path, data):
    path = tmp_path / "bad.lxf"
    path.write_bytes(data)
    return str(path)


def test_store_corruption(tmp_path, store_bytes):
    cases = [
        (b"XXXXXXXX" + store_bytes[8:], "bad magic"),
        (store_bytes[:8] + struct.pack("<I", 99) + store_bytes[12:],
         "store format version 99, this build reads version 1"),
        (store_bytes[:12] + struct.pack("<I", 7) + store_bytes[16:], "unknown feature dtype code 7"),
        (store_bytes[:-100], f"truncated: the header says {len(store_bytes)} bytes, the file has "
                             f"{len(store_bytes) - 100}"),
        (store_bytes + b"\0" * 8, "trailing data"),
        (store_bytes[:100], "smaller than the 256-byte header"),
        (b"", "0 bytes"),
        (store_bytes[:48] + struct.pack("<Q", 1 << 50) + store_bytes[56:], "lies outside"),
        (store_bytes[:24] + struct.pack("<Q", 1 << 30) + store_bytes[32:],
         "features section of 1073741824 x 8 does not fit"),
    ]
    for data, fragment in cases:
        path = _corrupt(tmp_path, data)
        with pytest.raises(StoreFormatError, match=re.escape(fragment)) as e:
            FeatureStore(path)
        assert str(e.value).startswith(path + ": ")
    with pytest.raises(FileNotFoundError, match="missing.lxf"):
        FeatureStore(tmp_path / "missing.lxf")
    with pytest.raises(IsADirectoryError):
        FeatureStore(tmp_path)


def test_store_corrupt_index(tmp_path, store_bytes):
    store = FeatureStore(_corrupt(tmp_path, store_bytes))
    (off_box_start,) = struct.unpack_from("<Q", store_bytes, 48 + 8 * 6)
    data = bytearray(store_bytes)
    struct.pack_into("<Q", data, off_box_start + 8, 1 << 40)
    with pytest.raises(StoreFormatError, match="box index"):
        FeatureStore(_corrupt(tmp_path, bytes(data)))
    assert len(store) == 6 and np.array_equal(store.boxes_per_image[:1], [store[store.ids[0]]["num_boxes"]])
