"""PretrainDataset over a prepared corpus: examples, matching, QA labels, reproducibility, batch
layout for the model."""
import numpy as np
import pytest
import torch

from lxmert_fast.data.answers import AnswerTable
from lxmert_fast.data.masking import IGNORE_INDEX
from lxmert_fast.data.pretrain import PretrainDataset
from lxmert_fast.data.records import flatten, load_records


@pytest.fixture(scope="module")
def ds(small_world, small_features, small_tokenizer):
    return PretrainDataset(small_world.splits["pretrain_train"], small_features, small_tokenizer,
                           seed=11)


def _make(small_world, small_features, small_tokenizer, **kw):
    return PretrainDataset(small_world.splits["pretrain_train"], small_features, small_tokenizer,
                           **kw)


def test_one_example_per_image_sentence(ds, small_world):
    recs = load_records(small_world.splits["pretrain_train"])
    assert len(ds) == sum(len(s) for r in recs for s in r["sentf"].values())
    c = ds.corpus
    assert c.uid(0) == f"{recs[0]['img_id']}_mscoco_000"
    assert c.sentence(0) == recs[0]["sentf"]["mscoco"][0]
    examples = flatten(recs)                                  # the original's order and uids
    assert [c.uid(i) for i in range(len(ds))] == [e.uid for e in examples]
    assert [ds.images[p] for p in ds.image_of(range(len(ds)))] == [e.img_id for e in examples]
    assert [c.label(i) for i in range(len(ds))] == \
        [None if e.label is None else ds.answer_table.prune_label(e.label) for e in examples]


def test_batch_layout(ds, small_features):
    idx = list(range(0, len(ds), 7))[:24]
    b = ds.make_batch(idx)
    B, L, N = len(idx), 20, 36
    shapes = {"input_ids": (B, L), "token_type_ids": (B, L), "attention_mask": (B, L),
              "labels": (B, L), "visual_feats": (B, N, 2048), "visual_pos": (B, N, 4),
              "visual_attention_mask": (B, N), "matched_label": (B,), "ans": (B,)}
    for key, shape in shapes.items():
        assert tuple(b[key].shape) == shape, key
    for key in ("input_ids", "token_type_ids", "attention_mask", "labels", "matched_label", "ans"):
        assert b[key].dtype == torch.int64, key
    for key in ("visual_feats", "visual_pos", "visual_attention_mask"):
        assert b[key].dtype == torch.float32, key
    assert (b["input_ids"][:, 0] == ds.cls_id).all()
    lengths = b["attention_mask"].sum(1)
    assert (b["input_ids"][torch.arange(B), lengths - 1] == ds.sep_id).all()
    assert (b["input_ids"][b["attention_mask"] == 0] == 0).all()
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()
    g = small_features.gather([ds.images[p] for p in ds.image_of(idx)])
    assert torch.equal(b["visual_attention_mask"].bool(), g["box_mask"])
    assert torch.equal(b["visual_pos"], g["boxes"]) and float(b["visual_pos"].max()) <= 1.0
    obj, w = b["obj_labels"]["obj"]
    assert obj.dtype == torch.int64 and torch.equal(obj, g["objects_id"])
    assert torch.equal(w, g["objects_conf"])                 # "conf": the original weighting
    feats, mask = b["obj_labels"]["feat"]
    assert torch.equal(feats, g["features"])
    assert (mask[~g["box_mask"]] == 0).all() and (b["visual_feats"][~g["box_mask"]] == 0).all()


def test_object_corruption(ds, small_features):
    idx = list(range(0, len(ds), 3))
    b = ds.make_batch(idx)
    feats, mask = b["obj_labels"]["feat"]
    vf = b["visual_feats"]
    m = mask.bool()
    zeroed = m & (vf.abs().sum(-1) == 0)
    kept = m & (vf == feats).all(-1)
    replaced = m & ~zeroed & ~kept
    n = int(m.sum())
    assert 0.1 < n / int(b["visual_attention_mask"].sum()) < 0.2
    assert 0.7 < int(zeroed.sum()) / n < 0.9 and int(replaced.sum()) > 0
    assert torch.equal(vf[~m], feats[~m])
    pool = torch.cat([torch.from_numpy(np.array(small_features[i]["features"]))
                      for i in small_features.ids])
    for bi, slot in zip(*torch.nonzero(replaced, as_tuple=True)):
        img_id = ds.images[ds.image_of([idx[bi]])[0]]
        own = torch.from_numpy(np.array(small_features[img_id]["features"]))
        assert ((pool == vf[bi, slot]).all(-1)).any() and not ((own == vf[bi, slot]).all(-1)).any()


def test_matching_and_qa_labels(ds):
    idx = list(range(len(ds)))
    b = ds.make_batch(idx)
    matched = b["matched_label"].numpy()
    assert abs(matched.mean() - 0.5) < 5 * np.sqrt(0.25 / len(idx))
    meta = ds.batch_meta(idx)
    n_qa = 0
    for i, (m, a, info) in enumerate(zip(matched, b["ans"].tolist(), meta)):
        has_label = info["source"] in ("vqa", "gqa") and bool(info["label"])
        if m == 1 and has_label:
            assert ds.answer_table.id2ans(a) in info["label"]
            n_qa += 1
        else:
            assert a == IGNORE_INDEX
        t = ds.corpus.text_id[i]
        own = ds.corpus.tokens[ds.corpus.tok_offsets[t]:ds.corpus.tok_offsets[t + 1]]
        n = int(b["attention_mask"][i].sum()) - 2
        if m == 1:
            assert n == len(own)
    assert n_qa > 0.2 * len(idx)


def test_unmatched_sentence_comes_from_another_image(ds):
    idx = np.arange(len(ds))
    sent, matched = ds._sentences(idx)
    neg = matched == 0
    assert neg.any() and (sent[~neg] == idx[~neg]).all()
    assert (ds.image_of(sent[neg]) != ds.image_of(idx[neg])).all()
    assert len(np.unique(sent[neg])) > 0.5 * neg.sum()        # spread over the corpus


def _equal(a, b):
    for key in a:
        if isinstance(a[key], dict):
            for k in a[key]:
                assert all(torch.equal(x, y) for x, y in zip(a[key][k], b[key][k])), (key, k)
        else:
            assert torch.equal(a[key], b[key]), key


def test_deterministic_in_seed_epoch_index(ds, small_world, small_features, small_tokenizer):
    idx = [5, 17, 40, 3, 99]
    ds.set_epoch(2)
    a = ds.make_batch(idx)
    other = _make(small_world, small_features, small_tokenizer, seed=11)
    other.set_epoch(2)
    _equal(a, other.make_batch(idx))
    single = other.make_batch([17])                 # independent of the batch it is in
    assert torch.equal(single["input_ids"][0], a["input_ids"][1])
    assert torch.equal(single["visual_feats"][0], a["visual_feats"][1])
    other.set_epoch(3)
    assert not torch.equal(other.make_batch(idx)["labels"], a["labels"])
    ds.set_epoch(0)


def test_eval_mode_ignores_epoch(small_world, small_features, small_tokenizer):
    ev = PretrainDataset(small_world.splits["pretrain_valid"], small_features, small_tokenizer,
                         train=False)
    a = ev.make_batch(range(len(ev)))
    ev.set_epoch(7)
    _equal(a, ev.make_batch(range(len(ev))))


def test_tasks_switched_off(small_world, small_features, small_tokenizer):
    ds = _make(small_world, small_features, small_tokenizer, task_mask_lm=False,
               task_obj_predict=False, task_matched=False, task_qa=False)
    b = ds.make_batch(range(10))
    assert b["labels"] is None and b["obj_labels"] is None and b["matched_label"] is None
    assert b["ans"] is None
    qa = _make(small_world, small_features, small_tokenizer)
    qa.enable_qa(False)
    assert qa.make_batch(range(10))["ans"] is None
    qa.enable_qa(True)
    assert qa.make_batch(range(10))["ans"] is not None


@pytest.mark.parametrize("weighting", ["mask_conf", "mask"])
def test_obj_loss_weighting(small_world, small_features, small_tokenizer, weighting):
    ds = _make(small_world, small_features, small_tokenizer, obj_loss_weighting=weighting)
    b = ds.make_batch(range(30))
    _, mask = b["obj_labels"]["feat"]
    _, w = b["obj_labels"]["attr"]
    if weighting == "mask":
        assert torch.equal(w, mask)
    else:
        assert (w[mask == 0] == 0).all() and (w[mask == 1] > 0).all()


def test_answer_table_given_and_pruning(small_world, small_features, small_tokenizer):
    table = AnswerTable(["yes", "no"])
    ds = _make(small_world, small_features, small_tokenizer, answer_table=table, task_matched=False)
    ans = ds.make_batch(range(len(ds)))["ans"]
    assert set(ans.tolist()) <= {IGNORE_INDEX, 0, 1} and (ans >= 0).any()


def test_errors(small_world, small_features, small_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="obj_loss_weighting='bogus'"):
        _make(small_world, small_features, small_tokenizer, obj_loss_weighting="bogus")
    bad = tmp_path / "r.json"
    bad.write_text('[{"img_id": "nope", "sentf": {"mscoco": ["a dog"]}}]')
    with pytest.raises(KeyError, match="nope"):
        PretrainDataset(str(bad), small_features, small_tokenizer)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        PretrainDataset([str(bad), str(tmp_path / "missing.json")], small_features, small_tokenizer)
    with pytest.raises(IndexError, match="example index"):
        _make(small_world, small_features, small_tokenizer).make_batch([10 ** 6])


def test_batch_runs_through_the_model(ds, small_tokenizer):
    """The batch is the keyword arguments of LxmertForPreTraining (every loss finite)."""
    try:
        from lxmert_fast import LxmertConfig, LxmertForPreTraining
    except ImportError as e:
        pytest.skip(f"the model is not importable yet: {e}")
    cfg = LxmertConfig(vocab_size=small_tokenizer.get_vocab_size(), hidden_size=32,
                       num_attention_heads=2, intermediate_size=64, l_layers=1, x_layers=1,
                       r_layers=1, num_qa_labels=len(ds.answer_table), kernel_impl="torch")
    model = LxmertForPreTraining(cfg).eval()
    b = ds.make_batch(range(32))
    assert (b["ans"] >= 0).any() and (b["labels"] >= 0).any()
    with torch.no_grad():
        out = model(**b)
    assert torch.isfinite(out.loss)
    assert set(out.losses) == {"mlm", "matched", "obj", "attr", "feat", "qa"}


def test_feature_store_gives_the_same_batches(small_world, small_features, small_tokenizer):
    """ensure_world's C++ store (float16) and the TSV give the same batches up to fp16 rounding."""
    try:
        from lxmert_fast.features.store import FeatureStore  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the C++ feature store is not built: {e}")
    from lxmert_fast.data.world import open_world
    world = open_world(small_world.root, feature_store=True)
    assert world.feature_store is not None
    store = world.open_features()
    assert type(store).__name__ == "FeatureStore" and store.ids == small_features.ids
    a = _make(small_world, small_features, small_tokenizer, seed=4).make_batch(range(0, 90, 3))
    b = _make(small_world, store, small_tokenizer, seed=4).make_batch(range(0, 90, 3))
    for key in ("input_ids", "labels", "matched_label", "ans", "visual_attention_mask"):
        assert torch.equal(a[key], b[key]), key
    torch.testing.assert_close(b["visual_pos"], a["visual_pos"])
    torch.testing.assert_close(b["visual_feats"], a["visual_feats"].half().float())
    for key in ("obj", "attr"):
        assert torch.equal(a["obj_labels"][key][0], b["obj_labels"][key][0])
    assert torch.equal(a["obj_labels"]["feat"][1], b["obj_labels"]["feat"][1])


def test_image_derangement_moves_every_image(ds):
    perm = ds.image_derangement(0)
    assert sorted(perm) == list(range(len(ds.images)))
    assert (perm != np.arange(len(ds.images))).all()
    assert np.array_equal(perm, ds.image_derangement(0))          # fixed: reproducible
    assert not np.array_equal(perm, ds.image_derangement(1))


def test_shuffled_images_keep_text_and_labels(small_world, small_features, small_tokenizer):
    ev = _make(small_world, small_features, small_tokenizer, train=False, seed=2)
    idx = list(range(0, 60, 3))
    own, perm = ev.make_batch(idx), ev.image_derangement(0)
    shuf = ev.make_batch(idx, image_perm=perm)
    for key in ("input_ids", "attention_mask", "labels", "matched_label", "ans"):
        assert torch.equal(own[key], shuf[key]), key
    for b, i in enumerate(idx):                 # the image shown is the deranged one
        other = ev.images[perm[ev.image_of([i])[0]]]
        want = small_features.gather([small_features.index(other)], max_boxes=ev.max_boxes)
        assert torch.equal(shuf["obj_labels"]["obj"][0][b], want["objects_id"][0].long())
        assert torch.equal(shuf["visual_pos"][b], want["boxes"][0].float())
    assert not torch.equal(own["visual_pos"], shuf["visual_pos"])
    with pytest.raises(ValueError, match="image_perm has 3 entries"):
        ev.make_batch(idx, image_perm=np.arange(3))


def test_grounded_ids_and_rate(small_world, small_features, small_tokenizer):
    words = open(small_world.grounded_words).read().split()
    assert "dog" in words and "dogs" in words and "red" in words and "two" in words
    ds = _make(small_world, small_features, small_tokenizer, grounded_words=words,
               grounded_mask_rate=1.0, task_matched=False)
    vocab = small_tokenizer.get_vocab()
    assert vocab["red"] in ds.grounded_ids and vocab["the"] not in ds.grounded_ids
    b = ds.make_batch(range(40))
    grounded = torch.isin(torch.where(b["labels"] >= 0, b["labels"], b["input_ids"]),
                          torch.as_tensor(ds.grounded_ids)) & (b["attention_mask"] > 0)
    assert grounded.any() and (b["labels"][grounded] >= 0).all()   # rate 1: every one masked
    with pytest.raises(ValueError, match="needs grounded words"):
        _make(small_world, small_features, small_tokenizer, grounded_words=["zzqx##"],
              grounded_mask_rate=0.5)
