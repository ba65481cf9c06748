"""from_pretrained as transformers does it (lxmert_fast/modeling_loading.py): the standard
fine-tuning load (pretraining checkpoint -> QA head) in one call, mismatched sizes, missing keys,
dtype/torch_dtype, config=/state_dict=, the offline error, and the original repository's layout.
Each case runs transformers' class on the same files: its result is the expected one."""
import logging
import os

import pytest
import torch

import lxmert_fast
from lxmert_fast import LxmertConfig, LxmertForNLVR2, LxmertForPreTraining
from lxmert_fast.checkpoint import CheckpointError
from compat_testutil import (TINY, assert_same_output, inputs, one_thread,  # noqa: F401
                             pair)

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
PRETRAINING_HEADS = ("cls.", "obj_predict_head.")


def _load_both(cls_name, path, **kwargs):
    ours = getattr(lxmert_fast, cls_name).from_pretrained(path, output_loading_info=True,
                                                          **kwargs)
    theirs = getattr(transformers, cls_name).from_pretrained(path, output_loading_info=True,
                                                             **kwargs)
    return ours, theirs


def _assert_same_info(ours, theirs):
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert set(ours[key]) == set(theirs[key]), key
    assert ours["error_msgs"] == theirs["error_msgs"] == []


@pytest.mark.parametrize("writer", ["ours", "transformers"])
def test_pretraining_checkpoint_loads_into_question_answering(tmp_path, writer, caplog):
    ours_pre, theirs_pre = pair("LxmertForPreTraining")
    (ours_pre if writer == "ours" else theirs_pre).save_pretrained(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="lxmert_fast"):
        (ours, info), (theirs, their_info) = _load_both("LxmertForQuestionAnswering",
                                                        str(tmp_path))
    _assert_same_info(info, their_info)
    assert len(info["unexpected_keys"]) == 17 and not info["missing_keys"]
    assert all(k.startswith(PRETRAINING_HEADS) for k in info["unexpected_keys"])
    assert "were not used when initializing LxmertForQuestionAnswering" in caplog.text
    assert "cls.predictions.bias" in caplog.text
    assert not ours.training and not theirs.training
    x = inputs()
    assert_same_output(ours, theirs, x)
    assert torch.equal(ours.answer_head.logit_fc[3].weight,
                       ours_pre.answer_head.logit_fc[3].weight)


def test_other_answer_count_refused_unless_ignore_mismatched_sizes(tmp_path):
    pair("LxmertForPreTraining")[1].save_pretrained(str(tmp_path))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        transformers.LxmertForQuestionAnswering.from_pretrained(str(tmp_path), num_qa_labels=3)
    with pytest.raises(CheckpointError, match=r"answer_head.logit_fc.3.bias: checkpoint \(7,\) vs "
                                              r"model \(3,\).*ignore_mismatched_sizes=True"):
        lxmert_fast.LxmertForQuestionAnswering.from_pretrained(str(tmp_path), num_qa_labels=3)
    (ours, info), (theirs, their_info) = _load_both(
        "LxmertForQuestionAnswering", str(tmp_path), num_qa_labels=3,
        ignore_mismatched_sizes=True)
    _assert_same_info(info, their_info)
    assert info["mismatched_keys"] == {
        ("answer_head.logit_fc.3.weight", torch.Size([7, 64]), torch.Size([3, 64])),
        ("answer_head.logit_fc.3.bias", torch.Size([7]), torch.Size([3]))}
    assert ours.answer_head.logit_fc[3].weight.shape == (3, 64) == \
        theirs.answer_head.logit_fc[3].weight.shape
    assert torch.equal(ours.answer_head.logit_fc[0].weight, theirs.answer_head.logit_fc[0].weight)
    assert torch.equal(ours.lxmert.pooler.dense.weight, theirs.lxmert.pooler.dense.weight)


def test_backbone_checkpoint_into_pretraining_initialises_the_heads(tmp_path):
    pair("LxmertModel")[1].save_pretrained(str(tmp_path))
    (ours, info), (theirs, their_info) = _load_both("LxmertForPreTraining", str(tmp_path))
    _assert_same_info(info, their_info)
    heads = {k for k in ours.state_dict() if not k.startswith("lxmert.")} - \
        {"cls.predictions.decoder.weight"}
    assert info["missing_keys"] == heads and not info["unexpected_keys"]
    assert ours.cls.predictions.decoder.weight is ours.lxmert.embeddings.word_embeddings.weight
    assert torch.equal(ours.lxmert.embeddings.word_embeddings.weight,
                       theirs.lxmert.embeddings.word_embeddings.weight)
    assert ours.cls.predictions.transform.LayerNorm.weight.eq(1).all()  # initialised, as theirs
    assert theirs.cls.predictions.transform.LayerNorm.weight.eq(1).all()


def test_a_save_without_some_keys_initialises_them(tmp_path):
    from safetensors.torch import load_file, save_file

    pair("LxmertForQuestionAnswering")[1].save_pretrained(str(tmp_path))
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    dropped = {"lxmert.pooler.dense.weight", "lxmert.pooler.dense.bias",
               "answer_head.logit_fc.3.bias"}
    save_file({k: v for k, v in state.items() if k not in dropped}, str(weights),
              metadata={"format": "pt"})
    (ours, info), (_, their_info) = _load_both("LxmertForQuestionAnswering", str(tmp_path))
    _assert_same_info(info, their_info)
    assert info["missing_keys"] == dropped
    assert ours.answer_head.logit_fc[3].bias.eq(0).all()
    with pytest.raises(CheckpointError, match=r"missing keys \(3\): answer_head.logit_fc.3.bias"):
        lxmert_fast.LxmertForQuestionAnswering.from_pretrained(str(tmp_path), strict=True)


def test_pretraining_checkpoint_into_nlvr2(tmp_path):
    ours_pre, _ = pair("LxmertForPreTraining")
    ours_pre.save_pretrained(str(tmp_path))
    model, info = LxmertForNLVR2.from_pretrained(str(tmp_path), output_loading_info=True)
    assert info["missing_keys"] == {k for k in model.state_dict() if k.startswith("logit_fc.")}
    assert {k.split(".")[0] for k in info["unexpected_keys"]} == \
        {"cls", "obj_predict_head", "answer_head"}
    assert torch.equal(model.lxmert.pooler.dense.weight, ours_pre.lxmert.pooler.dense.weight)


@pytest.mark.parametrize("name", ["torch_dtype", "dtype"])
def test_dtype_and_its_old_name(tmp_path, name):
    pair("LxmertModel")[1].save_pretrained(str(tmp_path))
    ours = lxmert_fast.LxmertModel.from_pretrained(str(tmp_path), **{name: torch.float16})
    theirs = transformers.LxmertModel.from_pretrained(str(tmp_path), **{name: torch.float16})
    assert ours.dtype == theirs.dtype == torch.float16
    assert ours.config.dtype == "float16"
    with pytest.raises(ValueError, match="dtype=torch.float16 and torch_dtype=torch.bfloat16"):
        lxmert_fast.LxmertModel.from_pretrained(str(tmp_path), dtype=torch.float16,
                                                torch_dtype=torch.bfloat16)


def test_default_dtype_is_the_saved_one(tmp_path):
    pair("LxmertModel")[1].to(torch.bfloat16).save_pretrained(str(tmp_path))
    ours = lxmert_fast.LxmertModel.from_pretrained(str(tmp_path))
    theirs = transformers.LxmertModel.from_pretrained(str(tmp_path))
    assert ours.dtype == theirs.dtype == torch.bfloat16
    x = inputs()
    x["visual_feats"], x["visual_pos"] = x["visual_feats"].bfloat16(), x["visual_pos"].bfloat16()
    ours.config.kernel_impl = "torch"
    assert_same_output(ours, theirs, x, atol=2e-2)  # bfloat16: 8 bits of mantissa


def test_config_and_state_dict_arguments(tmp_path):
    ours_qa, theirs_qa = pair("LxmertForQuestionAnswering", seed=3)
    state = theirs_qa.state_dict()
    ours = lxmert_fast.LxmertForQuestionAnswering.from_pretrained(
        None, config=ours_qa.config, state_dict=state)
    theirs = transformers.LxmertForQuestionAnswering.from_pretrained(
        None, config=theirs_qa.config, state_dict=state)
    x = inputs()
    assert_same_output(ours, theirs, x)
    theirs_qa.save_pretrained(str(tmp_path))
    config = LxmertConfig(**{**TINY, "hidden_dropout_prob": 0.3, "kernel_impl": "torch"})
    ours = lxmert_fast.LxmertForQuestionAnswering.from_pretrained(
        pretrained_model_name_or_path=str(tmp_path), config=config)
    theirs = transformers.LxmertForQuestionAnswering.from_pretrained(
        pretrained_model_name_or_path=str(tmp_path),
        config=transformers.LxmertConfig(**{**TINY, "hidden_dropout_prob": 0.3}))
    assert ours.config.hidden_dropout_prob == theirs.config.hidden_dropout_prob == 0.3
    assert config.dtype is None  # the caller's config is not changed
    assert_same_output(ours, theirs, x)
    assert ours.name_or_path == theirs.name_or_path == str(tmp_path)


def test_a_name_that_is_not_local_is_an_offline_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(OSError):
        transformers.LxmertModel.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match=f"{missing}.*downloads nothing"):
        lxmert_fast.LxmertModel.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="'unc-nlp/lxmert-base-uncased' is not a local"):
        lxmert_fast.LxmertModel.from_pretrained("unc-nlp/lxmert-base-uncased")


def _original(state):
    """The original repository's names for our pretraining state (DataParallel's module.)."""
    return {"module." + ("bert." + k[len("lxmert."):] if k.startswith("lxmert.") else k): v
            for k, v in state.items()}


def test_original_repository_layout_loads(tmp_path):
    """transformers has no loader for these files; ours maps them in the same call."""
    ours_pre, theirs_pre = pair("LxmertForPreTraining", seed=4)
    pth = tmp_path / "Epoch20_LXRT.pth"
    original = _original(ours_pre.state_dict())
    original = {k.replace("LayerNorm.weight", "LayerNorm.gamma"): v for k, v in original.items()}
    torch.save(original, pth)
    config = LxmertConfig(**TINY, kernel_impl="torch")
    pre = LxmertForPreTraining.from_pretrained(str(pth), config=config)
    x = inputs()
    assert_same_output(pre, theirs_pre, x)
    qa, info = lxmert_fast.LxmertForQuestionAnswering.from_pretrained(
        None, config=config, state_dict=original, output_loading_info=True)
    assert not info["missing_keys"] and torch.equal(qa.lxmert.pooler.dense.weight,
                                                    theirs_pre.lxmert.pooler.dense.weight)
    assert "cls.predictions.decoder.weight" in info["unexpected_keys"]
    directory = tmp_path / "dir"
    config.save_pretrained(str(directory))
    torch.save(original, directory / "pytorch_model.bin")
    again = LxmertForPreTraining.from_pretrained(str(directory))
    assert_same_output(again, theirs_pre, x)


def test_save_pretrained_state_dict_argument_loads_in_transformers(tmp_path):
    ours, _ = pair("LxmertForQuestionAnswering", seed=6)
    state = {k: v * 2 for k, v in ours.state_dict().items()}
    ours.save_pretrained(str(tmp_path), state_dict=state)  # as Trainer calls it
    theirs, info = transformers.LxmertForQuestionAnswering.from_pretrained(
        str(tmp_path), output_loading_info=True)
    assert not any(info.values())
    assert torch.equal(theirs.answer_head.logit_fc[3].weight, state["answer_head.logit_fc.3.weight"])
    assert os.listdir(tmp_path) and not ours.save_pretrained(str(tmp_path / "x"),
                                                             is_main_process=False)
    assert not (tmp_path / "x").exists()


def test_loading_options_and_refusals(tmp_path):
    ours, _ = pair("LxmertModel")
    ours.save_pretrained(str(tmp_path), safe_serialization=False)  # pytorch_model.bin
    cls = lxmert_fast.LxmertModel
    for device_map in ("cpu", {"": "cpu"}, torch.device("cpu")):
        assert cls.from_pretrained(str(tmp_path), device_map=device_map).device.type == "cpu"
    with pytest.raises(ValueError, match="splits the model"):
        cls.from_pretrained(str(tmp_path), device_map={"encoder": "cpu", "pooler": "cpu"})
    assert cls.from_pretrained(str(tmp_path), use_safetensors=False, cache_dir=str(tmp_path),
                               local_files_only=True, revision="main").training is False
    with pytest.raises(FileNotFoundError, match=r"model.safetensors.*use_safetensors=True"):
        cls.from_pretrained(str(tmp_path), use_safetensors=True)
    with pytest.raises(ValueError, match="revision='v2'"):
        cls.from_pretrained(str(tmp_path), revision="v2")
    with pytest.raises(TypeError, match="variant= is not supported"):
        cls.from_pretrained(str(tmp_path), variant="fp16")
    with pytest.raises(ValueError, match="unknown key 'hiden_size'; did you mean 'hidden_size'"):
        cls.from_pretrained(str(tmp_path), hiden_size=3)
    with pytest.raises(TypeError, match="takes 2 positional arguments"):  # as transformers
        cls.from_pretrained(str(tmp_path), "extra")
