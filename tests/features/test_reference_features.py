"""TsvFeatures (lxmert_fast/features/reference.py): the pure-Python reference source."""
import numpy as np
import pytest
import torch

from lxmert_fast.features import TsvFeatures, TsvFormatError
from lxmert_fast.features.synthetic import random_record, random_records
from lxmert_fast.features.tsv import load_obj_tsv, write_obj_tsv


@pytest.fixture
def two_files(tmp_path):
    a = list(random_records(5, dim=16, boxes=(0, 3, 36, 40), seed=1, prefix="a"))
    b = list(random_records(4, dim=16, boxes=(1, 10), seed=2, prefix="b"))
    write_obj_tsv(tmp_path / "a.tsv", a)
    write_obj_tsv(tmp_path / "b.tsv", b)
    return [str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")], a + b


def test_records_match_original_loader(two_files):
    paths, recs = two_files
    src = TsvFeatures(paths)
    assert len(src) == 9 and src.ids == [r["img_id"] for r in recs] and src.dim == 16
    loaded = load_obj_tsv(paths[0]) + load_obj_tsv(paths[1])
    for i, rec in enumerate(loaded):
        got = src[rec["img_id"]]
        assert src.index(rec["img_id"]) == i and rec["img_id"] in src
        for key, value in rec.items():
            if key == "features" and rec["num_boxes"] == 0:
                assert got[key].shape == (0, 16)
            else:
                np.testing.assert_array_equal(got[key], value)
    assert "nope" not in src
    with pytest.raises(KeyError, match="nope"):
        src["nope"]


def test_gather_layout(two_files):
    paths, recs = two_files
    src = TsvFeatures(paths)
    batch = src.gather([r["img_id"] for r in recs] + [0], max_boxes=36)
    assert batch["features"].shape == (10, 36, 16) and batch["features"].dtype == torch.float32
    for b, rec in enumerate(recs + recs[:1]):
        n = min(rec["num_boxes"], 36)
        assert batch["num_boxes"][b] == n and int(batch["box_mask"][b].sum()) == n
        assert torch.equal(batch["features"][b, :n], torch.from_numpy(rec["features"][:n]))
        assert not batch["features"][b, n:].any() and not batch["boxes"][b, n:].any()
        want = rec["boxes"][:n] / np.array([rec["img_w"], rec["img_h"]] * 2, np.float32)
        np.testing.assert_array_equal(batch["boxes"][b, :n].numpy(), want)
        assert batch["img_w"][b] == rec["img_w"] and batch["img_h"][b] == rec["img_h"]
        np.testing.assert_array_equal(batch["objects_id"][b, :n].numpy(), rec["objects_id"][:n])


def test_gather_bad_index(two_files):
    src = TsvFeatures(two_files[0])
    with pytest.raises(IndexError, match="index 9 at position 1"):
        src.gather([0, 9])
    with pytest.raises(KeyError, match="'zz'"):
        src.gather(["zz"])
    with pytest.raises(ValueError, match="max_boxes"):
        src.gather([0], max_boxes=-1)


def test_duplicate_and_dim_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    write_obj_tsv(tmp_path / "a.tsv", [random_record(rng, "x", 2, 8)])
    write_obj_tsv(tmp_path / "b.tsv", [random_record(rng, "y", 2, 8), random_record(rng, "x", 1, 8)])
    with pytest.raises(TsvFormatError, match=r"b.tsv: line 2 .*'x'.*duplicate.*a.tsv: line 1"):
        TsvFeatures([tmp_path / "a.tsv", tmp_path / "b.tsv"])
    write_obj_tsv(tmp_path / "c.tsv", [random_record(rng, "p", 2, 8), random_record(rng, "q", 2, 4)])
    with pytest.raises(TsvFormatError, match=r"line 2 .*'q'.*dimension 4 .* 8"):
        TsvFeatures(tmp_path / "c.tsv")
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        TsvFeatures(tmp_path / "missing.tsv")
