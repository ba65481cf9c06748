"""Task models from scratch, from a pretraining checkpoint (head rows by answer string), from
an original-repository .pth, and from a fine-tuned directory of the same task."""
import json

import pytest
import torch

from lxmert_fast import LxmertConfig, LxmertForPreTraining
from lxmert_fast.data.answers import AnswerTable
from lxmert_fast.tasks.modelinit import build_task_model, pretrain_answer_index

CFG = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1, x_layers=1,
           r_layers=1, num_qa_labels=5, num_object_labels=10, num_attr_labels=5,
           visual_feat_dim=16)
PRETRAIN_ANSWERS = ["yes", "no", "2", "red", "dog"]


@pytest.fixture
def pretrained(tmp_path):
    model = LxmertForPreTraining(LxmertConfig(**CFG))
    model.save_pretrained(str(tmp_path / "pre"))
    AnswerTable(PRETRAIN_ANSWERS).save(str(tmp_path / "pre" / "answer_table.json"))
    return model, str(tmp_path / "pre")


def test_vqa_from_pretrained_transfers_rows_by_normalised_answer(pretrained, tmp_path):
    pre, path = pretrained
    answers = ["Two", "cat", "yes", "grey"]  # "Two" -> "2" by the original's convert_ans
    model, info = build_task_model("vqa", LxmertConfig(), answers, from_pretrained=path)
    assert (info["answers_loaded"], info["answers_fresh"]) == (2, 2)
    assert model.config.num_qa_labels == 4 and model.config.qa_loss == "bce"
    w, pw = model.answer_head.logit_fc[3].weight, pre.answer_head.logit_fc[3].weight
    assert torch.equal(w[0], pw[2]) and torch.equal(w[2], pw[0])
    assert not any(torch.equal(w[1], row) for row in pw)  # fresh, not a pretrained row
    assert torch.equal(model.answer_head.logit_fc[0].weight, pre.answer_head.logit_fc[0].weight)
    assert torch.equal(model.lxmert.encoder.x_layers[0].visual_attention.att.query.weight,
                       pre.lxmert.encoder.x_layers[0].visual_attention.att.query.weight)
    model.save_pretrained(str(tmp_path / "vqa"))
    again, info = build_task_model("vqa", LxmertConfig(), answers, str(tmp_path / "vqa"),
                                   qa_loss="ce")
    assert info["init"] == "task_checkpoint" and again.config.qa_loss == "ce"
    assert torch.equal(again.answer_head.logit_fc[3].weight, w)
    with pytest.raises(ValueError, match="has 4 answers, the answer table has 2"):
        build_task_model("vqa", LxmertConfig(), ["a", "b"], str(tmp_path / "vqa"))


def test_nlvr2_and_scratch(pretrained):
    pre, path = pretrained
    model, info = build_task_model("nlvr2", LxmertConfig(), None, from_pretrained=path)
    assert info["head"] == "fresh" and info["encoder_tensors"] > 0
    assert torch.equal(model.lxmert.pooler.dense.weight, pre.lxmert.pooler.dense.weight)
    scratch, info = build_task_model("gqa", LxmertConfig(**CFG), ["a", "b", "c"])
    assert info == {"init": "scratch"} and scratch.config.num_qa_labels == 3
    assert not torch.equal(scratch.lxmert.pooler.dense.weight, pre.lxmert.pooler.dense.weight)


def test_original_repository_pth(pretrained, tmp_path):
    pre, _ = pretrained
    state = {("module.bert." + k[len("lxmert."):] if k.startswith("lxmert.") else "module." + k): v
             for k, v in pre.state_dict().items()}
    pth = tmp_path / "Epoch20_LXRT.pth"
    torch.save(state, pth)
    all_ans = tmp_path / "all_ans.json"
    all_ans.write_text(json.dumps([{"ans": a} for a in PRETRAIN_ANSWERS]))
    model, info = build_task_model("vqa", LxmertConfig(**CFG), ["dog", "zebra"], str(pth),
                                   pretrain_answers=str(all_ans))
    assert info["answers_loaded"] == 1
    assert torch.equal(model.answer_head.logit_fc[3].weight[0],
                       pre.answer_head.logit_fc[3].weight[4])
    assert torch.equal(model.lxmert.embeddings.word_embeddings.weight,
                       pre.lxmert.embeddings.word_embeddings.weight)
    with pytest.raises(FileNotFoundError, match="no such directory or file"):
        build_task_model("vqa", LxmertConfig(**CFG), ["a"], str(tmp_path / "missing.pth"))


def test_pretrain_answer_index_formats(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(["man", "2", "gray"]))
    index = pretrain_answer_index(str(path))
    assert [index(a) for a in ("The man", "two", "Grey.", "cat")] == [0, 1, 2, None]
