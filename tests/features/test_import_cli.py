"""`python -m lxmert_fast.features import` and the `info` line on missing labels (issue 16)."""
import subprocess
import sys

import numpy as np

from lxmert_fast.features import FeatureStore
from lxmert_fast.features.__main__ import main
from lxmert_fast.features.extractor_files import write_butd_caffe, write_mmf_frcnn
from lxmert_fast.features.synthetic import random_records
from lxmert_fast.features.tsv import write_obj_tsv


def test_import_then_info(tmp_path, capsys):
    recs = list(random_records(3, dim=8, boxes=(2, 40), seed=0))
    for r in recs:
        write_butd_caffe(r, str(tmp_path), attrs=False)
    out = str(tmp_path / "s.lxf")
    assert main(["import", "--format", "butd-npz", str(tmp_path), out, "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}: 3 images (butd-npz)" in text
    assert "attrs: missing in 3 images: stored as id -100 with confidence 0" in text
    over = sum(r["num_boxes"] > 36 for r in recs)
    assert (f"{over} images have more than 36 boxes" in text) == (over > 0)
    assert main(["info", out]) == 0
    boxes = sum(r["num_boxes"] for r in recs)
    assert (f"missing labels  objects_id 0, attrs_id {boxes} (ignored by the losses) of "
            f"{boxes} boxes") in capsys.readouterr().out


def test_import_tsv_is_convert(tmp_path, capsys):
    tsv = str(tmp_path / "a.tsv")
    write_obj_tsv(tsv, random_records(3, dim=8, boxes=(2, 5), seed=1))
    a, b = str(tmp_path / "a.lxf"), str(tmp_path / "b.lxf")
    assert main(["import", tsv, a, "--quiet"]) == 0
    assert main(["convert", tsv, b, "--quiet"]) == 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


def test_errors_exit_1_and_leave_nothing(tmp_path, capsys):
    rec = next(random_records(1, dim=8, boxes=(3,), seed=2))
    write_mmf_frcnn(rec, str(tmp_path), resized=(600, 800))
    out = tmp_path / "s.lxf"
    assert main(["import", "--format", "mmf-npy", str(tmp_path), str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "img0000000_info.npy: info['image_width'] x info['image_height'] = 800 x 600" in err
    assert "--image_sizes FILE" in err and not out.exists()
    assert main(["import", "--format", "butd-npz", "--image_sizes", "extent", str(tmp_path),
                 str(out), "--quiet"]) == 1
    assert "image_sizes='extent' does not apply to format 'butd-npz'" in capsys.readouterr().err
    assert main(["import", "--format", "mmf-npy", "--image_sizes", "extent", str(tmp_path),
                 str(out), "--quiet"]) == 0
    store = FeatureStore(out)
    assert store["img0000000"]["img_w"] == int(np.ceil(rec["boxes"][:, 2].max()))


def test_module_entry_point(tmp_path):
    rec = next(random_records(1, dim=8, boxes=(3,), seed=3))
    write_butd_caffe(rec, str(tmp_path))
    res = subprocess.run([sys.executable, "-m", "lxmert_fast.features", "import", "--format",
                          "butd-npz", str(tmp_path / "img0000000.npz"), str(tmp_path / "o.lxf"),
                          "--quiet", "--no-fsync"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "1 images (butd-npz)" in res.stdout
