"""training/step.py host side: the pretraining batch gets the MLM gather positions and the task
presence flags from its CPU labels; fine-tuning text is padded to max_seq_len only when asked
(compiled step), masked, outputs unchanged; bad lengths are named; loop.loss_row layout."""
import pytest
import torch

from lxmert_fast.data.batch import PackedVisual
from lxmert_fast.training import loop, step


def _pretrain_batch(mlm=True, qa=True):
    labels = torch.full((2, 5), -100)
    if mlm:
        labels[1, 3] = 7
    ans = torch.tensor([4, -100]) if qa else torch.tensor([-100, -100])
    return {"input_ids": torch.ones(2, 5, dtype=torch.long), "labels": labels, "ans": ans,
            "visual": PackedVisual(feats=torch.zeros(2, 3, 4, dtype=torch.float16))}


def test_pretrain_batch_gets_positions_and_presence():
    batch = _pretrain_batch()
    visual = batch["visual"]
    out = step.prepare_pretrain(batch)
    assert out["visual"] is visual and "visual" not in out["model"]   # unpacked on the device
    assert out["model"]["mlm_positions"][0].item() == 8         # flat position of (1, 3)
    assert out["present"]["mlm"].item() == 1.0 and out["present"]["qa"].item() == 1.0
    out = step.prepare_pretrain(_pretrain_batch(mlm=False, qa=False))
    assert out["present"]["mlm"].item() == 0.0 and out["present"]["qa"].item() == 0.0
    out = step.prepare_pretrain({"input_ids": torch.ones(2, 5), "labels": None, "ans": None,
                                 "visual": PackedVisual()})
    assert out["present"] == {} and "mlm_positions" not in out["model"]


def test_finetune_text_padded_only_when_asked():
    batch = {"input_ids": torch.tensor([[101, 5, 102]]), "token_type_ids": torch.zeros(1, 3),
             "attention_mask": torch.ones(1, 3, dtype=torch.long), "labels": torch.tensor([1])}
    eager = step.FinetuneBatches(lambda mb: dict(batch))(None)
    assert eager["model"]["input_ids"].shape == (1, 3) and eager["present"] == {}
    padded = step.FinetuneBatches(lambda mb: dict(batch), max_seq_len=6)(None)["model"]
    assert padded["input_ids"].tolist() == [[101, 5, 102, 0, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0]]
    assert padded["token_type_ids"].shape == (1, 6) and padded["labels"].tolist() == [1]
    with pytest.raises(ValueError, match="3 tokens, more than max_seq_len=2"):
        step.pad_text(dict(batch), 2)


def test_loss_row_layout():
    loss = torch.tensor(3.0)
    row = loop.loss_row(loss, {"mlm": torch.tensor(2.0), "qa": torch.tensor(0.5)},
                        {"qa": torch.tensor(0.0)}, ["mlm", "matched", "qa"])
    assert row.dtype == torch.float64
    assert row.tolist() == [3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]
