"""Packed pretraining batches (data/pretrain.py make_packed, data/batch.py unpack_visual):
an example is the same whichever batch builds it; the device-table path gives the host path's
batch bit for bit; what crosses to the device per sample; LXMERT's rates on whole batches."""
import numpy as np
import pytest
import torch

from lxmert_fast.data.batch import unpack_visual
from lxmert_fast.data.feature_table import load_feature_table, table_bytes
from lxmert_fast.data.pretrain import PretrainDataset


@pytest.fixture(scope="module")
def store_world(tmp_path_factory):
    from lxmert_fast.data.world import ensure_world

    return ensure_world(cache_dir=str(tmp_path_factory.mktemp("packed_world")), num_images=64)


@pytest.fixture(scope="module")
def ds(store_world):
    from lxmert_fast.data.tokenization import load_tokenizer

    return PretrainDataset(store_world.splits["pretrain_train"], store_world.open_features(),
                           load_tokenizer(store_world.vocab), seed=5, max_boxes=36)


def _rows(batch, b):
    """Everything of example b of an unpacked batch, as numpy arrays."""
    out = {k: v[b].numpy() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    for task, (x, w) in batch["obj_labels"].items():
        out[task], out[task + "_w"] = x[b].numpy(), w[b].numpy()
    return out


def test_an_example_does_not_depend_on_its_batch(ds):
    ds.set_epoch(3)
    idx = [4, 80, 13, 250, 7, 99, 31, 180]
    whole = ds.make_batch(idx)
    for group in ([99, 4], [180, 31, 13], [250], [7, 80]):   # regrouped, reordered
        part = ds.make_batch(group)
        for j, i in enumerate(group):
            a, b = _rows(whole, idx.index(i)), _rows(part, j)
            assert a.keys() == b.keys()
            for k in a:
                assert np.array_equal(a[k], b[k]), (i, k)
    ds.set_epoch(0)


def test_feature_table_gives_the_host_batches_bit_for_bit(ds):
    table = load_feature_table(ds.features, ds.max_boxes, "cpu")
    for perm in (None, ds.image_derangement(0)):
        idx = list(range(0, 120, 3))
        host = ds.make_packed(idx, image_perm=perm)
        dev = ds.make_packed(idx, image_perm=perm, features_on_device=True)
        assert "feats" not in dev["visual"] and "lent_feats" not in dev["visual"]
        a = unpack_visual(host["visual"], torch.float32)
        b = unpack_visual(dev["visual"], torch.float32, table=table)
        assert int(host["visual"]["obj_zero"].sum()) > 0
        for k in ("visual_feats", "visual_pos", "visual_attention_mask"):
            assert torch.equal(a[k], b[k]), k
        for task in ("obj", "attr", "feat"):
            assert all(torch.equal(x, y) for x, y in zip(a["obj_labels"][task],
                                                         b["obj_labels"][task])), task
    with pytest.raises(ValueError, match="needs the device feature table"):
        unpack_visual(dev["visual"], torch.float32)
    assert table_bytes(ds.features, ds.max_boxes) == sum(v.numel() * v.element_size()
                                                         for v in table.values())


def _bytes(batch) -> int:
    total = 0
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            total += _bytes(v)
    return total


def test_what_crosses_to_the_device_per_sample(ds):
    """36 boxes x 2048 float16 once (147,456 B) plus the small arrays: <= 160 KB per sample on
    the host path (592 KB before: float32 features twice); <= 2 KB with the table on the
    device."""
    B = 64
    host = ds.make_packed(range(B))
    dev = ds.make_packed(range(B), features_on_device=True)
    assert host["visual"]["feats"].dtype == torch.float16
    assert _bytes(host) / B <= 160_000, _bytes(host) / B
    assert _bytes(dev) / B <= 2_000, _bytes(dev) / B


def test_rates_over_whole_batches(ds):
    b = ds.make_batch(range(len(ds)))
    text = b["attention_mask"].bool()
    text[:, 0] = False
    text[torch.arange(len(text)), b["attention_mask"].sum(1) - 1] = False     # [SEP]
    chosen = b["labels"] >= 0
    n = int(text.sum())
    assert abs(int(chosen.sum()) / n - 0.15) < 5 * np.sqrt(0.15 * 0.85 / n)
    masked = b["input_ids"][chosen] == ds.mask_id
    kept = b["input_ids"][chosen] == b["labels"][chosen]
    k = int(chosen.sum())
    assert abs(float(masked.float().mean()) - 0.8) < 5 * np.sqrt(0.16 / k)
    assert abs(float((~masked & ~kept).float().mean()) - 0.1) < 5 * np.sqrt(0.09 / k) + 0.01
    feats, mask = b["obj_labels"]["feat"]
    real = b["visual_attention_mask"].bool()
    m = mask.bool()
    nb = int(real.sum())
    assert (m <= real).all() and abs(int(m.sum()) / nb - 0.15) < 5 * np.sqrt(0.15 * 0.85 / nb)
    zeroed = m & (b["visual_feats"].abs().sum(-1) == 0)
    assert abs(int(zeroed.sum()) / int(m.sum()) - 0.8) < 5 * np.sqrt(0.16 / int(m.sum()))
    matched = b["matched_label"].float().mean().item()
    assert abs(matched - 0.5) < 5 * np.sqrt(0.25 / len(ds))
