"""Prediction files: leaderboard formats, round-trips, clear errors on bad files."""
import json

import pytest

from lxmert_fast.tasks.predictions import (PredictionFileError, read_predictions,
                                           write_predictions)


def test_vqa_file_is_the_evalai_format_and_round_trips(tmp_path):
    items = [(262148000, "skateboard"), (262148001, "2"), (42, "yes")]
    path = write_predictions("vqa", str(tmp_path / "v.json"), items)
    rows = json.loads(open(path).read())
    assert rows[0] == {"question_id": 262148000, "answer": "skateboard"}
    assert all(isinstance(r["question_id"], int) for r in rows)
    assert read_predictions("vqa", path) == dict(items)


def test_gqa_file_round_trips(tmp_path):
    items = [("201307251", "no"), ("20968379", "left")]
    path = write_predictions("gqa", str(tmp_path / "g.json"), items)
    assert json.loads(open(path).read())[1] == {"questionId": "20968379", "prediction": "left"}
    assert read_predictions("gqa", path) == dict(items)


def test_nlvr2_csv_round_trips(tmp_path):
    items = [("test1-0-1-0", 1), ("test1-0-1-1", 0), ("test1-1-0-2", True)]
    path = write_predictions("nlvr2", str(tmp_path / "n.csv"), items)
    assert open(path).read() == "test1-0-1-0,True\ntest1-0-1-1,False\ntest1-1-0-2,True\n"
    assert read_predictions("nlvr2", path) == {"test1-0-1-0": 1, "test1-0-1-1": 0,
                                               "test1-1-0-2": 1}


def test_bad_predictions_are_rejected(tmp_path):
    with pytest.raises(PredictionFileError, match="duplicate id 1"):
        write_predictions("vqa", str(tmp_path / "x.json"), [(1, "a"), (1, "b")])
    with pytest.raises(PredictionFileError, match="prediction 3 is not an answer string"):
        write_predictions("gqa", str(tmp_path / "x.json"), [("q", 3)])
    with pytest.raises(PredictionFileError, match="identifier 'a,b'"):
        write_predictions("nlvr2", str(tmp_path / "x.csv"), [("a,b", 1)])
    with pytest.raises(PredictionFileError, match="prediction 2 must be 0/1"):
        write_predictions("nlvr2", str(tmp_path / "x.csv"), [("a", 2)])
    bad = tmp_path / "bad.csv"
    bad.write_text("dev-1,True\ndev-2,maybe\n")
    with pytest.raises(PredictionFileError, match="bad.csv: line 2 is 'dev-2,maybe'"):
        read_predictions("nlvr2", str(bad))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question_id": 1, "prediction": "a"}]))
    with pytest.raises(PredictionFileError, match="entry 0 .* keys 'question_id' and 'answer'"):
        read_predictions("vqa", str(bad))
    with pytest.raises(ValueError, match="unknown task 'vqa3'"):
        read_predictions("vqa3", str(bad))
    assert not list(tmp_path.glob("*.tmp*"))
