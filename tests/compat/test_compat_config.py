"""The config API beyond fields (lxmert_fast/config.py) beside transformers' LxmertConfig:
get_text_config, to_diff_dict, sub_configs, model_type, and when a bad head count is caught."""
import pytest

import lxmert_fast
from lxmert_fast import LxmertConfig
from compat_testutil import OURS_ONLY, TINY

transformers = pytest.importorskip("transformers")


def _both(**kwargs):
    return LxmertConfig(**kwargs), transformers.LxmertConfig(**kwargs)


def test_text_config_sub_configs_and_model_type():
    ours, theirs = _both(**TINY)
    assert ours.get_text_config() is ours and theirs.get_text_config() is theirs
    assert ours.get_text_config(decoder=True) is ours
    assert ours.sub_configs == theirs.sub_configs == {}
    assert ours.model_type == theirs.model_type == LxmertConfig.model_type == "lxmert"
    assert ours.is_encoder_decoder is theirs.is_encoder_decoder is False
    assert ours.use_return_dict is True
    assert "model_type" not in LxmertConfig.field_names()


def test_to_diff_dict_keeps_what_transformers_keeps():
    ours, theirs = _both(**TINY, hidden_dropout_prob=0.2, output_hidden_states=True)
    mine, expected = ours.to_diff_dict(), theirs.to_diff_dict()
    expected.pop("transformers_version")
    for key, value in expected.items():
        assert key in mine and mine[key] == value, (key, mine.get(key), value)
    assert set(mine) - set(expected) <= set(OURS_ONLY)  # our own fields only
    assert mine["output_hidden_states"] is True and "return_dict" not in mine
    assert LxmertConfig.from_dict(mine) == ours


def test_head_count_is_checked_when_a_model_is_built():
    """transformers accepts LxmertConfig(hidden_size=37, num_attention_heads=12) and refuses the
    model; so do we (the config may be edited before a model is built)."""
    ours, theirs = _both(hidden_size=37, num_attention_heads=12)
    assert ours.hidden_size == theirs.hidden_size == 37
    with pytest.raises(ValueError, match="hidden size .37. is not a multiple"):
        transformers.LxmertModel(theirs)
    for name in ("LxmertModel", "LxmertForPreTraining", "LxmertForQuestionAnswering",
                 "LxmertForNLVR2"):
        with pytest.raises(ValueError, match="hidden_size=37 is not a multiple of "
                                             "num_attention_heads=12"):
            getattr(lxmert_fast, name)(ours)
    ours.hidden_size = 48
    assert lxmert_fast.LxmertModel(ours).config.head_dim == 4
