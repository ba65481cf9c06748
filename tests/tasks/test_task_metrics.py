"""Task metrics against a straightforward reference computation on fixed predictions."""
import pytest

from lxmert_fast.tasks.metrics import (ScoreSum, example_score, gqa_score, metrics_dict,
                                       nlvr2_score, score_predictions, vqa_score)
from lxmert_fast.tasks.records import parse_records


def _reference_vqa(answers_by_humans, prediction):
    """Official VQA 2.0 accuracy from the raw 10 human answers: the mean over the 10 subsets of
    9 annotators of min(1, #matches / 3)."""
    accs = []
    for left_out in range(len(answers_by_humans)):
        others = answers_by_humans[:left_out] + answers_by_humans[left_out + 1:]
        accs.append(min(1.0, sum(a == prediction for a in others) / 3))
    return sum(accs) / len(accs)


def _original_score(count):
    """The original LXMERT preprocessing's label score for an answer ``count`` humans gave."""
    return {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(count, 1.0)


@pytest.mark.parametrize("count,expected", [(1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_accuracy_matches_official_definition(count, expected):
    humans = ["cat"] * count + [f"other{i}" for i in range(10 - count)]
    label = {"cat": _original_score(count)}
    assert vqa_score("cat", label) == pytest.approx(expected)
    # the label scores are the official accuracy to the 0.1 the original rounds to
    assert abs(vqa_score("cat", label) - _reference_vqa(humans, "cat")) < 0.04


def test_vqa_edge_cases():
    assert vqa_score("dog", {"cat": 1.0}) == 0.0            # answer not among the labels
    assert vqa_score("cat", {}) == 0.0                        # no human answer in the table
    assert vqa_score("cat", None) == 0.0                      # unlabelled record
    assert vqa_score("never-seen-answer", {"a": 0.3, "b": 0.6}) == 0.0
    assert vqa_score("b", {"a": 0.3, "b": 0.6}) == pytest.approx(0.6)


def _vqa_records():
    items = [
        {"question_id": 1, "img_id": "i1", "sent": "q1", "label": {"cat": 1.0, "dog": 0.3}},
        {"question_id": 2, "img_id": "i1", "sent": "q2", "label": {"red": 0.6}},
        {"question_id": 3, "img_id": "i2", "sent": "q3", "label": {}},
        {"question_id": 4, "img_id": "i2", "sent": "q4", "label": {"two": 0.9, "three": 0.3}},
        {"question_id": 5, "img_id": "i3", "sent": "q5"},  # test-style: not scored
    ]
    return parse_records("vqa", items)


def test_vqa_split_accuracy_equals_reference():
    records = _vqa_records()
    preds = {1: "dog", 2: "red", 3: "cat", 4: "unknown-answer", 5: "x"}
    total = score_predictions("vqa", records, preds)
    reference = [0.3, 0.6, 0.0, 0.0]  # by hand from the labels above
    assert total.count == 4
    assert total.accuracy == pytest.approx(sum(reference) / 4)
    m = metrics_dict("vqa", "valid", total, len(preds))
    assert m["metric"] == "vqa_soft_accuracy" and m["num_scored"] == 4
    assert m["num_predictions"] == 5


def test_missing_prediction_is_an_error():
    with pytest.raises(KeyError, match="record id 4"):
        score_predictions("vqa", _vqa_records(), {1: "a", 2: "b", 3: "c"})


def test_gqa_exact_match_and_nlvr2_accuracy():
    gqa = parse_records("gqa", [
        {"question_id": "a1", "img_id": "x", "sent": "s", "label": {"yes": 1.0}},
        {"question_id": "a2", "img_id": "x", "sent": "s", "label": "left"},
        {"question_id": "a3", "img_id": "y", "sent": "s", "label": {"no": 1.0}},
    ])
    preds = {"a1": "yes", "a2": "right", "a3": "no"}
    assert score_predictions("gqa", gqa, preds).accuracy == pytest.approx(2 / 3)
    assert gqa_score("Yes", {"yes": 1.0}) == 0.0  # exact: no normalisation at scoring time
    nlvr = parse_records("nlvr2", [
        {"identifier": f"dev-{i}", "img0": "a", "img1": "b", "sent": "s", "label": i % 2,
         "uid": f"u{i}"} for i in range(7)])
    preds = {f"u{i}": (1 if i < 4 else 0) for i in range(7)}
    expected = sum(preds[f"u{i}"] == i % 2 for i in range(7)) / 7
    assert score_predictions("nlvr2", nlvr, preds).accuracy == pytest.approx(expected)
    assert nlvr2_score(True, 1) == 1.0 and nlvr2_score(0, None) == 0.0


def test_score_sum_without_process_group_and_unknown_task():
    total = ScoreSum()
    assert total.accuracy is None
    total.add(0.3)
    total.add(1.0)
    reduced = total.all_reduce()
    assert (reduced.score, reduced.count) == (pytest.approx(1.3), 2)
    with pytest.raises(ValueError, match="'okvqa'"):
        example_score("okvqa", None, "x")
