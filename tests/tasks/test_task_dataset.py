"""Task batches: original tokenisation conventions, features from the feature API, targets."""
import numpy as np
import pytest
import torch

from lxmert_fast.tasks.dataset import TaskDataError, TaskDataset
from lxmert_fast.tasks.records import parse_records
from lxmert_fast.tasks.registry import get_spec, load_task_data, world_paths


def _data(world, features, tokenizer, task, **kw):
    train, valid, a2l, l2a = world_paths(world, task)
    return load_task_data(task, train, valid, features, tokenizer, a2l, l2a, **kw)


def test_text_follows_original_convert_sents_to_features(task_world, task_features,
                                                         task_tokenizer):
    data = _data(task_world, task_features, task_tokenizer, "vqa", max_seq_len=6)
    ds = data.train
    batch = ds.make_batch([0, 3, 5])
    for row, i in enumerate([0, 3, 5]):
        ref = task_tokenizer.encode(ds.records[i].sent).ids  # [CLS] ... [SEP]
        ref = ref[:1] + ref[1:-1][:4] + ref[-1:]              # truncated to max_seq_len - 2
        n = len(ref)
        assert batch["input_ids"][row, :n].tolist() == ref
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["input_ids"][row, n:].eq(0).all()
    assert batch["token_type_ids"].eq(0).all()


def test_visual_inputs_and_targets(task_world, task_features, task_tokenizer):
    data = _data(task_world, task_features, task_tokenizer, "vqa")
    ds = data.train
    batch = ds.make_batch([2, 7])
    for row, i in enumerate([2, 7]):
        raw = task_features[ds.records[i].img_id]
        n = min(36, int(raw["num_boxes"]))
        feats = np.array(raw["features"][:n], dtype=np.float32)
        assert torch.allclose(batch["visual_feats"][row, :n], torch.from_numpy(feats))
        scale = np.array([raw["img_w"], raw["img_h"], raw["img_w"], raw["img_h"]], np.float32)
        boxes = torch.from_numpy(np.asarray(raw["boxes"][:n], np.float32) / scale)
        assert torch.allclose(batch["visual_pos"][row, :n], boxes, atol=1e-6)
        assert batch["visual_attention_mask"][row].sum() == n
        for ans, score in ds.records[i].label.items():
            assert batch["labels"][row, data.answers.label(ans)] == pytest.approx(score)
    assert batch["labels"].shape == (2, len(data.answers))
    ce = _data(task_world, task_features, task_tokenizer, "gqa", loss="ce").train
    labels = ce.make_batch([0, 1])["labels"]
    assert labels.dtype == torch.long
    assert [ce.answers.answer(int(l)) for l in labels] == [
        next(iter(ce.records[i].label)) for i in (0, 1)]


def test_nlvr2_pairs_keep_image_order(task_world, task_features, task_tokenizer):
    ds = _data(task_world, task_features, task_tokenizer, "nlvr2").valid
    batch = ds.make_batch([1, 0])
    assert batch["visual_feats"].shape[:3] == (2, 2, 36)
    for row, i in enumerate([1, 0]):
        rec = ds.records[i]
        for side, img in enumerate((rec.img0, rec.img1)):
            ref = task_features.gather([img])
            assert torch.equal(batch["visual_feats"][row, side], ref["features"][0].float())
        assert batch["labels"][row] == rec.label
    assert ds.prediction_items([1], [1]) == [(ds.records[1].qid, ds.records[1].identifier, 1)]
    assert get_spec("nlvr2").loss == "ce" and get_spec("gqa").lr == 1e-5


def test_bad_inputs_are_named(task_world, task_features, task_tokenizer):
    recs = parse_records("vqa", [{"question_id": 7, "img_id": "no_such_image", "sent": "q?",
                                  "label": {"a": 1.0}}])
    answers = _data(task_world, task_features, task_tokenizer, "vqa").answers
    with pytest.raises(TaskDataError, match=r"1 image\(s\).*'no_such_image'"):
        TaskDataset("vqa", recs, task_features, task_tokenizer, answers)
    with pytest.raises(TaskDataError, match="needs an answer table"):
        TaskDataset("vqa", recs, task_features, task_tokenizer)
    img = task_features.ids[0]
    unlabelled = parse_records("vqa", [{"question_id": 8, "img_id": img, "sent": "q?"}])
    ds = TaskDataset("vqa", unlabelled, task_features, task_tokenizer, answers)
    assert "labels" not in ds.make_batch([0], with_labels=False)
    with pytest.raises(TaskDataError, match="record 8 has no label"):
        ds.make_batch([0])
    with pytest.raises(IndexError, match="example index 3 out of range"):
        ds.make_batch([3])
    with pytest.raises(TaskDataError, match="got a QARecord"):
        TaskDataset("nlvr2", unlabelled, task_features, task_tokenizer)
    with pytest.raises(ValueError, match="loss='mse'"):
        TaskDataset("vqa", unlabelled, task_features, task_tokenizer, answers, loss="mse")


@pytest.mark.parametrize("task", ["vqa", "nlvr2"])
def test_shuffled_image_control_keeps_text_and_labels(task_world, task_features, task_tokenizer,
                                                      task):
    ds = _data(task_world, task_features, task_tokenizer, task).valid
    image_map = ds.image_derangement(0)
    assert sorted(image_map) == sorted(image_map.values())            # a permutation ...
    assert all(a != b for a, b in image_map.items())                  # ... moving every image
    assert image_map == ds.image_derangement(0)
    idx = [0, 1, 5]
    own, shuf = ds.make_batch(idx), ds.make_batch(idx, image_map=image_map)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(own[key], shuf[key])
    rec = ds.records[idx[1]]
    shown = image_map[rec.img0 if task == "nlvr2" else rec.img_id]
    want = task_features.gather([shown], max_boxes=ds.max_boxes)["features"][0].float()
    got = shuf["visual_feats"][1, 0] if task == "nlvr2" else shuf["visual_feats"][1]
    assert torch.equal(got, want)
