"""Checkpoints: state_dict round trips both ways, transformers-format directories (safetensors and
pytorch_model.bin) in both directions, base-model prefix rules, and the original repository's
key names; wrong checkpoints raise errors that list the keys."""
import json
import os

import pytest
import torch

import lxmert_fast
from lxmert_fast import (LxmertConfig, LxmertForNLVR2, LxmertForPreTraining,
                         LxmertForQuestionAnswering, LxmertModel)
from lxmert_fast.checkpoint import CheckpointError, load_original_state_dict
from lxmert_model_testutil import (SMALL, inputs, max_diff, one_thread,  # noqa: F401
                                   pair, randomize_)

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
CFG = {**SMALL, "l_layers": 1, "r_layers": 1}


def _outputs(model, cls_name):
    x = inputs(CFG)
    with torch.no_grad():
        out = model(**x)
    return out.question_answering_score if cls_name != "LxmertModel" else out.pooled_output


@pytest.mark.parametrize("cls_name", ["LxmertModel", "LxmertForPreTraining",
                                      "LxmertForQuestionAnswering"])
def test_state_dict_round_trips_strictly_both_ways(cls_name):
    ours, theirs = pair(cls_name, CFG)  # theirs -> ours, strict
    theirs2 = getattr(transformers, cls_name)(theirs.config).eval()
    theirs2.load_state_dict(ours.state_dict(), strict=True)  # ours -> theirs, strict
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert max_diff(_outputs(theirs2, cls_name), _outputs(theirs, cls_name)) == 0.0


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("cls_name", ["LxmertForPreTraining", "LxmertForQuestionAnswering"])
def test_transformers_directory_loads_into_ours(tmp_path, cls_name, safe):
    same, theirs = pair(cls_name, CFG)
    if safe:
        theirs.save_pretrained(tmp_path)
    else:  # transformers 5 writes safetensors only; a 4.x-style directory has pytorch_model.bin
        theirs.config.save_pretrained(tmp_path)
        torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
    assert os.path.isfile(tmp_path / ("model.safetensors" if safe else "pytorch_model.bin"))
    ours = getattr(lxmert_fast, cls_name).from_pretrained(str(tmp_path), kernel_impl="torch")
    assert not ours.training
    assert max_diff(_outputs(ours, cls_name), _outputs(same, cls_name)) == 0.0
    assert max_diff(_outputs(ours, cls_name), _outputs(theirs, cls_name)) <= 1e-5
    if cls_name == "LxmertForPreTraining":
        assert ours.cls.predictions.decoder.weight is ours.lxmert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("cls_name", ["LxmertModel", "LxmertForPreTraining",
                                      "LxmertForQuestionAnswering"])
def test_our_directory_loads_into_transformers(tmp_path, cls_name, safe):
    ours, same = pair(cls_name, CFG, seed=5)
    ours.save_pretrained(str(tmp_path), safe_serialization=safe)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [cls_name] and config["model_type"] == "lxmert"
    theirs, info = getattr(transformers, cls_name).from_pretrained(
        str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert max_diff(_outputs(theirs.eval(), cls_name), _outputs(same, cls_name)) == 0.0
    assert max_diff(_outputs(ours, cls_name), _outputs(theirs, cls_name)) <= 1e-5
    again = getattr(lxmert_fast, cls_name).from_pretrained(str(tmp_path))
    assert max_diff(_outputs(again, cls_name), _outputs(ours, cls_name)) == 0.0


def test_base_model_prefix_rules(tmp_path):
    ours, _ = pair("LxmertForPreTraining", CFG)
    ours.save_pretrained(str(tmp_path / "pre"))
    base = LxmertModel.from_pretrained(str(tmp_path / "pre"))  # heads dropped, as transformers
    assert max_diff(base.embeddings.word_embeddings.weight,
                    ours.lxmert.embeddings.word_embeddings.weight) == 0.0
    base.save_pretrained(str(tmp_path / "base"))
    with pytest.raises(CheckpointError, match=r"strict=True.*missing keys \(\d+\): "
                                              r"answer_head.logit_fc.0.bias"):
        LxmertForQuestionAnswering.from_pretrained(str(tmp_path / "base"), strict=True)
    qa, info = LxmertForQuestionAnswering.from_pretrained(  # transformers': heads initialised
        str(tmp_path / "base"), output_loading_info=True)
    assert info["missing_keys"] == {k for k in qa.state_dict() if k.startswith("answer_head")}
    assert max_diff(qa.lxmert.pooler.dense.weight, ours.lxmert.pooler.dense.weight) == 0.0


def test_from_pretrained_errors_name_the_problem(tmp_path):
    ours, _ = pair("LxmertForQuestionAnswering", CFG)
    ours.save_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"shape mismatches.*answer_head.logit_fc.3.weight"):
        LxmertForQuestionAnswering.from_pretrained(str(tmp_path), num_qa_labels=9)
    with pytest.raises(FileNotFoundError, match="not a local directory or file"):
        LxmertModel.from_pretrained(str(tmp_path / "nowhere"))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        LxmertModel.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**CFG, "visual_feat_dims": 3}))
    with pytest.raises(ValueError, match="'visual_feat_dims'.*'visual_feat_dim'"):
        LxmertModel.from_pretrained(str(tmp_path))


def test_dtype_option(tmp_path):
    ours, _ = pair("LxmertModel", CFG)
    ours.save_pretrained(str(tmp_path))
    assert LxmertModel.from_pretrained(str(tmp_path), dtype=torch.bfloat16).dtype == torch.bfloat16
    assert LxmertModel.from_pretrained(str(tmp_path), dtype="auto").dtype == torch.float32
    with pytest.raises(ValueError, match="dtype='float99'"):
        LxmertModel.from_pretrained(str(tmp_path), dtype="float99")


def _rename(state, mapping):
    out = {}
    for key, value in state.items():
        for old, new in mapping:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value.clone()
    return out


def test_original_pretraining_checkpoint_maps(tmp_path):
    src, _ = pair("LxmertForPreTraining", CFG, seed=7)
    original = _rename(src.state_dict(), [("lxmert.", "module.bert."), ("", "module.")])
    assert "module.bert.encoder.x_layers.0.visual_attention.att.query.weight" in original
    torch.save(original, tmp_path / "Epoch20_LXRT.pth")
    dst = LxmertForPreTraining(LxmertConfig(**CFG))
    load_original_state_dict(dst, str(tmp_path / "Epoch20_LXRT.pth"))
    assert all(max_diff(v, src.state_dict()[k]) == 0 for k, v in dst.state_dict().items())
    # Fine-tuning start: backbone only, into a QA model with another answer count.
    qa = LxmertForQuestionAnswering(LxmertConfig(**{**CFG, "num_qa_labels": 3129}))
    head_before = qa.answer_head.logit_fc[3].weight.clone()
    info = load_original_state_dict(qa, original, backbone_only=True)
    assert info["missing_keys"] == []
    assert max_diff(qa.lxmert.pooler.dense.weight, src.lxmert.pooler.dense.weight) == 0
    assert max_diff(qa.answer_head.logit_fc[3].weight, head_before) == 0
    base = LxmertModel(LxmertConfig(**CFG))
    load_original_state_dict(base, original, backbone_only=True)
    assert max_diff(base.pooler.dense.weight, src.lxmert.pooler.dense.weight) == 0
    with pytest.raises(CheckpointError,
                       match=r"unexpected keys \(\d+\): answer_head.*cls\.predictions\.bias"):
        load_original_state_dict(LxmertModel(LxmertConfig(**CFG)), original)


@pytest.mark.parametrize("cls", [LxmertForQuestionAnswering, LxmertForNLVR2])
def test_original_finetuned_checkpoint_maps(cls):
    src = randomize_(cls(LxmertConfig(**CFG)), seed=9)
    head = "answer_head.logit_fc." if cls is LxmertForQuestionAnswering else "logit_fc."
    original = _rename(src.state_dict(), [("lxmert.", "lxrt_encoder.model.bert."),
                                          (head, "logit_fc.")])
    assert "logit_fc.3.bias" in original and "lxrt_encoder.model.bert.pooler.dense.bias" in original
    dst = cls(LxmertConfig(**CFG))
    load_original_state_dict(dst, original)
    assert all(max_diff(v, src.state_dict()[k]) == 0 for k, v in dst.state_dict().items())


def test_original_checkpoint_errors_and_layernorm_names():
    src = randomize_(LxmertModel(LxmertConfig(**CFG)), seed=4)
    renamed = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}
    original = {}
    for key, value in src.state_dict().items():
        for old, new in renamed.items():
            key = key.replace(old, new)
        original["bert." + key] = value
    dst = LxmertModel(LxmertConfig(**CFG))
    load_original_state_dict(dst, original)  # gamma/beta (old BERT names) map to weight/bias
    assert max_diff(dst.embeddings.LayerNorm.bias, src.embeddings.LayerNorm.bias) == 0
    del original["bert.pooler.dense.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): pooler.dense.bias"):
        load_original_state_dict(dst, original)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_original_state_dict(dst, [1, 2])
