"""``butd-npz`` import (issue 16): MILVLG bottom-up-attention.pytorch files, caffe and d2 mode,
written as its code writes them (``extractor_files.py``), against the source arrays and an
equivalent TSV."""
import numpy as np
import pytest
import torch

from lxmert_fast.features import FeatureStore, ImportFormatError, import_features
from lxmert_fast.features.extractor_files import write_butd_caffe, write_butd_d2
from lxmert_fast.features.synthetic import random_records


def _records(n=5, seed=0):
    return list(random_records(n, dim=24, boxes=(1, 9, 37), seed=seed))


def _write(tmp_path, records, writer, **kwargs):
    src = tmp_path / "npz"
    src.mkdir()
    for r in records:
        writer(r, str(src), **kwargs)
    return src


def test_written_like_save_roi_features(tmp_path):
    rec = _records(1)[0]
    path = write_butd_caffe(rec, str(tmp_path))
    data = np.load(path, allow_pickle=True)
    assert sorted(data.files) == ["bbox", "image_h", "image_w", "info", "num_bbox", "x"]
    assert data["x"].dtype == np.float32 and data["num_bbox"].shape == ()
    assert data["info"].shape == () and data["info"].dtype == object
    info = data["info"].item()
    assert info["objects_id"].dtype == np.int64 and info["objects_conf"].dtype == np.float32
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(path)["info"]


def test_caffe_mode_matches_source_and_tsv(tmp_path, tsv_batch, batches_equal):
    recs = _records()
    src = _write(tmp_path, recs, write_butd_caffe)
    report = import_features([src], tmp_path / "s.lxf", format="butd-npz", dtype="float32")
    store = FeatureStore(tmp_path / "s.lxf")
    assert store.ids == sorted(r["img_id"] for r in recs) and report.images == len(recs)
    for r in recs:
        got = store[r["img_id"]]
        for key in ("features", "boxes", "objects_id", "objects_conf", "attrs_id", "attrs_conf"):
            np.testing.assert_array_equal(got[key], r[key], err_msg=key)
        assert (got["img_h"], got["img_w"]) == (r["img_h"], r["img_w"])
    ids = [r["img_id"] for r in recs]
    batches_equal(store.gather(ids, max_boxes=40), tsv_batch(recs, max_boxes=40))
    assert report.counts["objects_missing"] == report.counts["attrs_missing"] == 0
    assert report.counts["kind caffe"] == len(recs)


def test_float16_store_rounds_like_convert(tmp_path):
    recs = _records(2)
    src = _write(tmp_path, recs, write_butd_caffe)
    import_features([src], tmp_path / "s.lxf", format="butd-npz")
    store = FeatureStore(tmp_path / "s.lxf")
    assert store.dtype == np.float16
    for r in recs:
        np.testing.assert_array_equal(store[r["img_id"]]["features"],
                                      r["features"].astype(np.float16))


def test_no_attributes_stored_as_ignored(tmp_path, tsv_batch, batches_equal, without_labels):
    recs = _records()
    src = _write(tmp_path, recs, write_butd_caffe, attrs=False)
    report = import_features([src], tmp_path / "s.lxf", format="butd-npz", dtype="float32")
    got = FeatureStore(tmp_path / "s.lxf").gather([r["img_id"] for r in recs], max_boxes=40)
    batches_equal(got, tsv_batch(without_labels(recs, objects=False), max_boxes=40))
    assert report.counts["attrs_missing"] == len(recs)
    assert any("attrs: missing in 5 images" in line for line in report.lines())


def test_old_files_need_id_base_1(tmp_path, without_labels):
    """Before Sept 2020 ids counted the background as 0: id 1599 was stored as 1600."""
    recs = _records(3)
    recs[1]["objects_id"][0] = 1599
    recs[2]["objects_id"][0] = -1   # the argmax was the background: stored as 0
    src = _write(tmp_path, recs, write_butd_caffe, id_base=1)
    with pytest.raises(ImportFormatError, match=r"img0000001\.npz: key \"info\['objects_id'\]\" "
                                                r"holds 1600 at row 0.*--id_base 1"):
        import_features([src], tmp_path / "s.lxf", format="butd-npz")
    assert not (tmp_path / "s.lxf").exists()
    import_features([src], tmp_path / "s.lxf", format="butd-npz", id_base=1, dtype="float32")
    store = FeatureStore(tmp_path / "s.lxf")
    np.testing.assert_array_equal(store["img0000001"]["objects_id"], recs[1]["objects_id"])
    background = store["img0000002"]
    assert background["objects_id"][0] == -100 and background["objects_conf"][0] == 0
    np.testing.assert_array_equal(background["objects_id"][1:], recs[2]["objects_id"][1:])
    np.testing.assert_array_equal(background["attrs_id"], recs[2]["attrs_id"])


def test_d2_mode_takes_argmax_and_max(tmp_path, tsv_batch, batches_equal):
    recs = _records()
    src = _write(tmp_path, recs, write_butd_d2)
    info = np.load(src / "img0000000.npz", allow_pickle=True)["info"].item()
    assert isinstance(info["attrs_id"], torch.Tensor) and info["attrs_id"].shape[1] == 401
    report = import_features([src], tmp_path / "s.lxf", format="butd-npz", dtype="float32")
    got = FeatureStore(tmp_path / "s.lxf").gather([r["img_id"] for r in recs], max_boxes=40)
    batches_equal(got, tsv_batch(recs, max_boxes=40))
    assert report.counts["kind d2"] == len(recs)
    with pytest.raises(ImportFormatError, match="img0000000.npz: id_base=1 applies to caffe"):
        import_features([src], tmp_path / "t.lxf", format="butd-npz", id_base=1)


def test_d2_mode_without_attributes(tmp_path, tsv_batch, batches_equal, without_labels):
    recs = _records(2)
    src = _write(tmp_path, recs, write_butd_d2, attrs=False)
    import_features([src], tmp_path / "s.lxf", format="butd-npz", dtype="float32")
    got = FeatureStore(tmp_path / "s.lxf").gather([r["img_id"] for r in recs], max_boxes=40)
    batches_equal(got, tsv_batch(without_labels(recs, objects=False), max_boxes=40))


def test_img_id_from_info_and_regex(tmp_path):
    recs = _records(2)
    src = _write(tmp_path, recs, write_butd_caffe)
    (src / "img0000000.npz").rename(src / "renamed_a.npz")
    import_features([src], tmp_path / "a.lxf", format="butd-npz", img_id_from="info")
    assert sorted(FeatureStore(tmp_path / "a.lxf").ids) == ["img0000000", "img0000001"]
    import_features([src], tmp_path / "b.lxf", format="butd-npz",
                    img_id_from=r"re:^(?:renamed_)?(\w+)$")
    assert sorted(FeatureStore(tmp_path / "b.lxf").ids) == ["a", "img0000001"]
    with pytest.raises(ImportFormatError, match=r"img0000001\.npz: file name 'img0000001' "
                                                r"does not match"):
        import_features([src], tmp_path / "c.lxf", format="butd-npz",
                        img_id_from="re:^renamed")
    assert not (tmp_path / "c.lxf").exists()


def test_max_boxes_keeps_most_confident(tmp_path):
    recs = _records(3)
    src = _write(tmp_path, recs, write_butd_caffe)
    report = import_features([src], tmp_path / "s.lxf", format="butd-npz", max_boxes=4,
                             dtype="float32")
    store = FeatureStore(tmp_path / "s.lxf")
    for r in recs:
        keep = np.sort(np.argsort(-r["objects_conf"], kind="stable")[:4])
        got = store[r["img_id"]]
        assert got["num_boxes"] == min(4, r["num_boxes"])
        np.testing.assert_array_equal(got["features"], r["features"][keep])
        np.testing.assert_array_equal(got["objects_conf"], r["objects_conf"][keep])
        assert got["objects_conf"].min() >= np.sort(r["objects_conf"])[::-1][:4].min()
    dropped = sum(max(0, r["num_boxes"] - 4) for r in recs)
    assert report.counts["boxes_dropped"] == dropped


def test_d2_without_objects_takes_argmax_and_max(tmp_path):
    recs = _records(2)
    src = _write(tmp_path, recs, write_butd_d2)
    path = src / "img0000001.npz"
    data = dict(np.load(path, allow_pickle=True))
    info = data.pop("info").item()
    del info["objects"]
    np.savez_compressed(path, **data, info=info)
    import_features([src], tmp_path / "s.lxf", format="butd-npz", dtype="float32")
    got = FeatureStore(tmp_path / "s.lxf")["img0000001"]
    np.testing.assert_array_equal(got["objects_id"], recs[1]["objects_id"])
    np.testing.assert_array_equal(got["objects_conf"], recs[1]["objects_conf"])
