"""Fine-tuning splits prepared as arrays (tasks/prepared_records.py): the records read back are
the records of the files, batches and prediction items equal the list-of-records path for every
task and loss, and the split holds no Python record per question."""
import numpy as np
import pytest
import torch

from lxmert_fast.data.prepared import PreparedCorpusError
from lxmert_fast.tasks.answers import AnswerLabels
from lxmert_fast.tasks.dataset import TaskDataError, TaskDataset
from lxmert_fast.tasks.prepared_records import PreparedRecords, ensure_task_records
from lxmert_fast.tasks.records import image_ids, load_records
from lxmert_fast.tasks.registry import world_paths


@pytest.mark.parametrize("task,loss", [("vqa", "bce"), ("vqa", "ce"), ("gqa", "bce"),
                                       ("nlvr2", "ce")])
def test_prepared_split_equals_the_records(task_world, task_features, task_tokenizer, tmp_path,
                                           task, loss):
    train, _, a2l, l2a = world_paths(task_world, task)
    records = load_records(task, train)
    prepared = ensure_task_records(task, train, task_tokenizer, 20, cache_dir=str(tmp_path))
    assert isinstance(prepared, PreparedRecords) and len(prepared) == len(records)
    assert list(prepared) == records                      # every field, ids' types included
    assert prepared.image_ids() == image_ids(records)
    answers = None if task == "nlvr2" else AnswerLabels.load(a2l, l2a)
    kw = dict(features=task_features, tokenizer=task_tokenizer, answers=answers, loss=loss)
    a, b = TaskDataset(task, records, **kw), TaskDataset(task, prepared, **kw)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.integers(0, len(records), 17).tolist()
        x, y = a.make_batch(idx), b.make_batch(idx)
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k
        assert a.prediction_items(idx, [0] * 17) == b.prediction_items(idx, [0] * 17)
    assert a.image_derangement(3) == b.image_derangement(3)


def test_prepared_split_is_checked(task_world, task_features, task_tokenizer, tmp_path):
    train, _, a2l, l2a = world_paths(task_world, "vqa")
    prepared = ensure_task_records("vqa", train, task_tokenizer, 20, cache_dir=str(tmp_path))
    answers = AnswerLabels.load(a2l, l2a)
    with pytest.raises(TaskDataError, match="prepared vqa split"):
        TaskDataset("gqa", prepared, task_features, task_tokenizer, answers)
    with pytest.raises(TaskDataError, match="prepared for max_seq_len 20, not 12"):
        TaskDataset("vqa", prepared, task_features, task_tokenizer, answers, max_seq_len=12)
    with open(f"{prepared.corpus.path}/qid.bin", "r+b") as f:
        f.truncate(5)
    from lxmert_fast.data.prepared import open_prepared
    with pytest.raises(PreparedCorpusError, match=r"qid\.bin: 5 bytes"):
        open_prepared(prepared.corpus.path)
    again = ensure_task_records("vqa", train, task_tokenizer, 20, cache_dir=str(tmp_path))
    assert len(again) == len(prepared)                   # rebuilt in the cache


def test_a_malformed_record_is_named(task_tokenizer, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question_id": 7, "img_id": "a", "sent": 3, "label": {}}]')
    with pytest.raises(ValueError, match=r"bad\.json.*record 0.*question_id 7.*sent"):
        ensure_task_records("vqa", [str(bad)], task_tokenizer, 20, cache_dir=str(tmp_path))
