"""Fixtures of the importer tests: the batch an equivalent LXMERT TSV gives."""
import os

import numpy as np
import pytest
import torch

from lxmert_fast.features import FeatureStore, convert_tsv
from lxmert_fast.features.tsv import write_obj_tsv

BATCH_KEYS = ("features", "boxes", "box_mask", "objects_id", "objects_conf", "attrs_id",
              "attrs_conf", "num_boxes")


@pytest.fixture
def tsv_batch(tmp_path):
    """records -> ``gather`` of the store converted (float32) from a TSV of those records."""
    def make(records, max_boxes=36):
        tsv = tmp_path / "equivalent.tsv"
        write_obj_tsv(str(tsv), records)
        store = tmp_path / "equivalent.lxf"
        convert_tsv([tsv], store, dtype="float32")
        out = FeatureStore(store).gather([r["img_id"] for r in records], max_boxes=max_boxes)
        os.remove(store)
        return out
    return make


def _assert_batches_equal(got, want, keys=BATCH_KEYS, atol=0.0):
    for key in keys:
        g, w = got[key], want[key]
        if atol and g.dtype.is_floating_point:
            torch.testing.assert_close(g.float(), w.float(), atol=atol, rtol=0, msg=key)
        else:
            assert torch.equal(g, w), f"{key} differs: {g} vs {w}"


def _without_labels(records, objects=True, attrs=True):
    """The same records with object and/or attribute labels missing (id -100, confidence 0)."""
    out = []
    for r in records:
        n, r = r["num_boxes"], dict(r)
        for name, drop in (("objects", objects), ("attrs", attrs)):
            if drop:
                r[f"{name}_id"] = np.full(n, -100, np.int64)
                r[f"{name}_conf"] = np.zeros(n, np.float32)
        out.append(r)
    return out


@pytest.fixture
def batches_equal():
    """assert_batches_equal(got, want, keys=BATCH_KEYS, atol=0.0)."""
    return _assert_batches_equal


@pytest.fixture
def without_labels():
    """records -> records with missing object/attribute labels (what an import stores)."""
    return _without_labels
