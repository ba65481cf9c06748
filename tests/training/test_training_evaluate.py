"""The pretraining evaluation's shuffled-image control (training/evaluate.py) on a real tiny
LXMERT and a generated world: a model blind to the image scores exactly the same with shuffled
images (same text, masking and labels), a model that reads it does not; grounded-word accuracy
counts only grounded targets of matched examples; the console line pairs each accuracy with its
control."""
import pytest
import torch

import lxmert_fast as L
from lxmert_fast.data.pretrain import PretrainDataset
from lxmert_fast.data.tokenization import load_tokenizer
from lxmert_fast.data.world import generate_world, open_world
from lxmert_fast.training.evaluate import evaluate_pretraining, format_results
from tiny_engine import PlainEngine


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    world = open_world(generate_world(str(tmp_path_factory.mktemp("w") / "w"), seed=1,
                                      num_images=64), feature_store=False)
    tok = load_tokenizer(world.vocab)
    words = open(world.grounded_words).read().split()
    train = PretrainDataset(world.splits["pretrain_train"], world.open_features(), tok,
                            max_boxes=12, grounded_words=words)
    return PretrainDataset(world.splits["pretrain_valid"], world.open_features(), tok,
                           answer_table=train.answer_table, train=False, max_boxes=12,
                           grounded_words=words)


def _model(valid, blind):
    torch.manual_seed(0)
    cfg = L.LxmertConfig(vocab_size=valid.vocab_size, hidden_size=32, num_attention_heads=2,
                         intermediate_size=64, l_layers=1, x_layers=1, r_layers=1,
                         num_qa_labels=len(valid.answer_table), initializer_range=0.5)
    model = L.LxmertForPreTraining(cfg).eval()
    if blind:   # the visual input then carries nothing: feature and box encoders output 0
        for p in model.lxmert.encoder.visn_fc.parameters():
            torch.nn.init.zeros_(p)
    return model


def test_blind_model_scores_the_same_with_shuffled_images(valid):
    res = evaluate_pretraining(PlainEngine(_model(valid, blind=True)), valid, batch_size=16)
    for key in ("mlm", "mlm_grounded", "matched", "qa"):
        assert res[f"{key}_acc"] == res[f"{key}_acc_shuffled"], key
        assert res[f"{key}_count"] > 0 and 0 < res[f"{key}_chance"] <= 1
    assert res["mlm_grounded_count"] < res["mlm_count"]
    assert "loss_mlm" in res and "loss_matched" in res


def test_grounded_accuracy_counts_grounded_targets_of_matched_examples_only(valid):
    res = evaluate_pretraining(PlainEngine(_model(valid, blind=True)), valid, batch_size=16)
    grounded = torch.as_tensor(valid.grounded_ids)
    batch = valid.make_batch(range(len(valid)))
    targets = (batch["labels"] >= 0) & torch.isin(batch["labels"], grounded)
    matched = (batch["matched_label"] == 1)[:, None]
    assert 0 < (targets & matched).sum() < targets.sum()       # both kinds occur
    assert res["mlm_grounded_count"] == (targets & matched).sum().item()


class _ImageReadingEngine(PlainEngine):
    """Its matching score flips with the image: positive iff the first box of the image shown
    lies in the left half (a rule of the image alone, which a derangement of images changes)."""

    def __call__(self, **kw):
        out = self.module(**kw)
        left = (kw["visual_pos"][:, 0, 0] < 0.5).float()
        out.cross_relationship_score = torch.stack([1 - left, left], dim=1)
        return out


def test_image_reading_model_differs_with_shuffled_images(valid):
    engine = _ImageReadingEngine(_model(valid, blind=True))
    res = evaluate_pretraining(engine, valid, batch_size=16)
    assert res["matched_acc"] != res["matched_acc_shuffled"]
    assert res["mlm_acc"] == res["mlm_acc_shuffled"]          # the rest stays blind
    line = format_results(res)
    assert f"qa_acc {res['qa_acc']:.4f} (shuffled images {res['qa_acc_shuffled']:.4f}" in line
    assert "mlm_grounded_acc" in line and "loss_qa" in line
