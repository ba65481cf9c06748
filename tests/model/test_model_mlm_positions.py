"""LxmertForPreTraining(mlm_positions="labeled"): the MLM head only on labeled tokens gives the
same losses and every gradient of the default ("all", transformers' behaviour) path, and the
logits of those tokens; bad values are named."""
import copy

import pytest
import torch

from lxmert_fast import LxmertConfig, LxmertForPreTraining
from lxmert_model_testutil import (SMALL, assert_mlm_rows_match_dense, inputs,  # noqa: F401
                                   one_thread, pretrain_labels, randomize_)

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = {**SMALL, "l_layers": 1, "r_layers": 1, "kernel_impl": "torch"}


def _pair():
    full = randomize_(LxmertForPreTraining(LxmertConfig(**CFG))).eval()
    return full, copy.deepcopy(full)


def test_labeled_positions_match_all_positions_losses_logits_and_grads():
    full, sparse = _pair()
    x, y = inputs(CFG), pretrain_labels(CFG)
    out_full = full(**x, **y)
    out_sparse = sparse(**x, **y, mlm_positions="labeled")
    n = int((y["labels"] != -100).sum())
    assert out_sparse.prediction_logits.shape == (n, CFG["vocab_size"])
    assert_mlm_rows_match_dense(sparse, out_sparse, full, out_full, y["labels"])


def test_no_labeled_token_gives_zero_mlm_loss_and_empty_logits():
    _, sparse = _pair()
    x = inputs(CFG)
    labels = torch.full(x["input_ids"].shape, -100)
    out = sparse(**x, labels=labels, mlm_positions="labeled")
    assert out.prediction_logits.shape == (0, CFG["vocab_size"])
    assert out.losses["mlm"].item() == 0.0


def test_without_labels_labeled_mode_returns_every_position():
    full, sparse = _pair()
    x = inputs(CFG)
    torch.testing.assert_close(sparse(**x, mlm_positions="labeled").prediction_logits,
                               full(**x).prediction_logits)


def test_bad_mlm_positions_and_label_shape_are_named():
    _, sparse = _pair()
    x, y = inputs(CFG), pretrain_labels(CFG)
    with pytest.raises(ValueError, match="mlm_positions='masked'"):
        sparse(**x, labels=y["labels"], mlm_positions="masked")
    with pytest.raises(ValueError, match=r"labels shape \(3, 6\)"):
        sparse(**x, labels=y["labels"][:, :6], mlm_positions="labeled")
