"""Record readers and answer tables: the original formats load; bad records fail clearly."""
import json

import pytest
import torch

from lxmert_fast.tasks.answers import AnswerLabels, AnswerTableError
from lxmert_fast.tasks.records import (Nlvr2Record, QARecord, RecordError, image_ids,
                                       load_records, parse_records)

VQA = {"question_id": 262148000, "img_id": "COCO_val2014_000000262148", "sent": "Where is he?",
       "label": {"skateboard": 1.0, "ramp": 0.3}, "answer_type": "other",
       "question_type": "where is the"}
GQA = {"question_id": "201307251", "img_id": "n161313", "sent": "Is it red?", "label": {"no": 1.0}}
NLVR2 = {"identifier": "dev-850-0-0", "img0": "dev-850-0-img0", "img1": "dev-850-0-img1",
         "sent": "There are two dogs.", "label": 1, "uid": "nlvr2_dev_0"}


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def test_original_formats_load(tmp_path):
    vqa = load_records("vqa", _write(tmp_path, "v.json", [VQA]))[0]
    assert vqa == QARecord(262148000, VQA["img_id"], VQA["sent"], VQA["label"], "other",
                           "where is the")
    gqa = load_records("gqa", [_write(tmp_path, "g.json", [GQA])])[0]
    assert gqa.qid == "201307251" and gqa.label == {"no": 1.0}
    nlvr = load_records("nlvr2", _write(tmp_path, "n.json", [NLVR2]))[0]
    assert nlvr == Nlvr2Record("nlvr2_dev_0", "dev-850-0-0", "dev-850-0-img0",
                               "dev-850-0-img1", "There are two dogs.", 1)
    assert image_ids([vqa, nlvr, gqa]) == [VQA["img_id"], NLVR2["img0"], NLVR2["img1"],
                                           GQA["img_id"]]
    test_style = dict(VQA)
    del test_style["label"]
    assert parse_records("vqa", [test_style])[0].label is None


@pytest.mark.parametrize("task,record,change,message", [
    ("vqa", VQA, {"sent": None}, "field 'sent'=None has type NoneType"),
    ("vqa", VQA, {"label": {"cat": 1.5}}, r"label\['cat'\]=1.5 is not a score"),
    ("vqa", VQA, {"label": ["cat"]}, "must be an object"),
    ("vqa", VQA, {"question_id": 1.5}, "field 'question_id'=1.5 has type float"),
    ("gqa", GQA, {"label": {"yes": 1.0, "no": 1.0}}, "exactly one answer"),
    ("gqa", GQA, {"sent": "  "}, "field 'sent' is empty"),
    ("nlvr2", NLVR2, {"label": 2}, "field 'label'=2 must be 0 or 1"),
    ("nlvr2", NLVR2, {"label": True}, "must be 0 or 1"),
])
def test_bad_records_name_file_record_and_field(tmp_path, task, record, change, message):
    bad = dict(record, **change)
    path = _write(tmp_path, "bad.json", [bad])
    with pytest.raises(RecordError, match=message) as err:
        load_records(task, path)
    assert "bad.json" in str(err.value)


def test_missing_field_duplicates_and_wrong_container(tmp_path):
    no_img = {k: v for k, v in VQA.items() if k != "img_id"}
    with pytest.raises(RecordError, match="record 0, question_id 262148000: missing field "
                                          "'img_id'"):
        parse_records("vqa", [no_img], "x.json")
    with pytest.raises(RecordError, match="record 1.*duplicate id 262148000 .first at record 0"):
        parse_records("vqa", [VQA, VQA])
    with pytest.raises(RecordError, match="expected a JSON list"):
        load_records("gqa", _write(tmp_path, "d.json", {"a": 1}))
    with pytest.raises(RecordError, match="already read from an earlier file"):
        load_records("gqa", [_write(tmp_path, "a.json", [GQA]), _write(tmp_path, "b.json", [GQA])])
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(RecordError, match="broken.json: not valid JSON"):
        load_records("vqa", str(tmp_path / "broken.json"))
    with pytest.raises(ValueError, match="unknown task 'vqa2'"):
        parse_records("vqa2", [])


def test_answer_tables_round_trip_and_targets(tmp_path):
    table = AnswerLabels(["yes", "no", "2", "red"])
    paths = table.save(str(tmp_path), prefix="trainval_")
    loaded = AnswerLabels.load(paths["ans2label"], paths["label2ans"])
    assert loaded.label2ans == table.label2ans and loaded.label("red") == 3
    assert loaded.label("blue") is None and loaded.answer(1) == "no"
    records = parse_records("vqa", [
        dict(VQA, question_id=1, label={"no": 0.3, "red": 0.9, "unknown": 1.0}),
        dict(VQA, question_id=2, label={"unknown": 1.0}),
        dict(VQA, question_id=3, label={"yes": 0.6, "2": 0.6})])
    soft = loaded.soft_targets(records)
    expected = torch.tensor([[0, 0.3, 0, 0.9], [0, 0, 0, 0], [0.6, 0, 0.6, 0]])
    assert torch.allclose(soft, expected)
    assert loaded.hard_targets(records).tolist() == [3, -100, 0]


def test_inconsistent_answer_tables_are_rejected(tmp_path):
    a2l = _write(tmp_path, "a2l.json", {"yes": 0, "no": 0})
    with pytest.raises(AnswerTableError, match="label 0 used by both 'yes' and 'no'"):
        AnswerLabels.load(a2l)
    a2l = _write(tmp_path, "a2l.json", {"yes": 0, "no": 5})
    with pytest.raises(AnswerTableError, match="'no' has label 5"):
        AnswerLabels.load(a2l)
    a2l = _write(tmp_path, "a2l.json", {"yes": 0, "no": 1})
    l2a = _write(tmp_path, "l2a.json", ["no", "yes"])
    with pytest.raises(AnswerTableError, match="label 0: .* says 'yes', .* says 'no'"):
        AnswerLabels.load(a2l, l2a)
    with pytest.raises(AnswerTableError, match="'yes' appears at labels 0 and 1"):
        AnswerLabels(["yes", "yes"])
    with pytest.raises(IndexError, match="label 7 out of range"):
        AnswerLabels(["yes"]).answer(7)
