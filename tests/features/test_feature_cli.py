"""`python -m lxmert_fast.features convert|info` (lxmert_fast/features/__main__.py)."""
import numpy as np

from lxmert_fast.features import FeatureStore, TsvFeatures
from lxmert_fast.features.__main__ import main
from lxmert_fast.features.synthetic import random_records
from lxmert_fast.features.tsv import write_obj_tsv


def test_convert_then_info(tmp_path, capsys):
    a, b = str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")
    write_obj_tsv(a, random_records(3, dim=8, boxes=(2, 5), seed=0, prefix="a"))
    write_obj_tsv(b, random_records(2, dim=8, boxes=(0, 7), seed=1, prefix="b"))
    out = str(tmp_path / "s.lxf")
    assert main(["convert", a, b, out, "--dtype", "float32", "--quiet"]) == 0
    assert f"wrote {out}: 5 images" in capsys.readouterr().out
    store, ref = FeatureStore(out), TsvFeatures([a, b])
    assert store.ids == ref.ids and store.dtype == np.float32
    assert main(["info", out]) == 0
    text = capsys.readouterr().out
    per = [ref[i]["num_boxes"] for i in ref.ids]
    assert "images          5" in text and "dtype           float32" in text
    assert f"per image min {min(per)} mean {np.mean(per):.2f} max {max(per)}" in text
    assert "feature dim     8" in text and "size on disk" in text


def test_errors_exit_nonzero_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("x\t1\t2\n")
    assert main(["convert", str(bad), str(tmp_path / "o.lxf"), "--quiet"]) == 1
    assert "bad.tsv: line 1 (byte offset 0), img_id 'x': missing field(s)" in capsys.readouterr().err
    assert main(["info", str(bad)]) == 1
    assert "bad.tsv: not a feature store: 6 bytes" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "none.tsv"), str(tmp_path / "o.lxf")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "o.lxf").exists()
