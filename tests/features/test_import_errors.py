"""Bad extractor files (issue 16): an ImportFormatError naming the file and the key (missing
key, wrong shape, N mismatch, non-finite values), no store and no temporary file left behind,
an existing store untouched; options that do not fit the format are refused."""
import os
import subprocess
import sys

import numpy as np
import pytest

from lxmert_fast.features import FeatureStore, ImportFormatError, import_features
from lxmert_fast.features.extractor_files import write_butd_caffe, write_mmf_vmb, write_uniter
from lxmert_fast.features.synthetic import random_records


def _rec(seed=0, n=5, dim=12, img_id=None):
    rec = next(random_records(1, dim=dim, boxes=(n,), seed=seed))
    if img_id:
        rec["img_id"] = img_id
    return rec


def _edit_npz(path, fn):
    data = {k: v for k, v in np.load(path, allow_pickle=True).items()}
    if "info" in data:
        data["info"] = data["info"].item()
    fn(data)
    np.savez_compressed(path, **data)


def _edit_info(path, fn):
    info = np.load(path, allow_pickle=True).item()
    fn(info)
    np.save(path, info)


def _fails(tmp_path, src, fmt, pattern):
    """The import raises naming ``pattern``; the previous store is kept byte for byte."""
    out = tmp_path / "out.lxf"
    good = tmp_path / "good"
    good.mkdir(exist_ok=True)
    write_butd_caffe(_rec(9, img_id="previous"), str(good))
    import_features([good], out, format="butd-npz")
    before = out.read_bytes()
    with pytest.raises(ImportFormatError, match=pattern):
        import_features(src if isinstance(src, list) else [src], out, format=fmt)
    assert out.read_bytes() == before
    assert [p for p in os.listdir(tmp_path) if ".tmp." in p or ".import." in p] == []


BUTD_CASES = {
    "missing_key": (lambda d: d.pop("bbox"), r"a\.npz: missing key 'bbox' \(keys: \["),
    "wrong_shape": (lambda d: d.update(bbox=d["bbox"][:, :3]),
                    r"a\.npz: key 'bbox' has shape \(5, 3\), expected \(5, 4\)"),
    "n_mismatch": (lambda d: d.update(num_bbox=7), r"a\.npz: num_bbox = 7 but key 'x' has 5 rows"),
    "bbox_rows": (lambda d: d.update(bbox=d["bbox"][:4]),
                  r"a\.npz: key 'bbox' has shape \(4, 4\), expected \(5, 4\)"),
    "non_finite": (lambda d: d["x"].__setitem__((2, 3), np.nan),
                   r"a\.npz: key 'x' has 1 non-finite value\(s\), the first nan at index \(2, 3\)"),
    "info_key": (lambda d: d["info"].pop("objects_conf"),
                 r"a\.npz: missing key 'objects_conf' in info"),
    "info_count": (lambda d: d["info"].update(num_boxes=6),
                   r"a\.npz: info\['num_boxes'\] = 6 but key 'x' has 5 rows"),
    "conf_inf": (lambda d: d["info"]["objects_conf"].__setitem__(0, np.inf),
                 r"a\.npz: key \"info\['objects_conf'\]\" has 1 non-finite"),
    "info_not_dict": (lambda d: d.update(info=np.arange(3)),
                      r"a\.npz: key 'info' is a ndarray, expected a dict"),
    "size_zero": (lambda d: d.update(image_w=0), r"a\.npz: image size \d+ x 0"),
    "float_ids": (lambda d: d["info"].update(objects_id=d["info"]["objects_id"] * 0.5),
                  r"key \"info\['objects_id'\]\" has dtype float64, expected integers"),
}


@pytest.mark.parametrize("case", list(BUTD_CASES))
def test_butd_bad_file(tmp_path, case):
    edit, pattern = BUTD_CASES[case]
    src = tmp_path / "src"
    src.mkdir()
    write_butd_caffe(_rec(1, img_id="a"), str(src))
    _edit_npz(src / "a.npz", edit)
    _fails(tmp_path, src, "butd-npz", pattern)


MMF_CASES = {
    "rows": (lambda i: i.update(bbox=i["bbox"][:50]),
             r"a_info\.npy: features have 100 rows but info\['bbox'\] has 50"),
    "count": (lambda i: i.update(num_boxes=101),
              r"a_info\.npy: info\['num_boxes'\] = 101 but info\['bbox'\] has only 100 rows"),
    "classes": (lambda i: i.update(cls_prob=i["cls_prob"][:, :1500]),
                r"a_info\.npy: info\['cls_prob'\] has 1500 columns, expected 1600"),
    "missing": (lambda i: i.pop("image_height"), r"a_info\.npy: missing key 'image_height' in"),
    "ragged": (lambda i: i.update(objects=[[1, 2], [1]]),
               r"a_info\.npy: key \"info\['objects'\]\" has shape \(\), expected \(100,\)"),
}


@pytest.mark.parametrize("case", list(MMF_CASES))
def test_mmf_bad_info(tmp_path, case):
    edit, pattern = MMF_CASES[case]
    src = tmp_path / "src"
    src.mkdir()
    write_mmf_vmb(_rec(2, img_id="a"), str(src))
    _edit_info(src / "a_info.npy", edit)
    _fails(tmp_path, src, "mmf-npy", pattern)


def test_mmf_missing_info_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_mmf_vmb(_rec(2, img_id="a"), str(src))
    os.remove(src / "a_info.npy")
    _fails(tmp_path, src, "mmf-npy", r"a\.npy: its info file .*a_info\.npy does not exist")


def test_uniter_bad_arrays(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = write_uniter(_rec(3, img_id="a"), str(src), prefix="")
    _edit_npz(path, lambda d: d.update(soft_labels=d["soft_labels"][:, :10]))
    _fails(tmp_path, src, "uniter-npz", r"a\.npz: key 'soft_labels' has 10 columns, expected "
                                        r"1600 classes \(or 1601 with the background first\)")
    write_uniter(_rec(3, img_id="a"), str(src), prefix="")
    _edit_npz(path, lambda d: d.update(conf=d["conf"][:3]))
    _fails(tmp_path, src, "uniter-npz", r"a\.npz: key 'conf' has shape \(3,\), expected \(5,\)")


def test_across_files(tmp_path):
    for name, dim in (("one", 12), ("two", 12), ("three", 16)):
        (tmp_path / name).mkdir()
        write_butd_caffe(_rec(4, dim=dim, img_id="x" if name != "three" else "y"),
                         str(tmp_path / name))
    _fails(tmp_path, [tmp_path / "one", tmp_path / "two"], "butd-npz",
           r"two/x\.npz: img_id 'x' again \(first from .*one/x\.npz\)")
    _fails(tmp_path, [tmp_path / "one", tmp_path / "three"], "butd-npz",
           r"three/y\.npz: features have dimension 16, .*one/x\.npz had 12")
    with pytest.raises(FileNotFoundError, match=r"no \*\.npy files \(mmf-npy\) under"):
        import_features([tmp_path / "one"], tmp_path / "o.lxf", format="mmf-npy")
    with pytest.raises(FileNotFoundError, match="feature source not found"):
        import_features([tmp_path / "nothing"], tmp_path / "o.lxf", format="butd-npz")


@pytest.mark.parametrize("kwargs,pattern", [
    ({"format": "bvlc"}, r"format must be one of \['tsv', 'butd-npz'"),
    ({"format": "mmf-npy", "id_base": 1}, r"id_base=1 does not apply to format 'mmf-npy'"),
    ({"format": "butd-npz", "image_sizes": "extent"}, r"image_sizes='extent' does not apply"),
    ({"format": "tsv", "max_boxes": 36}, r"max_boxes=36 does not apply to format 'tsv'"),
    ({"format": "butd-npz", "max_boxes": 0}, r"max_boxes must be None or a positive int"),
    ({"format": "uniter-npz", "img_id_from": "info"}, r"img_id_from='info' needs butd-npz"),
    ({"format": "uniter-npz", "img_id_from": "re:("}, r"img_id_from='re:\(': bad pattern"),
    ({"format": "butd-npz", "dtype": "bfloat16"}, r"dtype must be one of"),
])
def test_bad_options(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        import_features([tmp_path], tmp_path / "o.lxf", **kwargs)


def test_stale_temporary_tsv_removed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_butd_caffe(_rec(5, img_id="a"), str(src))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "s.lxf"
    stale = tmp_path / f"s.lxf.import.{dead}.tsv"
    live = tmp_path / f"s.lxf.import.{os.getppid()}.tsv"
    stale.write_text("junk")
    live.write_text("junk")
    import_features([src], out, format="butd-npz")
    assert not stale.exists() and live.exists()
    assert FeatureStore(out).ids == ["a"]
