"""``uniter-npz`` import (issue 16): UNITER's BUTD npz (float16 features, normalised boxes, no
image size), written as its save_to_npz writes it."""
import numpy as np
import pytest

from lxmert_fast.features import FeatureStore, ImportFormatError, import_features
from lxmert_fast.features.extractor_files import write_uniter
from lxmert_fast.features.synthetic import random_records


def _write(tmp_path, records, **kwargs):
    src = tmp_path / "npz"
    src.mkdir()
    for r in records:
        write_uniter(r, str(src), **kwargs)
    return src


def test_layout_as_written(tmp_path):
    rec = next(random_records(1, dim=16, boxes=(7,), seed=2))
    data = np.load(write_uniter(rec, str(tmp_path)))   # no pickle needed
    assert {k: (data[k].dtype, data[k].shape) for k in data.files} == {
        "norm_bb": (np.float16, (7, 6)), "features": (np.float16, (7, 16)),
        "conf": (np.float16, (7, 1)), "soft_labels": (np.float16, (7, 1601))}


def test_import_matches_source_and_tsv(tmp_path, tsv_batch, batches_equal, without_labels):
    recs = list(random_records(5, dim=16, boxes=(1, 9, 36), seed=2))
    src = _write(tmp_path, recs)
    report = import_features([src], tmp_path / "s.lxf", format="uniter-npz", dtype="float32",
                             img_id_from=r"re:^nlvr2_(.*)$")
    store = FeatureStore(tmp_path / "s.lxf")
    assert sorted(store.ids) == [r["img_id"] for r in recs]
    for r in recs:
        got = store[r["img_id"]]
        assert (got["img_h"], got["img_w"]) == (1, 1)
        np.testing.assert_array_equal(got["features"], r["features"].astype(np.float16))
        np.testing.assert_array_equal(got["objects_id"], r["objects_id"])
        np.testing.assert_array_equal(got["objects_conf"],
                                      r["objects_conf"].astype(np.float16))
    ids = [r["img_id"] for r in recs]
    want = tsv_batch(without_labels(recs, objects=False), max_boxes=40)
    got = store.gather(ids, max_boxes=40)
    batches_equal(got, want, keys=("box_mask", "objects_id", "attrs_id", "attrs_conf",
                                   "num_boxes"))
    # float16 in the file: boxes in [0, 1] and confidences within float16's resolution
    batches_equal(got, want, keys=("boxes", "objects_conf"), atol=1e-3)
    assert report.counts["attrs_missing"] == 5 and report.counts["size normalised"] == 5


def test_default_img_id_is_the_stem(tmp_path):
    recs = list(random_records(1, dim=8, boxes=(3,), seed=2))
    import_features([_write(tmp_path, recs)], tmp_path / "s.lxf", format="uniter-npz")
    assert FeatureStore(tmp_path / "s.lxf").ids == ["nlvr2_img0000000"]


def test_a_pickle_is_refused(tmp_path):
    rec = next(random_records(1, dim=8, boxes=(3,), seed=2))
    path = write_uniter(rec, str(tmp_path))
    data = dict(np.load(path))
    np.savez_compressed(path, **data, extra={"a": 1})
    with pytest.raises(ImportFormatError, match=r"nlvr2_img0000000.npz: key 'extra' holds "
                                                r"Python objects \(a pickle\)"):
        import_features([path], tmp_path / "s.lxf", format="uniter-npz")
    assert not (tmp_path / "s.lxf").exists()
