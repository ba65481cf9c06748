"""The synthetic world: determinism, exact LXMERT formats, held-out split, truth of its sentences,
learnability of its features, atomic/concurrent generation and the CLI."""
import filecmp
import json
import multiprocessing as mp
import os
import re

import numpy as np
import pytest

from lxmert_fast.data import lexicon as lx
from lxmert_fast.data.records import validate_record
from lxmert_fast.data.world import (COMPLETE, FEATURES_TSV, SPLIT_NAMES, TABLE_NAMES,
                                    WORLD_VERSION, World, ensure_world, generate_world, main,
                                    num_valid_images, scene_spec, spec_text)
from lxmert_fast.features.tsv import FIELDNAMES, load_obj_tsv

ID2CLASS = {v: k for k, v in lx.OBJECT_IDS.items()}
ID2ATTR = {v: k for k, v in lx.ATTR_IDS.items()}


def _load(world: World, name: str):
    with open(world.splits[name] if name in world.splits else getattr(world, name)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def images(small_world):
    return {r["img_id"]: r for r in load_obj_tsv(small_world.features_tsv)}


def test_deterministic_in_seed(tmp_path):
    a = generate_world(str(tmp_path / "a"), seed=5, num_images=24)
    b = generate_world(str(tmp_path / "b"), seed=5, num_images=24)
    c = generate_world(str(tmp_path / "c"), seed=6, num_images=24)
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b)) and COMPLETE in names and FEATURES_TSV in names
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == []
    assert not filecmp.cmp(os.path.join(a, FEATURES_TSV), os.path.join(c, FEATURES_TSV),
                           shallow=False)


def test_tsv_format(small_world, images):
    n = small_world.meta["num_images"]
    assert len(images) == n
    for rec in images.values():
        assert list(rec) == FIELDNAMES
        k = rec["num_boxes"]
        assert 3 <= k <= 36
        assert rec["features"].shape == (k, 2048) and rec["features"].dtype == np.float32
        assert rec["boxes"].shape == (k, 4) and rec["objects_id"].dtype == np.int64
        assert (rec["objects_id"] < lx.NUM_OBJECT_LABELS).all()
        assert (rec["attrs_id"] < lx.NUM_ATTR_LABELS).all()
        assert ((rec["objects_conf"] > 0) & (rec["objects_conf"] <= 1)).all()
        b = rec["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= rec["img_w"]).all() and (b[:, 0] < b[:, 2]).all()
        assert (b[:, 1] >= 0).all() and (b[:, 3] <= rec["img_h"]).all() and (b[:, 1] < b[:, 3]).all()


def test_pretrain_records_schema(small_world, images):
    for name in ("pretrain_train", "pretrain_valid"):
        recs = _load(small_world, name)
        for i, rec in enumerate(recs):
            validate_record(rec, name, i)
            assert set(rec) == {"img_id", "sentf", "labelf"}
            assert set(rec["sentf"]) == {"mscoco", "vg", "vqa", "gqa"}
            assert set(rec["labelf"]) == {"vqa", "gqa"}
            assert rec["img_id"] in images
            for label in rec["labelf"]["vqa"]:
                assert set(label.values()) <= {0.3, 0.6, 0.9, 1.0}


def test_finetune_formats(small_world, images):
    for split in ("train", "valid"):
        for q in _load(small_world, f"vqa_{split}"):
            assert set(q) == {"answer_type", "img_id", "label", "question_id", "question_type",
                              "sent"}
            assert isinstance(q["question_id"], int) and q["img_id"] in images
            assert q["answer_type"] in ("yes/no", "number", "other")
            assert max(q["label"].values()) == 1.0
        for q in _load(small_world, f"gqa_{split}"):
            assert set(q) == {"img_id", "label", "question_id", "sent"}
            assert isinstance(q["question_id"], str) and list(q["label"].values()) == [1.0]
        nl = _load(small_world, f"nlvr2_{split}")
        for ex in nl:
            assert set(ex) == {"identifier", "img0", "img1", "label", "sent", "uid"}
            assert ex["label"] in (0, 1) and ex["img0"] != ex["img1"]
            assert ex["img0"] in images and ex["img1"] in images
        assert 0.3 < np.mean([ex["label"] for ex in nl]) < 0.7
    for task in ("vqa", "gqa"):
        ans2label = _load(small_world, f"{task}_ans2label")
        label2ans = _load(small_world, f"{task}_label2ans")
        assert [label2ans[i] for i in ans2label.values()] == list(ans2label)
        answers = {a for s in ("train", "valid") for q in _load(small_world, f"{task}_{s}")
                   for a in q["label"]}
        assert answers == set(label2ans)


def test_held_out_images_disjoint(small_world):
    n_valid = num_valid_images(small_world.meta["num_images"])
    for task, key in (("pretrain", "img_id"), ("vqa", "img_id"), ("gqa", "img_id")):
        train = {r[key] for r in _load(small_world, f"{task}_train")}
        valid = {r[key] for r in _load(small_world, f"{task}_valid")}
        assert train and valid and not train & valid
    valid = {r["img_id"] for r in _load(small_world, "pretrain_valid")}
    assert len(valid) == n_valid
    for ex in _load(small_world, "nlvr2_train"):
        assert ex["img0"] not in valid and ex["img1"] not in valid
    for ex in _load(small_world, "nlvr2_valid"):
        assert ex["img0"] in valid and ex["img1"] in valid


def _classes(rec):
    return [ID2CLASS[int(i)] for i in rec["objects_id"]]


def test_answers_are_true_of_the_image(small_world, images):
    checked = 0
    for q in _load(small_world, "vqa_train"):
        rec, top = images[q["img_id"]], max(q["label"], key=q["label"].get)
        classes = _classes(rec)
        m = re.fullmatch(r"how many (\w+) are there\?", q["sent"])
        if m:
            cls = [c for c in lx.CLASSES if lx.plural(c) == m.group(1)][0]
            assert top == str(classes.count(cls)), q
            checked += 1
        m = re.fullmatch(r"what color is the (\w+)\?", q["sent"])
        if m:
            assert classes.count(m.group(1)) == 1
            k = classes.index(m.group(1))
            assert top == ID2ATTR[int(rec["attrs_id"][k])], q
            checked += 1
    assert checked > 10


def test_nlvr2_statements_are_labelled_by_truth(small_world, images):
    checked = 0
    for split in ("train", "valid"):
        for ex in _load(small_world, f"nlvr2_{split}"):
            left, right = _classes(images[ex["img0"]]), _classes(images[ex["img1"]])
            m = re.fullmatch(r"there (?:are|is) (\w+) (\w+) in total", ex["sent"])
            if m:
                n = lx.NUMBER_WORDS.index(m.group(1)) if m.group(1) in lx.NUMBER_WORDS else int(m.group(1))
                cls = [c for c in lx.CLASSES if m.group(2) in (c, lx.plural(c))][0]
                assert ex["label"] == int(left.count(cls) + right.count(cls) == n), ex
                checked += 1
            m = re.fullmatch(r"both images contain an? (\w+)", ex["sent"])
            if m:
                assert ex["label"] == int(m.group(1) in left and m.group(1) in right), ex
                checked += 1
    assert checked > 5


def test_features_carry_class_and_colour(small_world, images):
    """A nearest-centroid probe fit on train images recovers held-out objects' class and colour."""
    valid = {r["img_id"] for r in _load(small_world, "pretrain_valid")}
    def stack(ids, key):
        return (np.concatenate([images[i]["features"] for i in ids]),
                np.concatenate([images[i][key] for i in ids]))
    train_ids = [i for i in images if i not in valid]
    for key, floor in (("objects_id", 0.95), ("attrs_id", 0.6)):
        x, y = stack(train_ids, key)
        labels = np.unique(y)
        centroids = np.stack([x[y == c].mean(0) for c in labels])
        xv, yv = stack(sorted(valid), key)
        pred = labels[np.argmin(((xv[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
        chance = np.bincount(np.searchsorted(labels, yv)).max() / len(yv)
        acc = (pred == yv).mean()
        assert acc > floor and acc > 3 * chance, (key, acc, chance)


def _generate(root):
    generate_world(root, seed=1, num_images=20)


def test_concurrent_generation_is_safe(tmp_path):
    root = str(tmp_path / "w")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_generate, args=(root,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert os.path.isfile(os.path.join(root, COMPLETE))
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    ref = generate_world(str(tmp_path / "ref"), seed=1, num_images=20)
    assert filecmp.cmp(os.path.join(root, FEATURES_TSV), os.path.join(ref, FEATURES_TSV),
                       shallow=False)


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no complete synthetic world"):
        generate_world(str(tmp_path / "w"), seed=0, num_images=20)


def test_ensure_world_cache_env_and_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("LXMERT_FAST_CACHE", str(tmp_path))
    world = ensure_world(seed=2, num_images=20, feature_store=False)
    assert world.root == os.path.join(str(tmp_path), f"world-{WORLD_VERSION}-2-20")
    assert set(world.splits) == set(SPLIT_NAMES)
    for path in list(world.splits.values()) + [getattr(world, t) for t in TABLE_NAMES]:
        assert os.path.isfile(path)
    assert world.feature_store is None and os.path.isfile(world.vocab)
    feats = world.open_features()
    assert len(feats) == 20 and type(feats).__name__ == "TsvFeatures"


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--num_images", "20", "--seed", "4",
          "--sentences", "vqa=5,mscoco=1", "--no_feature_store"])
    out = json.loads(capsys.readouterr().out)
    assert out["root"] == str(tmp_path / "cli") and out["sizes"]["pretrain_valid"] == 2
    assert out["sizes"]["vqa_train"] == 5 * 18
    with open(os.path.join(out["root"], "pretrain_train.json")) as f:
        rec = json.load(f)[0]
    assert [len(rec["sentf"][k]) for k in ("mscoco", "vg", "vqa", "gqa")] == [1, 2, 5, 3]
    with pytest.raises(ValueError, match="'coco=1'"):
        main(["--out", str(tmp_path / "x"), "--sentences", "coco=1"])
    with pytest.raises(ValueError, match="num_images=3"):
        generate_world(str(tmp_path / "tiny"), num_images=3)


def test_scene_spec_shapes_the_world(tmp_path, monkeypatch):
    monkeypatch.setenv("LXMERT_FAST_CACHE", str(tmp_path))
    spec = scene_spec("classes=5,per_image=1-2,objects=3-6")
    world = ensure_world(seed=1, num_images=40, feature_store=False, spec=spec)
    assert world.root.endswith("-c5-p1-2-o3-6") and world.meta["scenes"] == spec_text(spec)
    allowed = {lx.OBJECT_IDS[c] for c in lx.CLASSES[:5]}
    for rec in load_obj_tsv(world.features_tsv):
        assert 3 <= rec["num_boxes"] <= 6
        assert 1 <= len(set(rec["objects_id"].tolist())) <= 2
        assert set(rec["objects_id"].tolist()) <= allowed
    for rec in _load(world, "pretrain_train"):      # questions name the world's classes only
        for sent in rec["sentf"]["vqa"]:
            m = re.match(r"is there an? (\w+) in the picture\?", sent)
            assert m is None or m.group(1) in lx.CLASSES[:5]
    words = open(world.grounded_words).read().split()
    assert "dog" in words and "dogs" in words and "chair" not in words and "seven" in words


@pytest.mark.parametrize("text, match", [("classes=1", "num_classes=1"),
                                         ("per_image=3-2", "classes_per_image"),
                                         ("objects=1-40", "objects_per_image"),
                                         ("colours=3", "'colours=3'"),
                                         ("classes=4-5", "'classes=4-5'")])
def test_scene_spec_errors_name_the_value(text, match):
    with pytest.raises(ValueError, match=match):
        scene_spec(text)
