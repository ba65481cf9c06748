"""Publishing and lifetime of a feature store (lxmert_fast/features/store.py, csrc/): the
non-durable (page-cache) conversion, removal of a killed conversion's temporary files, and a
store truncated after it was opened raising instead of SIGBUS."""
import os
import subprocess
import sys

import numpy as np
import pytest

from lxmert_fast import _featstore
from lxmert_fast.features import FeatureStore, StoreFormatError, convert_tsv
from lxmert_fast.features.__main__ import main
from lxmert_fast.features.synthetic import random_records
from lxmert_fast.features.tsv import write_obj_tsv


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    path = tmp_path_factory.mktemp("tsv") / "f.tsv"
    write_obj_tsv(path, random_records(40, dim=256, boxes=(0, 3, 36), seed=3))
    return str(path)


def test_non_durable_conversion_writes_the_same_store(tsv, tmp_path):
    durable, fast = tmp_path / "d.lxf", tmp_path / "p.lxf"
    convert_tsv([tsv], durable, num_threads=2)
    assert convert_tsv([tsv], fast, num_threads=2, durable=False) == str(fast)
    assert fast.read_bytes() == durable.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["d.lxf", "p.lxf"]
    assert main(["convert", tsv, str(tmp_path / "c.lxf"), "--no-fsync", "--quiet"]) == 0
    assert (tmp_path / "c.lxf").read_bytes() == durable.read_bytes()
    with pytest.raises(ValueError, match="durable must be a bool, got 'no'"):
        convert_tsv([tsv], tmp_path / "x.lxf", durable="no")


def _dead_pid():
    """A pid that no longer runs (a reaped child's; checked, as pids can be reused)."""
    for _ in range(20):
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        try:
            os.kill(child.pid, 0)
        except ProcessLookupError:
            return child.pid
    pytest.fail("could not find a pid that is not running")


def test_stale_temporary_files_of_dead_writers_are_removed(tsv, tmp_path):
    out = tmp_path / "s.lxf"
    live = subprocess.Popen(["sleep", "60"])
    try:
        dead = _dead_pid()
        names = {"dead": f"s.lxf.tmp.{dead}.0", "dead2": f"s.lxf.tmp.{dead}.123",
                 "live": f"s.lxf.tmp.{live.pid}.0", "own": f"s.lxf.tmp.{os.getpid()}.7",
                 "other_output": f"t.lxf.tmp.{dead}.0", "not_a_temp": f"s.lxf.tmp.{dead}.x",
                 "no_counter": f"s.lxf.tmp.{dead}"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial store")
        convert_tsv([tsv], out, num_threads=1)
        left = set(os.listdir(tmp_path))
        assert names["dead"] not in left and names["dead2"] not in left
        assert {names[k] for k in ("live", "own", "other_output", "not_a_temp", "no_counter")} \
            <= left
        assert (tmp_path / names["live"]).read_bytes() == b"partial store"
        assert len(FeatureStore(out)) == 40
        (tmp_path / names["dead"]).write_bytes(b"x")
        assert _featstore.remove_stale_temps(str(out)) == 1
        assert _featstore.remove_stale_temps(str(tmp_path / "missing_dir" / "s.lxf")) == 0
    finally:
        live.kill()
        live.wait()


def test_killed_conversion_leaves_no_valid_store_and_the_next_one_cleans_up(tsv, tmp_path):
    out = tmp_path / "k.lxf"
    code = ("import sys, time; from lxmert_fast.features import convert_tsv; "
            "convert_tsv([sys.argv[1]], sys.argv[2], num_threads=1, "
            "progress=lambda n: (print(n, flush=True), time.sleep(60)))")
    child = subprocess.Popen([sys.executable, "-c", code, tsv, str(out)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert int(child.stdout.readline()) > 0  # mid-conversion: the temporary file exists
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    temps = os.listdir(tmp_path)
    assert len(temps) == 1 and temps[0].startswith(f"k.lxf.tmp.{child.pid}."), temps
    convert_tsv([tsv], out, num_threads=1)
    assert os.listdir(tmp_path) == ["k.lxf"] and len(FeatureStore(out)) == 40


@pytest.fixture
def truncated(tsv, tmp_path):
    """An open store whose file is then cut to half its size, and the store's ids."""
    path = tmp_path / "s.lxf"
    convert_tsv([tsv], path, dtype="float32", num_threads=1)
    store = FeatureStore(path)
    ids, size = store.ids, store.file_size
    os.truncate(path, size // 2)
    return store, ids, size


def test_truncated_after_opening_raises_instead_of_sigbus(truncated):
    store, ids, size = truncated
    msg = (f"{store.path}: the file was truncated after it was opened: {size} bytes expected "
           rf"\(mapped\), {size // 2} bytes now")
    with pytest.raises(StoreFormatError, match=msg):
        store.gather([0, 1, 39])
    with pytest.raises(StoreFormatError, match=msg):
        store.gather(ids[:3])
    with pytest.raises(StoreFormatError, match=msg):
        store[ids[-1]]
    with pytest.raises(StoreFormatError, match=msg):
        store.record(len(ids) - 1)
    with pytest.raises(StoreFormatError, match=msg):
        ids[0] in store  # noqa: B015
    with pytest.raises(StoreFormatError, match=msg):
        store.boxes_per_image
    with pytest.raises(StoreFormatError, match="truncated: the header says"):
        FeatureStore(store.path)


def test_truncated_then_restored_reads_again(truncated):
    store, ids, size = truncated
    with pytest.raises(StoreFormatError):
        store.gather([0])
    os.truncate(store.path, size)  # back to full size (the cut part reads as zeros)
    assert store.gather([0])["features"].shape[0] == 1


def test_store_replaced_by_rename_keeps_reading_the_old_file(tsv, tmp_path):
    path, other = tmp_path / "s.lxf", tmp_path / "o.tsv"
    convert_tsv([tsv], path, num_threads=1)
    store = FeatureStore(path)
    before = store.gather(store.ids)["features"].clone()
    write_obj_tsv(other, random_records(2, dim=8, boxes=(1,), seed=9, prefix="new"))
    convert_tsv([other], path, num_threads=1)  # renamed over the open store
    assert np.array_equal(store.gather(store.ids)["features"].numpy(), before.numpy())
    assert len(FeatureStore(path)) == 2
