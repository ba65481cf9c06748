"""Pickles in extractors' files never run code (issue 22): the restricted unpickler
(``safe_pickle.py``) refuses every global outside its table with ImportFormatError naming the
file, the key and the global, before any of it runs (no marker file appears), in ``butd-npz``'s
``info`` and ``mmf-npy``'s ``_info.npy``; what the extractors write still imports, also as
numpy 1.x pickled it and with tensors pickled on a GPU. The same payloads do run under a full
``np.load(allow_pickle=True)``, so they are live."""
import collections
import io
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lxmert_fast.features import FeatureStore, ImportFormatError, import_features
from lxmert_fast.features import safe_pickle
from lxmert_fast.features.__main__ import main
from lxmert_fast.features.extractor_files import write_butd_caffe, write_butd_d2, write_mmf_vmb
from lxmert_fast.features.synthetic import random_records

_REBUILD = np.zeros(0).__reduce__()[0]   # numpy's _reconstruct, whatever its module


class _Call:
    """Pickles as ``fn(*args)``: what a crafted file holds."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _legacy_torch_bytes(obj) -> bytes:
    """``obj`` as torch.save wrote a pickled storage (the legacy format _load_from_bytes reads)."""
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _payloads(marker: str):
    """name -> (object placed in the info dict, the global the error must name)."""
    system = _Call(os.system, f"touch {marker}")
    storage = _Call(torch.storage._load_from_bytes, _legacy_torch_bytes(system))
    return {
        "os_system": (system, f"{os.system.__module__}.system"),
        "eval": (_Call(eval, f"open({marker!r}, 'w').close()"), "builtins.eval"),
        "popen": (_Call(subprocess.Popen, ["touch", marker]), "subprocess.Popen"),
        "torch_storage": (storage, f"{os.system.__module__}.system"),
        "tensor_on_storage": (_Call(torch._utils._rebuild_tensor_v2, storage, 0, (1,), (1,),
                                    False, collections.OrderedDict()),
                              f"{os.system.__module__}.system"),
    }


PAYLOADS = list(_payloads("m"))


def _rec(img_id="a", seed=0):
    rec = next(random_records(1, dim=8, boxes=(3,), seed=seed))
    rec["img_id"] = img_id
    return rec


def _butd_with(src, extra: dict, replace: bool = False) -> str:
    """A caffe-mode file whose info dict gets ``extra`` (or is ``extra`` with ``replace``)."""
    path = write_butd_caffe(_rec(), str(src))
    with np.load(path, allow_pickle=True) as f:
        data = {k: f[k] for k in f.files}
    info = data["info"].item()
    data["info"] = np.array(extra if replace else {**info, **extra}, dtype=object)
    np.savez_compressed(path, **data)
    return path


def _mmf_with(src, extra: dict, replace: bool = False) -> str:
    write_mmf_vmb(_rec(), str(src), num_features=4)
    path = str(src / "a_info.npy")
    info = np.load(path, allow_pickle=True).item()
    np.save(path, np.array(extra if replace else {**info, **extra}, dtype=object))
    return path


WRITERS = {"butd-npz": (_butd_with, "a.npz", "info"), "mmf-npy": (_mmf_with, "a_info.npy",
                                                                  "<info>")}


def _wait_for(path, seconds=5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if os.path.exists(path):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("fmt", list(WRITERS))
@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("nested", [False, True], ids=["info", "nested"])
def test_malicious_pickle_refused_and_nothing_runs(tmp_path, fmt, payload, nested):
    """The payload as the whole info, or deep inside an otherwise valid info dict."""
    marker = str(tmp_path / "MARKER")
    obj, name = _payloads(marker)[payload]
    src = tmp_path / "src"
    src.mkdir()
    write, file, key = WRITERS[fmt]
    extra = {"extra": [1, ("x", {"deep": obj})]} if nested else obj
    write(src, extra, replace=not nested)
    out = tmp_path / "s.lxf"
    pattern = (f"{src / file}: key '{key}': refusing to unpickle the global {name}")
    with pytest.raises(ImportFormatError, match=pattern.replace(".", r"\.")):
        import_features([src], out, format=fmt, num_threads=1)
    assert not out.exists()
    assert not _wait_for(marker, 0.3), "the pickle ran code"


@pytest.mark.parametrize("payload", ["os_system", "eval", "popen"])
def test_payloads_are_live_under_a_full_unpickler(tmp_path, payload):
    marker = str(tmp_path / "MARKER")
    src = tmp_path / "src"
    src.mkdir()
    path = _mmf_with(src, {"extra": _payloads(marker)[payload][0]})
    np.load(path, allow_pickle=True)
    assert _wait_for(marker)


def test_cli_refuses_and_runs_nothing(tmp_path, capsys):
    marker = str(tmp_path / "MARKER")
    src = tmp_path / "src"
    src.mkdir()
    path = _butd_with(src, {"extra": _payloads(marker)["os_system"][0]})
    out = tmp_path / "s.lxf"
    assert main(["import", "--format", "butd-npz", str(src), str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert (f"{path}: key 'info': refusing to unpickle the global "
            f"{os.system.__module__}.system") in err
    assert not out.exists() and not os.path.exists(marker)


def _misuse():
    """name -> (fn, args, the global named, what the error says)."""
    one = torch.ones(1)
    return {
        "reconstruct_args": (_REBUILD, (np.ndarray, (10 ** 9,), np.dtype(object)),
                             f"{_REBUILD.__module__}._reconstruct",
                             "not as numpy's pickles call it"),
        "ndarray_called": (np.ndarray, ((10 ** 9,), "O"), "numpy.ndarray",
                           "only pass it to _reconstruct"),
        "view_beyond_storage": (torch._utils._rebuild_tensor_v2,
                                (one._typed_storage(), 0, (10 ** 9,), (0,), False,
                                 collections.OrderedDict()),
                                "torch._utils._rebuild_tensor_v2", "viewing a storage of 1"),
        "hooks": (torch._utils._rebuild_tensor_v2,
                  (one._typed_storage(), 0, (1,), (1,), False,
                   collections.OrderedDict(a=1)),
                  "torch._utils._rebuild_tensor_v2", "with backward hooks"),
        "not_a_storage": (torch.storage._load_from_bytes, (_legacy_torch_bytes({"a": 1}),),
                          "torch.storage._load_from_bytes", "it held a dict, not a storage"),
    }


@pytest.mark.parametrize("case", list(_misuse()))
def test_allowed_globals_only_as_their_writers_call_them(tmp_path, case):
    """numpy.ndarray is not callable; _reconstruct takes numpy's own arguments only; a tensor
    may not view more than its storage nor carry hooks; _load_from_bytes must give a storage."""
    fn, args, name, why = _misuse()[case]
    blob = pickle.dumps(_Call(fn, *args), protocol=3)
    with pytest.raises(ImportFormatError) as err:
        safe_pickle.load(io.BytesIO(blob), tmp_path / "f.npy", "<info>")
    assert str(err.value).startswith(f"{tmp_path / 'f.npy'}: key '<info>': refusing to "
                                     f"unpickle the global {name} (") and why in str(err.value)


# Pickles on which numpy's own __setstate__ or CPython's C unpickler crash or stall (found by
# fuzzing): each is an ImportFormatError at once. name -> (code building `blob`, the message).
_CRASHERS = {
    "short_object_list": (
        "class Build:\n"
        "    def __reduce__(self):\n"
        "        return (np.zeros(0).__reduce__()[0], (np.ndarray, (0,), b'b'),\n"
        "                (1, (100000,), np.dtype(object), False, [1, 2]))\n"
        "blob = pickle.dumps(Build(), protocol=3)\n",
        "cannot unpickle (ValueError: object array of shape (100000,) holds 2 items)"),
    "dtype_state": (
        "class Build:\n"
        "    def __reduce__(self):\n"
        "        return (np.dtype, ('i8', False, True), (3, '<', (None, None), -1, -1, 0))\n"
        "blob = pickle.dumps(Build(), protocol=3)\n",
        "cannot unpickle (ValueError: dtype state (3, '<', (None, None), -1, -1, 0) is not "
        "numpy's)"),
    "memo_index": (
        "blob = b'\\x80\\x04K\\x01r\\x00\\x00\\x00\\x40.'\n",
        "cannot unpickle (ValueError: LONG_BINPUT of memo index 1073741824 at byte 4 "
        "(opcode 2))"),
}


@pytest.mark.parametrize("case", list(_CRASHERS))
def test_crafted_states_are_errors_not_crashes(case):
    """Run in a child, so that a crash fails the test rather than pytest; in well under the
    seconds a 2**30 memo table would take."""
    build, message = _CRASHERS[case]
    code = ("import io, pickle, numpy as np\n"
            "from lxmert_fast.features import safe_pickle\n" + build +
            "try:\n"
            "    safe_pickle.load(io.BytesIO(blob), 'f', 'k')\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == f"ImportFormatError f: key 'k': {message}"
    assert time.perf_counter() - start < 30


def _as_other_numpy(path: str) -> None:
    """Rewrite an _info.npy as the other numpy major version writes it: numpy.core names for
    numpy 1.x (pickle protocol 3, as its np.save), numpy._core for 2.x."""
    obj = np.load(path, allow_pickle=True)
    blob = pickle.dumps(obj, protocol=3)
    names = [b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"]
    if _REBUILD.__module__ == "numpy.core.multiarray":
        names.reverse()
    assert names[0] in blob
    blob = blob.replace(*names)
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        size = f.tell()
        f.seek(0)
        header = f.read(size)
    with open(path, "wb") as f:
        f.write(header + blob)


def test_other_numpy_version_pickles_import(tmp_path):
    recs = [_rec("a", 1), _rec("b", 2)]
    src = tmp_path / "src"
    src.mkdir()
    for r in recs:
        write_mmf_vmb(r, str(src), num_features=4)
        _as_other_numpy(str(src / f"{r['img_id']}_info.npy"))
    import_features([src], tmp_path / "s.lxf", format="mmf-npy", dtype="float32")
    store = FeatureStore(tmp_path / "s.lxf")
    for r in recs:
        np.testing.assert_array_equal(store[r["img_id"]]["objects_id"], r["objects_id"])
        np.testing.assert_array_equal(store[r["img_id"]]["features"], r["features"])


def test_tensors_pickled_on_a_gpu_load_on_the_cpu(tmp_path):
    """d2 mode saves CUDA tensors: their storages name cuda:0 (made here by tagging CPU
    storages so); the restricted loader maps them to the CPU."""
    import torch.serialization as ser

    def tag(obj):
        device = getattr(obj, "device", None)
        return "cuda:0" if device is not None and device.type == "cpu" else None

    rec = _rec("g", 3)
    ser.register_package(0, tag, lambda obj, location: None)
    try:
        write_butd_d2(rec, str(tmp_path))
    finally:
        ser._package_registry[:] = [e for e in ser._package_registry if e[1] is not tag]
    with np.load(tmp_path / "g.npz", allow_pickle=False) as f:
        assert b"cuda:0" in f.zip.read("info.npy")
    import_features([tmp_path / "g.npz"], tmp_path / "s.lxf", format="butd-npz",
                    dtype="float32")
    got = FeatureStore(tmp_path / "s.lxf")["g"]
    np.testing.assert_array_equal(got["objects_id"], rec["objects_id"])
    np.testing.assert_array_equal(got["attrs_id"], rec["attrs_id"])


def test_numpy_scalars_byte_orders_and_layouts_import(tmp_path):
    """What else numpy pickles for an extractor's values: scalars, a big-endian array, a
    Fortran-order array, a 0-d array, a str array: loaded as numpy's own unpickling loads
    them (a big-endian array comes back in native order)."""
    rec = _rec("s", 4)
    write_mmf_vmb(rec, str(tmp_path), num_features=4)
    path = str(tmp_path / "s_info.npy")
    info = np.load(path, allow_pickle=True).item()
    info.update(num_boxes=np.int32(info["num_boxes"]), image_width=np.int64(rec["img_w"]),
                image_height=np.array(rec["img_h"]), bbox=info["bbox"].astype(">f4"),
                cls_prob=np.asfortranarray(info["cls_prob"]), names=np.array(["a", "bc"]))
    np.save(path, np.array(info, dtype=object))
    loaded = safe_pickle.load(_after_header(path), path, "<info>").item()
    want = np.load(path, allow_pickle=True).item()   # the test's own file
    assert sorted(loaded) == sorted(want)
    for key, value in want.items():
        assert type(loaded[key]) is type(value) or isinstance(loaded[key], np.ndarray), key
        assert np.asarray(loaded[key]).dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(loaded[key], value)
    assert np.asarray(loaded["cls_prob"]).flags.f_contiguous
    import_features([tmp_path], tmp_path / "o.lxf", format="mmf-npy", dtype="float32")
    got = FeatureStore(tmp_path / "o.lxf")["s"]
    np.testing.assert_array_equal(got["boxes"], rec["boxes"])
    np.testing.assert_array_equal(got["objects_id"], rec["objects_id"])


def _after_header(path) -> io.BytesIO:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return io.BytesIO(f.read())
