"""Behaviour beyond transformers parity: per-loss outputs, the original's options (soft-score BCE,
weighted object losses), the NLVR2 pair head, output access, input validation, masking edge
cases."""
import pytest
import torch
import torch.nn.functional as F

from lxmert_fast import (LxmertConfig, LxmertForNLVR2, LxmertForPreTraining,
                         LxmertForQuestionAnswering, LxmertModel)
from lxmert_model_testutil import (SMALL, inputs, max_diff, one_thread,  # noqa: F401
                                   pretrain_labels, randomize_)

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = {**SMALL, "l_layers": 1, "r_layers": 1, "kernel_impl": "torch"}


def _model(cls, **overrides):
    return randomize_(cls(LxmertConfig(**{**CFG, **overrides}))).eval()


def test_losses_dict_holds_only_the_terms_that_ran():
    model = _model(LxmertForPreTraining)
    x, y = inputs(CFG), pretrain_labels(CFG)
    out = model(**x, labels=y["labels"])
    assert set(out.losses) == {"mlm"} and torch.equal(out.loss, out.losses["mlm"])
    out = model(**x, obj_labels=y["obj_labels"], matched_label=y["matched_label"])
    assert set(out.losses) == {"matched", "obj", "attr", "feat"}
    assert model(**x).loss is None and model(**x).losses == {}


def test_object_loss_weights_are_the_callers_confidence_times_mask():
    model = _model(LxmertForPreTraining)
    x, y = inputs(CFG), pretrain_labels(CFG)
    ids, weight = y["obj_labels"]["obj"]
    out = model(**x, obj_labels=y["obj_labels"])
    logits = model.obj_predict_head(model.lxmert(**x).vision_output)["obj"]  # (B, N, classes)
    per_object = F.cross_entropy(logits.reshape(-1, CFG["num_object_labels"]), ids.reshape(-1),
                                 reduction="none")
    expected = (per_object * weight.reshape(-1)).mean() * 6.67
    assert abs(out.losses["obj"].item() - expected.item()) <= 1e-5
    zero = {k: (v[0], torch.zeros_like(v[1])) for k, v in y["obj_labels"].items()}
    assert model(**x, obj_labels=zero).losses["obj"].item() == 0.0


def test_all_ignored_labels_give_zero_not_nan():
    model = _model(LxmertForPreTraining)
    x = inputs(CFG)
    out = model(**x, labels=torch.full((3, 7), -100), ans=torch.full((3,), -100))
    assert out.losses["mlm"].item() == 0.0 and out.losses["qa"].item() == 0.0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_qa_bce_is_the_originals_soft_score_loss():
    model = _model(LxmertForQuestionAnswering, qa_loss="bce", num_qa_labels=9)
    x = inputs(CFG)
    targets = torch.zeros(3, 9)
    targets[0, 2], targets[1, 4], targets[2, 4] = 1.0, 0.3, 0.9
    out = model(**x, labels=targets)
    expected = F.binary_cross_entropy_with_logits(out.question_answering_score, targets) * 9
    assert abs(out.loss.item() - expected.item()) <= 1e-6
    with pytest.raises(ValueError, match=r"qa_loss='bce' needs soft scores of shape \(3, 9\)"):
        model(**x, labels=torch.tensor([1, 2, 3]))
    ce = _model(LxmertForQuestionAnswering, num_qa_labels=9)
    with pytest.raises(ValueError, match=r"labels shape \(3, 9\) does not match"):
        ce(**x, labels=targets)


def test_nlvr2_concatenates_the_two_pooled_outputs():
    model = _model(LxmertForNLVR2)
    assert tuple(model.logit_fc[0].weight.shape) == (128, 128) and model.logit_fc[2].eps == 1e-12
    pairs = [inputs(CFG, seed=s) for s in (11, 12)]  # image 0 and image 1 of each example
    text = {k: pairs[0][k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    stack = {k: torch.stack([p[k] for p in pairs], 1)
             for k in ("visual_feats", "visual_pos", "visual_attention_mask")}  # (B, 2, ...)
    labels = torch.tensor([0, 1, 1])
    out = model(**text, **stack, labels=labels, output_hidden_states=True)
    with torch.no_grad():
        pooled = [model.lxmert(**text, **{k: p[k] for k in stack}).pooled_output for p in pairs]
        expected = model.logit_fc(torch.cat(pooled, -1))
    assert out.logits.shape == (3, 2) and max_diff(out.logits, expected) <= 1e-5
    assert abs(out.loss.item() - F.cross_entropy(expected, labels).item()) <= 1e-5
    assert out.language_hidden_states[0].shape[0] == 6
    with pytest.raises(ValueError,
                       match=r"visual_feats shape \(3, 5, 32\), expected \(B, 2, N, 32\)"):
        model(**text, visual_feats=pairs[0]["visual_feats"], visual_pos=stack["visual_pos"])


def test_output_access_like_transformers():
    model = _model(LxmertForPreTraining)
    x, y = inputs(CFG), pretrain_labels(CFG)
    with torch.no_grad():
        out = model(**x, **y)
        tup = model(**x, **y, return_dict=False)
    assert list(out.keys()) == ["loss", "prediction_logits", "cross_relationship_score",
                                "question_answering_score"]
    assert out[0] is out.loss and out["prediction_logits"] is out[1] and len(out) == 4
    assert max_diff(out[1:], tup[1:]) == 0.0 and len(tup) == 4
    assert "losses" not in out.keys() and set(out["losses"]) >= {"mlm", "qa"}
    with pytest.raises(KeyError, match="language_attentions"):
        out["language_attentions"]


@pytest.mark.parametrize("change,match", [
    (dict(visual_feats=torch.zeros(3, 5, 31)), r"visual_feats shape \(3, 5, 31\)"),
    (dict(visual_pos=torch.zeros(3, 4, 4)), r"visual_pos shape \(3, 4, 4\)"),
    (dict(attention_mask=torch.ones(3, 6)), r"attention_mask has shape \(3, 6\)"),
    (dict(visual_attention_mask=torch.ones(2, 5)), r"visual_attention_mask has shape \(2, 5\)"),
    (dict(token_type_ids=torch.zeros(3, 8, dtype=torch.long)), r"token_type_ids shape \(3, 8\)"),
    (dict(input_ids=torch.ones(3, 41, dtype=torch.long), attention_mask=None,
          token_type_ids=None), r"\(3, 41\).*max_position_embeddings=40"),
    (dict(visual_feats=None), "visual_feats and visual_pos are required"),
    (dict(inputs_embeds=torch.zeros(3, 7, 64)), "exactly one of input_ids and inputs_embeds"),
])
def test_bad_shapes_are_named(change, match):
    model = _model(LxmertModel)
    with pytest.raises(ValueError, match=match):
        model(**{**inputs(CFG), **change})


def test_bad_obj_labels_are_named():
    model = _model(LxmertForPreTraining)
    x, y = inputs(CFG), pretrain_labels(CFG)
    partial = {k: v for k, v in y["obj_labels"].items() if k != "attr"}
    with pytest.raises(ValueError, match=r"no 'attr' entry.*\['attr', 'feat', 'obj'\]"):
        model(**x, obj_labels=partial)
    bad = {**y["obj_labels"], "feat": (y["obj_labels"]["feat"][0], torch.ones(3, 4))}
    with pytest.raises(ValueError, match=r"obj_labels\['feat'\] weight shape \(3, 4\)"):
        model(**x, obj_labels=bad)


def test_inputs_embeds_equals_input_ids():
    model = _model(LxmertModel)
    x = inputs(CFG)
    with torch.no_grad():
        a = model(**x).pooled_output
        embeds = model.embeddings.word_embeddings(x["input_ids"])
        b = model(**{**x, "input_ids": None, "inputs_embeds": embeds}).pooled_output
    assert max_diff(a, b) == 0.0


def test_fully_masked_image_is_ignored_by_the_language_stream():
    """Documented difference: all keys masked -> zero attention (transformers: uniform)."""
    model = _model(LxmertModel)
    x = inputs(CFG)
    x["visual_attention_mask"][1] = 0
    with torch.no_grad():
        a = model(**x)
        other = {**x, "visual_feats": x["visual_feats"] + torch.randn_like(x["visual_feats"])}
        b = model(**other)
    assert torch.isfinite(a.language_output).all() and torch.isfinite(a.vision_output).all()
    assert max_diff(a.language_output[1], b.language_output[1]) <= 1e-6
    assert max_diff(a.language_output[0], b.language_output[0]) > 1e-3


def test_dropout_only_in_training_and_impl_read_at_call_time():
    model = _model(LxmertModel)
    x = inputs(CFG)
    with torch.no_grad():
        assert max_diff(model(**x).pooled_output, model(**x).pooled_output) == 0.0
        model.train()
        assert max_diff(model(**x).pooled_output, model(**x).pooled_output) > 1e-4
    model.config.kernel_impl = "bogus"
    with pytest.raises(ValueError, match="impl='bogus'"):
        model(**x)


def test_resize_num_qa_labels_keeps_rows():
    model = _model(LxmertForQuestionAnswering)
    old = model.answer_head.logit_fc[3].weight.detach().clone()
    layer = model.resize_num_qa_labels(10)
    assert layer.out_features == 10 and model.config.num_qa_labels == 10
    assert max_diff(layer.weight[:7], old) == 0.0
    assert model(**inputs(CFG)).question_answering_score.shape == (3, 10)


def test_half_precision_features_are_cast_to_the_weight_dtype():
    model = _model(LxmertModel)
    x = inputs(CFG)
    with torch.no_grad():
        a = model(**x).pooled_output
        b = model(**{**x, "visual_feats": x["visual_feats"].half()}).pooled_output
    assert max_diff(a, b) <= 1e-2 and b.dtype == torch.float32
