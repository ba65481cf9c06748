"""``lxmert_fast.from_transformers`` (lxmert_fast/modeling_loading.py): our model from a
transformers instance, with the same weights, device, dtype, mode and outputs."""
import pytest
import torch

import lxmert_fast
from lxmert_fast.checkpoint import CheckpointError
from compat_testutil import (CLASSES, TINY, assert_same_output, hf_config, inputs,  # noqa: F401
                             one_thread, randomize_)

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _theirs(cls_name, **overrides):
    return randomize_(getattr(transformers, cls_name)(hf_config(**{**TINY, **overrides})), 5)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_same_weights_and_outputs(cls_name):
    theirs = _theirs(cls_name, num_qa_labels=9, hidden_act="gelu_new").eval()
    ours = lxmert_fast.from_transformers(theirs, kernel_impl="torch")
    assert type(ours) is getattr(lxmert_fast, cls_name)
    assert ours.config.num_qa_labels == 9 and ours.config.hidden_act == "gelu_new"
    assert not ours.training
    theirs_state = theirs.state_dict()
    assert list(ours.state_dict()) == list(theirs_state)
    assert all(torch.equal(v, theirs_state[k]) for k, v in ours.state_dict().items())
    assert_same_output(ours, theirs, inputs())
    if cls_name == "LxmertForPreTraining":
        assert ours.cls.predictions.decoder.weight is ours.get_input_embeddings().weight


def test_dtype_device_and_training_mode_follow_the_instance():
    theirs = _theirs("LxmertForQuestionAnswering").to(torch.bfloat16).train()
    ours = lxmert_fast.from_transformers(theirs)
    assert ours.dtype == torch.bfloat16 and ours.device == theirs.device and ours.training
    assert ours.config.kernel_impl == "auto"
    theirs.eval()
    ours.eval().config.kernel_impl = "torch"
    x = inputs()
    x["visual_feats"], x["visual_pos"] = x["visual_feats"].bfloat16(), x["visual_pos"].bfloat16()
    assert_same_output(ours, theirs, x, atol=2e-2)  # bfloat16: 8 bits of mantissa


def test_other_models_are_refused():
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8))
    with pytest.raises(TypeError, match="got transformers.models.bert.modeling_bert.BertModel"):
        lxmert_fast.from_transformers(bert)
    theirs = _theirs("LxmertModel")
    theirs.extra = torch.nn.Linear(2, 2)  # a module the class does not have
    with pytest.raises(CheckpointError, match=r"unexpected keys \(2\): extra.bias, extra.weight"):
        lxmert_fast.from_transformers(theirs)
