"""Parity with transformers' LXMERT (eval, fp32, same weights): every output field within 1e-5
max abs, every parameter gradient within 1e-4 relative; padded text and padded objects."""
import pytest
import torch

from lxmert_model_testutil import (OTHER, SMALL, assert_grads_close, inputs, max_diff,  # noqa: F401
                                   one_thread, pair, pretrain_labels)

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
CONFIGS = {"small": SMALL, "other": OTHER,
           "relu-nopad": {**SMALL, "hidden_act": "relu", "l_layers": 1, "r_layers": 1}}
MODEL_FIELDS = ("language_output", "vision_output", "pooled_output", "language_hidden_states",
                "vision_hidden_states", "language_attentions", "vision_attentions",
                "cross_encoder_attentions")
PRETRAIN_FIELDS = ("loss", "prediction_logits", "cross_relationship_score",
                   "question_answering_score", "language_hidden_states", "vision_hidden_states",
                   "language_attentions", "vision_attentions", "cross_encoder_attentions")


def _compare(ours_out, theirs_out, fields):
    for field in fields:
        a, b = getattr(ours_out, field), getattr(theirs_out, field)
        assert a is not None and b is not None, field
        assert max_diff(a, b) <= ATOL, f"{field}: {max_diff(a, b):.3e}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lxmert_model_outputs_match(name):
    cfg = CONFIGS[name]
    ours, theirs = pair("LxmertModel", cfg)
    x = inputs(cfg, pad=name != "relu-nopad")
    kw = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        a, b = ours(**x, **kw), theirs(**x, **kw)
    _compare(a, b, MODEL_FIELDS)
    assert len(a.language_hidden_states) == cfg["l_layers"] + cfg["x_layers"]
    assert len(a.vision_hidden_states) == cfg["r_layers"] + cfg["x_layers"]
    with torch.no_grad():
        ta, tb = ours(**x, **kw, return_dict=False), theirs(**x, **kw, return_dict=False)
    assert len(ta) == len(tb) == 8
    assert max_diff(ta, tb) <= ATOL


@pytest.mark.parametrize("name", ["small", "other"])
def test_pretraining_outputs_loss_and_grads_match(name):
    cfg = CONFIGS[name]
    ours, theirs = pair("LxmertForPreTraining", cfg)
    x, y = inputs(cfg), pretrain_labels(cfg)
    kw = dict(output_hidden_states=True, output_attentions=True)
    a, b = ours(**x, **y, **kw), theirs(**x, **y, **kw)
    _compare(a, b, PRETRAIN_FIELDS)
    assert set(a.losses) == {"mlm", "matched", "obj", "attr", "feat", "qa"}
    total = sum(a.losses[k] for k in ("mlm", "matched", "qa")) + \
        sum(a.losses[k] for k in ("obj", "attr", "feat"))
    assert abs(total.item() - a.loss.item()) <= ATOL
    a.loss.backward()
    b.loss.backward()
    assert_grads_close(ours, theirs)
    assert ours.cls.predictions.decoder.weight is ours.lxmert.embeddings.word_embeddings.weight


def test_pretraining_tuple_output_matches():
    ours, theirs = pair("LxmertForPreTraining", SMALL)
    x, y = inputs(SMALL), pretrain_labels(SMALL)
    with torch.no_grad():
        ta = ours(**x, **y, return_dict=False)
        tb = theirs(**x, **y, return_dict=False)
        na = ours(**x, return_dict=False)
        nb = theirs(**x, return_dict=False)
    assert len(ta) == len(tb) == 4 and len(na) == len(nb) == 3
    assert max_diff(ta, tb) <= ATOL and max_diff(na, nb) <= ATOL


@pytest.mark.parametrize("task", ["task_qa", "task_obj_predict", "visual_feat_loss"])
def test_pretraining_with_a_task_off_matches(task):
    cfg = {**SMALL, task: False, "l_layers": 1, "r_layers": 1}
    ours, theirs = pair("LxmertForPreTraining", cfg)
    x = inputs(cfg)
    y = pretrain_labels(cfg)
    if task == "visual_feat_loss":
        del y["obj_labels"]["feat"]
    a, b = ours(**x, **y), theirs(**x, **y)
    _compare(a, b, ("loss", "prediction_logits", "cross_relationship_score",
                    "question_answering_score"))
    absent = {"task_qa": "qa", "task_obj_predict": "obj", "visual_feat_loss": "feat"}[task]
    assert absent not in a.losses and "mlm" in a.losses
    a.loss.backward()
    b.loss.backward()
    assert_grads_close(ours, theirs)


@pytest.mark.parametrize("name", ["small", "other"])
def test_question_answering_outputs_and_grads_match(name):
    cfg = CONFIGS[name]
    ours, theirs = pair("LxmertForQuestionAnswering", cfg)
    x = inputs(cfg)
    labels = torch.tensor([1, 0, 2])
    kw = dict(output_hidden_states=True, output_attentions=True)
    a, b = ours(**x, labels=labels, **kw), theirs(**x, labels=labels, **kw)
    _compare(a, b, ("loss", "question_answering_score") + MODEL_FIELDS[3:])
    a.loss.backward()
    b.loss.backward()
    assert_grads_close(ours, theirs)


def test_training_mode_without_dropout_matches_grads():
    cfg = {**SMALL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    ours, theirs = pair("LxmertForPreTraining", cfg)
    ours.train()
    theirs.train()
    x, y = inputs(cfg), pretrain_labels(cfg)
    a, b = ours(**x, **y), theirs(**x, **y)
    assert max_diff(a.loss, b.loss) <= ATOL
    a.loss.backward()
    b.loss.backward()
    assert_grads_close(ours, theirs)


def test_default_size_state_dict_matches(cls_name="LxmertForPreTraining"):
    """The default (228M-parameter) architecture, built on the meta device: same keys in the same
    order, same shapes, same parameter count as transformers (the backbone and every head)."""
    import transformers

    import lxmert_fast

    with torch.device("meta"):
        ours = getattr(lxmert_fast, cls_name)(lxmert_fast.LxmertConfig())
        theirs = getattr(transformers, cls_name)(transformers.LxmertConfig())
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
