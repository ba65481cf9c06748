"""``mmf-npy`` import (issue 16): MMF's extract_features_vmb.py, frcnn/extract_features_frcnn.py
and extract_features_vinvl.py files, written as their code writes them, and each trap: vmb's
padding rows, frcnn's num_boxes (a CLI value) and resized image size, VinVL's 6 appended dims."""
import json
import math

import numpy as np
import pytest

from lxmert_fast.features import FeatureStore, ImportFormatError, import_features
from lxmert_fast.features.extractor_files import (write_mmf_frcnn, write_mmf_vinvl,
                                                  write_mmf_vmb)
from lxmert_fast.features.synthetic import random_records


def _records(n=4, seed=1, boxes=(1, 8, 36)):
    return list(random_records(n, dim=20, boxes=boxes, seed=seed))


def _write(tmp_path, records, writer, **kwargs):
    src = tmp_path / "npy"
    src.mkdir()
    for r in records:
        writer(r, str(src), **kwargs)
    return src


def _import(src, tmp_path, **kwargs):
    out = tmp_path / "s.lxf"
    report = import_features([src], out, format="mmf-npy", dtype="float32", **kwargs)
    return FeatureStore(out), report


def test_vmb_drops_padding_rows(tmp_path, tsv_batch, batches_equal, without_labels):
    recs = _records()
    src = _write(tmp_path, recs, write_mmf_vmb)
    info = np.load(src / "img0000000_info.npy", allow_pickle=True)
    assert info.shape == () and info.dtype == object
    assert np.load(src / "img0000000.npy").shape == (100, 20)
    store, report = _import(src, tmp_path)
    for r in recs:
        got = store[r["img_id"]]
        assert got["num_boxes"] == r["num_boxes"]
        np.testing.assert_array_equal(got["features"], r["features"])
        np.testing.assert_array_equal(got["objects_id"], r["objects_id"])
        np.testing.assert_array_equal(got["objects_conf"], r["objects_conf"])
    batches_equal(store.gather([r["img_id"] for r in recs]),
                  tsv_batch(without_labels(recs, objects=False)))
    assert report.counts["padding_dropped"] == sum(100 - r["num_boxes"] for r in recs)
    assert report.counts["kind vmb"] == len(recs) and report.counts["attrs_missing"] == 4


def test_vmb_background_column(tmp_path):
    recs = _records(2)
    recs[0]["objects_id"][0] = -1  # the background won: objects 0 with --background
    src = _write(tmp_path, recs, write_mmf_vmb, background=True)
    assert np.load(src / "img0000000_info.npy", allow_pickle=True).item()["cls_prob"].shape \
        == (100, 1601)
    store, _ = _import(src, tmp_path)
    got = store["img0000000"]
    assert got["objects_id"][0] == -100 and got["objects_conf"][0] == 0
    np.testing.assert_array_equal(got["objects_id"][1:], recs[0]["objects_id"][1:])
    np.testing.assert_array_equal(store["img0000001"]["objects_conf"], recs[1]["objects_conf"])


def test_vmb_size_mismatch_detected(tmp_path):
    recs = _records(2)
    src = _write(tmp_path, recs, write_mmf_vmb)
    path = src / "img0000001_info.npy"
    info = np.load(path, allow_pickle=True).item()
    info["image_width"] = int(info["bbox"][: info["num_boxes"], 2].max() / 2)
    np.save(path, info)
    with pytest.raises(ImportFormatError, match=r"img0000001_info.npy: boxes reach x2 = .*"
                                                r"beyond info\['image_width'\].*--image_sizes"):
        _import(src, tmp_path)
    assert not (tmp_path / "s.lxf").exists()
    store, report = _import(src, tmp_path, image_sizes="extent")
    assert store["img0000001"]["img_w"] == math.ceil(recs[1]["boxes"][:, 2].max())
    assert store["img0000000"]["img_w"] == recs[0]["img_w"]   # consistent: kept
    assert report.counts["size extent"] == 1 and report.counts["size file"] == 1


def test_frcnn_num_boxes_is_cli_value_and_size_is_resized(tmp_path, tsv_batch, batches_equal,
                                                         without_labels):
    recs = _records()
    src = _write(tmp_path, recs, write_mmf_frcnn, resized=(800, 1067))
    info = np.load(src / "img0000000_info.npy", allow_pickle=True).item()
    assert info["num_boxes"] == 100 and info["cls_prob"].ndim == 1
    with pytest.raises(ImportFormatError, match=r"img0000000_info.npy: info\['image_width'\] x "
                                                r"info\['image_height'\] = 1067 x 800 is the "
                                                r"size of the resized network input"):
        _import(src, tmp_path)
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({r["img_id"]: [r["img_h"], r["img_w"]] for r in recs}))
    store, report = _import(src, tmp_path, image_sizes=str(sizes))
    assert [store[r["img_id"]]["num_boxes"] for r in recs] == [r["num_boxes"] for r in recs]
    batches_equal(store.gather([r["img_id"] for r in recs]),
                  tsv_batch(without_labels(recs, objects=False)))
    assert report.counts["kind frcnn"] == 4 and report.counts["size sizes file"] == 4


def test_frcnn_extent_and_more_features_than_boxes(tmp_path):
    recs = _records(2, boxes=(30,))
    src = _write(tmp_path, recs, write_mmf_frcnn, resized=(600, 600), num_features=10)
    assert np.load(src / "img0000000.npy").shape == (30, 20)
    store, report = _import(src, tmp_path, image_sizes="extent")
    for r in recs:
        got = store[r["img_id"]]
        assert got["num_boxes"] == 10
        np.testing.assert_array_equal(got["features"], r["features"][:10])
        assert got["img_w"] == math.ceil(r["boxes"][:10, 2].max())
        assert got["img_h"] == math.ceil(r["boxes"][:10, 3].max())
    assert any("bounding extent (approximate)" in line for line in report.lines())


def test_image_sizes_file_missing_id(tmp_path):
    recs = _records(2)
    src = _write(tmp_path, recs, write_mmf_frcnn, resized=(800, 800))
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({"img0000000": [10, 20]}))
    with pytest.raises(ImportFormatError, match=r"sizes.json: no size for img_id 'img0000001'"):
        _import(src, tmp_path, image_sizes=str(sizes))
    sizes.write_text(json.dumps({"img0000000": [10, 0]}))
    with pytest.raises(ImportFormatError, match=r"img_id 'img0000000': \[10, 0\] is not"):
        _import(src, tmp_path, image_sizes=str(sizes))


def test_vinvl_box_dims_split_off(tmp_path, tsv_batch, batches_equal, without_labels):
    recs = _records()
    src = _write(tmp_path, recs, write_mmf_vinvl)
    assert np.load(src / "img0000000.npy").shape[1] == 26
    store, report = _import(src, tmp_path)
    assert store.dim == 20 and report.counts["kind vinvl"] == 4
    want = tsv_batch(without_labels(recs))
    got = store.gather([r["img_id"] for r in recs])
    batches_equal(got, want, keys=("features", "box_mask", "objects_id", "attrs_id",
                                   "objects_conf"))
    batches_equal(got, want, keys=("boxes",), atol=1e-6)


def test_info_file_given_names_the_features(tmp_path):
    recs = _records(1)
    src = _write(tmp_path, recs, write_mmf_vmb)
    store, _ = _import(src / "img0000000_info.npy", tmp_path)
    assert store.ids == ["img0000000"]


@pytest.mark.parametrize("background", [False, True])
def test_vmb_without_objects_takes_argmax(tmp_path, background):
    recs = _records(2)
    src = _write(tmp_path, recs, write_mmf_vmb, background=background)
    path = src / "img0000001_info.npy"
    info = np.load(path, allow_pickle=True).item()
    del info["objects"]
    np.save(path, info)
    store, _ = _import(src, tmp_path)
    np.testing.assert_array_equal(store["img0000001"]["objects_id"], recs[1]["objects_id"])
    np.testing.assert_array_equal(store["img0000001"]["objects_conf"], recs[1]["objects_conf"])


def test_vinvl_at_the_real_width(tmp_path):
    """2048 box features + 6 dims = (N, 2054) as VinVL writes them: the store holds 2048."""
    recs = list(random_records(2, dim=2048, boxes=(10,), seed=4))
    src = _write(tmp_path, recs, write_mmf_vinvl)
    assert np.load(src / "img0000000.npy").shape == (10, 2054)
    store, _ = _import(src, tmp_path)
    assert store.dim == 2048
    np.testing.assert_array_equal(store["img0000001"]["features"], recs[1]["features"])
    np.testing.assert_allclose(store["img0000001"]["boxes"], recs[1]["boxes"], rtol=1e-6)
