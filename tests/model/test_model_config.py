"""LxmertConfig: transformers' fields and defaults, config.json in both directions, and errors
that name the offending key or field."""
import dataclasses
import json

import pytest

from lxmert_fast import LxmertConfig

transformers = pytest.importorskip("transformers")

CONTRACT_DEFAULTS = dict(
    vocab_size=30522, hidden_size=768, num_attention_heads=12, num_qa_labels=9500,
    num_object_labels=1600, num_attr_labels=400, intermediate_size=3072, hidden_act="gelu",
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, l_layers=9, x_layers=5,
    r_layers=5, visual_feat_dim=2048, visual_pos_dim=4, visual_loss_normalizer=6.67,
    task_matched=True, task_mask_lm=True, task_obj_predict=True, task_qa=True,
    visual_obj_loss=True, visual_attr_loss=True, visual_feat_loss=True, kernel_impl="auto",
    qa_loss="ce", tie_word_embeddings=True, return_dict=True, output_attentions=False,
    output_hidden_states=False)


def test_every_transformers_field_with_the_same_default():
    ours, theirs = LxmertConfig(), transformers.LxmertConfig()
    hf_fields = [f.name for f in dataclasses.fields(transformers.LxmertConfig)]
    lxmert_fields = transformers.LxmertConfig.__annotations__
    assert "l_layers" in lxmert_fields and len(lxmert_fields) >= 30
    for name in lxmert_fields:
        assert name in LxmertConfig.field_names(), name
        assert getattr(ours, name) == getattr(theirs, name), name
    for name in ("output_hidden_states", "return_dict", "architectures"):
        assert name in hf_fields and getattr(ours, name) == getattr(theirs, name), name
    assert ours.output_attentions == theirs.output_attentions
    assert ours.num_hidden_layers == theirs.num_hidden_layers
    for name, value in CONTRACT_DEFAULTS.items():
        assert getattr(ours, name) == value, name


def test_reads_a_config_json_that_transformers_wrote(tmp_path):
    theirs = transformers.LxmertConfig(hidden_size=96, num_attention_heads=3, l_layers=2,
                                       id2label={0: "no", 1: "yes"})
    theirs.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert {"transformers_version", "model_type", "num_hidden_layers"} <= set(written)
    ours = LxmertConfig.from_pretrained(str(tmp_path))
    assert (ours.hidden_size, ours.num_attention_heads, ours.l_layers) == (96, 3, 2)
    assert ours.id2label == {0: "no", 1: "yes"} and ours.label2id == written.get("label2id")
    assert LxmertConfig.from_json_file(str(tmp_path / "config.json")) == ours


def test_reads_a_transformers_4_style_config():
    legacy = {**LxmertConfig().to_dict(), "torch_dtype": "float32", "_name_or_path": "unc-nlp",
              "transformers_version": "4.30.0", "architectures": ["LxmertForPreTraining"],
              "max_length": 20, "num_beams": 1, "pruned_heads": {}, "torchscript": False,
              "chunk_size_feed_forward": 0, "use_bfloat16": False, "problem_type": None}
    config = LxmertConfig.from_dict(legacy)
    assert config.architectures == ["LxmertForPreTraining"] and config.l_layers == 9


def test_transformers_reads_our_config(tmp_path):
    ours = LxmertConfig(hidden_size=64, num_attention_heads=4, x_layers=2, num_qa_labels=3129,
                        kernel_impl="torch", qa_loss="bce")
    ours.save_pretrained(str(tmp_path))
    theirs = transformers.LxmertConfig.from_pretrained(str(tmp_path))
    for name in transformers.LxmertConfig.__annotations__:
        assert getattr(theirs, name) == getattr(ours, name), name
    assert LxmertConfig.from_pretrained(str(tmp_path)) == ours


@pytest.mark.parametrize("key,hint", [("hiden_size", "'hidden_size'"),
                                      ("visual_feats_dim", "'visual_feat_dim'"),
                                      ("qa_losses", "'qa_loss'"), ("zzz_top", None)])
def test_unknown_key_is_named_with_the_nearest_field(key, hint):
    with pytest.raises(ValueError, match=f"unknown key '{key}'") as err:
        LxmertConfig.from_dict({key: 1})
    message = str(err.value)
    assert (f"did you mean {hint}?" in message) if hint else "did you mean" not in message


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"l_layer": 3}))
    with pytest.raises(ValueError, match=r"'l_layer'; did you mean 'l_layers'\?.*config.json"):
        LxmertConfig.from_json_file(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        LxmertConfig.from_json_file(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a list"):
        LxmertConfig.from_json_file(str(path))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LxmertConfig.from_pretrained(str(tmp_path / "missing"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_impl="cuda"), "kernel_impl='cuda'"),
    (dict(qa_loss="mse"), "qa_loss='mse'"),
    (dict(hidden_act="gelu2"), "hidden_act='gelu2'"),
    (dict(l_layers=-1), "l_layers=-1"),
    (dict(vocab_size=0), "vocab_size=0"),
    (dict(num_qa_labels="9500"), "num_qa_labels='9500' must be an int"),
    (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob=1.5"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps=0.0"),
    (dict(x_layers=0, r_layers=0), "r_layers=0 and x_layers=0"),
])
def test_bad_values_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LxmertConfig(**kwargs)


def test_model_type_and_layer_counts_are_checked():
    with pytest.raises(ValueError, match="model_type='bert'"):
        LxmertConfig.from_dict({"model_type": "bert"})
    with pytest.raises(ValueError, match="num_hidden_layers=.*disagrees"):
        LxmertConfig.from_dict({"l_layers": 2, "num_hidden_layers": {"language": 9, "vision": 5,
                                                                    "cross_encoder": 5}})


def test_to_dict_round_trip_and_overrides():
    config = LxmertConfig(num_qa_labels=3129, qa_loss="bce", id2label={0: "a"})
    data = json.loads(config.to_json_string())
    assert data["model_type"] == "lxmert" and data["num_hidden_layers"]["language"] == 9
    assert LxmertConfig.from_dict(data) == config
    assert LxmertConfig.from_dict(data, kernel_impl="torch").kernel_impl == "torch"


def test_constructor_accepts_transformers_keys_and_names_unknown_ones():
    config = LxmertConfig(torch_dtype="float32", transformers_version="5.0.0", l_layers=3,
                          num_hidden_layers={"language": 3, "vision": 5, "cross_encoder": 5})
    assert config.l_layers == 3
    with pytest.raises(ValueError, match="unknown key 'x_layer'; did you mean 'x_layers'"):
        LxmertConfig(x_layer=2)
    assert LxmertConfig(30000, 96, 3).hidden_size == 96  # positional, in transformers' order
