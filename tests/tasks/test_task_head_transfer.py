"""QA-head initialisation from the pretraining head by answer string, on state_dict tensors."""
import pytest
import torch

from lxmert_fast.tasks.head_transfer import (HeadTransferError, answer_index,
                                             init_from_pretrained, transfer_answer_rows)

H = 6  # hidden of the last Linear's input in this toy (1536 in LXMERT)


def _head(prefix, rows, seed):
    g = torch.Generator().manual_seed(seed)
    return {prefix + "0.weight": torch.randn(H, 3, generator=g),
            prefix + "0.bias": torch.randn(H, generator=g),
            prefix + "2.weight": torch.randn(H, generator=g),
            prefix + "2.bias": torch.randn(H, generator=g),
            prefix + "3.weight": torch.randn(rows, H, generator=g),
            prefix + "3.bias": torch.randn(rows, generator=g)}


def _states(src_rows, dst_rows):
    enc = {"lxmert.embeddings.word_embeddings.weight": (10, 3), "lxmert.pooler.dense.bias": (3,)}
    src = {k: torch.randn(*s) for k, s in enc.items()}
    src.update(_head("answer_head.logit_fc.", src_rows, 1))
    dst = {k: torch.zeros(*s) for k, s in enc.items()}
    dst.update(_head("answer_head.logit_fc.", dst_rows, 2))
    return src, dst


def test_matching_rows_copied_others_fresh():
    src_answers = ["yes", "no", "red", "two", "dog"]
    dst_answers = ["dog", "purple", "yes", "Two"]
    src, dst = _states(len(src_answers), len(dst_answers))
    state, info = init_from_pretrained(dst, src, dst_answers,
                                       answer_index(src_answers, normalize=str.lower))
    w, b = state["answer_head.logit_fc.3.weight"], state["answer_head.logit_fc.3.bias"]
    src_w, src_b = src["answer_head.logit_fc.3.weight"], src["answer_head.logit_fc.3.bias"]
    for label, src_row in ((0, 4), (2, 0), (3, 3)):
        assert torch.equal(w[label], src_w[src_row]) and b[label] == src_b[src_row]
    assert torch.equal(w[1], dst["answer_head.logit_fc.3.weight"][1])  # fresh = target's init
    assert b[1] == dst["answer_head.logit_fc.3.bias"][1]
    for key in ("answer_head.logit_fc.0.weight", "answer_head.logit_fc.2.bias",
                "lxmert.pooler.dense.bias"):
        assert torch.equal(state[key], src[key])
    assert info == {"encoder_tensors": 2, "answers_loaded": 3, "answers_fresh": 1,
                    "head": "transferred"}
    assert not torch.equal(dst["lxmert.pooler.dense.bias"], state["lxmert.pooler.dense.bias"])


def test_zero_mode_and_no_answers_keep_head_fresh():
    src, dst = _states(3, 2)
    w, b, matched = transfer_answer_rows(src["answer_head.logit_fc.3.weight"],
                                         src["answer_head.logit_fc.3.bias"],
                                         answer_index(["a", "b", "c"]),
                                         dst["answer_head.logit_fc.3.weight"],
                                         dst["answer_head.logit_fc.3.bias"], ["c", "z"], "zero")
    assert matched == [0] and torch.equal(w[0], src["answer_head.logit_fc.3.weight"][2])
    assert torch.count_nonzero(w[1]) == 0 and b[1] == 0
    state, info = init_from_pretrained(dst, src)  # e.g. NLVR2 or no pretraining answer table
    assert info["head"] == "fresh"
    assert torch.equal(state["answer_head.logit_fc.0.weight"], dst["answer_head.logit_fc.0.weight"])


def test_shape_and_key_mismatches_are_errors():
    src, dst = _states(3, 2)
    missing = {k: v for k, v in src.items() if k != "lxmert.pooler.dense.bias"}
    with pytest.raises(HeadTransferError, match="lack 'lxmert.pooler.dense.bias'"):
        init_from_pretrained(dst, missing)
    wrong = dict(src, **{"lxmert.pooler.dense.bias": torch.zeros(4)})
    with pytest.raises(HeadTransferError, match=r"pretrained shape \(4,\) != target shape \(3,\)"):
        init_from_pretrained(dst, wrong)
    with pytest.raises(HeadTransferError, match="do not have 3 rows"):
        transfer_answer_rows(src["answer_head.logit_fc.3.weight"],
                             src["answer_head.logit_fc.3.bias"], answer_index([]),
                             dst["answer_head.logit_fc.3.weight"],
                             dst["answer_head.logit_fc.3.bias"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="unmatched='drop'"):
        transfer_answer_rows(torch.zeros(1, H), torch.zeros(1), answer_index([]),
                             torch.zeros(1, H), torch.zeros(1), ["a"], "drop")
