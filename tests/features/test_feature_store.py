"""FeatureStore + convert_tsv (lxmert_fast/features/store.py, csrc/) against the Python reader."""
import pickle

import numpy as np
import pytest
import torch

from lxmert_fast.features import FeatureStore, TsvFeatures, convert_tsv
from lxmert_fast.features.synthetic import random_records
from lxmert_fast.features.tsv import write_obj_tsv

DIM = 24


@pytest.fixture(scope="module")
def tsvs(tmp_path_factory):
    """Three TSV files, variable box counts (0, 1, 36, 37, 50), float16 edge values."""
    d = tmp_path_factory.mktemp("feats")
    specs = [("a", 40, (0, 1, 36, 37, 50)), ("b", 25, (10, 36)), ("c", 3, (0,))]
    paths = []
    for i, (prefix, count, boxes) in enumerate(specs):
        paths.append(str(d / f"{prefix}.tsv"))
        write_obj_tsv(paths[-1], random_records(count, DIM, boxes, seed=i, prefix=prefix,
                                                extreme=True))
    return paths, TsvFeatures(paths)


@pytest.fixture(scope="module", params=["float16", "float32"])
def store(request, tsvs, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / f"s-{request.param}.lxf"
    assert convert_tsv(tsvs[0], out, dtype=request.param, num_threads=2) == str(out)
    return FeatureStore(out)


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical tensors (NaN payloads included)."""
    return a.shape == b.shape and a.dtype == b.dtype and \
        a.numpy().tobytes() == b.numpy().tobytes()


def test_round_trip_every_record(store, tsvs):
    ref = tsvs[1]
    assert len(store) == len(ref) == 68 and store.ids == ref.ids and store.dim == DIM
    with np.errstate(over="ignore"):
        for i, img_id in enumerate(ref.ids):
            want, got = ref[img_id], store[img_id]
            assert store.index(img_id) == i and img_id in store
            assert set(got) == set(want)
            for key in ("img_id", "img_h", "img_w", "num_boxes"):
                assert got[key] == want[key], key
            for key in ("objects_id", "objects_conf", "attrs_id", "attrs_conf", "boxes"):
                assert got[key].dtype == want[key].dtype
                _eq(got[key], want[key])
            assert got["features"].dtype == store.dtype and got["features"].shape == want["features"].shape
            # float32: bit-exact; float16: exactly numpy's cast (inf/nan included)
            _eq(got["features"].view(np.uint8), want["features"].astype(store.dtype).view(np.uint8))
    assert "missing" not in store and 3 not in store
    with pytest.raises(KeyError, match="'missing'"):
        store["missing"]


def test_single_thread_conversion_is_identical(store, tsvs, tmp_path):
    out = tmp_path / "one.lxf"
    convert_tsv(tsvs[0], out, dtype=str(store.dtype), num_threads=1)
    assert out.read_bytes() == open(store.path, "rb").read()


def _check_batch(batch, ref_batch, dtype):
    assert batch.keys() == ref_batch.keys()
    for key, got in batch.items():
        want = ref_batch[key]
        assert got.shape == want.shape and got.device.type == "cpu", key
        if key == "features":
            assert got.dtype == (torch.float16 if dtype == np.float16 else torch.float32)
            with np.errstate(over="ignore"):
                _eq(got.numpy().view(np.uint8), want.numpy().astype(dtype).view(np.uint8))
        else:
            assert got.dtype == want.dtype, key
            _eq(got.numpy(), want.numpy())


@pytest.mark.parametrize("max_boxes", [36, 5, 60, 0])
def test_gather_matches_reference(store, tsvs, max_boxes):
    ref = tsvs[1]
    order = np.random.default_rng(max_boxes).permutation(len(ref))
    for threads in (1, 2):
        batch = store.gather(order, max_boxes=max_boxes, num_threads=threads)
        _check_batch(batch, ref.gather(order, max_boxes=max_boxes), store.dtype)
    n = batch["num_boxes"].numpy()
    assert n.max() == min(max_boxes, 50) and (batch["box_mask"].sum(1).numpy() == n).all()
    if max_boxes:
        real = batch["box_mask"]
        assert (batch["boxes"][real] >= 0).all() and (batch["boxes"][real] <= 1).all()


def test_gather_by_ids_mixed_and_tensor(store, tsvs):
    ref = tsvs[1]
    ids = [ref.ids[5], ref.ids[0], ref.ids[67]]
    a = store.gather(ids)
    b = store.gather(torch.tensor([5, 0, 67]))
    c = store.gather([5, ref.ids[0], 67])
    for key in a:
        assert _same(a[key], b[key]) and _same(a[key], c[key]), key
    _check_batch(a, ref.gather(ids), store.dtype)
    with pytest.raises(KeyError, match="'nope'"):
        store.gather([ref.ids[0], "nope"])
    with pytest.raises(IndexError, match="index 68 at position 1 is out of range for 68"):
        store.gather([0, 68])
    with pytest.raises(IndexError, match="index -1"):
        store.gather(np.array([-1]))
    with pytest.raises(TypeError, match="single string"):
        store.gather("abc")


def test_gather_out_buffer_reuse(store, tsvs):
    ref = tsvs[1]
    out = store.gather(list(range(16)), max_boxes=36)
    ptrs = {k: v.data_ptr() for k, v in out.items()}
    again = store.gather(list(range(20, 30)), max_boxes=36, out=out)
    for key, t in again.items():
        assert t.data_ptr() == ptrs[key] and t.shape[0] == 10, key
    _check_batch(again, ref.gather(list(range(20, 30))), store.dtype)
    with pytest.raises(ValueError, match=r"out\['features'\] is \(16, 36, 24\).*>=20"):
        store.gather(list(range(20)), out=out)
    bad = dict(out, boxes=out["boxes"].double())
    with pytest.raises(ValueError, match=r"out\['boxes'\].*float64"):
        store.gather([0], out=bad)
    with pytest.raises(ValueError, match="no key 'img_w'"):
        store.gather([0], out={k: v for k, v in out.items() if k != "img_w"})


def test_pin_memory_without_cuda_warns(store):
    if torch.cuda.is_available():
        assert store.gather([0], pin_memory=True)["features"].is_pinned()
    else:
        with pytest.warns(UserWarning, match="no CUDA device"):
            import lxmert_fast.features.batch as batch_mod
            batch_mod._warned_pin = False
            assert not store.gather([0], pin_memory=True)["features"].is_pinned()


def test_pickle_reopens_mapping(store):
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 500 and clone.path == store.path
    for key, t in clone.gather([3, 1]).items():
        assert _same(t, store.gather([3, 1])[key]), key


def test_views_outlive_store_and_are_read_only(store):
    rec = FeatureStore(store.path)[store.ids[1]]
    del_store = FeatureStore(store.path)
    feats = del_store[store.ids[1]]["features"]
    del del_store
    _eq(feats.view(np.uint8), rec["features"].view(np.uint8))
    with pytest.raises(ValueError, match="read-only"):
        feats[...] = 0


def test_dataloader_workers_share_the_store(store):
    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(store)

        def __getitem__(self, i):
            return i

    loader = torch.utils.data.DataLoader(DS(), batch_size=16, num_workers=2,
                                         collate_fn=lambda idx: store.gather(idx))
    got = torch.cat([b["num_boxes"] for b in loader])
    assert torch.equal(got, torch.from_numpy(np.minimum(store.boxes_per_image, 36)))
