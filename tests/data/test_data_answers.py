"""AnswerTable: the original's answer normalisation, building, pruning and saving."""
import json

import pytest

from lxmert_fast.data.answers import AnswerTable, convert_ans


@pytest.mark.parametrize("raw,expected", [
    ("", ""), ("Yes", "yes"), ("yes.", "yes"), ("A dog", "dog"), ("an apple", "apple"),
    ("The Table.", "table"), ("a man", "man"), ("the woman", "woman"), ("two", "2"),
    ("Ten", "10"), ("grey", "gray"), ("the two", "2"), ("an", "an"), ("a", "a"),
    ("the a dog", "a dog"),            # one article of each kind, checked in a, an, the order
    ("a the dog", "dog"), ("eleven", "eleven"), ("dog..", "dog."), ("  dog", "  dog"),
])
def test_convert_ans(raw, expected):
    assert convert_ans(raw) == expected


def _rec(vqa, gqa=()):
    return {"img_id": "x", "sentf": {"vqa": ["q"] * len(vqa), "gqa": ["q"] * len(gqa)},
            "labelf": {"vqa": list(vqa), "gqa": list(gqa)}}


def test_build_counts_normalised_answers():
    recs = [_rec([{"Two": 1.0, "2": 0.3}, {"yes": 1.0}], [{"the cat": 1.0}]),
            _rec([{"yes.": 1.0}, {"Grey": 0.6}], [{"cat": 1.0}, {"yes": 1.0}])]
    table = AnswerTable.build(recs)
    assert table.all_answers() == ["yes", "cat", "2", "gray"]   # by count, ties by name
    assert table.ans2id("cat") == 1 and table.id2ans(3) == "gray" and len(table) == 4
    assert AnswerTable.build(recs, min_count=2).all_answers() == ["yes", "cat"]
    assert AnswerTable.build(recs, qa_sets=["VQA "]).all_answers() == ["yes", "2", "gray"]
    assert AnswerTable.build(recs, max_answers=1).all_answers() == ["yes"]


def test_prune_label_like_the_original():
    table = AnswerTable(["2", "dog", "gray"])
    assert table.prune_label({"two": 0.3, "2": 1.0, "Grey": 0.6, "cat": 1.0}) == \
        {"2": 0.3, "gray": 0.6}                 # later key overwrites, unknown answers dropped
    assert table.prune_label({"2": 1.0, "two": 0.3}) == {"2": 0.3}
    assert table.prune_label({"cat": 1.0}) == {}


def test_errors_name_the_value(tmp_path):
    table = AnswerTable(["yes", "no"])
    with pytest.raises(KeyError, match="'maybe'"):
        table.ans2id("maybe")
    with pytest.raises(IndexError, match="answer id 5"):
        table.id2ans(5)
    with pytest.raises(ValueError, match="duplicate"):
        AnswerTable(["yes", "yes"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nope": 1}))
    with pytest.raises(ValueError, match="bad.json: not an answer table"):
        AnswerTable.load(str(bad))


def test_save_load_roundtrip(tmp_path):
    table = AnswerTable(["yes", "no", "2"])
    path = table.save(str(tmp_path / "answers.json"))
    assert AnswerTable.load(path).all_answers() == ["yes", "no", "2"]
    plain = tmp_path / "label2ans.json"
    plain.write_text(json.dumps(["a", "b"]))
    assert AnswerTable.load(str(plain)).ans2id("b") == 1
