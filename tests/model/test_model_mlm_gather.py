"""The fixed-capacity MLM gather (heads.mlm_gather_index + mlm_positions=<positions>): static
shapes, and the same MLM loss and every gradient as the dense head ("all", transformers') for
every batch: a usual one, one with more masked tokens than the first capacity bucket (the
capacity grows, nothing is dropped), one with every token masked and one with none."""
import copy

import pytest
import torch

from lxmert_fast import LxmertConfig, LxmertForPreTraining
from lxmert_fast.heads import mlm_capacity_granule, mlm_gather_index
from lxmert_model_testutil import (SMALL, assert_mlm_rows_match_dense, inputs,  # noqa: F401
                                   one_thread, pretrain_labels, randomize_)

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = {**SMALL, "l_layers": 1, "r_layers": 1, "kernel_impl": "torch"}
B, L = 3, 7


def _labels(rate: float, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(1, CFG["vocab_size"], (B, L), generator=gen)
    labels[torch.rand(B, L, generator=gen) >= rate] = -100
    return labels


def test_index_holds_every_labeled_token_first_in_row_major_order():
    labels = _labels(0.3)
    index = mlm_gather_index(labels, granule=4)
    flat = labels.reshape(-1)
    labeled = torch.nonzero(flat != -100).squeeze(1)
    n = labeled.numel()
    assert index.dtype == torch.int64 and index.shape[0] % 4 == 0 and index.shape[0] >= n
    assert index.shape[0] - n < 4                      # the smallest bucket that fits
    assert torch.equal(index[:n], labeled)
    assert bool((flat[index[n:]] == -100).all())       # padding rows are ignored positions
    assert len(set(index.tolist())) == index.numel()


def test_capacity_grows_by_buckets_and_never_drops():
    granule = 4
    for rate, seed in ((0.1, 1), (0.5, 2), (0.9, 3), (1.1, 4)):
        labels = _labels(rate, seed)
        n = int((labels != -100).sum())
        cap = mlm_gather_index(labels, granule).shape[0]
        assert cap == min(B * L, max(1, -(-n // granule)) * granule), (rate, n, cap)
        assert cap >= n
    assert mlm_capacity_granule(32 * 20) == 80
    assert mlm_capacity_granule(5) == 5


def _check_same_as_dense(labels):
    full = randomize_(LxmertForPreTraining(LxmertConfig(**CFG))).eval()
    gathered = copy.deepcopy(full)
    x, y = inputs(CFG), pretrain_labels(CFG)
    y["labels"] = labels
    index = mlm_gather_index(labels, granule=4)
    out_full = full(**x, **y)
    out_gather = gathered(**x, **y, mlm_positions=index)
    assert out_gather.prediction_logits.shape == (index.shape[0], CFG["vocab_size"])
    n = assert_mlm_rows_match_dense(gathered, out_gather, full, out_full, labels)
    return index.shape[0], n


@pytest.mark.parametrize("rate", [0.15, 0.6, 1.1, 0.0])
def test_gathered_head_gives_the_dense_loss_and_every_gradient(rate):
    capacity, n = _check_same_as_dense(_labels(rate))
    if rate == 0.6:
        assert n > 4 and capacity > 4          # overflowed the first bucket: grown, not dropped
    if rate == 1.1:
        assert capacity == n == B * L          # every token masked: the whole text
    if rate == 0.0:
        assert n == 0 and capacity == 4


def test_bad_positions_are_named():
    model = LxmertForPreTraining(LxmertConfig(**CFG))
    x, y = inputs(CFG), pretrain_labels(CFG)
    with pytest.raises(ValueError, match="1-D int64"):
        model(**x, **y, mlm_positions=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"22 positions for a text of 21 tokens"):
        model(**x, **y, mlm_positions=torch.zeros(22, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels shape \(7,\)"):
        mlm_gather_index(torch.zeros(7, dtype=torch.int64))
    with pytest.raises(ValueError, match="granule=0"):
        mlm_gather_index(y["labels"], granule=0)
